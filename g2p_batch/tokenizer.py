"""ByT5 byte tokenizer in plain numpy, so Ray actors need neither transformers nor torch.

Ids are byte + 3 (0 pad, 1 eos, 2 unk); ids past 258 are ByT5's `<extra_id_N>` tokens, which a
G2P model should never emit and which `decode` drops, as `ByT5Tokenizer.decode(...,
skip_special_tokens=True)` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, EOS, UNK = 0, 1, 2
OFFSET = 3
_BYTE_LIMIT = OFFSET + 256


class InputTooLong(ValueError):
    """A word whose encoded input does not fit the compiled encoder length."""


@dataclass(frozen=True)
class PromptFormat:
    """How a (lang, word) pair becomes model input. CharsiuG2P trained on `<lang>:word`."""

    space_after_colon: bool = False

    def format(self, lang: str, word: str) -> str:
        return f"<{lang}>: {word}" if self.space_after_colon else f"<{lang}>:{word}"

    def to_dict(self) -> dict:
        return {"template": self.format("{lang}", "{word}"), "space_after_colon": self.space_after_colon}


def encode_text(text: str) -> list[int]:
    """Byte ids followed by EOS, as `ByT5Tokenizer(text).input_ids`."""
    return [b + OFFSET for b in text.encode("utf-8")] + [EOS]


def encode(lang: str, word: str, fmt: PromptFormat = PromptFormat(), max_len: int | None = None) -> list[int]:
    ids = encode_text(fmt.format(lang, word))
    if max_len is not None and len(ids) > max_len:
        raise InputTooLong(
            f"word {word!r} ({lang}) needs {len(ids)} input bytes incl. prefix and EOS, "
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
