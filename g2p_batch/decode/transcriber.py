"""(lang, word) rows -> one RowResult per row, through any `Engine`.

Bad rows become error results; engine failures are not row problems (a device fault or a
runtime bug says nothing about the word), so they propagate and fail the whole shard, which the
driver retries on a fresh actor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from .batching import plan_batches
from .engine import DecodeOutput, Engine
from .tokenizer import PromptFormat, decode, pad_batch

__all__ = ["RowResult", "Transcriber"]

# ok; error (nothing decoded, the message says why); truncated (cut off: at max_output_len or
# where the model started repeating itself); untrained (decoded, but in a language the
# checkpoint never saw in training: likely the spelling, not IPA)
Status = Literal["ok", "error", "truncated", "untrained"]


@dataclass(frozen=True)
class RowResult:
    phonemes: str | None
    status: Status
    error: str | None
    score: float | None


class Transcriber:
    """Holds the engine and counts where time goes.

    `timings` accumulates seconds per stage: "tokenize" (validate, byte-encode, pad, and turn
    output ids back into text), "encode" and "decode" (the engine). An engine that keeps its
    cumulative encoder seconds in `stage_seconds["encode"]` has them split out of the engine
    time; otherwise "encode" stays 0 and "decode" is all of it.
    """

    def __init__(self, engine: Engine, fmt: PromptFormat = PromptFormat(),
                 known_langs: set[str] | None = None, trained_langs: set[str] | None = None,
                 stop_loops: bool = True):
        self.engine = engine
        self.fmt = fmt
        self.known_langs = set(known_langs) if known_langs is not None else None
        self.trained_langs = set(trained_langs) if trained_langs is not None else None
        self.stop_loops = stop_loops
        self.buckets = sorted(engine.buckets)
        self.timings: dict[str, float] = {"tokenize": 0.0, "encode": 0.0, "decode": 0.0}
        self.decoded_items = 0
        self.batch_fill: list[float] = []  # per engine call: real rows / compiled rows

    @classmethod
    def for_engine(cls, engine: Engine, stop_loops: bool = True, prompt: PromptFormat | None = None) -> "Transcriber":
        """The rules the engine's artifact set declares: its checkpoint's prompt format (unless
        `prompt` overrides it), the codes it knows (others are row errors) and those it was
        trained on (others are marked `untrained`)."""
        langs = getattr(engine, "languages", None)
        trained = getattr(engine, "trained_languages", None)
        return cls(engine, prompt or getattr(engine, "prompt", PromptFormat()), set(langs) if langs else None,
                   set(trained) if trained else None, stop_loops)

    def transcribe(self, langs: Sequence, words: Sequence, *, first_row: int = 0) -> list[RowResult]:
        """One result per row, in row order; identical (lang, word) rows are decoded once."""
        t0 = time.perf_counter()
        plan = plan_batches(langs, words, self.buckets, self.fmt, self.known_langs, first_row,
                            call_cost_rows=self.engine.call_cost_rows)
        decoded: list[tuple[str, float, bool] | None] = [None] * len(plan.items)
        tokenize, engine_s = time.perf_counter() - t0, 0.0
        encode_before = self._engine_encode_seconds()
        for batch in plan.batches:
            t1 = time.perf_counter()
            ids = pad_batch([plan.items[i].ids for i in batch.items], batch.bucket.input_len,
                            batch.bucket.batch)
            t2 = time.perf_counter()
            out = self.engine.decode(ids, stop_loops=self.stop_loops)
            self.batch_fill.append(len(batch.items) / batch.bucket.batch)
            t3 = time.perf_counter()
            _check_output(out, batch.bucket.batch, self.engine.max_output_len)
            looped = out.looped if out.looped is not None else np.zeros(batch.bucket.batch, bool)
            for r, item in enumerate(batch.items):
                decoded[item] = (decode(out.tokens[r]), float(out.scores[r]), bool(out.truncated[r]),
                                 bool(looped[r]))
            tokenize += (t2 - t1) + (time.perf_counter() - t3)
            engine_s += t3 - t2
        t4 = time.perf_counter()
        if None in decoded:             # every item rides in exactly one batch, or the shard fails
            raise AssertionError(f"{decoded.count(None)} of {len(decoded)} words were never decoded")
        results = []
        for pos, item in enumerate(plan.row_items):
            if item is None:
                results.append(RowResult(None, "error", plan.errors[pos], None))
                continue
            phonemes, score, truncated, looped = decoded[item]
            if truncated:
                msg = (_looped_msg if looped else _truncated_msg)(first_row + pos, self.engine.max_output_len)
                results.append(RowResult(phonemes, "truncated", msg, score))
            elif self.trained_langs is not None and langs[pos] not in self.trained_langs:
                results.append(RowResult(phonemes, "untrained", _untrained_msg(first_row + pos, langs[pos]),
                                         score))
            else:
                results.append(RowResult(phonemes, "ok", None, score))
        if len(results) != len(words):      # every row exactly once, or the shard fails
            raise AssertionError(f"{len(results)} results for {len(words)} rows")
        encode = min(max(self._engine_encode_seconds() - encode_before, 0.0), engine_s)
        self.timings["tokenize"] += tokenize + time.perf_counter() - t4
        self.timings["encode"] += encode
        self.timings["decode"] += engine_s - encode
        self.decoded_items += len(plan.items)
        return results

    def transcribe_one(self, lang: str, word: str) -> RowResult:
        """Same as a batch of one row: one code path, pinned by a test."""
        return self.transcribe([lang], [word])[0]

    def _engine_encode_seconds(self) -> float:
        return float((getattr(self.engine, "stage_seconds", None) or {}).get("encode", 0.0))


def _check_output(out: DecodeOutput, batch: int, max_output_len: int) -> None:
    """A malformed engine answer is an engine bug: fail the shard rather than mislabel rows."""
    shapes = (out.tokens.shape[0], len(out.scores), len(out.truncated))
    if shapes != (batch,) * 3 or out.tokens.ndim != 2 or out.tokens.shape[1] > max_output_len:
        raise RuntimeError(f"engine returned tokens {out.tokens.shape}, scores {np.shape(out.scores)}, "
                           f"truncated {np.shape(out.truncated)} for a batch of {batch} "
                           f"(max_output_len {max_output_len})")


def _truncated_msg(row: int, max_output_len: int) -> str:
    return (f"row {row}: output reached max_output_len={max_output_len} tokens without ending; "
            "the phonemes are cut off, raise max_output_len")


def _looped_msg(row: int, max_output_len: int) -> str:
    return (f"row {row}: the model started repeating itself and was stopped; the phonemes are cut "
            "off where the repetition was recognised (a model error: a larger max_output_len "
            "would not help)")


def _untrained_msg(row: int, lang: str) -> str:
    return (f"row {row}: language {lang!r} was not in this checkpoint's training data, so the "
            "output is likely the spelling rather than IPA; use a checkpoint trained on it")
