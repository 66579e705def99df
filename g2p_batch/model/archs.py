"""Named T5 shapes: the released CharsiuG2P architectures plus small ones for fast tests.

Every entry is a dict of `transformers.T5Config` keyword arguments, so a checkpoint made from
an arch name is an ordinary Hugging Face T5 checkpoint and nothing downstream special-cases it.
"""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["ARCHS", "BYT5_VOCAB", "resolve_arch"]

BYT5_VOCAB = 384  # 3 specials + 256 bytes, padded to 384 as in google/byt5

_TINY = dict(
    vocab_size=BYT5_VOCAB, d_model=256, d_kv=64, num_heads=6, d_ff=1024,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6, dropout_rate=0.1, pad_token_id=0, eos_token_id=1,
    decoder_start_token_id=0,
)

ARCHS: dict[str, dict] = {
    # the released charsiu/g2p_multilingual_byT5_tiny_{8,12,16}_layers_100
    "tiny_8": {**_TINY, "num_layers": 8, "num_decoder_layers": 4},
    "tiny_12": {**_TINY, "num_layers": 12, "num_decoder_layers": 4},
    "tiny_16": {**_TINY, "num_layers": 16, "num_decoder_layers": 4},
    # byt5-small dims (charsiu/g2p_multilingual_byT5_small_100)
    "small": {**_TINY, "d_model": 1472, "d_kv": 64, "num_heads": 6, "d_ff": 3584,
              "num_layers": 12, "num_decoder_layers": 4},
    # the embedded default (MODEL_CARD.md): 3 encoder layers and 1 decoder layer
    "tiny_3_1": {**_TINY, "num_layers": 3, "num_decoder_layers": 1},
    # test-only shapes: same code paths (gated-gelu, relative bias, untied head), fewer FLOPs
    "micro": {**_TINY, "d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128,
              "num_layers": 2, "num_decoder_layers": 2},
    "micro_3_1": {**_TINY, "d_model": 64, "d_kv": 16, "num_heads": 4, "d_ff": 128,
                  "num_layers": 3, "num_decoder_layers": 1},
}

# keys a user may override on top of a named arch: `--arch tiny_8,num_layers=12`, and the
# older T5 forms: `feed_forward_proj=relu`, `tie_word_embeddings=true` (a tied, scaled head)
_INT_KEYS = {"d_model", "d_kv", "num_heads", "d_ff", "num_layers", "num_decoder_layers",
             "vocab_size", "relative_attention_num_buckets", "relative_attention_max_distance"}
_KEYS = _INT_KEYS | {"feed_forward_proj", "tie_word_embeddings"}


def resolve_arch(spec: str) -> dict:
    """`name[,key=value...]` -> T5Config kwargs. Unknown names and keys fail with the choices."""
    name, *overrides = [p.strip() for p in spec.split(",") if p.strip()]
    if name not in ARCHS:
        raise ConfigError(f"unknown arch {name!r}; choose one of {sorted(ARCHS)} "
                          f"(optionally followed by ,key=value overrides)")
    cfg = dict(ARCHS[name])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in _KEYS or (key == "tie_word_embeddings" and value not in ("true", "false")):
            raise ConfigError(f"bad arch override {item!r}; use key=value with key in {sorted(_KEYS)} "
                              "(tie_word_embeddings=true|false)")
        cfg[key] = int(value) if key in _INT_KEYS else (value == "true" if key == "tie_word_embeddings" else value)
    if cfg["num_heads"] <= 0 or cfg["d_kv"] <= 0:
        raise ConfigError(f"arch {spec!r}: num_heads ({cfg['num_heads']}) and d_kv "
                          f"({cfg['d_kv']}) must be positive")
    return cfg
