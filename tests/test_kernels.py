"""Kernel-level checks that do not depend on the host's ISA: every CPU dense tile, the gated
feed-forward, the vectorised exp and the blocked key cache compute what numpy does, and the
encoder's token packing round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from g2p_batch.compile import kernels as K
from g2p_batch.compile import lowering
from g2p_batch.decode.tokenizer import PAD
from g2p_batch.model.shapes import PACK
from g2p_batch.runtime.engine import pack_tokens


def _lib(f, pipeline: str | None = None):
    """`f` built as the CPU model builds it (`lowering.CPU_PIPELINE`), or by a TVM pipeline."""
    return tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target="llvm",
                       tir_pipeline=pipeline or lowering.register())


def _build(f):
    return _lib(f)["main"]


def test_pack_tokens_keeps_every_real_token_once_in_order():
    ids = np.array([[5, 6, 7, 1, PAD], [8, 1, PAD, PAD, PAD], [PAD] * 5], np.int32)  # last: filler row
    tok, where, gather = pack_tokens(ids)
    n = 6
    assert tok.shape == where.shape == (1, 16)
    assert tok.reshape(-1)[:n].tolist() == [5, 6, 7, 1, 8, 1]
    assert (tok.reshape(-1)[n:] == PAD).all()
    flat = where.reshape(-1)[:n]
    assert flat.tolist() == [0, 1, 2, 3, 5, 6]  # b*L + i
    real = ids != PAD
    assert (tok.reshape(-1)[gather[real]] == ids[real]).all()
    assert (gather[~real] == 0).all()


def test_pack_tokens_rounds_rows_up_to_blocks_of_16():
    ids = np.full((4, 8), 9, np.int32)  # 32 tokens: two full blocks
    tok, where, _ = pack_tokens(ids)
    assert tok.shape == (2, 16) and where.reshape(-1).tolist() == list(range(32))
    tok, _, _ = pack_tokens(np.concatenate([ids, [[9] + [PAD] * 7]]))
    assert tok.shape == (3, 16)


@pytest.mark.parametrize("tile", [(4, 16), (8, 32)])
@pytest.mark.parametrize("rows", [24, 64, None])  # 64: prefetches; None: the encoder's packed rows, 16*m
@pytest.mark.parametrize("N,residual", [(96, False), (96, True), (80, True)])  # 80: no 32-wide blocks
def test_dense_tiles_match_numpy(tile, rows, N, residual):
    Kd, m = 32, 3
    M = 16 * m if rows is None else rows
    fn = _build(K.dense(rows, Kd, N, K.KernelTarget("cpu", tile), residual=residual))
    rng = np.random.default_rng(0)
    x, w, r = (rng.standard_normal(s).astype(np.float32) for s in ((M, Kd), (N, Kd), (M, N)))
    packed = np.ascontiguousarray(w.reshape(N // PACK, PACK, Kd).transpose(0, 2, 1))
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (x, packed) + ((r,) if residual else ())]
    out = tvm.runtime.tensor(np.zeros((M, N), np.float32), dev)
    fn(*args, *([m] if rows is None else []), out)
    want = x @ w.T + (r if residual else 0)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


def test_encoder_column_groups_keep_every_sum_in_order(monkeypatch):
    """The packed encoder's layers run several column blocks a task (`_col_group`); each output
    still sums over k in the same order, so they equal the one-block form bit for bit."""
    tile, Kd, N, m = (8, 32), 64, 128, 3
    monkeypatch.setattr(K, "L2_BYTES", Kd * N * 4 - 1)  # weights that outgrow "L2"
    assert K._col_group(None, Kd, N, tile) == 4 and K._col_group(16 * m, Kd, N, tile) == 1
    rng = np.random.default_rng(1)
    x, w, r = (rng.standard_normal(s).astype(np.float32) for s in ((16 * m, Kd), (N, Kd), (16 * m, N)))
    packed = np.ascontiguousarray(w.reshape(N // PACK, PACK, Kd).transpose(0, 2, 1))
    dev = tvm.cpu()
    outs = []
    for rows in (None, 16 * m):
        fn = _build(K.dense(rows, Kd, N, K.KernelTarget("cpu", tile), residual=True))
        out = tvm.runtime.tensor(np.zeros((16 * m, N), np.float32), dev)
        fn(*(tvm.runtime.tensor(a, dev) for a in (x, packed, r)), *([m] if rows is None else []), out)
        outs.append(out.numpy())
    np.testing.assert_allclose(outs[0], x @ w.T + r, rtol=1e-5, atol=1e-5)
    assert np.array_equal(outs[0], outs[1])


def _allocas_outside_entry_blocks(ll: str) -> list[str]:
    """An alloca in a loop's block takes new stack on every pass; in a function's (or a parallel
    task's) entry block it is taken once per call."""
    import re

    found, block = [], None
    for line in ll.splitlines():
        if line.startswith("define"):
            block = "entry"
        elif re.match(r"^[\w.]+:", line):
            block = line.split(":")[0]
        elif " alloca " in line and not block.endswith("entry"):
            found.append(f"{block}: {line.strip()}")
    return found


def test_cpu_pipeline_keeps_each_tasks_scratch_on_the_stack():
    """TVM gives every "local" buffer on CPU (and every other one of 1,024 bytes or more) a
    workspace call per task; `lowering` keeps the dense tile's 8x32 accumulator and the
    attention's scores on the stack instead. The code is otherwise the same: bit-identical."""
    tgt, rng, dev = K.KernelTarget("cpu", (8, 32)), np.random.default_rng(0), tvm.cpu()
    B, H, dk, L = 8, 2, 32, 24
    cases = [(K.dense(64, 64, 96, tgt), [(64, 64), (6, 64, PACK)], (64, 96)),
             (K.gated_dense(64, 64, 64, "gelu_new", tgt), [(64, 64), (8, 64, PACK)], (64, 4, PACK)),
             (K.step_attention(2, B, H, dk, L, 1, H * dk, tgt, True),
              [(B, H * dk), (2, B, H, dk, L), (2, B, H, L, dk), (B, L)], (B, H * dk))]
    for f, ins, out_shape in cases:
        default, ours = _lib(f, "default"), _lib(f)
        assert "TVMBackendAllocWorkspace" in default.mod.inspect_source("asm")
        assert "TVMBackendAllocWorkspace" not in ours.mod.inspect_source("asm")
        assert _allocas_outside_entry_blocks(ours.mod.inspect_source("ll")) == []  # no stack growth per task
        args = [tvm.runtime.tensor(rng.standard_normal(s).astype(np.float32), dev) for s in ins]
        got = []
        for lib in (default, ours):
            out = tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)
            lib["main"](*args, out)
            got.append(out.numpy())
        assert np.array_equal(*got)


