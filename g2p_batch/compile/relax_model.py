"""CharsiuG2P's T5 as Relax functions per bucket: encode, then step once per output id.

- `encode(ids, where, gather, mask)`: the encoder over the batch's real tokens only, packed
  into TOKEN_BLOCK*m rows (m varies per batch: no work on padding), then every decoder layer's
  cross-attention keys/values scattered back to the [B, L] cache layout; once per batch.
- `step(tokens, pos, k_cache, v_cache, cross_k, cross_v, mask)`: one new token per row through
  the decoder; the self-attention cache is written in place at `pos`, nothing is recomputed.
  It returns the greedy next id and its log-probability, so only ids cross to the host.
- `step_logits(...)`: the same step returning the logits [B, V] instead, for beam search, which
  needs every id's score (the runtime keeps K beams per word as K rows of the batch).

Weights are function parameters (after the inputs, in `param_specs` order), so one params file
serves every compiled bucket and the shared libraries stay small. In bf16 sets (`KernelTarget.precision`)
the dense layers are `amx.amx_dense` on bf16 weights and bf16 inputs: norms write bf16, attention
outputs pass through `amx.to_bf16`, the residual stream stays fp32. Shapes are fixed per bucket
except the encoder's token count, a multiple of TOKEN_BLOCK that the hand schedules tile exactly.
"""

from __future__ import annotations

from tvm import relax, tirx

from ..model.shapes import (
    PACK,
    TOKEN_BLOCK,
    T5Shape,
    cache_shapes,
    param_dtype,
    param_specs,
    step_function_name,
    step_windows,
)
from . import amx
from . import kernels as K


