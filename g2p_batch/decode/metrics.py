"""PER and WER as the CharsiuG2P paper reports them: per language, against the first of the
reference's comma-separated variants. `verify` and the job's check mode both score with
`word_scores`."""

from __future__ import annotations

__all__ = ["edit_distance", "first_variant", "matches", "per_wer", "variants", "word_scores"]


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


def variants(pron: str) -> list[str]:
    return [v.strip() for v in pron.split(",") if v.strip()]


def word_scores(prediction: str, reference: str) -> tuple[float, bool]:
    """(PER, wrong) of one word: edit distance to the first variant over its length, and
    whether the prediction differs from that variant."""
    ref = first_variant(reference)
    return edit_distance(prediction, ref) / max(len(ref), 1), prediction != ref


def matches(prediction: str, reference: str) -> bool:
    """Exactly one of the reference's variants."""
    return prediction in variants(reference)


def per_wer(predictions: list[str], references: list[str]) -> tuple[float, float]:
    """Mean of per-word character error rates, and the share of words not exactly right."""
    if not predictions:
        return float("nan"), float("nan")
    scores = [word_scores(p, r) for p, r in zip(predictions, references, strict=True)]
    return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)
