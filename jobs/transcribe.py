"""Entry point for `ray job submit`: `g2p-batch run` itself, with the same flags and defaults.

    ray job submit --working-dir . -- python jobs/transcribe.py --config configs/local.yaml \
        --output out/run-2 --max-retries 3

Every JobConfig key is a flag (`rows_per_shard` -> `--rows-per-shard`); flags override the
YAML. Exit status 1 (with the reason on stderr) when the config, the input or a shard fails.
"""

import sys
from pathlib import Path

# `python jobs/transcribe.py` puts jobs/ on sys.path, not the project root
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from g2p_batch.cli import app  # noqa: E402

if __name__ == "__main__":
    sys.exit(app(["-v", "run", *sys.argv[1:]], prog_name="jobs/transcribe.py"))
