"""Checkpoint -> compiled artifact set, cached: `<root>/<checkpoint>/<target>-out<T>/`.

A set is reused when its manifest matches the request; missing buckets are compiled and added.
The compiled modules take the weights as arguments, so a checkpoint retrained under the same
name only gets a params file of its own beside the old one. Params files are named by the
weights they hold and never rewritten, so two jobs whose checkpoints share a name can share a
set: each packs its own weights (`runtime.manifest.pack`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from .. import storage
from ..decode.engine import DEFAULT_BATCH_SIZES, Bucket, default_input_lengths
from ..errors import ArtifactError, ConfigError
from ..model import checkpoint as ckpt
from ..model.languages import model_languages
from ..model.params import build_params
from ..model.shapes import PRECISIONS, T5Shape
from ..runtime import targets
from ..runtime.manifest import FORMAT, params_file
from ..settings import check_choice, check_int, int_list, setting

__all__ = ["CompileConfig", "default_root", "ensure_artifacts", "kernel_source"]

log = logging.getLogger("g2p_batch.compile")

# the modules that decide what a compiled bucket computes and how fast: a change in them that
# keeps FORMAT (a new schedule, say) leaves cached sets correct but possibly slower
_KERNEL_SOURCES = [Path(__file__).parent / n for n in
                   ("kernels.py", "amx.py", "cuda_rules.py", "relax_model.py", "builder.py", "lowering.py")] + \
                  [Path(__file__).parents[1] / "model" / "shapes.py", Path(__file__).parents[1] / "runtime" / "targets.py"]


def default_root() -> str:
    """Where artifact sets live unless told: `$G2P_BATCH_CACHE`, else the user's cache folder
    (`$XDG_CACHE_HOME` or `~/.cache`), so every command finds them from any working directory."""
    root = os.environ.get("G2P_BATCH_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "g2p-batch")
    return str(Path(root).expanduser() / "artifacts")


@dataclass
class CompileConfig:
    """What to compile: `g2p-batch compile`, `compile/build.py` and configs/compile_*.yaml."""

    checkpoint: str = setting("default", help="'default' (embedded), a local HF directory, or a hub id")
    target: str = setting("llvm", help="llvm (this CPU), cuda, cuda:sm_XX, or a JSON target dict")
    precision: str = setting("fp32", help="fp32 (exact), or bf16: dense layers on AMX tiles (CPUs with amx_bf16)")
    batch_sizes: list[int] = setting(help="compiled batch sizes", factory=lambda: list(DEFAULT_BATCH_SIZES))
    max_input_bytes: int = setting(64, help="longest input in ids, '<lang>:' prefix (and EOS, if fed) included")
    input_buckets: list[int] | None = setting(None, help="input lengths to compile (default: 16, 24, 32, 48, ... up to max_input_bytes)")
    max_output_len: int = setting(64, help="decoder steps before a row counts as truncated")
    artifacts_dir: str | None = setting(None, help="root of compiled artifact sets (default: $G2P_BATCH_CACHE/artifacts, else ~/.cache/g2p-batch/artifacts)")

    def __post_init__(self) -> None:
        self.batch_sizes = int_list("batch_sizes", self.batch_sizes)
        if self.input_buckets is not None:
            self.input_buckets = int_list("input_buckets", self.input_buckets)
        for key in ("max_input_bytes", "max_output_len"):
            check_int(key, getattr(self, key), minimum=1)
        check_choice("precision", self.precision, PRECISIONS)
        odd = [b for b in self.batch_sizes if b > 16 and b % 16]
        if self.precision == "bf16" and odd:
            raise ConfigError(f"batch sizes {odd} do not fit bf16 sets, whose AMX tiles take 16 rows: use sizes "
                              "up to 16 or multiples of 16")
        if max(self.input_lengths()) > self.max_input_bytes:
            raise ConfigError(f"input bucket {max(self.input_lengths())} exceeds max_input_bytes "
                              f"{self.max_input_bytes}; raise max_input_bytes or drop the bucket")

    def input_lengths(self) -> list[int]:
        return sorted(set(self.input_buckets or default_input_lengths(self.max_input_bytes)))

    def buckets(self) -> list[Bucket]:
        return [Bucket(b, L) for b in self.batch_sizes for L in self.input_lengths()]


def kernel_source() -> str:
    """A digest of this version's kernel code, stamped on every bucket it compiles."""
    h = hashlib.sha256()
    for f in _KERNEL_SOURCES:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def ensure_artifacts(config: CompileConfig | None = None, progress: bool = True, cp=None, **fields) -> Path:
    """Find or build the artifact set for `config` (or CompileConfig(**fields)); its directory.

    Compiles only the buckets that are missing. Cached artifacts for another architecture,
    target, output length or TVM are an error that names each difference. `cp`: the checkpoint
    already loaded, so its weights are hashed once per job."""
    from .builder import (
        build_bucket,  # the TVM compiler: only when something must be built
    )

    config = config or CompileConfig(**fields)
    target = targets.resolve(config.target, config.precision)
    precision = config.precision
    cp = cp or ckpt.load(config.checkpoint)  # identity only; weights are read if params must be built
    prompt = cp.prompt().to_dict()  # how the checkpoint reads words: recorded, not compiled in
    # one set per output length: the decoder's caches and bias tables are sized by it
    out = Path(config.artifacts_dir or default_root()) / cp.name / (
        f"{targets.short_name(target)}{'-bf16' if precision == 'bf16' else ''}-out{config.max_output_len}")
    manifest_path = out / "manifest.json"
    T = config.max_output_len
    identity = cp.identity()
    shape = T5Shape.from_hf_config(cp.config)
    if precision == "bf16" and not (shape.gated and shape.act == "gelu_new"):  # before anything is written
        raise ConfigError(f"precision bf16 has kernels for gated-gelu feed-forwards (every CharsiuG2P checkpoint), "
                          f"not {'gated-' if shape.gated else ''}{shape.act}; use --precision fp32")
    source = kernel_source()
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        diffs = _differences(manifest, identity, target, T, precision)
        if diffs:
            raise ArtifactError(f"artifacts in {out} do not match the request:\n  - " + "\n  - ".join(diffs)
                                + f"\nremove {out} to rebuild, or pass another --artifacts-dir")
        declared = dict(prompt=prompt, trained_languages=cp.trained_languages, input_rules=cp.input_rules)
        if any(manifest.get(k) != v for k, v in declared.items()):
            manifest.update(declared)  # the checkpoint's metadata changed
            _write_json(manifest_path, manifest)
        if manifest["checkpoint"]["weights_sha256"] != identity["weights_sha256"]:
            log.warning("%s has other weights (sha256 %s..., artifacts had %s...): packing its params in %s",
                        cp.name, identity["weights_sha256"][:12], manifest["checkpoint"]["weights_sha256"][:12], out)
            manifest["checkpoint"] = identity
            manifest["params"] = _write_params(cp, shape, target, out, precision)
            _write_json(manifest_path, manifest)
        _warn_if_stale(manifest, out, source)
        # a bucket built before beam search existed lacks step_logits: built again
        have = {Bucket(b["batch"], b["input_len"]) for b in manifest["buckets"]
                if "step_logits" in b.get("functions", ())}
        todo = [b for b in config.buckets() if b not in have]
        if not todo:
            return out
    else:
        import tvm

        out.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT, "checkpoint": identity, "tvm_version": tvm.__version__, "target": target,
            "kernel_target": targets.kind(target), "precision": precision, "shape": shape.to_dict(), "max_output_len": T,
            "max_input_bytes": config.max_input_bytes, "prompt": prompt,
            "trained_languages": cp.trained_languages, "input_rules": cp.input_rules,
            "tokenizer": {"kind": "byt5-bytes", "offset": 3, "pad": 0, "eos": 1, "unk": 2},
            "params": _write_params(cp, shape, target, out, precision), "languages": model_languages(), "buckets": [],
        }
        todo = config.buckets()
    workers = min(len(todo), os.cpu_count() or 1)
    log.info("compiling %d bucket(s) of %s for %s into %s (%d at once)", len(todo), cp.name, target, out, workers)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"compile {cp.name} ({targets.short_name(target)})", unit="bucket",
               disable=not progress)

    def build(b: Bucket) -> tuple[Bucket, dict, float]:
        t0 = time.perf_counter()
        rel = f"b{b.batch}_in{b.input_len}_out{T}/model.so"
        built = build_bucket(shape, b.batch, b.input_len, T, target, out / rel, precision=precision)
        return b, {"path": rel, **built}, time.perf_counter() - t0

    # one thread per core: a bucket's compile is mostly TVM and LLVM code outside Python's lock
    failed = None
    with ThreadPoolExecutor(workers) as pool:
        try:
            for done in as_completed([pool.submit(build, b) for b in todo]):
                if done.exception() is not None:  # the others still finish and are recorded
                    failed = failed or done.exception()
                    continue
                b, entry, seconds = done.result()
                manifest["buckets"] = [e for e in manifest["buckets"]
                                       if (e["batch"], e["input_len"]) != (b.batch, b.input_len)]
                manifest["buckets"].append({"batch": b.batch, "input_len": b.input_len, **entry,
                                            "sha256": storage.sha256_of(out / entry["path"]),
                                            "compile_seconds": round(seconds, 2), "kernel_source": source})
                manifest["buckets"].sort(key=lambda e: (e["batch"], e["input_len"]))
                manifest["max_input_bytes"] = max(manifest["max_input_bytes"], b.input_len)
                _write_json(manifest_path, manifest)  # after each bucket: an interrupted build keeps its work
                bar.update(1)
        except BaseException:  # Ctrl-C: buckets not started are dropped; running ones finish
            pool.shutdown(cancel_futures=True)
            raise
    if failed is not None:
        raise failed
    bar.close()
    return out


