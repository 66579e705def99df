"""ByT5 byte tokenizer in plain numpy, so Ray actors need neither transformers nor torch.

Ids are byte + 3 (0 pad, 1 eos, 2 unk); ids past 258 are ByT5's `<extra_id_N>` tokens, which a
G2P model should never emit and which `decode` drops, as `ByT5Tokenizer.decode(...,
skip_special_tokens=True)` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["EOS", "OFFSET", "PAD", "UNK", "InputTooLong", "PromptFormat", "byte_ids", "decode", "encode",
           "encode_text", "pad_batch"]

PAD, EOS, UNK = 0, 1, 2
OFFSET = 3
_BYTE_LIMIT = OFFSET + 256


class InputTooLong(InputError):
    """A word whose encoded input does not fit the compiled encoder length."""


@dataclass(frozen=True)
class PromptFormat:
    """How a (lang, word) pair becomes input ids: a property of the checkpoint, as it was trained.

    The defaults are CharsiuG2P's: `<lang>:word`, and no EOS after the input (its training code
    and README tokenize words with `add_special_tokens=False`; only targets end with EOS)."""

    space_after_colon: bool = False
    input_eos: bool = False

    def format(self, lang: str, word: str) -> str:
        return f"<{lang}>: {word}" if self.space_after_colon else f"<{lang}>:{word}"

    def to_dict(self) -> dict:
        return {"template": self.format("{lang}", "{word}"), "space_after_colon": self.space_after_colon,
                "input_eos": self.input_eos}

    def override(self, space_after_colon: bool | None = None, input_eos: bool | None = None) -> "PromptFormat":
        """This format with the settings that are given (not None) replaced."""
        return PromptFormat(self.space_after_colon if space_after_colon is None else space_after_colon,
                            self.input_eos if input_eos is None else input_eos)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptFormat":
        return cls(space_after_colon=bool(d.get("space_after_colon", False)),
                   input_eos=bool(d.get("input_eos", False)))


def byte_ids(text: str) -> list[int]:
    """UTF-8 bytes as ids, nothing appended: `ByT5Tokenizer(text, add_special_tokens=False)`."""
    return [b + OFFSET for b in text.encode("utf-8")]


def encode_text(text: str) -> list[int]:
    """Byte ids followed by EOS, as `ByT5Tokenizer(text).input_ids` (how targets are written)."""
    return byte_ids(text) + [EOS]


def encode(lang: str, word: str, fmt: PromptFormat = PromptFormat(), max_len: int | None = None) -> list[int]:
    """The ids the model reads for one word, EOS only where the checkpoint was trained with it."""
    ids = byte_ids(fmt.format(lang, word)) + ([EOS] if fmt.input_eos else [])
    if max_len is not None and len(ids) > max_len:
        what = "prefix and EOS" if fmt.input_eos else "prefix"
        raise InputTooLong(
            f"word {word!r} ({lang}) needs {len(ids)} input bytes incl. {what}, "
            f"over the compiled limit of {max_len}; recompile with a larger --max-input-bytes")
    return ids


def decode(ids) -> str:
    """Ids -> text, stopping at the first EOS; invalid UTF-8 is dropped like ByT5Tokenizer does."""
    out = bytearray()
    for i in ids:
        i = int(i)
        if i == EOS:
            break
        if OFFSET <= i < _BYTE_LIMIT:
            out.append(i - OFFSET)
    return out.decode("utf-8", errors="ignore")


def pad_batch(rows: list[list[int]], length: int, batch: int | None = None) -> np.ndarray:
    """Right-pad rows to [batch, length] int32; extra rows (to fill a compiled batch) are all PAD."""
    n = batch if batch is not None else len(rows)
    if len(rows) > n:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {n}")
    out = np.full((n, length), PAD, dtype=np.int32)
    for r, ids in enumerate(rows):
        if len(ids) > length:
            raise ValueError(f"row {r} has {len(ids)} ids, over the padded length {length}")
        out[r, : len(ids)] = ids
    return out
