"""Finding, reading and making Hugging Face T5 checkpoints.

Reading needs numpy and safetensors only (torch just for legacy `.bin` files), so the decode
path and Ray actors never import torch. Making a checkpoint is for tests and benchmarks and
uses transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .tokenizer import PromptFormat

DEFAULT_CHECKPOINT = "default"
_PACKAGED = Path(__file__).parent / "checkpoints"
# Beside config.json: how the checkpoint was trained (prompt format, languages), written by
# `train`. A checkpoint without it (a released CharsiuG2P one) follows CharsiuG2P's conventions.
METADATA_FILE = "g2p_batch.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or read; the message says what to pass instead."""


@dataclass
class Checkpoint:
    name: str                      # short name, used for the artifact folder
    path: Path                     # local directory holding config.json and the weights
    config: dict
    files: list[Path]              # the weight files, in name order
    sha256: str                    # of their bytes, in that order
    metadata: dict = field(default_factory=dict)  # METADATA_FILE, {} when absent

    def prompt(self, space_after_colon: bool | None = None, input_eos: bool | None = None) -> PromptFormat:
        """Explicit settings win, then the checkpoint's own metadata, then CharsiuG2P's convention."""
        return PromptFormat.from_dict(self.metadata.get("prompt", {})).override(space_after_colon, input_eos)

    @property
    def trained_languages(self) -> list[str] | None:
        """The codes the checkpoint saw in training, when its metadata says (None: unknown)."""
        langs = self.metadata.get("trained_languages")
        return sorted(langs) if langs else None

    @cached_property
    def weights(self) -> dict[str, np.ndarray]:
        """All tensors as float32, read on first use: a cached artifact set only needs the
        identity (config + sha256), not the decoded weights."""
        weights: dict[str, np.ndarray] = {}
        for f in self.files:
            if f.suffix == ".safetensors":
                from safetensors.numpy import load_file
                try:
                    part = load_file(str(f))
                except TypeError:  # bf16 has no numpy dtype: go through torch
                    part = _load_torch_file(f, safetensors=True)
            else:
                part = _load_torch_file(f, safetensors=False)
            weights.update({k: np.asarray(v, dtype=np.float32) for k, v in part.items()})
        return weights

    def identity(self) -> dict:
        keep = ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers", "num_decoder_layers",
                "feed_forward_proj", "relative_attention_num_buckets", "relative_attention_max_distance",
                "layer_norm_epsilon", "tie_word_embeddings", "scale_decoder_outputs")
        return {"name": self.name, "weights_sha256": self.sha256,
                "config": {k: self.config[k] for k in keep if k in self.config}}


def resolve(ref: str | os.PathLike) -> tuple[str, Path]:
    """'default' | local directory | hub id -> (name, local directory)."""
    ref = str(ref)
    if ref == DEFAULT_CHECKPOINT:
        path = _PACKAGED / "g2p_tiny_3_1"
        if not (path / "config.json").exists():
            raise CheckpointError(f"the embedded default checkpoint is missing from {path}; reinstall g2p-batch")
        return "g2p_tiny_3_1", path
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json; pass a Hugging Face checkpoint directory")
        return path.resolve().name, path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint's directory")
    if ref.count("/") != 1 or ref.startswith((".", "/")):
        raise CheckpointError(f"{ref!r} is neither a local directory nor a hub id like "
                              f"'charsiu/g2p_multilingual_byT5_tiny_8_layers_100'")
    try:
        from huggingface_hub import snapshot_download
        local = snapshot_download(ref, allow_patterns=["config.json", "*.safetensors", "*.bin", "*.json"])
    except Exception as exc:  # offline, unknown repo, no huggingface_hub: all one fix for the user
        raise CheckpointError(
            f"could not fetch {ref!r} from the model hub ({type(exc).__name__}: {str(exc)[:200]}); "
            f"download it where the hub is reachable and pass the local directory instead") from exc
    return ref.split("/")[-1], Path(local)


def _weight_files(path: Path) -> list[Path]:
    st = sorted(path.glob("*.safetensors"))
    return st if st else sorted(path.glob("pytorch_model*.bin"))


def load(ref: str | os.PathLike) -> Checkpoint:
    name, path = resolve(ref)
    config = json.loads((path / "config.json").read_text())
    files = _weight_files(path)
    if not files:
        raise CheckpointError(f"{path} holds no model.safetensors or pytorch_model.bin")
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return Checkpoint(name=name, path=path, config=config, files=files, sha256=digest.hexdigest(),
                      metadata=read_metadata(path))


def read_metadata(path: Path) -> dict:
    """The checkpoint's METADATA_FILE, checked; {} when it has none."""
    f = Path(path) / METADATA_FILE
    if not f.exists():
        return {}
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
        PromptFormat.from_dict(meta.get("prompt", {}))
        langs = meta.get("trained_languages")
        if langs is not None and not (isinstance(langs, list) and all(isinstance(x, str) for x in langs)):
            raise ValueError("trained_languages must be a list of language codes")
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"{f} is not valid ({exc}); fix it or remove it to use CharsiuG2P's "
                              "defaults") from exc
    return meta


def write_metadata(out_dir: str | os.PathLike, prompt: PromptFormat, trained_languages: list[str]) -> Path:
    """Declare how a checkpoint was trained, so no later command has to guess."""
    f = Path(out_dir) / METADATA_FILE
    f.write_text(json.dumps({"prompt": prompt.to_dict(), "trained_languages": sorted(trained_languages)},
                            indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return f


def _load_torch_file(f: Path, safetensors: bool) -> dict:
    try:
        import torch
    except ImportError as exc:
        raise CheckpointError(f"{f} needs torch to read (bf16 or .bin); install g2p-batch[reference] "
                              f"or convert it to float32/float16 safetensors") from exc
    if safetensors:
        from safetensors.torch import load_file
        sd = load_file(str(f))
    else:
        sd = torch.load(f, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in sd.items()}


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
    model stays an ordinary T5."""
    import torch
    import transformers

    from .archs import resolve_arch

    cfg = transformers.T5Config(**resolve_arch(arch))
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(cfg)
    # T5's own init for an untied head (std 1.0), drawn after the body so seeds stay stable
    head = torch.nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
    torch.nn.init.normal_(head.weight, std=1.0)
    if eos_shadow is not None:
        head.weight.data[1] = 1.01 * head.weight.data[eos_shadow]
    model.lm_head = head
    return save_untied(model, out_dir)