@pytest.mark.parametrize("rows,expected", [(64, True), (32, True), (8, False), (None, False)])
def test_decoder_dense_prefetches_the_next_column_block(rows, expected):
    """Only the fixed-row layers with column blocks outermost and at least 4 row tiles ask for
    the next block's weights (`kernels._prefetch_next_block`); the packed encoder and batch 8
    do not. The prefetched strip is clamped to the last one, which the last block re-reads."""
    tgt = K.KernelTarget("cpu", (8, 32))
    for f, last in ((K.dense(rows, 256, 1152, tgt), 71), (K.gated_dense(rows, 256, 1024, "gelu_new", tgt), 127)):
        src = f.script()
        assert ("llvm.prefetch" in src) == expected
        if expected:  # 1152 / 16 and 2 * 1024 / 16 strips
            assert f", {last}), " in src


def test_greedy_head_takes_the_first_of_tied_maxima():
    B, V = 4, 64
    x = np.random.default_rng(0).standard_normal((B, V)).astype(np.float32)
    x[0, [5, 40]] = 9.0   # tie across two 16-lane groups: the lower id wins, as torch.argmax
    x[1, [17, 18]] = 9.0  # tie inside one group
    dev = tvm.cpu()
    ids, logp = tvm.runtime.tensor(np.zeros(B, np.int32), dev), tvm.runtime.tensor(np.zeros(B, np.float32), dev)
    _build(K.greedy_head(B, V, K.KernelTarget()))(tvm.runtime.tensor(x, dev), ids, logp)
    assert ids.numpy().tolist() == x.argmax(1).tolist()
    assert ids.numpy()[:2].tolist() == [5, 17]
    want = -np.log(np.exp(x - x.max(1, keepdims=True)).sum(1))  # log-probability of the max
    np.testing.assert_allclose(logp.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows,D", [(8, 64), (None, 64), (8, 40)])  # None: packed rows; 40: no 16-lane sums
def test_rms_norm_matches_numpy(rows, D):
    m = 2
    M = 16 * m if rows is None else rows
    x = np.random.default_rng(1).standard_normal((M, D)).astype(np.float32)
    w = np.random.default_rng(2).standard_normal(D).astype(np.float32)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros_like(x), dev)
    fn = _build(K.rms_norm(rows, D, 1e-6, K.KernelTarget()))
    fn(tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev), *([m] if rows is None else []), out)
    want = x / np.sqrt((x * x).mean(1, keepdims=True) + 1e-6) * w
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [64, None])
def test_rms_norm_is_one_parallel_loop_over_rows(rows):
    """The sum of squares' 16 partial sums are computed under the row loop: split off by rfactor
    they ran as a second parallel loop over a [16, rows] buffer (5x slower on the encoder's rows)."""
    src = K.rms_norm(rows, 256, 1e-6, K.KernelTarget()).script()
    assert src.count("T.parallel(") == 1
    assert src.index("T.parallel(") < src.index('T.sblock("ss_rf")') < src.index('T.sblock("out")')


