"""`ray job submit --working-dir . -- python jobs/sweep.py --config CFG [--set k=v ...]`

Runs `prun-tts sweep` as a Ray job: inside a job, RAY_ADDRESS points at the cluster, and
the trials run on its workers.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working directory

from orchestrator.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
