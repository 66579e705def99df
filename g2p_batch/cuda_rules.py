"""The dlight rules that schedule the CUDA build, with the dense tile picked per shape.

dlight's stock CUDA matmul tile is 32x64 with 4x4 outputs per thread. On an H200 it ran tiny_8's
dense layers at 9-15 TFLOP/s, alone, a small share of the fp32 peak (about 67). Larger
tiles help the encoder's many rows; the decoder's 1,024-row layers need the stock tile's many
blocks. So `pick_tile` chooses per kernel from the output size, by session 7's measurements:
1.0-1.4x the stock tile, at most about 20 TFLOP/s. More work per thread did not pay: dlight
keeps both operands in shared memory as [row][k], and a thread's contiguous rows land on one
bank (PERF.md, change 16).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.s_tir import dlight as dl


@dataclass(frozen=True)
class Tile:
    """dlight Matmul knobs: x runs over rows (M), y over output columns (N)."""
    block_x: int
    block_y: int
    micro_x: int
    micro_y: int
    vthread_x: int = 1
    vthread_y: int = 1
    k: int = 16
    vector: int = 4

    @property
    def rows(self) -> int:
        return self.block_x * self.micro_x * self.vthread_x

    @property
    def cols(self) -> int:
        return self.block_y * self.micro_y * self.vthread_y

    @property
    def name(self) -> str:
        v = f"_v{self.vthread_x}x{self.vthread_y}" if (self.vthread_x, self.vthread_y) != (1, 1) else ""
        return f"t{self.block_x}x{self.block_y}_m{self.micro_x}x{self.micro_y}{v}_k{self.k}_vec{self.vector}"

    def config(self) -> "dl.gpu.Matmul.Config":
        return dl.gpu.Matmul.Config(block_size_x=self.block_x, block_size_y=self.block_y,
                                    vthread_x=self.vthread_x, vthread_y=self.vthread_y,
                                    micro_size_x=self.micro_x, micro_size_y=self.micro_y,
                                    micro_size_k=self.k, vector_size=self.vector, unroll=256,
                                    use_shared=True, storage_align=True, inner_x=False)


STOCK = Tile(8, 16, 4, 4, k=16, vector=2)  # dlight's own CUDA config: 32 x 64
TILE_64x64 = Tile(16, 8, 4, 8)              # 128 threads, 32 outputs each
TILE_64x128 = Tile(16, 16, 4, 8)            # 256 threads, 32 outputs each
CANDIDATES = (  # what tests/gpu/dense_variants.py times: the picks, and tiles not timed yet
    STOCK,
    TILE_64x64,
    TILE_64x128,
    # added after the session-7 GPU calls: each thread's outputs strided by the thread block
    # (virtual threads of one output each), so a warp's lanes read consecutive shared rows,
    # which a row stride of 17 floats puts in distinct banks. Session 7 timed three more tiles
    # and dropped them (PERF.md, change 16): 128x128 with 8x8 contiguous outputs per thread
    # (1.6-12 TFLOP/s), 128x128 as 2x2 virtual threads (up to 20), 64x64 with 8x4 (7).
    Tile(16, 16, 1, 1, 8, 8, k=16, vector=1),  # 128 x 128, 8x8 outputs per thread
    Tile(16, 16, 1, 1, 8, 8, k=16, vector=4),  # the same, float4 global loads (row stride 20)
    Tile(16, 16, 1, 1, 4, 8, k=16, vector=1),  # 64 x 128
    Tile(16, 8, 1, 1, 4, 8, k=16, vector=1),   # 64 x 64
)
ENCODER_ROWS = 16384  # the packed encoder's rows are only known at run time: ~900 words' tokens


def pick_tile(rows: int | None, cols: int) -> Tile:
    """Measured on an H200 (session 7, tiny_8's dense shapes at 1,024, 4,096 and 18,432 rows):
    small outputs need the stock tile's many blocks; up to a few million outputs the 64x64 tile
    wins (1.0-1.3x stock); wide or large outputs take 64x128 (1.2-1.3x stock)."""
    outputs = (rows or ENCODER_ROWS) * cols
    if outputs < 300_000:
        return STOCK
    if cols >= 2048 or outputs >= 6_000_000:
        return TILE_64x128
    return TILE_64x64


class TiledMatmul(dl.gpu.Matmul):
    """dlight's Matmul with the tile chosen per kernel by `pick` (a function of the row count,
    None when dynamic, and the output width)."""

    def __init__(self, pick):
        super().__init__()
        self._pick = pick
        self._tile = STOCK

    def apply(self, func, target, tunable):
        if isinstance(func, tirx.PrimFunc):
            self._tile = self._pick(*_rows_cols(func))
        return super().apply(func, target, tunable)

    def get_configs(self, target):
        return self._tile.config()


def _rows_cols(func: "tirx.PrimFunc") -> tuple[int | None, int]:
    """(rows, columns) of the kernel's output buffer; rows None when symbolic (the encoder)."""
    m, n = func.params[-1].ty.shape[0], func.params[-1].ty.shape[-1]
    return (int(m) if isinstance(m, tirx.IntImm) else None), int(n)


def fixed(tile: Tile):
    return lambda rows, cols: tile


def rules(pick=pick_tile):
    """The rule list for `dl.ApplyDefaultSchedule`, matmul first; `pick=None`: dlight's stock."""
    mm = dl.gpu.Matmul() if pick is None else TiledMatmul(pick)
    return (mm, dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())
