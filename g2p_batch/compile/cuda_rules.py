"""The dlight rules that schedule the CUDA build, with the dense tile picked per shape.

dlight's stock CUDA matmul keeps both operands in shared memory as [row][k], so a thread's
contiguous rows land on one bank and larger tiles barely pay. `Gemm` is the textbook fp32 GEMM
instead: both operands stored transposed ([k][row]) in shared memory, each thread reading
float4 columns of them into registers and keeping up to an 8x8 tile of outputs there (2.0-2.4x
the stock tile on the encoder's wide layers on an H200; PERF.md, "Kernels"). `pick_tile` chooses
per kernel from the output size, by measurements on an H200 (`tests/gpu/dense_variants.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu import matmul as dlm

__all__ = ["Gemm", "GemmMatmul", "pick_tile", "rules"]


@dataclass(frozen=True)
class Gemm:
    """A hand-scheduled GEMM tile: `ty` x `tx` threads, the lanes (tx) over output columns.
    Each thread keeps `mx` contiguous rows by `vy` groups of `my` contiguous columns, the groups
    `tx * my` apart, so a warp's float4 reads of the transposed weight tile are contiguous (no
    bank conflicts) and its stores coalesce. `k` columns of x and w are staged in shared memory
    per step (rows padded by `pad` floats); `pipeline` double-buffers them."""
    ty: int = 16
    tx: int = 16
    mx: int = 8
    vy: int = 2
    my: int = 4
    k: int = 8
    pad: int = 4
    pipeline: bool = False

    @property
    def rows(self) -> int:
        return self.ty * self.mx

    @property
    def cols(self) -> int:
        return self.tx * self.my * self.vy

    @property
    def name(self) -> str:
        return (f"g{self.rows}x{self.cols}_t{self.ty}x{self.tx}_m{self.mx}x{self.vy}x{self.my}_k{self.k}"
                + ("_pipe" if self.pipeline else ""))


# double-buffered (`pipeline`) tiles of 256 or 128 threads
GEMM_128 = Gemm(16, 16, 8, 2, 4, k=16, pipeline=True)   # 128 x 128, 64 outputs a thread
GEMM_128x64 = Gemm(16, 16, 8, 1, 4, k=8, pipeline=True)  # 32 outputs a thread
GEMM_64 = Gemm(16, 16, 4, 1, 4, k=16, pipeline=True)     # 64 x 64, 16 outputs a thread
GEMM_32x64 = Gemm(8, 16, 4, 1, 4, k=16, pipeline=True)   # 128 threads, 16 outputs a thread
ENCODER_ROWS = 16384  # the packed encoder's rows are only known at run time: ~900 words' tokens


def pick_tile(rows: int | None, cols: int) -> Gemm:
    """The fewer the outputs, the smaller the tile, so that every SM gets blocks; 256-column
    outputs keep 64x64 even at 18k rows. Each pick ran at 87% or more of the fastest tile for
    its shape among those `tests/gpu/dense_variants.py` times."""
    outputs = (rows or ENCODER_ROWS) * cols
    if outputs < 300_000:
        return GEMM_32x64
    if cols <= 256 or outputs < 2_000_000:
        return GEMM_64
    if outputs < 6_000_000:
        return GEMM_128x64
    return GEMM_128


class GemmMatmul(dl.gpu.Matmul):
    """dlight's matmul rule, scheduling each matmul as the `Gemm` that `pick` chooses (from the
    row count, None when dynamic, and the output width)."""

    def __init__(self, pick=pick_tile):
        super().__init__()
        self._pick = pick

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        return _schedule_gemm(func, self._pick(*_rows_cols(func)))


def _schedule_gemm(func: "tirx.PrimFunc", g: Gemm):
    """C[b, i, j] = sum_k A[b, i, k] * B[b, j, k], dlight's normal form, scheduled as `g`."""
    sch = s_tir.Schedule(func)
    reductions = dlm.get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
    if reductions is None or not dlm.get_index_map(sch.get(reductions[0])):
        return None
    main = reductions[0]
    reindexed = [sch.reindex(main, ("read", 0)), sch.reindex(main, ("read", 1)), sch.reindex(main, ("write", 0))]
    matmul_map, *maps = dlm.get_index_map(sch.get(main))
    for blk, io, index_map in zip(reindexed, ("write", "write", "read"), maps):
        sch.transform_layout(blk, (io, 0), index_map)
    sch.transform_block_layout(main, matmul_map)

    sch.pad_einsum(main, [1, g.rows, g.cols, g.k])  # the encoder's rows: predicated, not padded
    batch, x, y, k = sch.get_loops(main)
    bx, ty, xi = sch.split(x, [None, g.ty, g.mx])
    by, vy, tx, yi = sch.split(y, [None, g.vy, g.tx, g.my])
    ko, ki = sch.split(k, [None, g.k])
    sch.reorder(batch, bx, by, vy, ty, tx, ko, ki, xi, yi)
    sch.bind(sch.fuse(batch, bx), "blockIdx.y")
    sch.bind(by, "blockIdx.x")
    sch.bind(vy, "vthread.x")
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.annotate(tx, "pragma_auto_unroll_max_step", 256)
    sch.annotate(tx, "pragma_unroll_explicit", 1)
    out = sch.cache_write(main, 0, "local")
    sch.reverse_compute_at(out, tx, preserve_unit_loops=True)
    sch.vectorize(sch.split(sch.get_loops(out)[-1], [None, 4])[1])
    for operand in (0, 1):
        shared = sch.cache_read(main, operand, "shared")
        n = len(sch.get_loops(shared))
        sch.compute_at(shared, ko, preserve_unit_loops=True)
        fty, ftx, _, vec = sch.split(sch.fuse(*sch.get_loops(shared)[-n:]), [g.ty, g.tx, None, 4])
        sch.vectorize(vec)  # float4 global reads along k; stored transposed, one float at a time
        sch.bind(fty, "threadIdx.y")
        sch.bind(ftx, "threadIdx.x")
        sch.transform_layout(shared, ("write", 0), lambda b, i, kk: (b, kk, i))
        sch.storage_align(shared, 0, axis=1, factor=32, offset=g.pad)
        dlm.auto_inline_producers(sch, shared)
        regs = sch.cache_read(main, operand, "local")
        sch.compute_at(regs, ki, preserve_unit_loops=True)
        sch.vectorize(sch.split(sch.get_loops(regs)[-1], [None, 4])[1])  # float4 shared reads
    dlm.auto_inline_consumer_chain(sch, out)
    if g.pipeline:
        sch.annotate(ko, "software_pipeline_stage", [0, 0, 1])
        sch.annotate(ko, "software_pipeline_order", [0, 1, 2])
    sch.decompose_reduction(main, ko)
    return sch


def _rows_cols(func: "tirx.PrimFunc") -> tuple[int | None, int]:
    """(rows, columns) of the kernel's output buffer; rows None when symbolic (the encoder)."""
    m, n = func.params[-1].ty.shape[0], func.params[-1].ty.shape[-1]
    return (int(m) if isinstance(m, tirx.IntImm) else None), int(n)


def rules():
    """The rule list for `dl.ApplyDefaultSchedule`, matmul first."""
    return (GemmMatmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())
