"""Hugging Face T5 weights -> the parameters `model.param_specs` asks for (numpy only).

Fusions: q/k/v into one `qkv` matrix, `wi_0`/`wi_1` into one `wi` (on CPU interleaved in 16-row
groups, see `interleave_gated`), every decoder layer's cross-attention k/v into one `cross_kv`;
CPU builds pack each `[N, K]` matrix to `[N/16, K, 16]`.
Relative-position biases become per-bucket tables (the decoder's with the causal mask folded
in), computed once here rather than per step.

Checkpoint weights deliberately not used: `encoder.embed_tokens.weight` and
`decoder.embed_tokens.weight` (copies of `shared.weight`). Any other tensor the mapping does not
read is an error naming it: a checkpoint we would silently decode wrong.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import CheckpointError
from .shapes import NEG_INF, PACK, T5Shape

__all__ = ["DROPPED", "bucket_params", "build_params", "decoder_bias", "encoder_bias", "interleave_gated",
           "relative_bucket", "to_bf16"]

DROPPED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


class _Weights(dict):
    """The checkpoint's tensors, remembering which were read; a missing one is named."""

    def __init__(self, weights):
        super().__init__(weights)
        self.read: set[str] = set()

    def __getitem__(self, key):
        if key not in self:
            raise CheckpointError(f"the checkpoint has no tensor {key!r}, which a T5 of this config needs; "
                                  "check config.json matches the weights")
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        return self[key] if key in self else default


