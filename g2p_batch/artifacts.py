"""Compiled artifact sets: where they live, what their manifest promises, how they travel.

Layout: `<root>/<checkpoint>/<target>/manifest.json`, `params-<weights sha256[:16]>.safetensors`
(weights already fused and packed for the target) and `b{B}_in{L}_out{T}/model.so` per bucket.
A set is reused only when its manifest matches the request; missing buckets are compiled and
added. The compiled modules take the weights as arguments, so a checkpoint retrained under the
same name only gets a params file of its own beside the old one. Params files are named by the
weights they hold and never rewritten, so two jobs whose checkpoints share a name can share a
set: each packs its own weights (`pack`), whichever weights the manifest names at that moment.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import targets as targets_mod
from .decoding import DEFAULT_BATCH_SIZES, Bucket

log = logging.getLogger("g2p_batch.artifacts")
FORMAT = 3  # 2: packed-token encoder, cross K/V made by encode (no prefill function);
# 3: on CPU, params interleave the gated feed-forward's halves (loader.interleave_gated) and the
# decoder's key cache comes in blocks (shapes.key_cache_shape); GPU sets are the same as in 2
_LANG_LIST = Path(__file__).parent / "data" / "lang_list.txt"


def format_ok(manifest: dict) -> bool:
    """Whether this version can run a set: its own format, or a format-2 GPU set (3 changed
    only the CPU's layouts; GPU tooling benches sets built by older revisions)."""
    fmt = manifest.get("format")
    return fmt == FORMAT or (fmt == 2 and manifest.get("kernel_target") == "gpu")


# the modules that decide what a compiled bucket computes and how fast: a change in them that
# keeps FORMAT (a new schedule, say) leaves cached sets correct but stale
_KERNEL_SOURCES = ("kernels.py", "cuda_rules.py", "model.py", "compiler.py", "lowering.py", "shapes.py", "targets.py")


def kernel_source() -> str:
    """A digest of this version's kernel code, stamped on every bucket it compiles."""
    h = hashlib.sha256()
    for name in _KERNEL_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def _warn_if_stale(manifest: dict, out: Path, source: str) -> None:
    """Buckets compiled by other kernel code than `source` still decode exactly (FORMAT guards
    the layouts), but may run slower than a rebuild: the bench once timed session 9's kernels
    this way."""
    stale = [b for b in manifest["buckets"] if b.get("kernel_source") != source]
    if stale:
        log.warning("%d of %d buckets in %s were compiled by other g2p-batch kernel code; they decode the "
                    "same but may be slower than a rebuild: remove %s to rebuild them",
                    len(stale), len(manifest["buckets"]), out, out)


class ArtifactMismatch(ValueError):
    """Cached artifacts that do not match the request; the message lists each difference."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_buckets(max_input_bytes: int) -> list[int]:
    """16, 24, 32, 48, 64, 96, ... up to the limit (always included): steps of at most 1.5x, so
    a padded encoder batch does at most ~1.5x the work of its longest row (plain powers of two
    left the mean 18-byte input in a 32 bucket)."""
    out, n = [], 16
    while n < max_input_bytes:
        out.append(n)
        n = n * 3 // 2 if (n & (n - 1)) == 0 else n * 4 // 3
    return out + [max_input_bytes]


@dataclass
class CompileRequest:
    checkpoint: str = "default"
    target: str = "llvm"
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    max_input_bytes: int = 64
    input_buckets: list[int] | None = None  # default: default_buckets(max_input_bytes)
    max_output_len: int = 64
    root: str | None = None                 # None: default_root()

    def buckets(self) -> list[Bucket]:
        lens = sorted(set(self.input_buckets or default_buckets(self.max_input_bytes)))
        if max(lens) > self.max_input_bytes:
            raise ValueError(f"input bucket {max(lens)} exceeds max_input_bytes {self.max_input_bytes}")
        return [Bucket(b, L) for b in sorted(set(self.batch_sizes)) for L in lens]


def default_root() -> str:
    """Where artifact sets live unless told: `$G2P_BATCH_CACHE`, else the user's cache folder
    (`$XDG_CACHE_HOME` or `~/.cache`), so every command finds them from any working directory."""
    import os
    root = os.environ.get("G2P_BATCH_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "g2p-batch")
    return str(Path(root).expanduser() / "artifacts")


def manifest_hash(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / "manifest.json").read_text())


def _languages() -> list[str]:
    return _LANG_LIST.read_text().split() if _LANG_LIST.exists() else []


def _expect(manifest: dict, identity: dict, target: dict, req: CompileRequest) -> list[str]:
    diffs = []
    for key, want, have in (
        ("checkpoint config", identity["config"], manifest["checkpoint"]["config"]),
        ("target", target, manifest["target"]),
        ("max_output_len", req.max_output_len, manifest["max_output_len"]),
        ("format", FORMAT, FORMAT if format_ok(manifest) else manifest.get("format")),
    ):
        if want != have:
            diffs.append(f"{key}: requested {want!r}, artifacts have {have!r}")
    import tvm
    if manifest.get("tvm_version") != tvm.__version__:
        diffs.append(f"tvm version: running {tvm.__version__}, artifacts built with {manifest.get('tvm_version')}")
    return diffs


def ensure_artifacts(req: CompileRequest | None = None, progress: bool = True, cp=None, **fields) -> Path:
    """Find or build the artifact set for `req`; returns its directory.

    Compiles only the buckets that are missing. New weights for the same architecture (a
    retrained checkpoint under the same name) get a params file of their own and keep the
    compiled buckets, which take the weights as arguments. Cached artifacts for another
    architecture, target, output length or TVM are an error that names each difference (delete
    the folder or pass another --artifacts-dir). `cp`: `req.checkpoint` already loaded, so its
    weights are hashed once per job."""
    from . import checkpoint as ckpt
    from .compiler import build_bucket
    from .shapes import T5Shape

    req = req or CompileRequest(**fields)
    target = targets_mod.resolve(req.target)
    cp = cp or ckpt.load(req.checkpoint)  # identity only; weights are read if params must be built
    prompt = cp.prompt().to_dict()  # how the checkpoint reads words: recorded, not compiled in
    out = Path(req.root or default_root()) / cp.name / targets_mod.short_name(target)
    manifest_path = out / "manifest.json"
    buckets = req.buckets()
    T = req.max_output_len
    identity = cp.identity()
    shape = T5Shape.from_hf_config(cp.config)
    source = kernel_source()
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        diffs = _expect(manifest, identity, target, req)
        if diffs:
            raise ArtifactMismatch(f"artifacts in {out} do not match the request:\n  - " + "\n  - ".join(diffs)
                                   + f"\nremove {out} to rebuild, or pass another artifacts directory")
        if (manifest.get("prompt"), manifest.get("trained_languages")) != (prompt, cp.trained_languages):
            manifest.update(prompt=prompt, trained_languages=cp.trained_languages)  # its metadata changed
            _write_json(manifest_path, manifest)
        if manifest["checkpoint"]["weights_sha256"] != identity["weights_sha256"]:
            log.warning("%s has other weights (sha256 %s..., artifacts had %s...): packing its params in %s",
                        cp.name, identity["weights_sha256"][:12], manifest["checkpoint"]["weights_sha256"][:12], out)
            manifest["checkpoint"] = identity
            manifest["params"] = _write_params(cp, shape, target, out)
            _write_json(manifest_path, manifest)
        _warn_if_stale(manifest, out, source)
        have = {Bucket(b["batch"], b["input_len"]) for b in manifest["buckets"]}
        todo = [b for b in buckets if b not in have]
        if not todo:
            return out
    else:
        manifest = None
        todo = buckets

    out.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        import tvm
        manifest = {
            "format": FORMAT, "checkpoint": identity, "tvm_version": tvm.__version__, "target": target,
            "kernel_target": targets_mod.kind(target), "shape": shape.to_dict(), "max_output_len": T,
            "max_input_bytes": req.max_input_bytes, "prompt": prompt,
            "trained_languages": cp.trained_languages,
            "tokenizer": {"kind": "byt5-bytes", "offset": 3, "pad": 0, "eos": 1, "unk": 2},
            "params": _write_params(cp, shape, target, out),
            "languages": _languages(), "buckets": [],
        }
    log.info("compiling %d bucket(s) of %s for %s into %s", len(todo), cp.name, target, out)
    bar = _bar(len(todo), f"compile {cp.name} ({targets_mod.short_name(target)})", progress)
    for b in todo:
        rel = f"b{b.batch}_in{b.input_len}_out{T}/model.so"
        t0 = time.perf_counter()
        fns = build_bucket(shape, b.batch, b.input_len, T, target, out / rel)
        manifest["buckets"].append({"batch": b.batch, "input_len": b.input_len, "path": rel,
                                    "sha256": sha256_file(out / rel), "functions": fns,
                                    "compile_seconds": round(time.perf_counter() - t0, 2),
                                    "kernel_source": source})
        manifest["buckets"].sort(key=lambda e: (e["batch"], e["input_len"]))
        manifest["max_input_bytes"] = max(manifest["max_input_bytes"], b.input_len)
        _write_json(manifest_path, manifest)  # after each bucket: an interrupted build keeps its work
        bar.update(1)
    bar.close()
    return out


def params_file(weights_sha256: str) -> str:
    return f"params-{weights_sha256[:16]}.safetensors"


def _write_params(cp, shape, target: dict, out: Path) -> dict:
    """Fused and packed weights, named by the checkpoint's weights (an existing file is reused),
    written aside and renamed: a reader never sees half a file."""
    from safetensors.numpy import save_file
    from .loader import build_params

    path = out / params_file(cp.sha256)
    if not path.exists():
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        save_file(build_params(cp.weights, shape, packed=targets_mod.kind(target) == "cpu"), str(tmp))
        tmp.replace(path)
    return {"path": path.name, "sha256": sha256_file(path)}


def _bar(total, desc, enabled):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="bucket", disable=not enabled)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(f".{uuid.uuid4().hex}.json.tmp")  # two jobs may write one manifest
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


def verify_files(path: Path, manifest: dict, params: bool = True) -> None:
    """Every file the manifest names exists with its recorded sha256."""
    entries = [(manifest["params"]["path"], manifest["params"]["sha256"])] if params else []
    entries += [(b["path"], b["sha256"]) for b in manifest["buckets"]]
    for rel, digest in entries:
        f = path / rel
        if not f.exists():
            raise ArtifactMismatch(f"{f} is listed in the manifest but missing; rebuild the artifacts")
        if sha256_file(f) != digest:
            raise ArtifactMismatch(f"{f} does not match its manifest sha256; rebuild the artifacts")


def pack(path: str | Path, weights_sha256: str | None = None) -> tuple[bytes, dict]:
    """The artifact set as one tar blob, to ship through Ray's object store to nodes with no
    shared filesystem, and the manifest inside it. Only the files the manifest names travel,
    each checked against its recorded sha256. With `weights_sha256` the blob carries those
    weights' params file even if the folder's manifest names another's now (a job with a
    same-named checkpoint packed its own since); the manifest inside says so."""
    path = Path(path)
    manifest = read_manifest(path)
    unrecorded = None  # this job's params file when the manifest names another's: no sha256 yet
    if weights_sha256 and manifest["checkpoint"]["weights_sha256"] != weights_sha256:
        name = params_file(weights_sha256)
        if not (path / name).exists():
            raise ArtifactMismatch(f"{path} holds no params for weights {weights_sha256[:12]}...; "
                                   f"run the compile step for this checkpoint first")
        manifest["checkpoint"] = {**manifest["checkpoint"], "weights_sha256": weights_sha256}
        manifest["params"] = unrecorded = {"path": name}  # hashed below, as it is packed
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in [manifest["params"]] + manifest["buckets"]:
            data = (path / entry["path"]).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if entry is unrecorded:  # named by its weights and never rewritten: nothing to check
                entry["sha256"] = digest
            if digest != entry["sha256"]:
                raise ArtifactMismatch(f"{path / entry['path']} does not match its manifest sha256; "
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
