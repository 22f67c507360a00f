"""`ray job submit --working-dir . -- python jobs/shards.py --config CFG [--set k=v ...]`

Runs `prun-tts shards` in the job's driver: Ray Data encodes world.real.train_manifest into
speech-token shards (world.real.encode_actors codec actors, one GPU each with train.use_gpu).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's working directory

from orchestrator.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["shards", *sys.argv[1:]]))
