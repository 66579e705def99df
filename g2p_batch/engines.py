"""The seam between the job and whatever decodes: prepared once on the driver, built in actors.

Two halves, both named by import path so a test (or a new runtime) plugs in without touching
the driver:
- a *preparer* `(config, target) -> PreparedEngine` runs once per job and target on the
  driver: it compiles or finds the artifacts and packs them into bytes, which the driver puts
  in the object store once, so remote nodes need no shared filesystem;
- a *loader* `(spec) -> Engine` runs in each actor's constructor, with the bytes resolved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .decoding import Engine
from .tokenizer import PromptFormat

__all__ = ["EngineSpec", "PreparedEngine", "build_engine", "import_object", "load_tvm_engine",
           "prepare_tvm_engine"]


@dataclass(frozen=True)
class EngineSpec:
    """What an actor needs to build its engine. Picklable; `blob` is the packed artifacts
    (`artifacts.pack`), which travel to actors as an object-store reference, not in the spec."""

    target: str                                    # "llvm" | "cuda"
    loader: str = "g2p_batch.engines:load_tvm_engine"
    blob: Any = None                               # packed artifacts; the loader knows the format
    artifact_dir: str | None = None                # used when blob is None (shared filesystem)
    threads: int | None = None
    options: dict = field(default_factory=dict)    # loader-specific settings

    def with_(self, **changes) -> "EngineSpec":
        return dataclasses.replace(self, **changes)


@dataclass
class PreparedEngine:
    spec: EngineSpec
    languages: list[str] | None      # the model's codes, when its artifacts list them
    checkpoint_id: str
    artifacts_hash: str | None       # sha256 of the artifact manifest: which compile ran
    prompt: PromptFormat = field(default_factory=PromptFormat)  # how words become input ids
    trained_languages: list[str] | None = None  # None: unknown (every known language trusted)


def build_engine(spec: EngineSpec) -> Engine:
    """Called once per actor, in its constructor."""
    return import_object(spec.loader)(spec)


def import_object(path: str) -> Callable:
    """`package.module:function` -> the function; errors say what to fix."""
    module, sep, name = path.partition(":")
    if not sep:
        raise ValueError(f"{path!r} is not an import path 'module:function'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {path!r} ({exc}); check the module is importable on "
                         "this node and defines that function") from exc


def prepare_tvm_engine(config, target: str) -> PreparedEngine:
    """Compile (or find in the cache) the job's buckets for `target` and pack them."""
    from . import artifacts, checkpoint

    cp = checkpoint.load(config.checkpoint)
    directory = artifacts.ensure_artifacts(
        checkpoint=config.checkpoint, target=target, batch_sizes=list(config.batch_sizes),
        input_buckets=list(config.input_buckets), max_input_bytes=max(config.input_buckets),
        max_output_len=config.max_output_len, root=config.artifacts_dir, progress=config.progress, cp=cp)
    blob, manifest = artifacts.pack(directory, cp.sha256)
    return PreparedEngine(
        spec=EngineSpec(target=target, blob=blob),
        languages=manifest.get("languages") or None,
        checkpoint_id=manifest["checkpoint"]["weights_sha256"], artifacts_hash=artifacts.manifest_hash(manifest),
        prompt=cp.prompt(config.space_after_colon, config.input_eos), trained_languages=cp.trained_languages)


def load_tvm_engine(spec: EngineSpec) -> Engine:
    from . import runtime

    directory = unpack_cached(spec.blob) if spec.blob is not None else spec.artifact_dir
    if directory is None:
        raise ValueError("EngineSpec has neither artifact bytes nor an artifact_dir")
    device = "cuda" if spec.target == "cuda" else "cpu"
    return runtime.load_engine(directory, device=device, threads=spec.threads)


def unpack_cached(blob: bytes, root: str | None = None) -> Path:
    """Unpack once per node: actors on one node (and their restarts) share a directory named by
    the content hash. Unpacked beside it and renamed, so no actor sees a half-written copy."""
    from . import artifacts

    base = Path(root or tempfile.gettempdir()) / "g2p-batch-artifacts"
    final = base / hashlib.sha256(blob).hexdigest()[:16]
    if not final.exists():
        tmp = base / f".{final.name}.tmp-{uuid.uuid4().hex}"
        artifacts.unpack(blob, tmp)
        try:
            os.rename(tmp, final)
        except OSError:                 # another actor on this node got there first
            shutil.rmtree(tmp, ignore_errors=True)
    return final


