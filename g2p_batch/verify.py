"""TVM against transformers on the same padded batches: token-id mismatches, PER and WER.

Batches here keep the input order (rows i..i+B) rather than the job's length sorting, so the
padding a row sees is arbitrary: exactness must not depend on who shares a batch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .decoding import Bucket, Engine, fit_input_len
from .lexicon import Entry
from .tokenizer import EOS, InputTooLong, PromptFormat, decode, encode, pad_batch


def plan_batches(rows: list[list[int]], batch: int, buckets: list[Bucket]):
    """Consecutive groups of `batch` rows, each padded to the smallest compiled input length
    that holds its longest row; yields (row indices, ids [batch, L])."""
    lens = sorted({b.input_len for b in buckets if b.batch == batch})
    if not lens:
        raise ValueError(f"batch size {batch} is not compiled; compiled: {sorted({b.batch for b in buckets})}")
    for start in range(0, len(rows), batch):
        idx = list(range(start, min(start + batch, len(rows))))
        L = fit_input_len(lens, max(len(rows[i]) for i in idx))
        yield idx, pad_batch([rows[i] for i in idx], L, batch)


@dataclass
class VerifyReport:
    rows: int = 0
    skipped: list[str] = field(default_factory=list)   # too long for the compiled inputs
    mismatches: list[int] = field(default_factory=list)
    truncated: int = 0
    looped: list[int] = field(default_factory=list)     # stopped as loops (matching: a prefix of the reference)
    loops_ended_later: list[int] = field(default_factory=list)  # ... where the reference found EOS after all
    tvm_seconds: float = 0.0
    ref_seconds: float = 0.0
    tvm_text: list[str] = field(default_factory=list)
    ref_text: list[str] = field(default_factory=list)
    per_lang: dict = field(default_factory=dict)        # lang -> {"n", "tvm": (per, wer), "ref": (per, wer)}


def run(engine: Engine, entries: list[Entry], batch: int, fmt: PromptFormat = PromptFormat(),
        reference=None, progress: bool = False, stop_loops: bool = True) -> VerifyReport:
    """TVM on our ids, the reference on CharsiuG2P's (`reference.Reference`), row by row.

    A row the engine stopped as a loop (`stop_loops`) matches when its tokens are the start of
    the reference's; it is listed in `looped`, and in `loops_ended_later` when the reference
    went on to end with EOS (the one way the loop stop changes a result)."""
    from tqdm import tqdm

    from .reference import charsiu_text

    rep = VerifyReport()
    max_len = max(b.input_len for b in engine.buckets)
    kept, rows = [], []
    for e in entries:
        try:
            rows.append(encode(e.lang, e.word, fmt, max_len))
            kept.append(e)
        except InputTooLong as exc:
            rep.skipped.append(str(exc))
    rep.rows = len(kept)
    rep.tvm_text = [""] * len(kept)
    rep.ref_text = [""] * len(kept)
    T = engine.max_output_len
    for idx, ids in tqdm(list(plan_batches(rows, batch, engine.buckets)), desc="verify", disable=not progress):
        t0 = time.perf_counter()
        out = engine.decode(ids, stop_loops=stop_loops)
        rep.tvm_seconds += time.perf_counter() - t0
        rep.truncated += int(out.truncated[: len(idx)].sum())
        looped = out.looped if out.looped is not None else np.zeros(len(idx), bool)
        for r, i in enumerate(idx):
            rep.tvm_text[i] = decode(out.tokens[r])
        rep.looped += [i for r, i in enumerate(idx) if looped[r]]
        if reference is None:
            continue
        t0 = time.perf_counter()
        texts = [charsiu_text(kept[i].lang, kept[i].word, fmt.space_after_colon) for i in idx]
        ref = reference.transcribe(texts, T, fmt.input_eos)
        rep.ref_seconds += time.perf_counter() - t0
        for r, i in enumerate(idx):
            rep.ref_text[i] = decode(ref[r])
            if looped[r]:
                n = int(out.lengths[r])
                if not np.array_equal(out.tokens[r, :n], ref[r, :n]):
                    rep.mismatches.append(i)
                elif (ref[r] == EOS).any():
                    rep.loops_ended_later.append(i)
            elif not np.array_equal(out.tokens[r], ref[r]):
                rep.mismatches.append(i)
    by_lang = defaultdict(list)
    for i, e in enumerate(kept):
        if e.pron:
            by_lang[e.lang].append(i)
    for lang, ix in sorted(by_lang.items()):
        refs = [kept[i].pron for i in ix]
        entry = {"n": len(ix), "tvm": metrics.per_wer([rep.tvm_text[i] for i in ix], refs)}
        if reference is not None:
            entry["ref"] = metrics.per_wer([rep.ref_text[i] for i in ix], refs)
        rep.per_lang[lang] = entry
    return rep


def mean_scores(per_lang: dict, key: str) -> tuple[float, float]:
    vals = [v[key] for v in per_lang.values() if key in v]
    if not vals:
        return float("nan"), float("nan")
    return float(np.mean([p for p, _ in vals])), float(np.mean([w for _, w in vals]))
