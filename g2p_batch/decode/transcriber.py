"""(lang, word) rows -> one RowResult per row, through any `Engine`.

Bad rows become error results; engine failures are not row problems (a device fault or a
runtime bug says nothing about the word), so they propagate and fail the whole shard, which the
driver retries on a fresh actor.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from ..errors import ConfigError
from .batching import junk, plan_batches
from .engine import DecodeOutput, Engine, beam_buckets
from .rules import InputRules
from .tokenizer import PromptFormat, decode, pad_batch

__all__ = ["RowResult", "Transcriber"]

# ok; error (nothing decoded, the message says why); truncated (cut off: at max_output_len or
# where the model started repeating itself); untrained (decoded, but in a language the
# checkpoint never saw in training: likely the spelling, not IPA); lexicon (from the user's
# lexicon, not the model)
Status = Literal["ok", "error", "truncated", "untrained", "lexicon"]


@dataclass(frozen=True)
class RowResult:
    phonemes: str | None
    status: Status
    error: str | None
    score: float | None
    # beam search only: (phonemes, score) best first; n-best for a word the model decoded whole,
    # the row's one pronunciation for rows split into parts or taken from the lexicon
    candidates: tuple[tuple[str, float | None], ...] | None = None


class Transcriber:
    """Holds the engine and counts where time goes.

    `timings` accumulates seconds per stage: "tokenize" (validate, byte-encode, pad, and turn
    output ids back into text), "encode" and "decode" (the engine). An engine that keeps its
    cumulative encoder seconds in `stage_seconds["encode"]` has them split out of the engine
    time; otherwise "encode" stays 0 and "decode" is all of it.
    """

    def __init__(self, engine: Engine, fmt: PromptFormat = PromptFormat(),
                 known_langs: set[str] | None = None, trained_langs: set[str] | None = None,
                 stop_loops: bool = True, rules: InputRules | None = None, num_beams: int = 1, n_best: int = 1):
        if not 1 <= n_best <= num_beams:
            raise ConfigError(f"n_best={n_best} must be between 1 and num_beams={num_beams}")
        self.engine = engine
        self.num_beams, self.n_best = num_beams, n_best
        self.fmt = fmt
        self.known_langs = set(known_langs) if known_langs is not None else None
        self.trained_langs = set(trained_langs) if trained_langs is not None else None
        self.stop_loops = stop_loops
        self.rules = rules or InputRules()
        self.buckets = sorted(engine.buckets) if num_beams == 1 else beam_buckets(engine.buckets, num_beams)
        self.timings: dict[str, float] = {"tokenize": 0.0, "encode": 0.0, "decode": 0.0}
        self.decoded_items = 0
        self.batch_fill: list[float] = []  # per engine call: real rows / compiled rows

    @classmethod
    def for_engine(cls, engine: Engine, stop_loops: bool = True, prompt: PromptFormat | None = None,
                   keep_case: bool = False, lexicon=None, num_beams: int = 1, n_best: int = 1) -> "Transcriber":
        """The rules the engine's artifact set declares: its checkpoint's prompt format (unless
        `prompt` overrides it) and input rules, the codes it knows (others are row errors) and
        those it was trained on (others are marked `untrained`); `lexicon`: (lang, word, pron)
        entries that win over the model; `num_beams` > 1: beam search keeping `n_best`."""
        langs = getattr(engine, "languages", None)
        trained = getattr(engine, "trained_languages", None)
        rules = InputRules.from_dict(getattr(engine, "input_rules", None), keep_case)
        if lexicon is not None:
            rules.with_lexicon(lexicon)
        return cls(engine, prompt or getattr(engine, "prompt", PromptFormat()), set(langs) if langs else None,
                   set(trained) if trained else None, stop_loops, rules, num_beams, n_best)

    def transcribe(self, langs: Sequence, words: Sequence, *, first_row: int = 0) -> list[RowResult]:
        """One result per row, in row order. Words are normalised and split as the model was
        trained (`rules`); a lexicon entry wins over the model; identical (lang, part) pairs are
        decoded once."""
        t0 = time.perf_counter()
        rows: list[list[tuple[str | None, int]] | RowResult] = []  # per row: its parts (pron, part index)
        part_langs, part_words, part_rows = [], [], []
        lexicon = self.rules.lexicon or {}
        for pos, (lang, word) in enumerate(zip(langs, words)):
            if not (isinstance(word, str) and isinstance(lang, str)):      # validation names it
                rows.append([(None, len(part_words))])
                part_langs.append(lang), part_words.append(word), part_rows.append(first_row + pos)
                continue
            whole = self.rules.normalise(lang, word)
            if (lang, whole) in lexicon:
                rows.append(self._lexicon_result(lexicon[(lang, whole)]))
                continue
            parts = []
            for part in [whole] if junk(whole) else self.rules.parts(lang, whole):  # junk: validation names it
                if (lang, part) in lexicon:
                    parts.append((lexicon[(lang, part)], -1))
                else:
                    parts.append((None, len(part_words)))
                    part_langs.append(lang), part_words.append(part), part_rows.append(first_row + pos)
            rows.append(parts)
        tokenize = time.perf_counter() - t0
        decoded = self._decode(part_langs, part_words, part_rows) if part_words else []
        t1 = time.perf_counter()
        results = [row if isinstance(row, RowResult) else
                   self._combine(first_row + pos, langs[pos], words[pos], row, decoded)
                   for pos, row in enumerate(rows)]
        if len(results) != len(words):      # every row exactly once, or the shard fails
            raise AssertionError(f"{len(results)} results for {len(words)} rows")
        self.timings["tokenize"] += tokenize + time.perf_counter() - t1
        return results

    def _decode(self, langs: list, words: list, row_numbers: list[int]) -> list[RowResult]:
        """One result per (lang, word), as the model gives it."""
        t0 = time.perf_counter()
        plan = plan_batches(langs, words, self.buckets, self.fmt, self.known_langs,
                            call_cost_rows=self.engine.call_cost_rows, row_numbers=row_numbers)
        decoded: list[tuple | None] = [None] * len(plan.items)  # phonemes, score, truncated, looped, n-best
        tokenize, engine_s = time.perf_counter() - t0, 0.0
        encode_before = self._engine_encode_seconds()
        for batch in plan.batches:
            t1 = time.perf_counter()
            ids = pad_batch([plan.items[i].ids for i in batch.items], batch.bucket.input_len,
                            batch.bucket.batch)
            t2 = time.perf_counter()
            if self.num_beams > 1:
                out = self.engine.decode_beams(ids, self.num_beams, self.n_best)
            else:
                out = self.engine.decode(ids, stop_loops=self.stop_loops)
            self.batch_fill.append(len(batch.items) / batch.bucket.batch)
            t3 = time.perf_counter()
            _check_output(out, batch.bucket.batch, self.engine.max_output_len)
            looped = out.looped if out.looped is not None else np.zeros(batch.bucket.batch, bool)
            for r, item in enumerate(batch.items):
                cands = None if out.candidates is None else \
                    tuple((decode(c.tokens), float(c.score)) for c in out.candidates[r])
                decoded[item] = (decode(out.tokens[r]), float(out.scores[r]), bool(out.truncated[r]),
                                 bool(looped[r]), cands)
            tokenize += (t2 - t1) + (time.perf_counter() - t3)
            engine_s += t3 - t2
        if None in decoded:             # every item rides in exactly one batch, or the shard fails
            raise AssertionError(f"{decoded.count(None)} of {len(decoded)} words were never decoded")
        results = []
        for pos, item in enumerate(plan.row_items):
            if item is None:
                results.append(RowResult(None, "error", plan.errors[pos], None))
                continue
            phonemes, score, truncated, looped, cands = decoded[item]
            if truncated:
                msg = (_looped_msg if looped else _truncated_msg)(row_numbers[pos], self.engine.max_output_len)
                results.append(RowResult(phonemes, "truncated", msg, score, cands))
            else:
                results.append(RowResult(phonemes, "ok", None, score, cands))
        encode = min(max(self._engine_encode_seconds() - encode_before, 0.0), engine_s)
        self.timings["tokenize"] += tokenize
        self.timings["encode"] += encode
        self.timings["decode"] += engine_s - encode
        self.decoded_items += len(plan.items)
        return results

    def _combine(self, row: int, lang, word, parts: list[tuple[str | None, int]],
                 decoded: list[RowResult]) -> RowResult:
        """A row's result from its parts' (lexicon or model) results: the phonemes joined with a
        space, the score the mean over the model's parts, the worst status with its message."""
        results = [self._lexicon_result(pron) if i < 0 else decoded[i] for pron, i in parts]
        if len(results) == 1 and parts[0][1] >= 0:
            result = results[0]
        else:
            bad = next((r for r in results if r.status == "error"), None) or \
                next((r for r in results if r.status == "truncated"), None)
            scores = [r.score for r in results if r.score is not None]
            score = sum(scores) / len(scores) if scores else None
            if bad is not None and bad.status == "error":
                k = results.index(bad)
                return RowResult(None, "error", f"{bad.error} (part {k + 1} of {len(results)} of {word!r})", None)
            phonemes = " ".join(r.phonemes or "" for r in results)
            cands = ((phonemes, score),) if self.num_beams > 1 else None
            if bad is not None:
                return RowResult(phonemes, "truncated", f"{bad.error} (in part {results.index(bad) + 1} of "
                                 f"{len(results)} of {word!r})", score, cands)
            result = RowResult(phonemes, "ok" if scores else "lexicon", None, score, cands)
        if result.status == "ok" and self.trained_langs is not None and lang not in self.trained_langs:
            return dataclasses.replace(result, status="untrained", error=_untrained_msg(row, lang))
        return result

    def _lexicon_result(self, pron: str) -> RowResult:
        return RowResult(pron, "lexicon", None, None, ((pron, None),) if self.num_beams > 1 else None)

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
