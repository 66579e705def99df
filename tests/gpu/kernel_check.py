"""Check the hand-scheduled CUDA kernels one by one against numpy (before the whole model).

    python tests/gpu/kernel_check.py build DIR     # here: cross-compile the kernels
    python tests/gpu/kernel_check.py run DIR       # on the GPU node: compare, print, exit 1 on a mismatch

A parity failure of the whole model says that something is wrong, not what; this says which
kernel, at tiny_8's shapes (6 heads of 64) and micro's (4 heads of 16, where a warp holds
several heads and a lane several keys).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# name: (kind, B, L or T, H, dk, window)
CASES = {
    "enc_t8": ("enc", 16, 32, 6, 64, None),
    "enc_t8_l24": ("enc", 16, 24, 6, 64, None),
    "enc_micro": ("enc", 4, 64, 4, 16, None),
    "self_t8_w16": ("self", 16, 32, 6, 64, 16),
    "self_t8_w32": ("self", 16, 32, 6, 64, 32),
    "self_micro_w24": ("self", 8, 24, 4, 16, 24),
    "cross_t8": ("cross", 16, 32, 6, 64, None),
    "cross_micro": ("cross", 8, 64, 4, 16, None),
    "greedy": ("greedy", 40, 384, 0, 0, None),
}
LD, LAYER = 2, 1


def _func(kind, B, L, H, dk, W):
    from g2p_batch.compile import kernels as K

    tgt = K.KernelTarget("gpu")
    if kind == "enc":
        return K.encoder_attention(B, L, H, dk, tgt)
    if kind == "greedy":
        return K.greedy_head(B, L, tgt)
    q_cols = 3 * H * dk if kind == "self" else H * dk
    return K.step_attention(LD, B, H, dk, L, LAYER, q_cols, tgt, cross=kind == "cross", window=W)


def build(out: Path) -> None:
    import tvm

    from g2p_batch.runtime import targets

    out.mkdir(parents=True, exist_ok=True)
    tgt = tvm.target.Target(targets.cuda_target(), host=targets.cpu_target())
    mod = tvm.IRModule({n: _func(*c).with_attr("global_symbol", n) for n, c in CASES.items()})
    tvm.compile(mod, tgt).export_library(str(out / "kernels.so"))
    (out / "cases.json").write_text(json.dumps(CASES))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def run(out: Path) -> int:
    import tvm

    from g2p_batch.model.shapes import NEG_INF
    from g2p_batch.runtime.cuda import register_cuda_jit
    from g2p_batch.runtime.engine import pack_tokens

    register_cuda_jit()
    dev = tvm.cuda(0)
    lib = tvm.runtime.load_module(str(out / "kernels.so"))
    rng = np.random.default_rng(0)
    T_ = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), dev)  # noqa: E731
    bad = 0
    for name, (kind, B, L, H, dk, W) in json.loads((out / "cases.json").read_text()).items():
        I = H * dk
        if kind == "greedy":
            x = rng.standard_normal((B, L)).astype(np.float32)
            x[3, 7] = x[3, 9] = x[3].max() + 1  # a tie: the first index must win
            ids, logp = T_(np.zeros(B, np.int32)), T_(np.zeros(B, np.float32))
            lib[name](T_(x), ids, logp)
            want = x.argmax(1)
            got = ids.numpy()
            lp = x.max(1) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) - x.max(1)
            err = float(np.abs(logp.numpy() - lp).max())
            ok = (got == want).all() and err < 1e-4
        elif kind == "enc":
            lens = rng.integers(1, L + 1, B)
            lens[0], lens[-1] = L, 0  # a full row, and a filler row (all padding) as batches have
            ids = np.zeros((B, L), np.int32)
            for b, n in enumerate(lens):
                ids[b, :n] = 5
            tok, where, gather = pack_tokens(ids)
            n_tok = tok.size
            qkv = rng.standard_normal((n_tok, 3 * I)).astype(np.float32)
            bias = rng.standard_normal((H, L, L)).astype(np.float32)
            mask = np.where(ids != 0, 0.0, NEG_INF).astype(np.float32)
            o = T_(np.zeros((n_tok, I), np.float32))
            lib[name](T_(qkv), T_(where.reshape(-1)), T_(gather), T_(bias), T_(mask), n_tok // 16, o)
            got = o.numpy()
            err = 0.0
            for b in range(B):
                rows = gather[b, : lens[b]]
                if not len(rows):
                    continue
                q, k, v = (qkv[rows, i * I:(i + 1) * I].reshape(-1, H, dk) for i in range(3))
                s = np.einsum("ihd,jhd->hij", q, k) + bias[:, : lens[b], : lens[b]]
                ref = np.einsum("hij,jhd->ihd", _softmax(s), v).reshape(-1, I)
                err = max(err, float(np.abs(got[rows] - ref).max()))
            ok = err < 1e-4
        else:
            Wn = W or L
            q = rng.standard_normal((B, 3 * I if kind == "self" else I)).astype(np.float32)
            kc = rng.standard_normal((LD, B, H, dk, L)).astype(np.float32)
            vc = rng.standard_normal((LD, B, H, L, dk)).astype(np.float32)
            if kind == "self":
                add = rng.standard_normal((H, Wn)).astype(np.float32)
                add[:, Wn // 2:] = NEG_INF  # future positions, as the causal bias row holds
                full = np.broadcast_to(add[None], (B, H, Wn))
            else:
                add = np.zeros((B, Wn), np.float32)
                add[1:, Wn - 5:] = NEG_INF  # padded encoder positions
                full = np.broadcast_to(add[:, None], (B, H, Wn))
            o = T_(np.zeros((B, I), np.float32))
            lib[name](T_(q), T_(kc), T_(vc), T_(add), o)
            qh = q[:, :I].reshape(B, H, dk)
            s = np.einsum("bhd,bhdt->bht", qh, kc[LAYER, :, :, :, :Wn]) + full
            ref = np.einsum("bht,bhtd->bhd", _softmax(s), vc[LAYER, :, :, :Wn]).reshape(B, I)
            err = float(np.abs(o.numpy() - ref).max())
            ok = err < 1e-4
        bad += not ok
        print(f"{name:16s} {'ok' if ok else 'WRONG'}  max abs err {err:.2e}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]))
    else:
        sys.exit(run(Path(sys.argv[2])))
