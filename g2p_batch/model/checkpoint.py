"""Finding and reading Hugging Face T5 checkpoints, and the metadata that says how one was
trained. Needs numpy and safetensors only (torch just for bf16 and legacy `.bin` files);
making checkpoints is `tools.checkpoints`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .. import storage
from ..decode.rules import charsiu_rules
from ..decode.tokenizer import PromptFormat
from ..errors import CheckpointError

__all__ = ["DEFAULT_CHECKPOINT", "METADATA_FILE", "Checkpoint", "load", "read_metadata", "resolve", "write_metadata"]

DEFAULT_CHECKPOINT = "default"
_PACKAGED = Path(__file__).parents[1] / "checkpoints"
# Beside config.json: how the checkpoint was trained (prompt format, languages), written by
# `train`. A checkpoint without it (a released CharsiuG2P one) follows CharsiuG2P's conventions.
METADATA_FILE = "g2p_batch.json"


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
    def input_rules(self) -> dict:
        """Per language, what its training words looked like (`decode.rules`): the metadata's,
        else the CharsiuG2P training split's, which the released checkpoints learned from."""
        return self.metadata.get("input_rules") or charsiu_rules()

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
    return Checkpoint(name=name, path=path, config=config, files=files, sha256=storage.sha256_of(*files),
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


def write_metadata(out_dir: str | os.PathLike, prompt: PromptFormat, trained_languages: list[str],
                   input_rules: dict | None = None) -> Path:
    """Declare how a checkpoint was trained, so no later command has to guess."""
    f = Path(out_dir) / METADATA_FILE
    meta = {"prompt": prompt.to_dict(), "trained_languages": sorted(trained_languages)}
    if input_rules is not None:
        meta["input_rules"] = input_rules
    storage.write_file(f, (json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode())
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
