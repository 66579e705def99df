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
    truncated: np.ndarray  # [B] bool: stopped without emitting EOS (at max_output_len or a loop)
    steps: int = 0         # decoder steps actually run (early exit when all rows ended)
    looped: np.ndarray | None = None  # [B] bool: stopped early because its output repeats


# A row whose last ids repeat one short pattern is the model looping (`ˈɾɾɾˈɾɾɾ...`): it is
# stopped there rather than run to max_output_len. A pattern of p ids counts once the row's last
# max(LOOP_MIN_IDS, LOOP_MIN_REPEATS * p) ids each equal the id p before: 33 copies of one byte,
# 17 of a two-byte IPA letter, 7 of an 8-byte syllable. A model can still break out of such a
# loop and end the word (1 row in 50,000 of the default's test split, itself wrong either way);
# `stop_loops=False` decodes exactly as transformers does. PERF.md has the measurements.
LOOP_MAX_PERIOD = 12
LOOP_MIN_IDS = 32
LOOP_MIN_REPEATS = 6


def repeating_rows(history: np.ndarray) -> np.ndarray:
    """[B, n] ids generated so far -> [B] bool: the row's tail repeats a pattern (see above)."""
    B, n = history.shape
    out = np.zeros(B, bool)
    for p in range(1, LOOP_MAX_PERIOD + 1):
        span = max(LOOP_MIN_IDS, LOOP_MIN_REPEATS * p)
        if span + p > n:
            break
        out |= (history[:, n - span:] == history[:, n - span - p:n - p]).all(axis=1)
    return out


def greedy_output(raw_ids: np.ndarray, raw_logp: np.ndarray, filler: np.ndarray, max_len: int,
                  stop_at: np.ndarray | None = None) -> DecodeOutput:
    """Rows' results from the decoder's raw per-step argmax ids and log-probabilities [B, steps],
    as generate() reports them: tokens up to and including the first EOS, PAD after it; the
    length counts the EOS; the score is the mean log-probability of those tokens, summed in
    step order. `filler` rows (padding a partly used batch) produce nothing; a row with
    `stop_at[r] <= steps` was stopped as a loop and keeps its first `stop_at[r]` tokens.

    The runtime feeds each row its own argmax even after its EOS (generate feeds pad): rows never
    interact, so that changes no kept token, and the host need not touch the ids between steps."""
    B, steps = raw_ids.shape
    stop_at = np.full(B, steps + 1) if stop_at is None else stop_at
    in_range = np.arange(steps)[None, :] < stop_at[:, None]
    ended = np.cumsum((raw_ids == EOS) & in_range, axis=1) > 0  # an EOS at or before each step
    before = np.concatenate([np.zeros((B, 1), bool), ended[:, :-1]], axis=1)
    live = ~filler[:, None] & ~before & in_range
    tokens = np.full((B, max_len), PAD, np.int32)
    tokens[:, :steps] = np.where(live, raw_ids, PAD)
    lengths = live.sum(axis=1).astype(np.int32)
    logp_sum = np.cumsum(np.where(live, raw_logp.astype(np.float64), 0.0), axis=1)[:, -1]
    scores = np.where(lengths > 0, logp_sum / np.maximum(lengths, 1), 0.0).astype(np.float32)
    truncated = ~filler & ~ended[:, -1]
    looped = truncated & (stop_at <= steps)
    return DecodeOutput(tokens=tokens, lengths=lengths, scores=scores, truncated=truncated,
                        steps=steps, looped=looped)


class Engine(Protocol):
    """A loaded model: `decode` takes input ids shaped exactly like one of `buckets`."""

    buckets: list[Bucket]
    max_output_len: int
    call_cost_rows: float  # CALL_COST_ROWS for its device

    def decode(self, input_ids: np.ndarray, *, stop_loops: bool = True) -> DecodeOutput: ...
