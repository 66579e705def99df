"""The actors' half of the TVM engine: unpack the shipped artifact set once per node, load it.

Named by `EngineSpec.loader`; the driver's half is `compile.prepare`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from ..decode.engine import EngineSpec
from .engine import TVMEngine, load_engine
from .manifest import unpack

__all__ = ["load_tvm_engine", "unpack_cached"]


def load_tvm_engine(spec: EngineSpec) -> TVMEngine:
    device = "cuda" if spec.target == "cuda" else "cpu"
    return load_engine(unpack_cached(spec.blob), device=device, threads=spec.threads)


def unpack_cached(blob: bytes, root: str | None = None) -> Path:
    """Unpack once per node: actors on one node (and their restarts) share a directory named by
    the content hash. Unpacked beside it and renamed, so no actor sees a half-written copy."""
    base = Path(root or tempfile.gettempdir()) / "g2p-batch-artifacts"
    final = base / hashlib.sha256(blob).hexdigest()[:16]
    if not final.exists():
        tmp = base / f".{final.name}.tmp-{uuid.uuid4().hex}"
        unpack(blob, tmp)
        try:
            os.rename(tmp, final)
        except OSError:                 # another actor on this node got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return final
