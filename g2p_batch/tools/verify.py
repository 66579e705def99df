"""TVM against transformers on the same padded batches: token-id mismatches, PER and WER.

Batches here keep the input order (rows i..i+B) rather than the job's length sorting, so the
padding a row sees is arbitrary: exactness must not depend on who shares a batch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..decode import metrics
from ..decode.engine import Bucket, Engine, fit_bucket
from ..decode.rules import InputRules
from ..decode.tokenizer import (
    EOS,
    InputTooLong,
    PromptFormat,
    decode,
    encode,
    pad_batch,
)
from ..errors import ConfigError
from .lexicon import Entry


def consecutive_batches(rows: list[list[int]], batch: int, buckets: list[Bucket]):
    """Rows i..i+batch in input order, each group padded to the smallest compiled shape of that
    batch size that holds it; yields (row indices, ids [batch, L])."""
    sized = [b for b in buckets if b.batch == batch]
    if not sized:
        raise ConfigError(f"batch size {batch} is not compiled; compiled: {sorted({b.batch for b in buckets})}")
    for start in range(0, len(rows), batch):
        idx = list(range(start, min(start + batch, len(rows))))
        shape = fit_bucket(sized, batch, max(len(rows[i]) for i in idx))
        yield idx, pad_batch([rows[i] for i in idx], shape.input_len, batch)


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
    precision: str = "fp32"
    fp32_text: list[str] = field(default_factory=list)  # bf16 runs: the fp32 set's output, row by row
    fp32_mismatches: list[int] = field(default_factory=list)


def run(engine: Engine, entries: list[Entry], batch: int, fmt: PromptFormat = PromptFormat(),
        reference=None, progress: bool = False, stop_loops: bool = True, rules: InputRules | None = None,
        capitalize: bool = False, fp32: Engine | None = None) -> VerifyReport:
    """TVM on our ids, the reference on CharsiuG2P's (`reference.Reference`), row by row.

    A row the engine stopped as a loop (`stop_loops`) matches when its tokens are the start of
    the reference's; it is listed in `looped`, and in `loops_ended_later` when the reference
    went on to end with EOS (the one way the loop stop changes a result). `rules` normalise
    each word as the job does (composed, case), never splitting it; `capitalize` capitalises each
    word first, to measure what the case rules do with capitalised input."""
    from tqdm import tqdm

    from .reference import charsiu_text

    rep = VerifyReport()
    max_len = max(b.input_len for b in engine.buckets)
    kept, rows = [], []
    for e in entries:
        word = e.word[:1].upper() + e.word[1:] if capitalize else e.word
        e = Entry(e.lang, rules.normalise(e.lang, word) if rules else word, e.pron)
        try:
            rows.append(encode(e.lang, e.word, fmt, max_len))
            kept.append(e)
        except InputTooLong as exc:
            rep.skipped.append(str(exc))
    rep.rows = len(kept)
    rep.tvm_text = [""] * len(kept)
    rep.ref_text = [""] * len(kept)
    rep.precision = getattr(engine, "precision", "fp32")
    rep.fp32_text = [""] * len(kept) if fp32 is not None else []
    T = engine.max_output_len
    for idx, ids in tqdm(list(consecutive_batches(rows, batch, engine.buckets)), desc="verify", disable=not progress):
        t0 = time.perf_counter()
        out = engine.decode(ids, stop_loops=stop_loops)
        rep.tvm_seconds += time.perf_counter() - t0
        rep.truncated += int(out.truncated[: len(idx)].sum())
        looped = out.looped if out.looped is not None else np.zeros(len(idx), bool)
        for r, i in enumerate(idx):
            rep.tvm_text[i] = decode(out.tokens[r])
        rep.looped += [i for r, i in enumerate(idx) if looped[r]]
        if fp32 is not None:
            base = fp32.decode(ids, stop_loops=stop_loops)
            for r, i in enumerate(idx):
                rep.fp32_text[i] = decode(base.tokens[r])
                if not np.array_equal(base.tokens[r], out.tokens[r]):
                    rep.fp32_mismatches.append(i)
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
    differ = set(rep.fp32_mismatches)
    by_lang = defaultdict(list)
    for i, e in enumerate(kept):
        if e.pron:
            by_lang[e.lang].append(i)
    for lang, ix in sorted(by_lang.items()):
        refs = [kept[i].pron for i in ix]
        entry = {"n": len(ix), "tvm": metrics.per_wer([rep.tvm_text[i] for i in ix], refs)}
        if reference is not None:
            entry["ref"] = metrics.per_wer([rep.ref_text[i] for i in ix], refs)
        if fp32 is not None:
            entry["fp32"] = metrics.per_wer([rep.fp32_text[i] for i in ix], refs)
            entry["fp32_mismatch_rate"] = sum(i in differ for i in ix) / len(ix)
        rep.per_lang[lang] = entry
    return rep


def mean_scores(per_lang: dict, key: str) -> tuple[float, float]:
    vals = [v[key] for v in per_lang.values() if key in v]
    if not vals:
        return float("nan"), float("nan")
    return float(np.mean([p for p, _ in vals])), float(np.mean([w for _, w in vals]))


def summary_lines(rep: VerifyReport, entries: list[Entry], batch: int, prompt: PromptFormat,
                  with_reference: bool) -> list[str]:
    lines = [f"rows: {rep.rows} over {len({e.lang for e in entries})} languages, batch size {batch}, "
             f"skipped (too long): {len(rep.skipped)}",
             f"prompt: {prompt.to_dict()}",
             f"tvm: {rep.rows / max(rep.tvm_seconds, 1e-9):.1f} words/s, truncated rows: {rep.truncated} "
             f"(stopped as loops: {len(rep.looped)})"]
    if with_reference:
        lines += [f"transformers: {rep.rows / max(rep.ref_seconds, 1e-9):.1f} words/s",
                  f"mismatching rows: {len(rep.mismatches)} ({len(rep.mismatches) / max(rep.rows, 1):.2%}, "
                  f"tvm {rep.precision} against transformers)"]
        if rep.looped:
            lines.append(f"rows stopped as loops where transformers later ended with EOS: {len(rep.loops_ended_later)}")
    if rep.per_lang:
        per, wer = mean_scores(rep.per_lang, "tvm")
        line = f"tvm PER {per:.4f} WER {wer:.4f}"
        if with_reference:
            rper, rwer = mean_scores(rep.per_lang, "ref")
            line += f" | transformers PER {rper:.4f} WER {rwer:.4f}"
        lines.append(line + f" (mean over {len(rep.per_lang)} languages)")
    return lines


# bf16 mode's accuracy gate against fp32 on the same rows: mean PER and WER over languages, the
# worst language's PER, and the share of rows whose output is identical
GATE_MEAN, GATE_LANG, GATE_IDENTICAL = 0.002, 0.01, 0.98


def bf16_gate(rep: VerifyReport) -> tuple[list[str], bool]:
    """The gate's lines and whether it passes (needs `run(..., fp32=...)`); languages over the
    per-language bound are named with their mismatch rate."""
    per, wer = mean_scores(rep.per_lang, "tvm")
    fper, fwer = mean_scores(rep.per_lang, "fp32")
    same = 1 - len(rep.fp32_mismatches) / max(rep.rows, 1)
    worse = {lang: v["tvm"][0] - v["fp32"][0] for lang, v in rep.per_lang.items() if "fp32" in v}
    over = sorted((d, lang) for lang, d in worse.items() if d > GATE_LANG)
    checks = [abs(per - fper) <= GATE_MEAN, abs(wer - fwer) <= GATE_MEAN, not over, same >= GATE_IDENTICAL]
    lines = [f"bf16 PER {per:.4f} WER {wer:.4f} | fp32 PER {fper:.4f} WER {fwer:.4f} "
             f"(differences {per - fper:+.4f}, {wer - fwer:+.4f}; bound {GATE_MEAN})",
             f"rows identical to fp32: {same:.2%} ({len(rep.fp32_mismatches)} of {rep.rows} differ; bound "
             f"{GATE_IDENTICAL:.0%})",
             f"worst language: {max(worse, key=worse.get) if worse else '-'} PER {max(worse.values(), default=0):+.4f} "
             f"against fp32 (bound {GATE_LANG})"]
    lines += [f"  over the bound: {lang} PER {d:+.4f}, {rep.per_lang[lang]['fp32_mismatch_rate']:.1%} of rows differ"
              for d, lang in reversed(over)]
    lines.append("accuracy gate: " + ("PASS" if all(checks) else "FAIL"))
    return lines, all(checks)


def to_json(rep: VerifyReport, prompt: PromptFormat) -> dict:
    return {"rows": rep.rows, "precision": rep.precision, "fp32_mismatches": len(rep.fp32_mismatches), "mismatches": rep.mismatches, "truncated": rep.truncated, "looped": len(rep.looped),
            "loops_ended_later": len(rep.loops_ended_later), "prompt": prompt.to_dict(), "per_lang": rep.per_lang,
            "skipped": rep.skipped}
