"""bf16 dense layers on AMX tiles (`--precision bf16`, CPUs with AMX-BF16 and AVX512-BF16).

One AMX `tdpbf16ps` multiplies a 16x32 bf16 tile by a 32x16 one into 16x16 fp32 sums: on these
cores 2.4 TFLOP/s a core against 0.24 for fp32 FMA (AVX512-BF16's `vdpbf16ps` reads 0.09, so
it is not used). Each kernel task holds a 32x32 output block in four accumulator tiles, two
tiles of rows and two of weight columns, and walks K 32 at a time; the sums stay fp32, and the
epilogue (residual add, gated gelu) runs in fp32 on the block before it leaves.

Layouts:
- activations entering a dense layer are bf16 `[M, K]` (uint16 bit patterns), rounded to
  nearest even by their producer (`rms_norm`, `gated_dense`, `to_bf16`);
- weights are packed `[N/16, K/2, 32]`: for a 16-column strip, row p holds k = 2p and 2p+1 of
  each column in turn, the pair order `tdpbf16ps` reads (`model.params`);
- rows come in blocks of 32; a last block of 16 (an odd count of 16-token encoder blocks, or a
  16-row batch) runs on one row tile, a batch under 16 rows on one tile of that many rows.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from ..model.shapes import PACK, TOKEN_BLOCK

__all__ = ["BF16_TILE_K", "amx_dense", "bf16_bits", "to_bf16"]

BF16_TILE_K = 32  # bf16 values in a tile row (64 bytes): K must be a multiple
_RB, _CB = 32, 32  # output block: two 16-row tiles by two 16-column tiles


def bf16_bits(v):
    """fp32 -> bf16 bit pattern (uint16), rounded to nearest even, as vectorisable integer
    arithmetic (the values here are finite)."""
    u = tirx.reinterpret("uint32", v)
    one = tirx.const(1, "uint32")
    r = u + tirx.const(0x7FFF, "uint32") + tirx.bitwise_and(tirx.shift_right(u, tirx.const(16, "uint32")), one)
    return tirx.Cast("uint16", tirx.shift_right(r, tirx.const(16, "uint32")))


def _gelu_new(a):
    """gelu_new, 0.5 a (1 + tanh(u)), as a / (1 + exp(-2u)) (the same function: one exp and one
    division on the vectorised `_exp`, whose clamps give a or 0 at the extremes)."""
    from .kernels import _exp

    f = lambda v: tirx.const(v, "float32")  # noqa: E731
    u2 = f(-2 * 0.7978845608028654) * (a + f(0.044715) * (a * a * a))
    return a / (f(1.0) + _exp(u2))


def _ll(name, *args):
    return T.call_llvm_intrin("void", "llvm.x86." + name, *args)


def amx_dense(M: int | None, K: int, N: int, epilogue: str = "none"):
    """bf16 x [M, K] @ packed bf16 W -> fp32 y [M, N]; `epilogue`: "none", "residual" (y + r),
    or "gated" (bf16 gelu_new(a) * b [M, N/2], from strips interleaved gate, linear: see
    `kernels.gated_dense`). M=None: the packed encoder's TOKEN_BLOCK*m rows, m a scalar.
    Fixed-row layers (the decoder's, a few rows against all the weights) walk column blocks
    outermost so each weight block is read once; the encoder walks row blocks outermost."""
    assert K % BF16_TILE_K == 0 and N % _CB == 0, (K, N)
    assert M is None or M < 16 or M % 16 == 0, M
    tile_rows = M if isinstance(M, int) and M < 16 else 16
    NO = N // 2 if epilogue == "gated" else N
    OC = _CB // 2 if epilogue == "gated" else _CB  # output columns per block
    out_dtype = "uint16" if epilogue == "gated" else "float32"
    ncb = N // _CB
    KC = K // BF16_TILE_K
    cols_outer = M is not None
    # fixed-row layers read each weight block from L3 once per step, the first row block waiting
    # on every line; the block after the current one is asked for ahead (PERF.md)
    prefetch = cols_outer and M >= 32
    residual = epilogue == "residual"
    gated = epilogue == "gated"

    @T.prim_func(private=True)
    def kernel(x_h: T.handle, w: T.Buffer((N // PACK, K // 2, 2 * PACK), "uint16"), r_h: T.handle,
               m: T.int32, y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        rows = T.meta_var(m * TOKEN_BLOCK if M is None else M)
        blocks16 = T.meta_var(m if M is None else max(M // 16, 1))
        x = T.match_buffer(x_h, (rows, K), "uint16")
        r = T.match_buffer(r_h, (rows, N), "float32")
        y = T.match_buffer(y_h, (rows, NO), out_dtype)
        nrb = T.meta_var((blocks16 + 1) // 2)
        for t in T.parallel(nrb * ncb):
            cfg = T.alloc_buffer((64,), "uint8", scope="local")
            c = T.alloc_buffer((_RB, _CB), "float32", scope="local")
            rb = T.meta_var(t % nrb if cols_outer else t // ncb)
            cb = T.meta_var(t // nrb if cols_outer else t % ncb)
            full = T.meta_var(rb * 2 + 1 < blocks16)
            # the tile configuration: palette 1; sums 0-3 and rows 4-5 of tile_rows x 64 bytes,
            # weights 6-7 of 16 x 64 bytes (16 pairs of k)
            for b in range(64):
                cfg[b] = T.uint8(0)
            cfg[0] = T.uint8(1)
            for z in range(8):
                cfg[16 + 2 * z] = T.uint8(64)
                cfg[48 + z] = T.uint8(T.if_then_else(z < 6, tile_rows, 16))
            T.evaluate(_ll("ldtilecfg", T.address_of(cfg[0])))
            for z in T.unroll(4):
                T.evaluate(_ll("tilezero", T.int8(z)))
            for kc in range(KC):
                T.evaluate(_ll("tileloadd64", T.int8(4), T.address_of(x[rb * _RB, kc * BF16_TILE_K]), T.int64(K * 2)))
                if full:
                    T.evaluate(_ll("tileloadd64", T.int8(5), T.address_of(x[rb * _RB + 16, kc * BF16_TILE_K]),
                                   T.int64(K * 2)))
                for q in T.unroll(2):
                    T.evaluate(_ll("tileloadd64", T.int8(6 + q), T.address_of(w[cb * 2 + q, kc * 16, 0]), T.int64(64)))
                if prefetch:  # the next column block's tiles for this k into L2 (prefetcht1), 64 lines
                    for q, line in T.grid(2, 16):
                        T.evaluate(T.call_llvm_intrin(
                            "void", "llvm.prefetch.p0",
                            T.address_of(w[T.min(cb + 1, ncb - 1) * 2 + q, kc * 16 + line, 0]), 0, 2, 1))
                for q in T.unroll(2):
                    T.evaluate(_ll("tdpbf16ps", T.int8(q), T.int8(4), T.int8(6 + q)))
                if full:
                    for q in T.unroll(2):
                        T.evaluate(_ll("tdpbf16ps", T.int8(2 + q), T.int8(5), T.int8(6 + q)))
            for q in T.unroll(2):
                T.evaluate(_ll("tilestored64", T.int8(q), T.address_of(c[0, 16 * q]), T.int64(_CB * 4)))
            if full:
                for q in T.unroll(2):
                    T.evaluate(_ll("tilestored64", T.int8(2 + q), T.address_of(c[16, 16 * q]), T.int64(_CB * 4)))
            T.evaluate(_ll("tilerelease"))  # the thread's tile state back to init: cheaper context switches
            for h, i in T.grid(2, tile_rows):
                if h == 0 or full:
                    for j in T.vectorized(OC):
                        if gated:
                            y[rb * _RB + h * 16 + i, cb * OC + j] = bf16_bits(
                                _gelu_new(c[h * 16 + i, j]) * c[h * 16 + i, 16 + j])
                        elif residual:
                            y[rb * _RB + h * 16 + i, cb * OC + j] = (c[h * 16 + i, j]
                                                                     + r[rb * _RB + h * 16 + i, cb * OC + j])
                        else:
                            y[rb * _RB + h * 16 + i, cb * OC + j] = c[h * 16 + i, j]
    return _drop_params(kernel, keep_r=residual, keep_m=M is None)


def _drop_params(func, keep_r: bool = False, keep_m: bool = True):
    """The kernel without the arguments this variant does not read (one TVMScript body serves
    every variant; Relax passes exactly the arguments left), its body in a root block as
    Relax's passes expect of a call_tir kernel."""
    from tvm.s_tir.stmt import SBlock, SBlockRealize

    drop = {name for name, keep in (("r", keep_r), ("m", keep_m)) if not keep}
    body = SBlockRealize([], True, SBlock([], [], [], "root", func.body))
    return tirx.PrimFunc([p for p in func.params if p.name not in drop], body, func.ret_type, func.attrs)


def to_bf16(M: int | None, K: int):
    """fp32 [M, K] -> bf16 bits, for dense inputs whose producer keeps fp32 (attention)."""
    @T.prim_func(private=True)
    def kernel(x_h: T.handle, m: T.int32, y_h: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        rows = T.meta_var(m * TOKEN_BLOCK if M is None else M)
        x = T.match_buffer(x_h, (rows, K), "float32")
        y = T.match_buffer(y_h, (rows, K), "uint16")
        for i in T.parallel(rows):
            for j in T.vectorized(K):
                y[i, j] = bf16_bits(x[i, j])
    return _drop_params(kernel, keep_m=M is None)
