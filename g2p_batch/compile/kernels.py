"""The model's hot loops as TE kernels, scheduled by hand for x86 CPUs.

TVM's default CPU pipeline applies no schedules (a dense layer ran at 0.6 GFLOP/s here), and
MetaSchedule is slow to tune on 2 cores and crashes with the pinned tvm-ffi, so the dense layers
and attention are written here as TE computes with explicit schedules. On CUDA, attention and
the greedy head get hand schedules of their own (`_sched_*_gpu`); the rest is left to the dlight
rules of `cuda_rules`.

Layouts chosen for the schedules:
- dense weights are packed `[N/16, K, 16]` on CPU (a 16-wide column strip is contiguous, so the
  inner loop is one 2x8-float FMA row), `[N, K]` (torch's own) on GPU; the gated feed-forward's
  two halves alternate strip by strip on CPU (`gated_dense`);
- attention keys are stored transposed (`[.., d_kv, T]`, on CPU in blocks of 16 positions for
  the decoder's cache) so that query-key products vectorise over key positions, values as
  `[.., T, d_kv]` so that weighted sums vectorise over d_kv;
- the encoder's kernels take `M=None` rows: the batch's real tokens, packed (see `_tokens`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import s_tir, te, tirx

from ..model.shapes import PACK, TOKEN_BLOCK, key_block, key_cache_shape
from ..runtime import targets


@dataclass(frozen=True)
class KernelTarget:
    """Which schedules to apply: `cpu` (hand schedules below) or `gpu` (left to dlight), and on
    CPU the dense register tile (rows, columns): 4x16 fills AVX2's 16 registers with 8
    accumulators; AVX-512 has 32 wider ones and needs more independent FMAs in flight."""

    kind: str = "cpu"
    tile: tuple[int, int] = (4, PACK)
    precision: str = "fp32"  # bf16: dense layers on AMX tiles (`compile.amx`)

    @property
    def packed(self) -> bool:
        return self.kind == "cpu"


def dense_tile(target: dict) -> tuple[int, int]:
    """The CPU dense kernels' register tile (rows, columns): 8x32 on AVX-512 (286 GFLOP/s on a
    2048x256x2048 matmul at 2 threads, against 147 for 4x16); 4x16 on AVX2, whose 16 vector
    registers cannot hold an 8x32 tile."""
    return (8, 32) if target.get("mcpu") in ("skylake-avx512", targets.BF16_MCPU) else (4, 16)


def _tokens():
    """The packed encoder's row extent: TOKEN_BLOCK*m real-token rows, m passed at run time. The
    encoder runs on the batch's real tokens only (no padding work); a multiple of TOKEN_BLOCK
    keeps the dense schedules' row tiles exact, with no per-row bounds checks. m is int32: an int64 m puts
    casts into fused loop bindings, which then count as non-affine and block vectorising."""
    m = te.var("m", "int32")
    return m * TOKEN_BLOCK, [m]


def _rows(M):
    """(row extent, scalar params): `M` rows, or the packed encoder's tokens when M is None.
    Relax passes scalars after the tensor inputs, before the outputs."""
    return _tokens() if M is None else (M, [])


def _finish(tensors, sched):
    func = te.create_prim_func(tensors)
    if sched is None:
        return func
    sch = s_tir.Schedule(func)
    sched(sch)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


_LANES = (32, 16, 8, 4, 2, 1)  # a GPU warp's lanes, or fewer that divide the extent


def _divisor(n, options=(4, 2, 1)) -> int:
    if not isinstance(n, int):  # packed tokens: a multiple of TOKEN_BLOCK
        return next(f for f in options if TOKEN_BLOCK % f == 0)
    return next(f for f in options if n % f == 0)


def _dense_compute(x, w, M, N, packed):
    k = te.reduce_axis((0, x.shape[1]), name="k")
    if packed:
        return te.compute((M, N), lambda i, j: te.sum(x[i, k] * w[j // PACK, k, j % PACK], axis=k), name="dense")
    return te.compute((M, N), lambda i, j: te.sum(x[i, k] * w[j, k], axis=k), name="dense")


def _schedule_dense(sch, M: int, N: int, tile: tuple[int, int], epilogue: str | None = None,
                    cols_outer: bool = False, group: int = 1):
    """rows x cols register tile (cols a multiple of PACK: one vector per packed strip), k
    unrolled by 4, parallel over (row tile, column block); `epilogue="residual"` folds
    `out = y + r` into the tile's write-back.

    `cols_outer` walks column blocks outermost: a block's weight strip (cols x K floats) stays
    in L1 while every row tile passes over it, so the weights stream from memory once instead
    of once per row tile. It pays where the weights outgrow the cache and the rows do not (the
    decoder's layers, the encoder's wide ones; PERF.md, "Kernels").

    `group` > 1 makes each task one row tile against `group` column blocks, in tasks ordered by
    column group: the group's weights stay in L2 while the rows pass (`_col_group`). Each
    output's sum over k runs in the same order in every form."""
    blk = sch.get_sblock("dense")
    i, j, k = sch.get_loops(blk)
    rows, cols = tile
    mi = _row_tile(M, rows)
    nj = cols if N % cols == 0 else PACK
    i0, i1 = sch.split(i, [None, mi])
    k0, k1 = sch.split(k, [None, 4]) if _k_divisible(sch, blk, 4) else (k, None)
    k_in = [k1] if k1 is not None else []
    if group > 1:
        jg, j0, js, j1 = sch.split(j, [None, group, nj // PACK, PACK])
        outer, tile_loop = [jg, i0], j0
        sch.reorder(jg, i0, j0, k0, *k_in, i1, js, j1)
    else:
        j0, js, j1 = sch.split(j, [None, nj // PACK, PACK])
        outer = [j0, i0] if cols_outer else [i0, j0]
        tile_loop = outer[1]
        sch.reorder(*outer, k0, *k_in, i1, js, j1)
    local = sch.cache_write(blk, 0, "local")
    if epilogue == "residual":
        sch.reverse_compute_inline(sch.get_sblock("out"))
    sch.reverse_compute_at(local, tile_loop)
    sch.vectorize(sch.split(sch.get_loops(local)[-1], [None, PACK])[1])
    sch.parallel(sch.fuse(*outer))
    if k1 is not None:
        sch.unroll(k1)
    sch.unroll(i1)
    sch.unroll(js)
    sch.vectorize(j1)
    sch.decompose_reduction(blk, k0)
    if cols_outer and group == 1:
        _prefetch_next_block(sch, sch.get_loops(sch.get_sblock("dense_local"))[0], M, mi, nj)


def _row_tile(M, max_rows: int) -> int:
    """Rows per register tile: the largest of 8, 4, 2, 1 within `max_rows` that divides M."""
    return _divisor(M, tuple(r for r in (8, 4, 2, 1) if r <= max_rows))


_PREFETCH_MIN_ROW_TILES = 4  # below, the burst outweighs the rows' compute (batch 1 and 8: see below)


def _prefetch_next_block(sch, tile_loop, M, mi: int, cols: int) -> None:
    """Each (column block, row tile) task of a column-blocks-outermost dense first asks L2 for
    its share of the next column block's weights (`prefetcht1`), so that by the time the block's
    first row tile runs its weights are in L2 instead of L3.

    Only fixed-row layers (the decoder's) with at least `_PREFETCH_MIN_ROW_TILES` row tiles of
    `mi` rows; the call does nothing for the rest. Each block's weights (cols x K floats, 32-128
    KB) are read once from L3 per step, and without it the first row tile waits on every line
    while the others run from L1. A burst per task, not one prefetch per k step, which costs
    more than it saves. The last block prefetches itself again; prefetches never fault."""
    if not isinstance(M, int) or M // mi < _PREFETCH_MIN_ROW_TILES:
        return
    row_tiles = M // mi
    loop = sch.get(tile_loop)
    w = sch.mod["main"].params[1]
    strips, K, _ = (int(v) for v in w.shape)
    per_block = cols // PACK  # strips per column block: one 64-byte line per strip row
    per = -(-per_block * K // row_tiles)
    f = loop.loop_var
    i = tirx.Var("pf", "int32")  # the fused tile loop is int32 (row extents are int32)
    line = tirx.floormod(f, row_tiles) * per + i
    strip = tirx.min((tirx.floordiv(f, row_tiles) + 1) * per_block + tirx.floordiv(line, K), strips - 1)
    addr = tirx.address_of(tirx.BufferLoad(w, [strip, tirx.floormod(line, K), 0]))
    # llvm.prefetch(address, rw=read, locality=2 (L2: prefetcht1), cache=data)
    call = tirx.call_llvm_intrin("void", "llvm.prefetch.p0", addr, *(tirx.const(v, "int32") for v in (0, 2, 1)))
    burst = tirx.For(i, tirx.const(0, "int32"), tirx.const(per, "int32"), tirx.ForKind.SERIAL, tirx.Evaluate(call))
    body = tirx.SeqStmt([burst, loop.body])
    sch.state.replace(sch.get_sref(tile_loop),
                      tirx.For(f, loop.min, loop.extent, loop.kind, body, loop.thread_binding, loop.annotations), {})


def _k_divisible(sch, blk, f):
    k = sch.get_loops(blk)[-1]
    return int(sch.get(k).extent) % f == 0


def _cols_outer(M: int | None, N: int) -> bool:
    """Column blocks outermost (see `_schedule_dense`): few rows, or wide weights."""
    return M is not None or N >= 2048


L2_BYTES = 2 << 20  # a core's L2 on the Xeons measured (Sapphire Rapids)
GROUP_BYTES = L2_BYTES // 2  # a column group's weights


def _col_group(M: int | None, K: int, N: int, tile: tuple[int, int]) -> int:
    """Column blocks per task in the packed encoder's layers whose weights outgrow L2, on the
    8x32 tile: the largest of 4 and 2 whose weights fit GROUP_BYTES, else 1. With one block a
    task, each row tile streamed all the layer's weights from L3 (byt5-small's qkv alone: 226 ->
    312 GFLOP/s at 4; PERF.md). Layers that fit L2 (tiny_8's) gained alone but not in the model,
    and lost batch-1 latency. The decoder's fixed rows walk column blocks outermost instead, and
    the AVX2 tile is unmeasured."""
    cols = tile[1]
    if M is not None or tile != (8, 32) or N % cols or K * N * 4 <= L2_BYTES:
        return 1
    return next(g for g in (4, 2, 1) if g == 1 or ((N // cols) % g == 0 and g * cols * K * 4 <= GROUP_BYTES))


def dense(M: int | None, K: int, N: int, tgt: KernelTarget, residual: bool = False):
    """y = x @ W^T, plus the residual r when `residual` (T5 has no dense biases)."""
    cols_outer = _cols_outer(M, N)
    group = _col_group(M, K, N, tgt.tile)
    M, scalars = _rows(M)
    x = te.placeholder((M, K), "float32", name="x")
    wshape = (N // PACK, K, PACK) if tgt.packed else (N, K)
    w = te.placeholder(wshape, "float32", name="w")
    y = _dense_compute(x, w, M, N, tgt.packed)
    args = [x, w]
    if residual:
        r = te.placeholder((M, N), "float32", name="r")
        out = te.compute((M, N), lambda i, j: y[i, j] + r[i, j], name="out")
        args.append(r)
    else:
        out = y
    sched = None
    if tgt.kind == "cpu":
        def sched(sch):
            _schedule_dense(sch, M, N, tgt.tile, "residual" if residual else None, cols_outer, group)
    return _finish(args + scalars + [out], sched)


def _gate(shape, a, b, act: str):
    """act(a) * b as TE stages; returns (output, stage names to inline).

    gelu_new's tanh goes through TOPI's fast_tanh, a rational approximation in plain
    arithmetic: it vectorises, where `tanh` becomes one scalar libm call per element. The
    parity tests bound what the approximation may change."""
    from tvm import topi

    if act == "gelu_new":
        c = 0.7978845608028654  # sqrt(2/pi)
        pre = te.compute(shape, lambda *ix: c * (a(*ix) + 0.044715 * (a(*ix) * a(*ix) * a(*ix))), name="pre")
        t = topi.fast_tanh(pre)
        out = te.compute(shape, lambda *ix: 0.5 * a(*ix) * (1.0 + t[ix]) * b(*ix), name="act")
        return out, _stages_between(out, pre)
    if act == "relu":
        return te.compute(shape, lambda *ix: tirx.max(a(*ix), tirx.const(0.0, "float32")) * b(*ix), name="act"), ()
    raise ValueError(f"unsupported activation {act!r}")


def _stages_between(out, first) -> tuple[str, ...]:
    """Names of the compute stages from `first` up to (not including) `out`, producers first:
    fast_tanh brings its own clamp stages, all of which must be inlined (left alone, each runs
    as a serial loop)."""
    names, seen = [], set()

    def walk(t):
        for inp in t.op.input_tensors:
            if inp.op.name in seen or not isinstance(inp.op, te.ComputeOp):
                continue
            seen.add(inp.op.name)
            walk(inp)
            names.append(inp.op.name)
    walk(out)
    assert first.op.name in names
    return tuple(names)


def gated_act(M: int | None, F: int, act: str):
    """[M, 2F] -> [M, F]: act(a) * b, the gated feed-forward's middle, on GPUs (left to dlight;
    CPUs fold it into `gated_dense`)."""
    M, scalars = _rows(M)
    h = te.placeholder((M, 2 * F), "float32", name="h")
    out, _ = _gate((M, F), lambda i, j: h[i, j], lambda i, j: h[i, F + j], act)
    return _finish([h] + scalars + [out], None)


def gated_dense(M: int | None, K: int, F: int, act: str, tgt: KernelTarget):
    """CPU: act(x @ W0^T) * (x @ W1^T) in one kernel, out [M, F/PACK, PACK] (a [M, F] row-major).

    The weights come interleaved (`model.params.interleave_gated`): strip 2c holds the gate's
    columns 16c..16c+15, strip 2c+1 the linear half's, so one column block of the dense tile
    holds both halves of 16 outputs and the gate runs on the tile while it is in registers,
    instead of the [M, 2F] product going through memory and back. Each output sums over k in
    the same order as `dense`, so results are bit-identical to the two-kernel form."""
    assert tgt.kind == "cpu", "gated_dense is the packed CPU form; GPUs run dense + gated_act"
    cols_outer = _cols_outer(M, 2 * F)
    M, scalars = _rows(M)
    x = te.placeholder((M, K), "float32", name="x")
    w = te.placeholder((2 * F // PACK, K, PACK), "float32", name="w")
    k = te.reduce_axis((0, K), name="k")
    y = te.compute((M, F // PACK, 2, PACK), lambda i, c, g, l: te.sum(x[i, k] * w[2 * c + g, k, l], axis=k),
                   name="dense")
    out, inline = _gate((M, F // PACK, PACK), lambda i, c, l: y[i, c, 0, l], lambda i, c, l: y[i, c, 1, l], act)
    rows = max(1, tgt.tile[0] * tgt.tile[1] // (2 * PACK))  # the dense tile's accumulator count

    def sched(sch):
        for name in inline:
            if name != "dense":
                sch.compute_inline(sch.get_sblock(name))
        mi = _row_tile(M, rows)
        blk, a = sch.get_sblock("dense"), sch.get_sblock("act")
        i, c, l = sch.get_loops(a)
        i0, i1 = sch.split(i, [None, mi])
        outer = [c, i0] if cols_outer else [i0, c]
        sch.reorder(*outer, i1, l)
        tile = sch.fuse(*outer)
        sch.parallel(tile)
        sch.vectorize(l)
        sch.compute_at(blk, tile)  # the product for this tile only, kept in registers
        sch.set_scope(blk, 0, "local")
        *tile_loops, tk = sch.get_loops(blk)[1:]  # (rows,) halves, lanes: a 1-row loop is gone
        k0, k1 = sch.split(tk, [None, 4]) if K % 4 == 0 else (tk, None)
        k_in = [k1] if k1 is not None else []
        sch.reorder(k0, *k_in, *tile_loops)
        for loop in k_in + tile_loops[:-1]:
            sch.unroll(loop)
        sch.vectorize(tile_loops[-1])
        sch.decompose_reduction(blk, k0)
        if cols_outer:
            _prefetch_next_block(sch, tile, M, mi, 2 * PACK)
    return _finish([x, w] + scalars + [out], sched)


def _sched_elementwise(name):
    def sched(sch):
        blk = sch.get_sblock(name)
        loops = sch.get_loops(blk)
        inner = sch.get(loops[-1]).extent
        v = 8 if int(inner) % 8 == 0 else 1
        *outer, last = loops
        lo, li = sch.split(last, [None, v])
        sch.parallel(sch.fuse(*outer, lo) if outer else lo)
        if v > 1:
            sch.vectorize(li)
    return sched


def relu_act(M: int | None, F: int, tgt: KernelTarget):
    M, scalars = _rows(M)
    h = te.placeholder((M, F), "float32", name="h")
    out = te.compute((M, F), lambda i, j: tirx.max(h[i, j], tirx.const(0.0, "float32")), name="act")
    return _finish([h] + scalars + [out], _sched_elementwise("act") if tgt.kind == "cpu" else None)


def rms_norm(M: int | None, D: int, eps: float, tgt: KernelTarget, scale: float = 1.0):
    """T5LayerNorm: x * rsqrt(mean(x^2) + eps) * w (no mean, no bias); `scale` folds the
    tied-embedding output scaling of original T5 in. In bf16 sets every norm feeds a dense
    layer, so it writes bf16 (`amx.bf16_bits`) and the layer reads it as is."""
    from .amx import bf16_bits

    M, scalars = _rows(M)
    x = te.placeholder((M, D), "float32", name="x")
    w = te.placeholder((D,), "float32", name="w")
    k = te.reduce_axis((0, D), name="k")
    ss = te.compute((M,), lambda i: te.sum(x[i, k] * x[i, k], axis=k), name="ss")

    def norm(i, j):
        v = x[i, j] * tirx.rsqrt(ss[i] / float(D) + eps) * w[j]
        v = v * scale if scale != 1.0 else v
        return bf16_bits(v) if tgt.precision == "bf16" else v
    out = te.compute((M, D), norm, name="out")
    sched = None
    if tgt.kind == "cpu":
        def sched(sch):
            o = sch.get_sblock("out")
            i, j = sch.get_loops(o)
            sch.parallel(i)
            vec = _divisor(D, (16, 8, 1))
            if vec > 1:
                _, ji = sch.split(j, [None, vec])
                sch.vectorize(ji)
            ss = sch.get_sblock("ss")
            sch.compute_at(ss, i)
            if D % 16 == 0:  # 16 partial sums in one vector: a serial sum of squares is
                # latency-bound
                _, k1 = sch.split(sch.get_loops(ss)[-1], [None, 16])
                rf = sch.rfactor(k1, 0)
                # rfactor puts the partial sums in a loop nest of their own (a second parallel
                # launch, a [16, rows] buffer strided by `rows`); under the row loop they are 16 floats
                sch.compute_at(rf, i)
                lanes, red = sch.get_loops(rf)[-2:]
                sch.reorder(red, lanes)
                sch.vectorize(lanes)
    return _finish([x, w] + scalars + [out], sched)


def embed(n: int | None, V: int, D: int, tgt: KernelTarget):
    n, scalars = _rows(n)
    ids = te.placeholder((n,), "int32", name="ids")
    table = te.placeholder((V, D), "float32", name="table")
    out = te.compute((n, D), lambda i, j: table[ids[i], j], name="emb")
    return _finish([ids, table] + scalars + [out], _sched_elementwise("emb") if tgt.kind == "cpu" else None)


_EXP_HI, _EXP_LO = 88.0, -86.9  # 2^n * p(r) stays a normal float in between (n in [-125, 127])
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _exp(x):
    """exp as plain float32 arithmetic (Cephes' expf: n = round(x/ln2), a two-constant ln2
    reduction, a degree-7 polynomial, 2^n from the exponent bits), so that it vectorises. On
    CPU `tirx.exp` becomes one scalar libm `expf` call per lane. Within 3 ulp of libm between
    -86.9 and 88; an exact 0 below -86.9 (where exp < 2e-38), so masked scores keep an exact
    zero weight; exp(88) above 88 (softmax arguments are <= 0). The clamp keeps every
    intermediate a normal float: a subnormal product (2^-126 * p(r) < 1) costs a microcode
    assist per vector on Intel, which made the greedy head 20x slower on masked logits."""
    f32 = lambda v: tirx.const(v, "float32")  # noqa: E731
    xc = tirx.max(tirx.min(x, f32(_EXP_HI)), f32(_EXP_LO))
    n = tirx.floor(xc * f32(1.4426950408889634) + f32(0.5))
    r = xc - n * f32(0.693359375) - n * f32(-2.12194440e-4)  # ln2 split: n * hi is exact
    p = f32(_EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * r + f32(c)
    y = p * r * r + r + f32(1.0)
    two_n = tirx.reinterpret("float32", tirx.shift_left(n.astype("int32") + 127, 23))
    return tirx.Select(x < f32(_EXP_LO), f32(0.0), y * two_n)


def _exp_for(tgt: KernelTarget):
    """`_exp` on CPU; CUDA keeps `exp` (a fast hardware instruction there, and the GPU kernels
    stay as validated on a device)."""
    return _exp if tgt.kind == "cpu" else tirx.exp


def _softmax_rows(score, shape, reduce_extent, name, exp):
    """softmax over the last axis as named stages (max, exp, sum, then `name` = exp / sum, one
    division per score as torch does, not one per score and output column); `score(*ix)` adds
    bias and mask to the raw products, so they are read where they are used."""
    *lead, _ = shape
    t = te.reduce_axis((0, reduce_extent), name=f"{name}_t")
    m = te.compute(tuple(lead), lambda *ix: te.max(score(*ix, t), axis=t), name=f"{name}_max")
    e = te.compute(shape, lambda *ix: exp(score(*ix) - m[ix[:-1]]), name=f"{name}_exp")
    t2 = te.reduce_axis((0, reduce_extent), name=f"{name}_t2")
    z = te.compute(tuple(lead), lambda *ix: te.sum(e[(*ix, t2)], axis=t2), name=f"{name}_sum")
    return te.compute(shape, lambda *ix: e[ix] / z[ix[:-1]], name=name)


def encoder_attention(B: int, L: int, H: int, dk: int, tgt: KernelTarget):
    """Bidirectional self-attention over the packed tokens, straight from the fused qkv
    projection [n, 3*H*dk].

    `where[r]` = b*L + i places packed row r at position i of sequence b; `gather[b, j]` is the
    packed row of key position j of sequence b (any valid row where j is padding: the mask
    gives it an exact zero weight, as a pad token's key had before packing). T5 does not scale
    scores by 1/sqrt(d_kv); the relative-position bias [H, L, L] and the key padding mask
    [B, L] are added before the softmax, as in HF's position_bias."""
    if tgt.kind == "gpu":
        return _encoder_attention_gpu(B, L, H, dk)
    n, scalars = _tokens()
    inner = H * dk
    qkv = te.placeholder((n, 3 * inner), "float32", name="qkv")
    where = te.placeholder((n,), "int32", name="where")
    gather = te.placeholder((B, L), "int32", name="gather")
    bias = te.placeholder((H, L, L), "float32", name="bias")
    mask = te.placeholder((B, L), "float32", name="mask")
    kt = te.compute((B, H, dk, L), lambda b, h, d, j: qkv[gather[b, j], inner + h * dk + d], name="kt")
    d = te.reduce_axis((0, dk), name="d")
    s = te.compute((n, H, L), lambda r, h, j: te.sum(qkv[r, h * dk + d] * kt[where[r] // L, h, d, j], axis=d),
                   name="s")
    p = _softmax_rows(lambda r, h, j: s[r, h, j] + bias[h, where[r] % L, j] + mask[where[r] // L, j],
                      (n, H, L), L, "sm", _exp)
    j = te.reduce_axis((0, L), name="j")
    o = te.compute((n, inner),
                   lambda r, c: te.sum(p[r, c // dk, j] * qkv[gather[where[r] // L, j], 2 * inner + c], axis=j),
                   name="o")
    # AVX-512 (a 32-column dense tile): 8 query rows per task, 16-lane outputs, so each score's
    # FMA chain has company; AVX2's 16 registers hold one row's outputs
    rows, vec = (8, 16) if tgt.tile[1] >= 2 * PACK and dk % 16 == 0 else (1, 8)
    return _finish([qkv, where, gather, bias, mask] + scalars + [o],
                   _sched_fused_attention(dk, vec, transpose="kt", rows=rows, key_vec=8))


_ENC_WARPS = 4


def _encoder_attention_gpu(B: int, L: int, H: int, dk: int):
    """`encoder_attention` on CUDA, one block per (sequence, head): the sequence's keys and
    values for the head are staged in shared memory once (a lane per d_kv column, coalesced),
    then each warp takes query rows, its lanes the key positions for the scores and the output
    columns for the weighted sum. Written by hand because the packed rows make a block per
    sequence a scatter (row gather[b, i]), which a TE compute cannot express. One block per
    query row, as `_sched_attention_gpu` does for the decoder, would re-read every key of the
    sequence per query through `gather`, 64 dependent loads per lane.

    Padding query rows are computed (uniform control flow around the barriers) but not
    stored. The softmax matches `_softmax_rows`: max, exp(s - max), sum, then exp / sum per
    score."""
    from tvm.script import tirx as T_

    inner, W = H * dk, _ENC_WARPS
    kst = dk + 1  # key row stride: lanes on key positions read distinct banks (flat, so that
    # buffer compaction keeps the pad)
    rows_w, keys_l, cols_l = -(-L // W), -(-L // 32), -(-dk // 32)  # per warp, per lane, per lane

    @T_.prim_func(private=True, s_tir=True)
    def enc_attn_gpu(qkv_h: T_.handle, where_h: T_.handle, gather: T_.Buffer((B, L), "int32"),
                     bias: T_.Buffer((H, L, L), "float32"), mask: T_.Buffer((B, L), "float32"), m: T_.int32,
                     o_h: T_.handle):
        T_.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        qkv = T_.match_buffer(qkv_h, (m * TOKEN_BLOCK, 3 * inner), "float32")
        T_.match_buffer(where_h, (m * TOKEN_BLOCK,), "int32")
        o = T_.match_buffer(o_h, (m * TOKEN_BLOCK, inner), "float32")
        for bh in T_.thread_binding(B * H, thread="blockIdx.x"):
            for ty in T_.thread_binding(W, thread="threadIdx.y"):
                for tx in T_.thread_binding(32, thread="threadIdx.x"):
                    with T_.sblock("attn"):
                        T_.reads()
                        T_.writes()
                        ks = T_.sblock_alloc_buffer((L * kst,), "float32", scope="shared")
                        vs = T_.sblock_alloc_buffer((L, dk), "float32", scope="shared")
                        qs = T_.sblock_alloc_buffer((W, dk), "float32", scope="shared")
                        ps = T_.sblock_alloc_buffer((W, L), "float32", scope="shared")
                        sc = T_.sblock_alloc_buffer((keys_l,), "float32", scope="local")
                        acc = T_.sblock_alloc_buffer((1,), "float32", scope="local")
                        red = T_.sblock_alloc_buffer((2,), "float32", scope="local")  # max, sum
                        b: T_.let[T_.int32] = bh // H
                        h: T_.let[T_.int32] = bh % H
                        for jj, dd in T_.grid(rows_w, cols_l):
                            if jj * W + ty < L and dd * 32 + tx < dk:
                                ks[(jj * W + ty) * kst + dd * 32 + tx] = qkv[gather[b, jj * W + ty], inner + h * dk + dd * 32 + tx]
                                vs[jj * W + ty, dd * 32 + tx] = qkv[gather[b, jj * W + ty], 2 * inner + h * dk + dd * 32 + tx]
                        T_.tvm_storage_sync("shared")
                        for ii in T_.serial(rows_w):
                            i: T_.let[T_.int32] = T_.min(ii * W + ty, L - 1)  # a repeated row is not stored twice
                            r: T_.let[T_.int32] = gather[b, i]
                            for dd in T_.serial(cols_l):
                                if dd * 32 + tx < dk:
                                    qs[ty, dd * 32 + tx] = qkv[r, h * dk + dd * 32 + tx]
                            T_.tvm_storage_sync("shared")
                            for jl in T_.serial(keys_l):
                                if jl * 32 + tx < L:
                                    acc[0] = T_.float32(0)
                                    for d in T_.serial(dk):
                                        acc[0] = acc[0] + qs[ty, d] * ks[(jl * 32 + tx) * kst + d]
                                    sc[jl] = acc[0] + bias[h, i, jl * 32 + tx] + mask[b, jl * 32 + tx]
                                    ps[ty, jl * 32 + tx] = sc[jl]
                            T_.tvm_storage_sync("shared")
                            red[0] = ps[ty, 0]
                            for j in T_.serial(L - 1):
                                red[0] = T_.max(red[0], ps[ty, j + 1])
                            T_.tvm_storage_sync("shared")
                            for jl in T_.serial(keys_l):
                                if jl * 32 + tx < L:
                                    ps[ty, jl * 32 + tx] = T_.exp(sc[jl] - red[0])
                            T_.tvm_storage_sync("shared")
                            red[1] = T_.float32(0)
                            for j in T_.serial(L):
                                red[1] = red[1] + ps[ty, j]
                            for dd in T_.serial(cols_l):
                                acc[0] = T_.float32(0)
                                for j in T_.serial(L):
                                    acc[0] = acc[0] + ps[ty, j] / red[1] * vs[j, T_.min(dd * 32 + tx, dk - 1)]
                                if dd * 32 + tx < dk and ii * W + ty < L and mask[b, i] == T_.float32(0):
                                    o[r, h * dk + dd * 32 + tx] = acc[0]
                            T_.tvm_storage_sync("shared")  # qs and ps are rewritten for the next row
    return enc_attn_gpu


def _sched_key_transpose(name: str):
    """[B, H, d, L] keys gathered from token rows: walk each (row, head) block in source order
    (contiguous reads, stores inside one L1-resident block), faster than vectorising over key
    positions, which gathers 8 rows per vector."""
    def sched(sch):
        blk = sch.get_sblock(name)
        b, h, d, j = sch.get_loops(blk)
        sch.reorder(b, h, j, d)
        sch.parallel(sch.fuse(b, h))
    return sched


def _sched_fused_attention(dk: int, vec: int, transpose: str | None = None, rows: int = 1, key_vec: int | None = None):
    """One parallel task per (`rows` query rows, head): scores, softmax and the weighted sum of
    values for that head run back to back on a few hundred floats that stay in L1, instead of six
    parallel passes over [rows, H, keys] buffers (each pass paid a thread-pool launch, and the
    stages ran at ~10 GFLOP/s). Both products keep every vector of their output in registers
    and put the reduction outermost, so the FMAs form independent chains (rows*dk/vec for the
    weighted sum, rows*keys/key_vec for the scores) rather than one latency-bound chain per
    vector; `rows` > 1 multiplies the chains (the encoder's 24 keys gave 3 per row).
    The `transpose` stage (the encoder's key gather) keeps its own loop."""
    key_vec = key_vec or vec

    def sched(sch):
        if transpose:
            _sched_key_transpose(transpose)(sch)
        o = sch.get_sblock("o")
        r, c, t = sch.get_loops(o)
        r0, r1 = sch.split(r, [None, rows])
        h, d = sch.split(c, [None, dk])
        d0, d1 = sch.split(d, [None, vec])
        sch.reorder(r0, h, t, r1, d0, d1)
        rh = sch.fuse(r0, h)
        sch.parallel(rh)
        acc = sch.cache_write(o, 0, "local")
        sch.reverse_compute_at(acc, rh)
        sch.vectorize(sch.split(sch.get_loops(acc)[-1], [None, vec])[1])
        for name in ("sm", "sm_sum", "sm_exp", "sm_max", "s"):
            sch.compute_at(sch.get_sblock(name), rh)
        sch.unroll(r1)
        sch.unroll(d0)
        sch.vectorize(d1)
        sch.decompose_reduction(o, t)
        s = sch.get_sblock("s")
        *sr, keys, red = sch.get_loops(s)[1:]  # no row loop left when rows == 1
        k0, k1 = sch.split(keys, [None, key_vec])
        sch.reorder(red, *sr, k0, k1)
        for loop in sr + [k0]:
            sch.unroll(loop)
        sch.vectorize(k1)
        sch.decompose_reduction(s, red)
        for name in ("sm_exp", "sm"):
            blk = sch.get_sblock(name)
            _, k1 = sch.split(sch.get_loops(blk)[-1], [None, key_vec])
            sch.vectorize(k1)
    return sched


def _sched_attention_gpu(dk: int, keys: int):
    """One block per query row, one warp per head: the GPU twin of `_sched_fused_attention`.
    Lanes take key positions for the scores (reading the transposed keys coalesced), combine max
    and sum across the warp, then take output columns for the weighted sum (values read
    coalesced); scores and weights stay in shared memory. Left to dlight's fallback, each stage
    is its own kernel over global buffers, and the max and sum stages run on a handful of blocks."""
    lanes = _divisor(math.gcd(keys, dk), _LANES)

    def sched(sch):
        partials = {}
        for name in ("sm_max", "sm_sum"):  # lanes' partials first, while each block has its own loops
            blk = sch.get_sblock(name)
            _, t1 = sch.split(sch.get_loops(blk)[-1], [None, lanes])
            partials[name] = sch.rfactor(t1, 0)
            sch.set_scope(partials[name], 0, "local")
        o = sch.get_sblock("o")
        r, c, _ = sch.get_loops(o)
        h, d = sch.split(c, [None, dk])
        d0, d1 = sch.split(d, [None, lanes])
        sch.reorder(r, h, d1, d0)
        sch.bind(r, "blockIdx.x")
        sch.bind(h, "threadIdx.y")
        sch.bind(d1, "threadIdx.x")
        sch.reverse_compute_at(sch.cache_write(o, 0, "local"), d0)  # one register per output
        order = ["sm", "sm_sum", partials["sm_sum"], "sm_exp", "sm_max", partials["sm_max"], "s"]
        for item in order:
            blk = sch.get_sblock(item) if isinstance(item, str) else item
            sch.compute_at(blk, h)
            if item in ("sm_max", "sm_sum"):  # every lane keeps the warp's result: a shared
                # copy written by lane 0 would need a barrier that TVM's sync pass leaves out
                sch.set_scope(blk, 0, "local")
            elif isinstance(item, str):
                sch.set_scope(blk, 0, "shared")
        for name in ("s", "sm_exp", "sm"):  # one key position per lane
            blk = sch.get_sblock(name)
            t0, t1 = sch.split(sch.get_loops(blk)[2], [None, lanes])
            sch.reorder(t1, t0)
            sch.bind(t1, "threadIdx.x")
            if name == "s":  # a register sum, stored once (summed in shared, every step synced)
                sch.reverse_compute_at(sch.cache_write(blk, 0, "local"), t0)
        for name, rf in partials.items():  # then across the warp
            sch.bind(sch.get_loops(rf)[2], "threadIdx.x")
            sch.bind(sch.get_loops(sch.get_sblock(name))[2], "threadIdx.x")
    return sched


def kv_write(Ld: int, B: int, H: int, dk: int, T: int, layer: int, tgt: KernelTarget):
    """Write one step's key (transposed) and value of `layer` at position pos[0], in place."""
    inner = H * dk

    from tvm.script import tirx as T_

    if tgt.kind == "gpu":
        @T_.prim_func(private=True)
        def kv_write_gpu(kc: T_.Buffer((Ld, B, H, dk, T), "float32"), vc: T_.Buffer((Ld, B, H, T, dk), "float32"),
                         qkv: T_.Buffer((B, 3 * inner), "float32"), pos: T_.Buffer((1,), "int32")):
            T_.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            for bh in T_.thread_binding(B * H, thread="blockIdx.x"):
                for d in T_.thread_binding(dk, thread="threadIdx.x"):
                    kc[layer, bh // H, bh % H, d, pos[0]] = qkv[bh // H, inner + bh % H * dk + d]
                    vc[layer, bh // H, bh % H, pos[0], d] = qkv[bh // H, 2 * inner + bh % H * dk + d]
        return kv_write_gpu

    # parallel over rows (a serial loop is a visible share of a decoder step); values first,
    # one contiguous vector store per head, then the keys' scattered column
    kshape, kb = key_cache_shape(Ld, B, H, dk, T, True), key_block(T)  # blocked keys

    @T_.prim_func(private=True)
    def kv_write_cpu(kc: T_.Buffer(kshape, "float32"),
                     vc: T_.Buffer((Ld, B, H, T, dk), "float32"),
                     qkv: T_.Buffer((B, 3 * inner), "float32"), pos: T_.Buffer((1,), "int32")):
        T_.func_attr({"tirx.noalias": True})
        for b in T_.parallel(B):
            p = T_.int32(pos[0])
            for h in range(H):
                for d in T_.vectorized(dk):
                    vc[layer, b, h, p, d] = qkv[b, 2 * inner + h * dk + d]
            for h, d in T_.grid(H, dk):
                kc[layer, b, h, p // kb, d, p % kb] = qkv[b, inner + h * dk + d]
    return kv_write_cpu


def step_attention(Ld: int, B: int, H: int, dk: int, T: int, layer: int, q_cols: int, tgt: KernelTarget,
                   cross: bool, window: int | None = None):
    """One query row per sequence against a cache [Ld, B, H, dk, T] / [Ld, B, H, T, dk] (the
    CPU's self-attention keys in blocks: `shapes.key_cache_shape`).

    Self-attention adds the causal relative-bias row for the current position (future
    positions hold -inf-like values, so the not-yet-written cache slots get zero weight) and
    reads only the first `window` slots (the whole cache by default); cross-attention adds the
    encoder padding mask [B, T]."""
    W = window or T
    q = te.placeholder((B, q_cols), "float32", name="q")
    blocked = tgt.packed and not cross  # the CPU's self-attention keys (shapes.key_cache_shape)
    kc = te.placeholder(key_cache_shape(Ld, B, H, dk, T, blocked), "float32", name="kc")
    kb = key_block(T)
    if blocked:
        key = lambda b, h, d, t: kc[layer, b, h, t // kb, d, t % kb]  # noqa: E731
    else:
        key = lambda b, h, d, t: kc[layer, b, h, d, t]  # noqa: E731
    vc = te.placeholder((Ld, B, H, T, dk), "float32", name="vc")
    d = te.reduce_axis((0, dk), name="d")
    s = te.compute((B, H, W), lambda b, h, t: te.sum(q[b, h * dk + d] * key(b, h, d, t), axis=d), name="s")
    if cross:
        add = te.placeholder((B, W), "float32", name="mask")
        p = _softmax_rows(lambda b, h, t: s[b, h, t] + add[b, t], (B, H, W), W, "sm", _exp_for(tgt))
    else:
        add = te.placeholder((H, W), "float32", name="bias")
        p = _softmax_rows(lambda b, h, t: s[b, h, t] + add[h, t], (B, H, W), W, "sm", _exp_for(tgt))
    t = te.reduce_axis((0, W), name="t")
    o = te.compute((B, H * dk), lambda b, c: te.sum(p[b, c // dk, t] * vc[layer, b, c // dk, t, c % dk], axis=t), name="o")
    # CPU: 4 rows per task. Each score is a chain of dk dependent FMAs, and one row's 2-3 key
    # vectors left the FMA units idle (64 rows, 2 threads, caches hot: self-attention 55 -> 35-40
    # us, cross-attention 62-77 -> 57-61; AVX2 code alike). Every sum keeps its order: outputs
    # are bit-identical.
    sched = (_sched_fused_attention(dk, 8, rows=_divisor(B, (4, 2, 1))) if tgt.kind == "cpu"
             else _sched_attention_gpu(dk, W))
    return _finish([q, kc, vc, add, o], sched)


def greedy_head(B: int, V: int, tgt: KernelTarget):
    """logits [B, V] -> (argmax id [B] int32, its log-probability [B]); first max wins, as torch."""
    x = te.placeholder((B, V), "float32", name="logits")
    v = te.reduce_axis((0, V), name="v")
    m = te.compute((B,), lambda b: te.max(x[b, v], axis=v), name="mx")
    v2 = te.reduce_axis((0, V), name="v2")
    idx = te.compute((B,), lambda b: te.min(tirx.Select(x[b, v2] == m[b], v2, V), axis=v2), name="idx")
    v3 = te.reduce_axis((0, V), name="v3")
    exp = _exp_for(tgt)
    z = te.compute((B,), lambda b: te.sum(exp(x[b, v3] - m[b]), axis=v3), name="z")
    ids = te.compute((B,), lambda b: idx[b].astype("int32"), name="ids")
    logp = te.compute((B,), lambda b: -tirx.log(z[b]), name="logp")
    sched = None
    if tgt.kind == "cpu":
        def sched(sch):  # rows in parallel, 16 lanes at once: max and first-argmax are exact in
            # any order; the sum of exps only
            # feeds the log-probability, which nothing compares bit for bit
            for name in ("mx", "idx", "z"):
                blk = sch.get_sblock(name)
                b_, v_ = sch.get_loops(blk)
                sch.parallel(b_)
                if V % 16 == 0:
                    _, v1 = sch.split(v_, [None, 16])
                    sch.vectorize(sch.get_loops(sch.rfactor(v1, 0))[-1])
    else:
        lanes = _divisor(V, _LANES)  # no ragged last column block
        sched = _sched_row_reductions_gpu(("mx", "idx", "z"), ("ids", "logp"), lanes)
    return _finish([x, ids, logp], sched)


def _sched_row_reductions_gpu(reductions, elementwise, lanes: int = 32):
    """One warp per row for each [B, V] -> [B] reduction: the lanes take strided columns (coalesced
    reads), then combine across the warp. Left to dlight, the greedy head runs as one block whose
    threads each scan a whole row."""
    def sched(sch):
        for name in reductions:
            blk = sch.get_sblock(name)
            b, v = sch.get_loops(blk)
            _, tx = sch.split(v, [None, lanes])
            rf = sch.rfactor(tx, 0)
            rb, r, rtx = sch.get_loops(rf)
            sch.reorder(rb, rtx, r)
            sch.bind(rb, "blockIdx.x")
            sch.bind(rtx, "threadIdx.x")
            sch.set_scope(rf, 0, "local")
            sch.decompose_reduction(rf, r)
            sch.reverse_compute_at(blk, rb)
            sch.bind(sch.get_loops(blk)[1], "threadIdx.x")  # the lanes' partials, combined
        for name in elementwise:
            blk = sch.get_sblock(name)
            (b,) = sch.get_loops(blk)
            bo, bi = sch.split(b, [None, lanes])
            sch.bind(bo, "blockIdx.x")
            sch.bind(bi, "threadIdx.x")
    return sched


def split_cross_kv(Ld: int, B: int, L: int, H: int, dk: int, tgt: KernelTarget):
    """All decoder layers' cross K/V from one dense output over the packed tokens [n, Ld*2*H*dk]
    into the cache layouts [Ld, B, H, dk, L] (keys transposed) and [Ld, B, H, L, dk], through
    `gather` (see encoder_attention)."""
    n, scalars = _tokens()
    inner = H * dk
    kv = te.placeholder((n, Ld * 2 * inner), "float32", name="kv")
    gather = te.placeholder((B, L), "int32", name="gather")
    k = te.compute((Ld, B, H, dk, L), lambda l, b, h, d, j: kv[gather[b, j], l * 2 * inner + h * dk + d], name="ck")
    v = te.compute((Ld, B, H, L, dk), lambda l, b, h, j, d: kv[gather[b, j], l * 2 * inner + inner + h * dk + d],
                   name="cv")
    sched = None
    if tgt.kind == "cpu":
        def sched(sch):
            for name in ("ck", "cv"):
                blk = sch.get_sblock(name)
                loops = sch.get_loops(blk)
                sch.parallel(sch.fuse(*loops[:3]))
    return _finish([kv, gather] + scalars + [k, v], sched)


def bias_row(H: int, T: int, tgt: KernelTarget, window: int | None = None):
    """The decoder's relative-bias + causal-mask row for the position in pos[0], cut to the
    first `window` key positions: [H, window]."""
    W = window or T
    table = te.placeholder((H, T, T), "float32", name="table")
    pos = te.placeholder((1,), "int32", name="pos")
    row = te.compute((H, W), lambda h, t: table[h, pos[0], t], name="row")
    return _finish([table, pos, row], None)
