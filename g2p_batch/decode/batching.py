"""Rows -> engine calls, in pure Python: which rows are bad, which are the same, and how the
rest fill the compiled (batch, input_len) shapes with the least padding.

The engine only accepts compiled shapes, so every padding row is decoder compute paid for
nothing (input padding is cheap: the encoder runs on real tokens only). Sorting the unique words
by encoded length, cutting each length bucket into full batches and moving its tail up to the
next bucket leaves one partial batch per call; `choose_batch_sizes` prices its padding against
the engine's per-call overhead.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from ..errors import InputError
from .engine import Bucket, fit_bucket
from .tokenizer import InputTooLong, PromptFormat, encode

__all__ = ["BatchPlan", "Item", "PlannedBatch", "choose_batch_sizes", "junk", "plan_batches",
           "validate_row"]


@dataclass(frozen=True)
class Item:
    """One distinct (lang, word), decoded once however many rows hold it."""

    lang: str
    word: str
    ids: tuple[int, ...]


@dataclass(frozen=True)
class PlannedBatch:
    bucket: Bucket
    items: tuple[int, ...]    # indices into BatchPlan.items, len <= bucket.batch

    @property
    def padding_rows(self) -> int:
        return self.bucket.batch - len(self.items)


@dataclass
class BatchPlan:
    items: list[Item]
    row_items: list[int | None]   # per row: its item, or None when the row is an error
    errors: dict[int, str]        # row position -> message
    batches: list[PlannedBatch]


class RowError(InputError):
    """A row that cannot be transcribed; its message becomes the row's `error`."""


