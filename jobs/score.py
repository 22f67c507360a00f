"""`ray job submit --working-dir . -- python jobs/score.py --config CFG [--set k=v ...]`

Runs `prun-tts score` in the job's driver process (give it a GPU with --entrypoint-num-gpus 1).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working directory

from orchestrator.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
