"""What every decode engine returns and the shapes it accepts: the contract between the
batching code (pure Python) and the TVM runtime (or a fake in tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

DEFAULT_BATCH_SIZES = (1, 8, 32, 64)  # compiled unless told: single words up to the bench's 64


@dataclass(frozen=True, order=True)
class Bucket:
    """One compiled shape: `batch` rows of `input_len` byte ids (prefix and EOS included)."""

    batch: int
    input_len: int

    @property
    def name(self) -> str:
        return f"b{self.batch}_in{self.input_len}"


def fit_input_len(lens, need: int) -> int:
    """The smallest compiled input length (ascending `lens`) that holds `need` ids: every
    planner pads to it, and callers reject longer rows before they get here."""
    return next(n for n in lens if n >= need)


@dataclass
class DecodeOutput:
    tokens: np.ndarray     # [B, T] int32 generated ids (no start token); PAD after EOS
    lengths: np.ndarray    # [B] int32 tokens generated incl. EOS (T when truncated)
    scores: np.ndarray     # [B] float32 mean log-probability of the greedy tokens
    truncated: np.ndarray  # [B] bool: reached max_output_len without emitting EOS
    steps: int = 0         # decoder steps actually run (early exit when all rows ended)


class Engine(Protocol):
    """A loaded model: `decode` takes input ids shaped exactly like one of `buckets`."""

    buckets: list[Bucket]
    max_output_len: int

    def decode(self, input_ids: np.ndarray) -> DecodeOutput: ...
