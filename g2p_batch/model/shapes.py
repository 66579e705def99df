"""The model's shape and its parameter list: shared by the compiler (tvm.relax) and the
runtime, which must import without the TVM compiler (runtime-only TVM on GPU nodes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import CheckpointError

NEG_INF = -3.4028234663852886e38  # torch.finfo(float32).min, HF's additive mask value
PACK = 16  # CPU dense weights are packed [N/16, K, 16]
TOKEN_BLOCK = 16  # the packed encoder holds its real tokens in [m, TOKEN_BLOCK] rows: dense row tiles divide it


@dataclass(frozen=True)
class T5Shape:
    vocab: int
    d_model: int
    d_kv: int
    heads: int
    d_ff: int
    enc_layers: int
    dec_layers: int
    num_buckets: int
    max_distance: int
    eps: float
    gated: bool
    act: str            # "gelu_new" | "relu"
    scale_output: bool  # original-T5 d_model**-0.5 before the head (tied embeddings)

    @property
    def inner(self) -> int:
        return self.heads * self.d_kv

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "T5Shape":
        proj = cfg.get("feed_forward_proj", "relu")
        gated = proj.startswith("gated-")
        act = proj.split("-")[-1]
        act = {"gelu": "gelu_new", "gelu_new": "gelu_new", "relu": "relu"}.get(act)
        if act is None:
            raise CheckpointError(f"feed_forward_proj {proj!r} is not supported; use gated-gelu, gelu or relu")
        # transformers 5 writes scale_decoder_outputs; older configs imply it by tying
        scale = cfg.get("scale_decoder_outputs", cfg.get("tie_word_embeddings", True) is not False)
        shape = cls(
            vocab=cfg["vocab_size"], d_model=cfg["d_model"], d_kv=cfg["d_kv"], heads=cfg["num_heads"],
            d_ff=cfg["d_ff"], enc_layers=cfg["num_layers"],
            dec_layers=cfg.get("num_decoder_layers") or cfg["num_layers"],
            num_buckets=cfg.get("relative_attention_num_buckets", 32),
            max_distance=cfg.get("relative_attention_max_distance", 128),
            eps=cfg.get("layer_norm_epsilon", 1e-6), gated=gated, act=act, scale_output=bool(scale))
        shape.check()
        return shape

    def check(self) -> None:
        for name, n in (("inner dim (num_heads*d_kv)", self.inner), ("d_model", self.d_model),
                        ("d_ff", self.d_ff), ("vocab_size", self.vocab)):
            if n % PACK:
                raise CheckpointError(f"{name} = {n} is not a multiple of {PACK}; the packed dense "
                                 f"kernels need that (pad the checkpoint's dims)")

    def to_dict(self) -> dict:
        return asdict(self)


PRECISIONS = ("fp32", "bf16")
_DENSE = ("qkv", "o", "wi", "wo", "q_cross", "o_cross", "cross_kv", "lm_head")


def param_dtype(name: str, precision: str = "fp32") -> str:
    """A parameter's dtype: bf16 sets keep their dense weights as bf16 bit patterns (uint16),
    everything else (embeddings, norms, position biases) in float32."""
    return "uint16" if precision == "bf16" and name.rsplit(".", 1)[-1] in _DENSE else "float32"


def param_specs(s: T5Shape, packed: bool, L: int, T: int, precision: str = "fp32") -> dict[str, list[tuple[str, tuple]]]:
    """Per function, the (name, shape) of every weight parameter in call order; bf16 dense
    weights are packed [N/16, K/2, 32] (`compile.amx`), fp32 ones [N/16, K, 16] on CPU."""

    def w(name, n, k):
        if precision == "bf16":
            return (name, (n // PACK, k // 2, 2 * PACK))
        return (name, (n // PACK, k, PACK) if packed else (n, k))

    D, I, F = s.d_model, s.inner, s.d_ff
    ff_in = 2 * F if s.gated else F
    enc = [("enc_bias", (s.heads, L, L)), ("shared", (s.vocab, D))]
    for i in range(s.enc_layers):
        enc += [(f"enc{i}.ln_attn", (D,)), w(f"enc{i}.qkv", 3 * I, D), w(f"enc{i}.o", D, I),
                (f"enc{i}.ln_ff", (D,)), w(f"enc{i}.wi", ff_in, D), w(f"enc{i}.wo", D, F)]
    enc += [("enc_final_ln", (D,)), w("cross_kv", s.dec_layers * 2 * I, D)]
    step = [("dec_bias", (s.heads, T, T)), ("shared", (s.vocab, D))]
    for i in range(s.dec_layers):
        step += [(f"dec{i}.ln_self", (D,)), w(f"dec{i}.qkv", 3 * I, D), w(f"dec{i}.o", D, I),
                 (f"dec{i}.ln_cross", (D,)), w(f"dec{i}.q_cross", I, D), w(f"dec{i}.o_cross", D, I),
                 (f"dec{i}.ln_ff", (D,)), w(f"dec{i}.wi", ff_in, D), w(f"dec{i}.wo", D, F)]
    step += [("dec_final_ln", (D,)), w("lm_head", s.vocab, D)]
    return {"encode": enc, "step": step}


STEP_WINDOW = 16  # most outputs end within 16 ids (test split mean: 14 incl. EOS)


def step_windows(T: int) -> list[int]:
    """Self-attention spans for which a step function is built: the full cache, plus a short
    window used while pos < window, so early steps do not scan T mostly-empty cache slots.
    Masked slots contribute exact zeros, so the window changes no result."""
    return [T] + ([STEP_WINDOW] if T > STEP_WINDOW else [])


def key_block(T: int) -> int:
    """Key positions per block of the CPU's self-attention key cache: STEP_WINDOW when it
    divides T, else the whole cache in one block."""
    return STEP_WINDOW if T % STEP_WINDOW == 0 else T


def key_cache_shape(Ld: int, B: int, H: int, dk: int, T: int, packed: bool) -> tuple:
    """The self-attention key cache, transposed. On CPU in blocks of `key_block` positions,
    [Ld, B, H, T/kb, d_kv, kb]: the short window's keys are then one contiguous 4 KB run per
    (row, head), where rows of T=32 made each read and each cache write touch a 128-byte pair of
    lines for 64 useful bytes. GPUs: [Ld, B, H, d_kv, T]."""
    return (Ld, B, H, T // key_block(T), dk, key_block(T)) if packed else (Ld, B, H, dk, T)


def cache_shapes(s: T5Shape, B: int, T: int, packed: bool) -> tuple[tuple, tuple]:
    """The self-attention caches: keys (`key_cache_shape`), values [Ld, B, H, T, d_kv]."""
    Ld, H, dk = s.dec_layers, s.heads, s.d_kv
    return key_cache_shape(Ld, B, H, dk, T, packed), (Ld, B, H, T, dk)


def step_function_name(T: int, window: int) -> str:
    return "step" if window == T else f"step_w{window}"