class _Builder:
    """Emits call_tir bindings, adding each distinct kernel to the module once."""

    def __init__(self, bb: relax.BlockBuilder, tgt: K.KernelTarget):
        self.bb, self.tgt, self.cache = bb, tgt, {}
        self.m = tirx.Var("m", "int64")  # the encoder's token blocks: rows M=None mean TOKEN_BLOCK*m tokens
        self.m32 = tirx.Cast("int32", self.m)  # kernels index in int32 (int64 defeats the schedules)

    def kernel(self, key, make):
        if key not in self.cache:
            self.cache[key] = self.bb.add_func(make().with_attr("global_symbol", key), key)
        return self.cache[key]

    def call(self, key, make, args, out_shape, dtype="float32", tokens=False):
        """`tokens`: the kernel takes the packed encoder's m as a scalar after its tensor inputs."""
        gv = self.kernel(key, make)
        if isinstance(out_shape, list):
            sinfo = [relax.TensorType(o, d) for o, d in out_shape]
        else:
            sinfo = relax.TensorType(out_shape, dtype)
        return self.bb.emit(relax.call_tir(gv, args + ([relax.prim_value(self.m32)] if tokens else []), sinfo))

    def rows(self, M):
        return (TOKEN_BLOCK * self.m, "n") if M is None else (M, M)

    def dense(self, x, w, M, Kd, N, residual=None):
        rows, tag = self.rows(M)
        if self.tgt.precision == "bf16":  # x is bf16 (see `bf16_input`)
            ep = "none" if residual is None else "residual"
            return self.call(f"amx_dense_{tag}x{Kd}x{N}_{ep}", lambda: amx.amx_dense(M, Kd, N, ep),
                             [x, w] + ([residual] if residual is not None else []), (rows, N), tokens=M is None)
        key = f"dense_{tag}x{Kd}x{N}" + ("_res" if residual is not None else "")
        args = [x, w] + ([residual] if residual is not None else [])
        return self.call(key, lambda: K.dense(M, Kd, N, self.tgt, residual=residual is not None), args, (rows, N),
                         tokens=M is None)

    def rms(self, x, w, M, D, eps, scale=1.0):
        rows, tag = self.rows(M)
        key = f"rms_{tag}x{D}" + ("_scaled" if scale != 1.0 else "")
        return self.call(key, lambda: K.rms_norm(M, D, eps, self.tgt, scale), [x, w], (rows, D), self.act_dtype,
                         tokens=M is None)

    @property
    def act_dtype(self) -> str:
        """The dtype of a dense layer's input: bf16 bits in bf16 sets."""
        return "uint16" if self.tgt.precision == "bf16" else "float32"

    def bf16_input(self, x, M, D):
        """An fp32 activation (attention's output) as a dense input of this set's precision."""
        if self.tgt.precision != "bf16":
            return x
        rows, tag = self.rows(M)
        return self.call(f"to_bf16_{tag}x{D}", lambda: amx.to_bf16(M, D), [x], (rows, D), "uint16", tokens=M is None)

    def ff(self, s: T5Shape, h, residual, wi, wo, M):
        """residual + wo(act(wi(h))), T5's feed-forward sublayer after its norm."""
        F = s.d_ff
        rows, tag = self.rows(M)
        if self.tgt.precision == "bf16":  # gelu_new(a) * b on the AMX block, written as bf16
            assert s.gated and s.act == "gelu_new", "checked by artifacts.ensure_artifacts"
            act = self.call(f"amx_dense_{tag}x{s.d_model}x{2 * F}_gated",
                            lambda: amx.amx_dense(M, s.d_model, 2 * F, "gated"), [h, wi], (rows, F), "uint16",
                            tokens=M is None)
        elif s.gated and self.tgt.packed:  # the gate in the product's tile (kernels.gated_dense)
            act = self.call(f"gated_dense_{s.act}_{tag}x{s.d_model}x{F}",
                            lambda: K.gated_dense(M, s.d_model, F, s.act, self.tgt), [h, wi],
                            (rows, F // PACK, PACK), tokens=M is None)
            act = self.bb.emit(relax.op.reshape(act, (rows, F)))
        elif s.gated:
            hid = self.dense(h, wi, M, s.d_model, 2 * F)
            act = self.call(f"gated_{s.act}_{tag}x{F}", lambda: K.gated_act(M, F, s.act), [hid], (rows, F),
                            tokens=M is None)
        else:
            hid = self.dense(h, wi, M, s.d_model, F)
            act = self.call(f"relu_{tag}x{F}", lambda: K.relu_act(M, F, self.tgt), [hid], (rows, F),
                            tokens=M is None)
        return self.dense(act, wo, M, F, s.d_model, residual=residual)


def _params(specs, precision):
    return [relax.Var(name.replace(".", "_"), relax.TensorType(shape, param_dtype(name, precision)))
            for name, shape in specs]


def build_module(s: T5Shape, B: int, L: int, T: int, tgt: K.KernelTarget):
    """The IRModule for one bucket (B rows, L input ids, T output steps) and its param specs."""
    specs = param_specs(s, tgt.packed, L, T, tgt.precision)
    bb = relax.BlockBuilder()
    kb = _Builder(bb, tgt)
    D, I, H, dk, Ld = s.d_model, s.inner, s.heads, s.d_kv, s.dec_layers
    m = kb.m
    n_tok = TOKEN_BLOCK * m

    ids = relax.Var("ids", relax.TensorType((m, TOKEN_BLOCK), "int32"))
    where = relax.Var("where", relax.TensorType((m, TOKEN_BLOCK), "int32"))
    gather = relax.Var("gather", relax.TensorType((B, L), "int32"))
    mask = relax.Var("mask", relax.TensorType((B, L), "float32"))
    p = _params(specs["encode"], tgt.precision)
    with bb.function("encode", [ids, where, gather, mask] + p):
        with bb.dataflow():
            P = dict(zip((n for n, _ in specs["encode"]), p))
            flat_ids = bb.emit(relax.op.reshape(ids, (n_tok,)))
            flat_where = bb.emit(relax.op.reshape(where, (n_tok,)))
            x = kb.call("embed_n", lambda: K.embed(None, s.vocab, D, tgt), [flat_ids, P["shared"]], (n_tok, D),
                        tokens=True)
            for i in range(s.enc_layers):
                h = kb.rms(x, P[f"enc{i}.ln_attn"], None, D, s.eps)
                qkv = kb.dense(h, P[f"enc{i}.qkv"], None, D, 3 * I)
                a = kb.call(f"enc_attn_{B}x{L}", lambda: K.encoder_attention(B, L, H, dk, tgt),
                            [qkv, flat_where, gather, P["enc_bias"], mask], (n_tok, I), tokens=True)
                x = kb.dense(kb.bf16_input(a, None, I), P[f"enc{i}.o"], None, I, D, residual=x)
                h = kb.rms(x, P[f"enc{i}.ln_ff"], None, D, s.eps)
                x = kb.ff(s, h, x, P[f"enc{i}.wi"], P[f"enc{i}.wo"], None)
            hidden = kb.rms(x, P["enc_final_ln"], None, D, s.eps)
            kv = kb.dense(hidden, P["cross_kv"], None, D, Ld * 2 * I)
            ck, cv = kb.call(f"split_cross_{B}x{L}", lambda: K.split_cross_kv(Ld, B, L, H, dk, tgt), [kv, gather],
                             [((Ld, B, H, dk, L), "float32"), ((Ld, B, H, L, dk), "float32")], tokens=True)
            out = bb.emit_output(relax.Tuple([ck, cv]))
        bb.emit_func_output(out)
    # static memory planning: the encoder never holds more tokens than the padded batch
    bb.update_func(bb.get().get_global_var("encode"),
                   bb.get()["encode"].with_attr("tir_var_upper_bound", {"m": -(-B * L // TOKEN_BLOCK)}))

    for window in step_windows(T):
        _emit_step(bb, kb, s, specs["step"], B, L, T, window, tgt)
    _emit_step(bb, kb, s, specs["step"], B, L, T, T, tgt, logits=True)
    return bb.get(), specs


def _emit_step(bb, kb, s: T5Shape, spec, B: int, L: int, T: int, W: int, tgt: K.KernelTarget,
               logits: bool = False) -> None:
    D, I, H, dk, Ld = s.d_model, s.inner, s.heads, s.d_kv, s.dec_layers
    tokens = relax.Var("tokens", relax.TensorType((B,), "int32"))
    pos = relax.Var("pos", relax.TensorType((1,), "int32"))
    kshape, vshape = cache_shapes(s, B, T, tgt.packed)
    kc = relax.Var("k_cache", relax.TensorType(kshape, "float32"))
    vc = relax.Var("v_cache", relax.TensorType(vshape, "float32"))
    ck = relax.Var("cross_k", relax.TensorType((Ld, B, H, dk, L), "float32"))
    cv = relax.Var("cross_v", relax.TensorType((Ld, B, H, L, dk), "float32"))
    mask = relax.Var("mask", relax.TensorType((B, L), "float32"))
    p = _params(spec, tgt.precision)
    name = "step_logits" if logits else step_function_name(T, W)
    with bb.function(name, [tokens, pos, kc, vc, ck, cv, mask] + p):
        with bb.dataflow():
            P = dict(zip((n for n, _ in spec), p))
            x = kb.call(f"embed_{B}", lambda: K.embed(B, s.vocab, D, tgt), [tokens, P["shared"]], (B, D))
            row = kb.call(f"bias_row_{T}_w{W}", lambda: K.bias_row(H, T, tgt, W), [P["dec_bias"], pos], (H, W))
            k_now, v_now = kc, vc
            for i in range(Ld):
                h = kb.rms(x, P[f"dec{i}.ln_self"], B, D, s.eps)
                qkv = kb.dense(h, P[f"dec{i}.qkv"], B, D, 3 * I)
                gv = kb.kernel(f"kv_write_{B}x{T}_l{i}", lambda i=i: K.kv_write(Ld, B, H, dk, T, i, tgt))
                kv = bb.emit(relax.call_tir_inplace(gv, [k_now, v_now, qkv, pos], [0, 1], [k_now.ty, v_now.ty]))
                k_now, v_now = bb.emit(relax.TupleGetItem(kv, 0)), bb.emit(relax.TupleGetItem(kv, 1))
                a = kb.call(f"self_attn_{B}x{T}_w{W}_l{i}",
                            lambda i=i: K.step_attention(Ld, B, H, dk, T, i, 3 * I, tgt, cross=False, window=W),
                            [qkv, k_now, v_now, row], (B, I))
                x = kb.dense(kb.bf16_input(a, B, I), P[f"dec{i}.o"], B, I, D, residual=x)
                h = kb.rms(x, P[f"dec{i}.ln_cross"], B, D, s.eps)
                q = kb.dense(h, P[f"dec{i}.q_cross"], B, D, I)
                a = kb.call(f"cross_attn_{B}x{L}_l{i}",
                            lambda i=i: K.step_attention(Ld, B, H, dk, L, i, I, tgt, cross=True),
                            [q, ck, cv, mask], (B, I))
                x = kb.dense(kb.bf16_input(a, B, I), P[f"dec{i}.o_cross"], B, I, D, residual=x)
                h = kb.rms(x, P[f"dec{i}.ln_ff"], B, D, s.eps)
                x = kb.ff(s, h, x, P[f"dec{i}.wi"], P[f"dec{i}.wo"], B)
            scale = D ** -0.5 if s.scale_output else 1.0
            h = kb.rms(x, P["dec_final_ln"], B, D, s.eps, scale)
            scores = kb.dense(h, P["lm_head"], B, D, s.vocab)
            if logits:
                out = bb.emit_output(relax.Tuple([scores, k_now, v_now]))
            else:
                nxt, logp = kb.call(f"greedy_{B}x{s.vocab}", lambda: K.greedy_head(B, s.vocab, tgt), [scores],
                                    [((B,), "int32"), ((B,), "float32")])
                out = bb.emit_output(relax.Tuple([nxt, logp, k_now, v_now]))
        bb.emit_func_output(out)
