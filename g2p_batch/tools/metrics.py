"""PER and WER as the CharsiuG2P paper reports them: per language, against the first of the
reference's comma-separated variants."""

from __future__ import annotations


def first_variant(pron: str) -> str:
    return pron.split(",")[0].strip()


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def per_wer(predictions: list[str], references: list[str]) -> tuple[float, float]:
    """Mean of per-word character error rates, and the share of words not exactly right."""
    if not predictions:
        return float("nan"), float("nan")
    per = wer = 0.0
    for p, r in zip(predictions, references, strict=True):
        ref = first_variant(r)
        per += edit_distance(p, ref) / max(len(ref), 1)
        wer += p != ref
    n = len(predictions)
    return per / n, wer / n
