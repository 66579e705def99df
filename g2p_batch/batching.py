"""Rows -> engine calls, in pure Python: which rows are bad, which are the same, and how the
rest fill the compiled (batch, input_len) shapes with the least padding.

The engine only accepts compiled shapes, so every padding row is decoder compute paid for
nothing (input padding is cheap: the encoder runs on real tokens only). Sorting the unique words
by encoded length, cutting each length bucket into full batches and moving its tail up to the
next bucket leaves one partial batch per call; `choose_batch_sizes` bounds its padding.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from .decoding import Bucket, fit_input_len
from .tokenizer import InputTooLong, PromptFormat, encode

__all__ = ["BatchPlan", "Item", "PlannedBatch", "choose_batch_sizes", "plan_batches",
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


class RowError(ValueError):
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


def plan_batches(langs: Sequence, words: Sequence, buckets: Sequence[Bucket],
                 fmt: PromptFormat = PromptFormat(), known_langs: set[str] | None = None,
                 first_row: int = 0) -> BatchPlan:
    """Validate, dedupe, sort by length, cut into compiled shapes. `first_row` only numbers
    the rows in messages (their index in the source file)."""
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
                ids = validate_row(first_row + pos, lang, word, known_langs, fmt, lens[-1])
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
        groups[fit_input_len(lens, len(items[i].ids))].append(i)
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
            chosen, carry = choose_batch_sizes(len(group), sizes), []
        else:
            full = max(sizes)
            chosen, carry = [full] * (len(group) // full), group[len(group) // full * full:]
        start = 0
        for size in chosen:
            take = group[start:start + size]
            start += len(take)
            longest = len(items[take[-1]].ids)  # groups are length-sorted
            fits = fit_input_len([n for n in lens if size in sizes_by_len[n]], longest)
            batches.append(PlannedBatch(Bucket(size, fits), tuple(take)))
    return BatchPlan(items, row_items, errors, batches)


def choose_batch_sizes(n: int, sizes: Sequence[int]) -> list[int]:
    """Compiled batch sizes that carry `n` rows: the largest size the remaining rows fill, and
    for the tail the smallest size >= the rest once that batch would be at least half real rows.

    A padding row costs a real row's compute on CPU; a call costs per-step overhead everywhere.
    The half-full rule caps the waste of the last call at 2x while never falling back to a run
    of tiny calls (13 rows with sizes 1, 8, 32 -> [8, 8], not [8, 1, 1, 1, 1, 1] or [32]).
    Only a remainder below half the smallest size gives a batch that is mostly padding.
    """
    sizes = sorted(set(sizes))
    out, left = [], n
    while left > 0:
        up = next((s for s in sizes if s >= left), None)
        fit = [s for s in sizes if s <= left]
        if up is not None and (up <= 2 * left or not fit):
            out.append(up)
            break
        out.append(fit[-1])
        left -= fit[-1]
    return out
