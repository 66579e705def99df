"""What every decode engine returns and the shapes it accepts: the contract between the
batching code (pure Python) and the TVM runtime (or a fake in tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .tokenizer import EOS, PAD

DEFAULT_BATCH_SIZES = (1, 8, 32, 64)  # compiled unless told: single words up to the bench's 64

# What one more engine call costs, in padding rows: the price the planner weighs padding against
# (batching.choose_batch_sizes). A padding row costs only decoder steps (the packed encoder
# skips it), so both are in units of one row's decoder time. A call's time fits a + b * rows:
# CPU, tiny_8, 2 threads, batch 8 to 64: a = 8.9 ms, and a row's decoder 0.86 ms, so about 10
# (session 13); an H200, batch 1,024 to 4,096: a = 14.7 ms, a row's decoder 0.011 ms, about 1,300
# (session 8's numbers).
CALL_COST_ROWS = {"cpu": 10.0, "cuda": 1300.0}


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


def greedy_output(raw_ids: np.ndarray, raw_logp: np.ndarray, filler: np.ndarray, max_len: int) -> DecodeOutput:
    """Rows' results from the decoder's raw per-step argmax ids and log-probabilities [B, steps],
    as generate() reports them: tokens up to and including the first EOS, PAD after it; the
    length counts the EOS; the score is the mean log-probability of those tokens, summed in
    step order. `filler` rows (padding a partly used batch) produce nothing.

    The runtime feeds each row its own argmax even after its EOS (generate feeds pad): rows never
    interact, so that changes no kept token, and the host need not touch the ids between steps."""
    B, steps = raw_ids.shape
    ended = np.cumsum(raw_ids == EOS, axis=1) > 0  # an EOS at or before each step
    before = np.concatenate([np.zeros((B, 1), bool), ended[:, :-1]], axis=1)
    live = ~filler[:, None] & ~before
    tokens = np.full((B, max_len), PAD, np.int32)
    tokens[:, :steps] = np.where(live, raw_ids, PAD)
    lengths = live.sum(axis=1).astype(np.int32)
    logp_sum = np.cumsum(np.where(live, raw_logp.astype(np.float64), 0.0), axis=1)[:, -1]
    scores = np.where(lengths > 0, logp_sum / np.maximum(lengths, 1), 0.0).astype(np.float32)
    return DecodeOutput(tokens=tokens, lengths=lengths, scores=scores, truncated=~filler & ~ended[:, -1],
                        steps=steps)


class Engine(Protocol):
    """A loaded model: `decode` takes input ids shaped exactly like one of `buckets`."""

    buckets: list[Bucket]
    max_output_len: int
    call_cost_rows: float  # CALL_COST_ROWS for its device

    def decode(self, input_ids: np.ndarray) -> DecodeOutput: ...
