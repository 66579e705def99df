"""Making checkpoints for tests and benchmarks (seeded random init) and saving trained ones, in
the untied form the released CharsiuG2P models use. Needs torch and transformers."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..model.archs import resolve_arch

__all__ = ["SAVE_DTYPES", "make", "save_untied"]

SAVE_DTYPES = ("float16", "bfloat16", "float32")  # what `save_untied` writes


def save_untied(model, out_dir: str | os.PathLike, dtype: str = "float32") -> Path:
    """Save a transformers T5 with `lm_head.weight` written out and `tie_word_embeddings: false`.

    transformers 5 ties T5's head to the embeddings in memory and then drops `lm_head.weight`
    on save; writing it explicitly keeps the checkpoint untied, like the released CharsiuG2P
    models, and reads the same in transformers 4 and 5."""
    import torch
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tdtype = {name: getattr(torch, name) for name in SAVE_DTYPES}[dtype]
    sd = {k: v.detach().to("cpu", tdtype).contiguous().clone() for k, v in model.state_dict().items()
          if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")}
    sd["lm_head.weight"] = model.lm_head.weight.detach().to("cpu", tdtype).contiguous().clone()
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("scale_decoder_outputs", None)
    cfg.update(tie_word_embeddings=False, dtype=dtype, architectures=["T5ForConditionalGeneration"],
               decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def make(arch: str, seed: int, out_dir: str | os.PathLike, eos_shadow: int | None = None) -> Path:
    """A seeded random-init checkpoint of a named (or overridden) architecture.

    Random weights almost never emit EOS. With `eos_shadow=t` the head's EOS row becomes 1.01x
    token t's row, so EOS wins wherever t would have won with a positive logit: rows then end at
    different steps (some never), exercising early exit, padding and truncation, while the
    model stays an ordinary T5. An arch with `tie_word_embeddings=true` keeps the older T5 form:
    the head is the embedding, and the decoder output is scaled by d_model**-0.5."""
    import torch
    import transformers

    arch_cfg = resolve_arch(arch)
    cfg = transformers.T5Config(**arch_cfg)  # transformers 5 reads it tied whatever it says
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(cfg)
    if arch_cfg.get("tie_word_embeddings"):
        if eos_shadow is not None:
            with torch.no_grad():
                model.shared.weight[1] = 1.01 * model.shared.weight[eos_shadow]
        out = Path(out_dir)
        model.save_pretrained(out)
        return out
    # T5's own init for an untied head (std 1.0), drawn after the body so seeds stay stable
    head = torch.nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
    torch.nn.init.normal_(head.weight, std=1.0)
    if eos_shadow is not None:
        head.weight.data[1] = 1.01 * head.weight.data[eos_shadow]
    model.lm_head = head
    return save_untied(model, out_dir)
