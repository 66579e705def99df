"""Checkpoint -> TVM artifacts from a compile config, the scripted twin of `g2p-batch compile`.

    python compile/build.py configs/compile_cpu.yaml [--checkpoint DIR_OR_HUB_ID]

Unknown keys are an error that names them; the artifact set lands in
`<artifacts_dir>/<checkpoint>/<target>/` with its manifest.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from g2p_batch.artifacts import CompileRequest, ensure_artifacts  # noqa: E402


def request_from_yaml(path: Path, **overrides) -> CompileRequest:
    raw = yaml.safe_load(path.read_text()) or {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name for f in dataclasses.fields(CompileRequest)} - {"root"} | {"artifacts_dir"}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise SystemExit(f"{path}: unknown key(s) {unknown}; known: {sorted(fields)}")
    if "artifacts_dir" in raw:
        raw["root"] = raw.pop("artifacts_dir")
    return CompileRequest(**raw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--checkpoint")
    args = ap.parse_args(argv)
    print(ensure_artifacts(request_from_yaml(args.config, checkpoint=args.checkpoint)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
