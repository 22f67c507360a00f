"""`ray job submit --working-dir . -- python jobs/report.py --run RUN_ID --tracking-uri URI [--out DIR]`

Runs `prun-tts report` as a Ray job: the listening page of a finished sweep, rebuilt from its
MLflow run (or from `--sweep DIR` on storage the job can read). In a job, a relative --out
lands under ~/prun-tts like the sweep's own files.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working directory

from orchestrator.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
