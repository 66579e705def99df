"""Beam search with n-best output, step for step as transformers' `generate(num_beams=K,
do_sample=False)` does it, over any decoder that returns one step's logits.

The bookkeeping is numpy over [rows, beams]; the decoder behind `step` holds the caches. Each
call gets the tokens to feed (one per beam) and, from the second step on, the beam each of them
continues: the decoder reorders its self-attention cache by that index before the step, as
transformers' `reorder_cache` does. Kept as transformers keeps them (defaults: length_penalty
1.0, early_stopping False): 2K continuations per row each step, the best K unfinished ones run
on, and a finished hypothesis enters the row's K best by its summed log-probability over
(generated tokens ** length_penalty); a row stops adding once its best running beam cannot beat
its worst finished one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .tokenizer import EOS, PAD

__all__ = ["Candidate", "beam_search", "log_softmax"]

_MASK = np.float32(-1.0e9)  # transformers' "never pick this" score


@dataclass(frozen=True)
class Candidate:
    tokens: np.ndarray  # generated ids up to and including EOS (no start token)
    score: float        # summed log-probability / (len(tokens) ** length_penalty)
    truncated: bool     # ended at max_output_len without EOS


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, largest first; ties to the lower index (as torch.topk
    does on CPU in practice; real scores never tie)."""
    if 4 * k < scores.shape[1]:  # a partition first: K*V scores per row, of which 2K are kept
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)))
        return np.take_along_axis(part, order, axis=1)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _take(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a [B, n, ...] gathered along axis 1 by idx [B, k]."""
    return np.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)


def beam_search(step: Callable[[np.ndarray, np.ndarray | None], np.ndarray], rows: int, num_beams: int,
                n_best: int, max_len: int, filler: np.ndarray | None = None,
                length_penalty: float = 1.0) -> tuple[list[list[Candidate]], int]:
    """`step(tokens [rows*K], parents [rows*K] | None) -> logits [rows*K, V]`, beams of a row
    adjacent (flat index row*K + beam). Returns each row's `n_best` candidates, best first
    (an empty list for `filler` rows), and the decoder steps run."""
    B, K = rows, num_beams
    if not 1 <= n_best <= K:
        raise ValueError(f"n_best must be between 1 and num_beams={K}, got {n_best}")
    filler = np.zeros(B, bool) if filler is None else np.asarray(filler, bool)
    keep = 2 * K                                    # continuations kept per row (one EOS id)
    top_mask = np.arange(keep) < K                  # only the first K may finish a hypothesis
    running = np.full((B, K, max_len), PAD, np.int32)
    running_scores = np.zeros((B, K), np.float32)
    running_scores[:, 1:] = _MASK                   # step 1: only beam 0 expands (all beams equal)
    seqs = running.copy()
    seq_scores = np.full((B, K), _MASK, np.float32)
    seq_len = np.zeros((B, K), np.int32)
    finished = np.zeros((B, K), bool)
    open_rows = ~filler[:, None]                    # can still improve its finished set
    tokens = np.zeros(B * K, np.int32)              # decoder_start_token_id = 0
    parents = None
    steps = 0
    for t in range(max_len):
        logp = log_softmax(step(tokens, parents))
        V = logp.shape[-1]
        total = (logp.reshape(B, K, V) + running_scores[:, :, None]).reshape(B, K * V)
        pick = _top(total, keep)
        top_scores = np.take_along_axis(total, pick, axis=1)
        beam, tok = pick // V, (pick % V).astype(np.int32)
        cand = _take(running, beam).copy()
        cand[:, :, t] = tok
        hits = (tok == EOS) | (t + 1 >= max_len)
        # the K best continuations that have not ended run on
        run_scores = top_scores + hits.astype(np.float32) * _MASK
        nxt = _top(run_scores, K)
        running = _take(cand, nxt)
        running_scores = np.take_along_axis(run_scores, nxt, axis=1)
        parents = (np.take_along_axis(beam, nxt, axis=1) + np.arange(B)[:, None] * K).reshape(-1)
        tokens = running[:, :, t].reshape(-1)
        # ended ones among the first K enter the finished set if they beat its worst
        just = hits & top_mask[None, :]
        fin = top_scores / np.float32((t + 1) ** length_penalty)
        fin = fin + (~open_rows).astype(np.float32) * _MASK + (~just).astype(np.float32) * _MASK
        merged = np.concatenate([seq_scores, fin], axis=1)
        best = _top(merged, K)
        seqs = _take(np.concatenate([seqs, cand], axis=1), best)
        seq_scores = np.take_along_axis(merged, best, axis=1)
        seq_len = np.take_along_axis(np.concatenate([seq_len, np.full((B, keep), t + 1, np.int32)], axis=1),
                                     best, axis=1)
        finished = np.take_along_axis(np.concatenate([finished, just], axis=1), best, axis=1)
        steps = t + 1
        best_running = running_scores[:, :1] / np.float32((t + 1) ** length_penalty)
        worst = np.where(finished, seq_scores.min(axis=1, keepdims=True), _MASK)
        open_rows &= (best_running > worst).any(axis=1, keepdims=True)
        if not open_rows.any() or hits.all():
            break
    out = []
    for r in range(B):
        if filler[r]:
            out.append([])
            continue
        row = []
        for j in range(n_best):
            n = int(seq_len[r, j])
            ids = seqs[r, j, :n]
            row.append(Candidate(ids, float(seq_scores[r, j]), bool(n == 0 or ids[-1] != EOS)))
        out.append(row)
    return out, steps
