"""n-best beam search against transformers generate(num_beams=K, num_return_sequences=N):
the same candidates (ids) in the same order, scores to float32 noise, rows ending at varied
steps, at one row and at a padded batch; first the bookkeeping alone, then the compiled decoder."""

from __future__ import annotations

import numpy as np
import pytest

from g2p_batch.decode.beam import beam_search
from g2p_batch.decode.tokenizer import EOS, encode, pad_batch
from g2p_batch.tools.reference import Reference


def _same(ours, ref, rows):
    """Per row: identical candidate ids in order, scores within float32 noise."""
    for r in range(rows):
        got = [(c.tokens.tolist(), c.score) for c in ours[r]]
        want = [(t.tolist(), s) for t, s in ref[r]]
        assert [g for g, _ in got] == [w for w, _ in want], f"row {r}: {got} != {want}"
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=2e-4), f"row {r}"


def _torch_step(model, input_ids, K):
    """A decoder without a cache: each call re-runs the whole prefix of every beam, reordered by
    `parents`, so only the beam bookkeeping is under test."""
    import torch

    ids = torch.as_tensor(np.repeat(input_ids, K, axis=0), dtype=torch.long)
    mask = (ids != 0).long()
    with torch.inference_mode():
        enc = model.get_encoder()(input_ids=ids, attention_mask=mask)
    prefix = [torch.zeros((len(ids), 0), dtype=torch.long)]

    def step(tokens, parents):
        p = prefix[0] if parents is None else prefix[0][torch.as_tensor(parents, dtype=torch.long)]
        prefix[0] = torch.cat([p, torch.as_tensor(tokens, dtype=torch.long)[:, None]], dim=1)
        with torch.inference_mode():
            out = model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=prefix[0])
        return out.logits[:, -1].float().numpy()

    return step


@pytest.fixture(scope="module")
def shadowed(make_set):
    """A seeded tiny_8 checkpoint whose EOS is likely, so beams end at different steps (about
    one candidate in seven ends before max_output_len, at lengths from 1 to 23)."""
    return make_set(arch="tiny_8", eos_shadow=79, T=24, batch_sizes=(4, 16), buckets=(64,))


def _inputs(parity_entries, picks):
    return pad_batch([encode(parity_entries[i].lang, parity_entries[i].word) for i in picks], 64, len(picks))


# parity_entries whose candidates end early, late or never (with 100, 150, 250, 400, 450 that
# never end), from 17 languages
WORDS = [3, 6, 8, 21, 22, 26, 33, 39, 41, 44, 58, 71, 85, 100, 150, 164, 194, 202, 203, 209, 217, 250, 264,
         270, 274, 297, 336, 342, 400, 423, 450]


@pytest.mark.parametrize("picks", [[22], WORDS[:12]])
def test_bookkeeping_matches_generate(shadowed, parity_entries, picks):
    ck, _ = shadowed
    ref = Reference(ck, threads=1)
    ids = _inputs(parity_entries, picks)
    T, K, N = 24, 4, 3
    ours, steps = beam_search(_torch_step(ref.model, ids, K), len(picks), K, N, T)
    want = ref.beams(ids, T, K, N)
    _same(ours, want, len(picks))
    assert 1 <= steps <= T
    if len(picks) > 1:
        assert any(t[-1] == EOS for row in want for t, _ in row), "no candidate ended: nothing exercised"


def test_compiled_decoder_matches_generate(shadowed, parity_entries):
    """One row (4 beams fill the b4 bucket) and batches of 4 rows (b16), the last one padded."""
    from g2p_batch.runtime.engine import load_engine

    ck, art = shadowed
    engine, ref = load_engine(art), Reference(ck, threads=1)
    K, N, T = 4, 4, 24
    words = WORDS  # 31: the last batch of 4 is padded
    ended_at = set()
    for size in (1, 4):
        for start in range(0, len(words), size):
            picks = words[start:start + size]
            ids = pad_batch([encode(parity_entries[i].lang, parity_entries[i].word) for i in picks], 64, size)
            assert ids.shape[0] == size
            out = engine.decode_beams(ids, K, N)
            want = ref.beams(ids[:len(picks)], T, K, N)
            _same(out.candidates, want, len(picks))
            for r, cands in enumerate(out.candidates[:len(picks)]):
                assert (out.tokens[r, :out.lengths[r]] == cands[0].tokens).all()
                assert out.truncated[r] == (cands[0].tokens[-1] != EOS)
                ended_at.update(len(c.tokens) for c in cands if c.tokens[-1] == EOS)
            assert all(c == [] for c in out.candidates[len(picks):])  # filler rows
    assert len(ended_at) >= 4, f"candidates should end at varied steps, ended at {sorted(ended_at)}"


def test_n_best_is_checked():
    with pytest.raises(ValueError, match="n_best"):
        beam_search(lambda t, p: np.zeros((len(t), 8), np.float32), 1, 2, 3, 4)
