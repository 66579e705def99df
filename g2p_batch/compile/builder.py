"""Checkpoint -> one shared library per bucket, in named, logged phases."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from ..model.shapes import T5Shape, step_function_name, step_windows
from ..runtime import targets
from . import kernels as K
from . import lowering
from .relax_model import build_module

__all__ = ["build_bucket", "compile_bucket"]

log = logging.getLogger("g2p_batch.compile")


def compile_bucket(shape: T5Shape, B: int, L: int, T: int, target: dict, dump_ir: Path | None = None):
    """One bucket's model, scheduled (hand schedules, plus dlight's rules on GPUs) and compiled;
    returns the executable, not yet exported."""
    import tvm
    from tvm.s_tir import dlight as dl

    tkind = targets.kind(target)
    t0 = time.perf_counter()
    mod, _ = build_module(shape, B, L, T, K.KernelTarget(tkind, K.dense_tile(target)))
    log.info("b%d_in%d_out%d: model built (%.1fs)", B, L, T, time.perf_counter() - t0)
    tgt = tvm.target.Target(target, host=targets.cpu_target()) if tkind == "gpu" else tvm.target.Target(target)
    if dump_ir:
        dump_ir.mkdir(parents=True, exist_ok=True)
        (dump_ir / f"b{B}_in{L}_out{T}.model.py").write_text(mod.script())
    if tkind == "gpu":
        from . import cuda_rules
        with tgt:
            mod = dl.ApplyDefaultSchedule(*cuda_rules.rules())(mod)
        ex = tvm.compile(mod, tgt)
    else:
        ex = tvm.compile(mod, tgt, tir_pipeline=lowering.register())
    log.info("b%d_in%d_out%d: compiled (%.1fs)", B, L, T, time.perf_counter() - t0)
    return ex


def build_bucket(shape: T5Shape, B: int, L: int, T: int, target: dict, out_path: Path, dump_ir: Path | None = None):
    """Build and export one bucket; returns the list of VM functions it holds."""
    t0 = time.perf_counter()
    ex = compile_bucket(shape, B, L, T, target, dump_ir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(f".{uuid.uuid4().hex}.so.tmp")  # two jobs may build one bucket;
    ex.export_library(str(tmp))                                  # the linker writes a path, not bytes
    tmp.replace(out_path)
    log.info("b%d_in%d_out%d: exported %s (%.1fs)", B, L, T, out_path.name, time.perf_counter() - t0)
    return ["encode"] + [step_function_name(T, w) for w in step_windows(T)]
