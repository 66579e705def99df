"""Checkpoint -> one shared library per bucket, in named, logged phases."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from pathlib import Path

from .. import storage
from ..model.shapes import T5Shape, step_function_name, step_windows
from ..runtime import targets
from ..runtime.cuda import fatbin_contents
from ..runtime.targets import CUDA_ARCHS, CUDA_PTX
from . import kernels as K
from . import lowering
from .relax_model import build_module

__all__ = ["build_bucket", "build_fatbin", "compile_bucket", "cuda_source"]

log = logging.getLogger("g2p_batch.compile")
# Relax's BlockBuilder keeps one process-wide stack, so models are built one at a time; TVM's
# lowering and LLVM's code generation, most of a bucket's compile time, run on many threads at once
_MODEL_LOCK = threading.Lock()


def compile_bucket(shape: T5Shape, B: int, L: int, T: int, target: dict, dump_ir: Path | None = None,
                   precision: str = "fp32"):
    """One bucket's model, scheduled (hand schedules, plus dlight's rules on GPUs) and compiled;
    returns the executable, not yet exported."""
    import tvm
    from tvm.s_tir import dlight as dl

    tkind = targets.kind(target)
    t0 = time.perf_counter()
    with _MODEL_LOCK:
        mod, _ = build_module(shape, B, L, T, K.KernelTarget(tkind, K.dense_tile(target), precision))
    log.info("b%d_in%d_out%d: model built (%.1fs)", B, L, T, time.perf_counter() - t0)
    tgt = tvm.target.Target(target, host=targets.cpu_target()) if tkind == "gpu" else tvm.target.Target(target)
    if dump_ir:
        dump_ir.mkdir(parents=True, exist_ok=True)
        (dump_ir / f"b{B}_in{L}_out{T}.model.py").write_text(mod.script())
    if tkind == "gpu":
        from . import cuda_rules
        with _MODEL_LOCK, tgt:
            mod = dl.ApplyDefaultSchedule(*cuda_rules.rules())(mod)
        ex = tvm.compile(mod, tgt)
    else:
        ex = tvm.compile(mod, tgt, tir_pipeline=lowering.register())
    log.info("b%d_in%d_out%d: compiled (%.1fs)", B, L, T, time.perf_counter() - t0)
    return ex


def build_bucket(shape: T5Shape, B: int, L: int, T: int, target: dict, out_path: Path,
                 dump_ir: Path | None = None, precision: str = "fp32") -> dict:
    """Build and export one bucket; returns its manifest entry's fields: the VM functions it
    holds, and on CUDA the device code built beside it (`kernels.fatbin`, where nvcc is)."""
    t0 = time.perf_counter()
    ex = compile_bucket(shape, B, L, T, target, dump_ir, precision)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(f".{uuid.uuid4().hex}.so.tmp")  # two jobs may build one bucket;
    ex.export_library(str(tmp))                                  # the linker writes a path, not bytes
    tmp.replace(out_path)
    log.info("b%d_in%d_out%d: exported %s (%.1fs)", B, L, T, out_path.name, time.perf_counter() - t0)
    entry = {"functions": ["encode"] + [step_function_name(T, w) for w in step_windows(T)] + ["step_logits"]}
    if targets.kind(target) == "gpu":
        device = build_fatbin(cuda_source(ex.mod), out_path.parent / "kernels.fatbin")
        if device is None:
            log.warning("nvcc not found: %s holds CUDA C only, and GPU nodes will need nvcc to load it", out_path)
        else:
            entry["device_code"] = {"path": str(Path(out_path.parent.name) / "kernels.fatbin"), **device,
                                    "sha256": storage.sha256_of(out_path.parent / "kernels.fatbin")}
    return entry


def cuda_source(mod) -> str:
    """The CUDA C of a built module (it is imported by the host module)."""
    for sub in mod.imports:
        if sub.kind == "cuda":
            return sub.inspect_source()
        found = cuda_source(sub)
        if found:
            return found
    return ""


def build_fatbin(code: str, out: Path) -> dict | None:
    """Device code for `targets.CUDA_ARCHS` and PTX for newer GPUs, from the module's CUDA C,
    where nvcc is installed (None where it is not: nodes then need nvcc at load)."""
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    src = out.with_suffix(".cu")
    src.write_text(code)
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in CUDA_ARCHS]
    gencode.append(f"-gencode=arch={CUDA_PTX},code={CUDA_PTX}")
    proc = subprocess.run([nvcc, "--fatbin", "-O3", *gencode, "-o", str(out), str(src)], capture_output=True, text=True)
    src.unlink()
    if proc.returncode:
        raise RuntimeError(f"nvcc failed on the CUDA kernels: {proc.stderr[-2000:]}")
    have = fatbin_contents(out.read_bytes())
    return {"source_sha256": hashlib.sha256(code.encode()).hexdigest(),
            "archs": [f"sm_{sm}" for kind, sm in have if kind == "elf"],
            "ptx": [f"compute_{sm}" for kind, sm in have if kind == "ptx"]}

