"""The driver's half of the TVM engine: compile (or find) a job's artifact set and pack it.

A job names its preparer by import path (`JobConfig.engine`); this is the default. It runs once
per job and target, and the driver ships the packed bytes to every actor through Ray's object
store, so nodes need no shared filesystem. The actors' half is `runtime.loader`.
"""

from __future__ import annotations

from ..decode.engine import EngineSpec, PreparedEngine
from ..model import checkpoint
from ..runtime.manifest import manifest_hash, pack
from .artifacts import ensure_artifacts

__all__ = ["prepare_tvm_engine"]


def prepare_tvm_engine(config, target: str) -> PreparedEngine:
    """The job's buckets for `target` (a JobConfig's), compiled where missing, packed. The
    precision applies to CPU actors; GPU actors of a mixed job run fp32."""
    cp = checkpoint.load(config.checkpoint)
    directory = ensure_artifacts(
        checkpoint=config.checkpoint, target=target, precision=config.precision if target == "llvm" else "fp32",
        batch_sizes=list(config.batch_sizes),
        input_buckets=list(config.input_buckets), max_input_bytes=max(config.input_buckets),
        max_output_len=config.max_output_len, artifacts_dir=config.artifacts_dir, progress=config.progress, cp=cp)
    blob, manifest = pack(directory, cp.sha256)
    return PreparedEngine(
        spec=EngineSpec(target=target, blob=blob), languages=manifest.get("languages") or None,
        checkpoint_id=manifest["checkpoint"]["weights_sha256"], artifacts_hash=manifest_hash(manifest),
        prompt=cp.prompt(config.space_after_colon, config.input_eos), trained_languages=cp.trained_languages,
        input_rules=cp.input_rules)
