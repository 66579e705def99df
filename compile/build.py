"""Checkpoint -> TVM artifacts from a compile config: `g2p-batch compile --config` itself.

    python compile/build.py configs/compile_cpu.yaml [--checkpoint DIR_OR_HUB_ID] [--target cuda]

Every CompileConfig key is a flag; flags override the YAML, and unknown keys are an error that
names them. The artifact set lands in `<artifacts_dir>/<checkpoint>/<target>/` with its
manifest.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from g2p_batch.cli import app  # noqa: E402

if __name__ == "__main__":
    config, *flags = sys.argv[1:] or ["--help"]
    args = ["compile", "--config", config, *flags] if not config.startswith("-") else ["compile", config, *flags]
    sys.exit(app(args, prog_name="compile/build.py"))