def validate_row(row: int, lang, word, known_langs: set[str] | None, fmt: PromptFormat,
                 max_input_len: int) -> tuple[int, ...]:
    """The row's input ids, or RowError naming the row, the value and the fix."""
    if word is None:
        raise RowError(f"row {row}: word is null; fill it in or drop the row")
    if not isinstance(word, str):
        raise RowError(f"row {row}: word {word!r} is not a string; store words as strings")
    if not word:
        raise RowError(f"row {row}: word is empty; fill it in or drop the row")
    if not word.strip():
        raise RowError(f"row {row}: word {word!r} is only whitespace; fill it in or drop the row")
    reason = junk(word)
    if reason:
        raise RowError(f"row {row}: word {word!r} {reason}")
    if lang is None:
        raise RowError(f"row {row}: language code is null; give the row a language code")
    if known_langs is not None and lang not in known_langs:
        close = difflib.get_close_matches(str(lang), sorted(known_langs), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise RowError(f"row {row}: language {lang!r} is not one the model knows{hint}; use a "
                       "code from the model's language list or add it to known_langs")
    try:
        return tuple(encode(lang, word, fmt, max_len=max_input_len))
    except InputTooLong as exc:
        raise RowError(f"row {row}: {exc}, or add a larger size to input_buckets") from exc


# Unicode's explicit direction controls: invisible, never in a dictionary word, and they change
# what the model reads. Joiners (ZWJ, ZWNJ) are not here: some scripts spell words with them.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def junk(word: str) -> str | None:
    """Why a word is not a word (so the model would invent IPA for it), or None."""
    for ch in word:
        if unicodedata.category(ch) == "Cc":
            return (f"holds the control character U+{ord(ch):04X}; remove control characters "
                    "(newlines, tabs, NUL, ESC) from the word")
        if ch in _BIDI:
            return f"holds the bidirectional control U+{ord(ch):04X}; remove it from the word"
    if not any(unicodedata.category(ch)[0] in "LMN" for ch in word):
        return "has no letters (only symbols, punctuation or emoji); drop the row or spell the word"
    return None


def plan_batches(langs: Sequence, words: Sequence, buckets: Sequence[Bucket],
                 fmt: PromptFormat = PromptFormat(), known_langs: set[str] | None = None,
                 first_row: int = 0, *, call_cost_rows: float, row_numbers: Sequence[int] | None = None) -> BatchPlan:
    """Validate, dedupe, sort by length, cut into compiled shapes. `first_row` (or one number
    per word, `row_numbers`) only numbers the rows in messages (their index in the source
    file); `call_cost_rows` prices the last group's tail (`choose_batch_sizes`)."""
    if len(langs) != len(words):
        raise ValueError(f"{len(langs)} languages for {len(words)} words")
    if not buckets:
        raise ValueError("the engine has no compiled buckets")
    sizes_by_len: dict[int, list[int]] = defaultdict(list)
    for b in buckets:
        sizes_by_len[b.input_len].append(b.batch)
    lens = sorted(sizes_by_len)

    items: list[Item] = []
    index: dict[tuple[str, str], int] = {}
    row_items: list[int | None] = []
    errors: dict[int, str] = {}
    for pos, (lang, word) in enumerate(zip(langs, words)):
        key = (lang, word)
        found = index.get(key) if isinstance(word, str) and isinstance(lang, str) else None
        if found is None:
            try:
                row = row_numbers[pos] if row_numbers is not None else first_row + pos
                ids = validate_row(row, lang, word, known_langs, fmt, lens[-1])
            except RowError as exc:
                errors[pos] = str(exc)
                row_items.append(None)
                continue
            found = index[key] = len(items)
            items.append(Item(lang, word, ids))
        row_items.append(found)

    order = sorted(range(len(items)), key=lambda i: (len(items[i].ids), items[i].lang, items[i].word))
    groups: dict[int, list[int]] = defaultdict(list)
    for i in order:
        groups[next(n for n in lens if n >= len(items[i].ids))].append(i)
    # A length group's tail (fewer rows than its largest batch) moves up into the next longer
    # group instead of padding a batch of its own: the packed encoder does no work on input
    # padding, and a row's result does not depend on its bucket, while a padding row costs a
    # real row's decoder steps. Only the longest group pads its last batch.
    batches, carry = [], []
    last = max(groups, default=None)  # the longest length that holds rows
    for input_len in lens:
        group = carry + groups.get(input_len, [])
        if not group:
            continue
        sizes = sizes_by_len[input_len]
        if input_len == last:
            chosen, carry = choose_batch_sizes(len(group), sizes, call_cost_rows), []
        else:
            full = max(sizes)
            chosen, carry = [full] * (len(group) // full), group[len(group) // full * full:]
        start = 0
        for size in chosen:
            take = group[start:start + size]
            start += len(take)
            longest = len(items[take[-1]].ids)  # groups are length-sorted
            batches.append(PlannedBatch(fit_bucket(buckets, size, longest), tuple(take)))
    return BatchPlan(items, row_items, errors, batches)


_DP_BATCHES = 4  # largest-size batches' worth left to the dynamic programme, beside the remainder


def choose_batch_sizes(n: int, sizes: Sequence[int], call_cost_rows: float) -> list[int]:
    """The cheapest run of compiled batch sizes that carries `n` rows, largest first.

    A call of size s costs s + `call_cost_rows`, in units of one row's decoder time: every row,
    padding or not, runs the decoder steps (the packed encoder skips padding, and real rows pay
    for it whatever the plan), and every call pays a fixed overhead (`engine.CALL_COST_ROWS`:
    about 10 on CPU, 1,300 on a GPU). So 3 rows with sizes 1, 8, 32, 64 go as one batch of 8,
    not three of 1, and a GPU's 1, 64, 256, 1024 take 20 rows in one call of 64.

    Full batches of the largest size carry the bulk (no rows are cheaper); a dynamic programme
    picks the rest over the last few of them, enough for sizes that do not divide each other
    (5 and 7 cover every count from 24 on).
    """
    if n <= 0:
        return []
    sizes = sorted(set(sizes), reverse=True)
    full = max(0, n // sizes[0] - _DP_BATCHES)
    rest = n - full * sizes[0]
    cost, pick = [0.0] + [float("inf")] * rest, [0] * (rest + 1)
    for left in range(1, rest + 1):
        for s in sizes:  # largest first: a tie keeps the fewer, bigger calls
            c = cost[max(0, left - s)] + s + call_cost_rows
            if c < cost[left]:
                cost[left], pick[left] = c, s
    tail, left = [], rest
    while left > 0:
        tail.append(pick[left])
        left -= pick[left]
    return [sizes[0]] * full + sorted(tail, reverse=True)