def _gelu_new(a):
    return 0.5 * a * (1.0 + np.tanh(0.7978845608028654 * (a + 0.044715 * a ** 3)))


@pytest.mark.parametrize("tile", [(4, 16), (8, 32)])
@pytest.mark.parametrize("rows", [1, 24, 64, None])  # 64: prefetches the next column block
@pytest.mark.parametrize("act", ["gelu_new", "relu"])
def test_gated_dense_matches_two_matmuls_and_the_gate(tile, rows, act):
    """The CPU gated feed-forward reads `loader.interleave_gated`'s layout; a wrong strip order
    would mix gate and linear columns, which this catches column by column."""
    from g2p_batch.model.params import _pack, interleave_gated

    Kd, F, m = 32, 64, 3
    M = 16 * m if rows is None else rows
    rng = np.random.default_rng(3)
    x = rng.standard_normal((M, Kd)).astype(np.float32)
    w0, w1 = (rng.standard_normal((F, Kd)).astype(np.float32) * 0.3 for _ in range(2))
    fn = _build(K.gated_dense(rows, Kd, F, act, K.KernelTarget("cpu", tile)))
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((M, F // PACK, PACK), np.float32), dev)
    packed = _pack(interleave_gated(np.concatenate([w0, w1])))
    fn(tvm.runtime.tensor(x, dev), tvm.runtime.tensor(packed, dev), *([m] if rows is None else []), out)
    a, b = x @ w0.T, x @ w1.T
    want = (_gelu_new(a) if act == "gelu_new" else np.maximum(a, 0)) * b
    np.testing.assert_allclose(out.numpy().reshape(M, F), want, rtol=1e-4, atol=1e-4)


def test_vector_exp_is_within_3_ulp_and_exactly_zero_below_its_range():
    """`_exp` replaces libm's expf in the CPU's softmaxes: masked scores (-3.4e38, -inf) must still
    weigh exactly 0, and the rest stay within a few ulp of numpy."""
    from tvm import s_tir, te

    xs = np.concatenate([np.linspace(-86.9, 88.0, 200_000), [-3.4028234663852886e38, -np.inf, -87.0, 0.0]])
    xs = xs.astype(np.float32)
    x = te.placeholder((len(xs),), "float32", name="x")
    sch = s_tir.Schedule(te.create_prim_func([x, te.compute(x.shape, lambda i: K._exp(x[i]), name="y")]))
    sch.vectorize(sch.split(sch.get_loops(sch.get_sblock("y"))[0], [None, 16])[1])
    out = tvm.runtime.tensor(np.zeros_like(xs))
    _build(sch.mod["main"])(tvm.runtime.tensor(xs), out)
    got, want = out.numpy(), np.exp(xs)
    normal = xs >= -86.9
    ulp = np.abs(got[normal].view(np.int32).astype(np.int64) - want[normal].view(np.int32))
    assert ulp.max() <= 3
    assert (got[~normal] == 0).all() and got[-1] == 1.0


@pytest.mark.parametrize("B", [2, 12])  # the attention's tasks take 2 and 4 rows
@pytest.mark.parametrize("T,window", [(32, 16), (32, None), (24, 16)])  # 24: one block of 24 keys
def test_self_attention_reads_the_keys_kv_write_put_in_the_blocked_cache(T, window, B):
    """The CPU's key cache is blocked ([.., T/16, d_kv, 16], `shapes.key_cache_shape`): keys written
    step by step at every position must come back in position order, past the first block."""
    from g2p_batch.model.shapes import key_block

    Ld, H, dk, layer = 2, 2, 16, 1
    W, inner, kb = window or T, H * dk, key_block(T)
    steps = min(W, T) - 3  # positions 0..steps-1 written; the rest masked as the causal bias does
    tgt, dev = K.KernelTarget("cpu", (4, 16)), tvm.cpu()
    rng = np.random.default_rng(4)
    kc = tvm.runtime.tensor(np.full((Ld, B, H, T // kb, dk, kb), np.nan, np.float32), dev)
    vc = tvm.runtime.tensor(np.zeros((Ld, B, H, T, dk), np.float32), dev)
    write = _build(K.kv_write(Ld, B, H, dk, T, layer, tgt))
    qkvs = rng.standard_normal((steps, B, 3 * inner)).astype(np.float32)
    for p in range(steps):
        write(kc, vc, tvm.runtime.tensor(qkvs[p], dev), tvm.runtime.tensor(np.array([p], np.int32), dev))
    keys = qkvs[:, :, inner:2 * inner].reshape(steps, B, H, dk)
    vals = qkvs[:, :, 2 * inner:].reshape(steps, B, H, dk)
    bias = rng.standard_normal((H, W)).astype(np.float32)
    bias[:, steps:] = np.float32(-3.4028234663852886e38)
    q = rng.standard_normal((B, 3 * inner)).astype(np.float32)
    kc_np = kc.numpy()
    kc.copyfrom(np.nan_to_num(kc_np, nan=0.0))  # never-written slots: masked, must not be NaN
    out = tvm.runtime.tensor(np.zeros((B, inner), np.float32), dev)
    attn = _build(K.step_attention(Ld, B, H, dk, T, layer, 3 * inner, tgt, cross=False, window=window))
    attn(tvm.runtime.tensor(q, dev), kc, vc, tvm.runtime.tensor(bias, dev), out)
    qh = q[:, :inner].reshape(B, H, dk)
    s = np.einsum("bhd,tbhd->bht", qh, keys) + bias[None, :, :steps]
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want = np.einsum("bht,tbhd->bhd", p, vals).reshape(B, inner)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)
    assert np.count_nonzero(~np.isnan(kc_np)) == B * H * dk * steps  # one slot per written key, all in `layer`