def relative_bucket(rel: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """`T5Attention._relative_position_bucket`, in float32 like torch so buckets match exactly."""
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).astype(rel.dtype) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    with np.errstate(divide="ignore", invalid="ignore"):
        large = max_exact + (
            np.log(rel.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return buckets + np.where(is_small, rel, large)


def encoder_bias(emb: np.ndarray, L: int, s: T5Shape) -> np.ndarray:
    ctx = np.arange(L)[:, None]
    mem = np.arange(L)[None, :]
    b = relative_bucket(mem - ctx, True, s.num_buckets, s.max_distance)
    return np.ascontiguousarray(emb[b].transpose(2, 0, 1), dtype=np.float32)  # [H, L, L]


def decoder_bias(emb: np.ndarray, T: int, s: T5Shape) -> np.ndarray:
    ctx = np.arange(T)[:, None]
    mem = np.arange(T)[None, :]
    b = relative_bucket(mem - ctx, False, s.num_buckets, s.max_distance)
    table = emb[b].transpose(2, 0, 1).astype(np.float32)  # [H, T(query), T(key)]
    causal = mem > ctx
    table[:, causal] = NEG_INF
    return np.ascontiguousarray(table)


def _pack(w: np.ndarray) -> np.ndarray:
    n, k = w.shape
    return np.ascontiguousarray(w.reshape(n // PACK, PACK, k).transpose(0, 2, 1))


def to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), rounded to nearest even like `compile.amx.bf16_bits`."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def _pack_bf16(w: np.ndarray) -> np.ndarray:
    """[N, K] -> bf16 [N/16, K/2, 32]: per 16-column strip, k pairs (2p, 2p+1) of each column
    side by side, the layout of an AMX `tdpbf16ps` weight tile."""
    n, k = w.shape
    return np.ascontiguousarray(to_bf16(w).reshape(n // PACK, PACK, k // 2, 2).transpose(0, 2, 1, 3)
                                .reshape(n // PACK, k // 2, 2 * PACK))


def interleave_gated(wi: np.ndarray) -> np.ndarray:
    """[wi_0; wi_1] ([2F, K]) -> rows in PACK-row groups alternating gate and linear (gate rows
    0-15, linear rows 0-15, gate rows 16-31, ...): after `_pack`, strip 2c and 2c+1 hold the
    two halves of outputs 16c..16c+15, as `kernels.gated_dense` reads them."""
    two_f, k = wi.shape
    halves = wi.reshape(2, two_f // (2 * PACK), PACK, k)  # [gate|linear, group, row, k]
    return np.ascontiguousarray(halves.transpose(1, 0, 2, 3).reshape(two_f, k))


def bucket_params(params: dict[str, np.ndarray], s: T5Shape, L: int, T: int) -> dict[str, np.ndarray]:
    """The shape-dependent parameters of one bucket: position-bias tables for L inputs, T steps."""
    return {"enc_bias": encoder_bias(params["enc_rel_emb"], L, s), "dec_bias": decoder_bias(params["dec_rel_emb"], T, s)}


def build_params(weights: dict[str, np.ndarray], s: T5Shape, packed: bool,
                 precision: str = "fp32") -> dict[str, np.ndarray]:
    """Every shape-independent parameter by name; `model.param_specs` picks and orders them per
    function, `bucket_params` adds the bias tables. bf16 sets hold their dense weights as bf16
    (`_pack_bf16`), the rest as float32."""
    W = _Weights(weights)
    mat = _pack_bf16 if precision == "bf16" else _pack if packed else np.ascontiguousarray
    out: dict[str, np.ndarray] = {"shared": W["shared.weight"]}

    def ff(prefix):
        if s.gated:
            wi = np.concatenate([W[f"{prefix}.DenseReluDense.wi_0.weight"], W[f"{prefix}.DenseReluDense.wi_1.weight"]])
            return interleave_gated(wi) if packed else wi
        return W[f"{prefix}.DenseReluDense.wi.weight"]

    def qkv(prefix):
        return np.concatenate([W[f"{prefix}.{n}.weight"] for n in "qkv"])

    e = "encoder.block"
    out["enc_rel_emb"] = W[f"{e}.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    for i in range(s.enc_layers):
        out[f"enc{i}.ln_attn"] = W[f"{e}.{i}.layer.0.layer_norm.weight"]
        out[f"enc{i}.qkv"] = mat(qkv(f"{e}.{i}.layer.0.SelfAttention"))
        out[f"enc{i}.o"] = mat(W[f"{e}.{i}.layer.0.SelfAttention.o.weight"])
        out[f"enc{i}.ln_ff"] = W[f"{e}.{i}.layer.1.layer_norm.weight"]
        out[f"enc{i}.wi"] = mat(ff(f"{e}.{i}.layer.1"))
        out[f"enc{i}.wo"] = mat(W[f"{e}.{i}.layer.1.DenseReluDense.wo.weight"])
    out["enc_final_ln"] = W["encoder.final_layer_norm.weight"]

    d = "decoder.block"
    out["dec_rel_emb"] = W[f"{d}.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    cross = []
    for i in range(s.dec_layers):
        out[f"dec{i}.ln_self"] = W[f"{d}.{i}.layer.0.layer_norm.weight"]
        out[f"dec{i}.qkv"] = mat(qkv(f"{d}.{i}.layer.0.SelfAttention"))
        out[f"dec{i}.o"] = mat(W[f"{d}.{i}.layer.0.SelfAttention.o.weight"])
        out[f"dec{i}.ln_cross"] = W[f"{d}.{i}.layer.1.layer_norm.weight"]
        out[f"dec{i}.q_cross"] = mat(W[f"{d}.{i}.layer.1.EncDecAttention.q.weight"])
        out[f"dec{i}.o_cross"] = mat(W[f"{d}.{i}.layer.1.EncDecAttention.o.weight"])
        cross += [W[f"{d}.{i}.layer.1.EncDecAttention.k.weight"], W[f"{d}.{i}.layer.1.EncDecAttention.v.weight"]]
        out[f"dec{i}.ln_ff"] = W[f"{d}.{i}.layer.2.layer_norm.weight"]
        out[f"dec{i}.wi"] = mat(ff(f"{d}.{i}.layer.2"))
        out[f"dec{i}.wo"] = mat(W[f"{d}.{i}.layer.2.DenseReluDense.wo.weight"])
    out["cross_kv"] = mat(np.concatenate(cross))
    out["dec_final_ln"] = W["decoder.final_layer_norm.weight"]
    # an untied head when the checkpoint has one, else the (tied) embeddings, as transformers does
    out["lm_head"] = mat(W.get("lm_head.weight", W["shared.weight"]))
    unknown = sorted(set(W) - W.read - set(DROPPED))
    if unknown:
        raise CheckpointError(f"the checkpoint holds tensors a T5 of its config does not use: {unknown[:5]}"
                              f"{' ...' if len(unknown) > 5 else ''}; its config.json does not describe these weights")
    return {k: v if v.dtype == np.uint16 else np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}
