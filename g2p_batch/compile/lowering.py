"""The CPU build's TIR pipeline: TVM's own, with each task's small scratch buffers on the stack.

TVM lowers every "local" buffer on CPU, and every other one of 1,024 bytes or more, to a
`TVMBackendAllocWorkspace` / `TVMBackendFreeWorkspace` pair around its scope. Our dense tiles keep
an 8x32 accumulator (exactly 1,024 bytes) per task, so each call paid one pair per (row tile,
column block): 288 pairs for a 64-row qkv layer, 5,472 for the encoder's, each a thread-local pool
lookup, and LLVM had to store each tile and load it back for the write-back. The
`disable_lower_builtin` annotation keeps an allocation as a stack `alloca`; this pass sets it on
every buffer of a known size up to `STACK_BYTES`, after TVM's pipeline and before its host
finalisation (where the workspace calls are made); PERF.md, "Kernels".
"""

from __future__ import annotations

import tvm
from tvm import tirx

__all__ = ["CPU_PIPELINE", "STACK_BYTES", "register", "stack_small_buffers"]

CPU_PIPELINE = "g2p_cpu"
STACK_BYTES = 16 * 1024  # per buffer; a worker thread's stack is megabytes, a task holds a few
_KEY = "disable_lower_builtin"


def _size_bytes(buf) -> int | None:
    n = 1
    for extent in buf.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        n *= int(extent)
    return n * buf.dtype.bits * buf.dtype.lanes // 8


def _rewrite(stmt):
    """The statement with its small allocations annotated; containers are rebuilt only where
    something below them changed."""
    if isinstance(stmt, tirx.AllocBuffer):
        size = _size_bytes(stmt.buffer)
        if size is None or size > STACK_BYTES or _KEY in stmt.annotations:
            return stmt
        return tirx.AllocBuffer(stmt.buffer, {**stmt.annotations, _KEY: tirx.IntImm("bool", 1)}, stmt.span)
    if isinstance(stmt, tirx.SeqStmt):
        seq = [_rewrite(s) for s in stmt.seq]
        return stmt if all(a.same_as(b) for a, b in zip(seq, stmt.seq)) else tirx.SeqStmt(seq, stmt.span)
    if isinstance(stmt, tirx.For):
        body = _rewrite(stmt.body)
        return stmt if body.same_as(stmt.body) else tirx.For(
            stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body, stmt.thread_binding, stmt.annotations,
            stmt.step, stmt.span)
    if isinstance(stmt, tirx.AttrStmt):
        body = _rewrite(stmt.body)
        return stmt if body.same_as(stmt.body) else tirx.AttrStmt(
            stmt.node, stmt.attr_key, stmt.value, body, stmt.span)
    if isinstance(stmt, tirx.While):
        body = _rewrite(stmt.body)
        return stmt if body.same_as(stmt.body) else tirx.While(stmt.condition, body, stmt.span)
    if isinstance(stmt, tirx.IfThenElse):
        then, other = _rewrite(stmt.then_case), stmt.else_case and _rewrite(stmt.else_case)
        if then.same_as(stmt.then_case) and (other is None or other.same_as(stmt.else_case)):
            return stmt
        return tirx.IfThenElse(stmt.condition, then, other, stmt.span)
    return stmt


@tirx.transform.prim_func_pass(opt_level=0, name="G2PStackSmallBuffers")
def stack_small_buffers(func, mod, ctx):
    body = _rewrite(func.body)
    return func if body.same_as(func.body) else func.with_body(body)


def _cpu_pipeline(**kwargs):
    from tvm.tirx import compilation_pipeline as cp

    pipeline, finalize_host, finalize_device = cp.get_tir_pipeline("s_tir", **kwargs)
    return tvm.transform.Sequential([pipeline, stack_small_buffers]), finalize_host, finalize_device


def register() -> str:
    """Registers the pipeline with TVM (again is harmless) and returns its name for `tvm.compile`."""
    from tvm.tirx import compilation_pipeline as cp

    cp.register_tir_pipeline(CPU_PIPELINE, _cpu_pipeline)
    return CPU_PIPELINE