def _differences(manifest: dict, identity: dict, target: dict, max_output_len: int, precision: str) -> list[str]:
    import tvm

    diffs = [f"{key}: requested {want!r}, artifacts have {have!r}" for key, want, have in (
        ("checkpoint config", identity["config"], manifest["checkpoint"]["config"]),
        ("target", target, manifest["target"]),
        ("precision", precision, manifest.get("precision", "fp32")),
        ("max_output_len", max_output_len, manifest["max_output_len"]),
        ("format", FORMAT, manifest.get("format")),
        ("tvm version", tvm.__version__, manifest.get("tvm_version")),
    ) if want != have]
    return diffs


def _warn_if_stale(manifest: dict, out: Path, source: str) -> None:
    """Buckets compiled by other kernel code still decode exactly (FORMAT guards the layouts)
    but may run slower than a rebuild, and a benchmark on them would time old kernels."""
    stale = [b for b in manifest["buckets"] if b.get("kernel_source") != source]
    if stale:
        log.warning("%d of %d buckets in %s were compiled by other g2p-batch kernel code; they decode the "
                    "same but may be slower than a rebuild: remove %s to rebuild them",
                    len(stale), len(manifest["buckets"]), out, out)


def _write_params(cp, shape, target: dict, out: Path, precision: str) -> dict:
    """Fused and laid-out weights, named by the checkpoint's weights (an existing file is reused);
    a bf16 set's folder holds bf16 dense weights."""
    from safetensors.numpy import save

    path = out / params_file(cp.sha256)
    if not path.exists():
        storage.write_file(path, save(build_params(cp.weights, shape, packed=targets.kind(target) == "cpu",
                                                   precision=precision)))
    return {"path": path.name, "sha256": storage.sha256_of(path)}


def _write_json(path: Path, obj) -> None:
    storage.write_file(path, json.dumps(obj, indent=2, sort_keys=True).encode())  # two jobs may write one
