"""An artifact set's manifest: the format the compiler writes and the runtime reads, and how a
set travels (one tar blob of exactly the files its manifest names, each checked).

A set is a folder: `manifest.json`, `params-<weights sha256[:16]>.safetensors` (the weights,
already fused and laid out for the target) and `b{B}_in{L}_out{T}/model.so` per bucket, with
`kernels.fatbin` beside it in CUDA sets (device code for `targets.CUDA_ARCHS` and PTX).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from .. import storage
from ..errors import ArtifactError

__all__ = ["FORMAT", "files", "manifest_hash", "pack", "params_file", "read_manifest", "unpack", "verify_files"]

# The layout of params and module arguments; a set of another format cannot run here. 3: on
# CPU, the gated feed-forward's halves interleave (model.params.interleave_gated) and the key
# cache comes in blocks (model.shapes.key_cache_shape).
FORMAT = 3


def read_manifest(path: str | Path) -> dict:
    f = Path(path) / "manifest.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{f} is missing or unreadable ({exc}); remove {path} and compile again") from exc


def manifest_hash(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def params_file(weights_sha256: str) -> str:
    return f"params-{weights_sha256[:16]}.safetensors"


def files(manifest: dict) -> list[dict]:
    """Every file a set's manifest names ({"path", "sha256"}): params, modules, device code."""
    return [manifest["params"]] + [f for b in manifest["buckets"] for f in (b, b.get("device_code")) if f]


def verify_files(path: Path, manifest: dict, params: bool = True) -> None:
    """Every file the manifest names exists with its recorded sha256 (the params file too,
    unless the caller brings its own weights)."""
    for entry in files(manifest)[0 if params else 1:]:
        f = Path(path) / entry["path"]
        digest = storage.sha256_of(f)
        if digest is None:
            raise ArtifactError(f"{f} is listed in the manifest but missing; remove {path} to rebuild the artifacts")
        if digest != entry["sha256"]:
            raise ArtifactError(f"{f} does not match its manifest sha256; remove {path} to rebuild the artifacts")


def pack(path: str | Path, weights_sha256: str | None = None) -> tuple[bytes, dict]:
    """The set as one tar blob, to ship through Ray's object store to nodes with no shared
    filesystem, and the manifest inside it. Only the files the manifest names travel, each
    checked against its recorded sha256. With `weights_sha256` the blob carries those weights'
    params file even if the folder's manifest names another's now (a job with a same-named
    checkpoint packed its own since); the manifest inside says so."""
    path = Path(path)
    manifest = read_manifest(path)
    unrecorded = None  # this job's params file when the manifest names another's: no sha256 yet
    if weights_sha256 and manifest["checkpoint"]["weights_sha256"] != weights_sha256:
        name = params_file(weights_sha256)
        if not (path / name).exists():
            raise ArtifactError(f"{path} holds no params for weights {weights_sha256[:12]}...; "
                                "run the compile step for this checkpoint first")
        manifest["checkpoint"] = {**manifest["checkpoint"], "weights_sha256": weights_sha256}
        manifest["params"] = unrecorded = {"path": name}  # hashed below, as it is packed
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in files(manifest):
            data = (path / entry["path"]).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if entry is unrecorded:  # named by its weights and never rewritten: nothing to check
                entry["sha256"] = digest
            if digest != entry["sha256"]:
                raise ArtifactError(f"{path / entry['path']} does not match its manifest sha256; "
                                    f"remove {path} to rebuild the artifacts")
            _add(tar, entry["path"], data)
        _add(tar, "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
    return buf.getvalue(), manifest


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo("./" + name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def unpack(blob: bytes, dest: str | Path) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        tar.extractall(dest, filter="data")
    return dest
