"""TVM greedy decoding against transformers generate: identical token ids, row by row."""

from __future__ import annotations

import numpy as np
import pytest

from g2p_batch.runtime.engine import load_engine
from g2p_batch.tools import verify
from g2p_batch.tools.reference import Reference


def _check(make_set, entries, arch, batch, T, eos_shadow=None):
    ck, art = make_set(arch=arch, eos_shadow=eos_shadow, T=T, batch_sizes=(batch,))
    engine = load_engine(art)
    rep = verify.run(engine, entries, batch, reference=Reference(ck))
    assert rep.rows == len(entries) and not rep.skipped
    assert rep.mismatches == [], [(rep.tvm_text[i], rep.ref_text[i]) for i in rep.mismatches[:5]]
    return engine, rep


def test_tiny8_batch8_matches_transformers(make_set, parity_entries):
    # 300 words, 12 of each language -> 37 full batches and one with 4 all-PAD filler rows
    _check(make_set, [e for i, e in enumerate(parity_entries) if i % 5 < 3], "tiny_8", 8, 16)


@pytest.mark.slow
def test_tiny8_batch1_matches_transformers(make_set, parity_entries):
    _check(make_set, parity_entries[::10], "tiny_8", 1, 16)  # 2 words of each of the 25 languages


@pytest.mark.slow
def test_tiny12_batch8_matches_transformers(make_set, parity_entries):
    _check(make_set, parity_entries[::2], "tiny_12", 8, 16)


@pytest.mark.parametrize("T", [24, 32])  # the CPU key cache: one block of 24, two blocks of 16
def test_rows_ending_at_different_steps(make_set, parity_entries, T):
    """EOS made likely (head row shadowing a common byte): rows end early, late or never, so
    early exit, padding after EOS, loops and truncation are all exercised against the reference."""
    engine, rep = _check(make_set, parity_entries[:200], "tiny_8", 8, T, eos_shadow=79)
    from g2p_batch.decode.tokenizer import encode, pad_batch
    rows = [encode(e.lang, e.word) for e in parity_entries[:200]]
    lengths, tokens = [], []
    for start in range(0, 200, 8):
        out = engine.decode(pad_batch(rows[start:start + 8], 64, 8))
        lengths += list(out.lengths)
        tokens += list(out.tokens)
        assert ((out.lengths == T) | ~out.truncated | out.looped).all()
    lengths = np.array(lengths)
    ended = [i for i in range(200) if (tokens[i] == 1).any()]
    assert len(ended) >= 20, "too few rows ended early to exercise EOS"
    assert len(set(lengths[ended].tolist())) >= 4, "rows should end at varied steps"
    assert rep.truncated > 0, "some rows should hit max_output_len"
    # a batch of rows that all end: the loop exits early, and no row's result moves
    pick = ended[:8]
    out = engine.decode(pad_batch([rows[i] for i in pick], 64, 8))
    assert out.steps < T
    assert all((out.tokens[r] == tokens[i]).all() for r, i in enumerate(pick))


def test_reference_does_not_warn_per_batch_about_max_length(capfd):
    """Our checkpoints save max_length 65 for plain generate(); the reference always passes
    max_new_tokens, which made transformers warn once per batch and flood verify and bench logs."""
    from g2p_batch.decode.tokenizer import encode_text
    from g2p_batch.model import checkpoint

    _, path = checkpoint.resolve("default")
    ref = Reference(path, threads=1)
    capfd.readouterr()
    out = ref.generate(np.array([encode_text("<eng-us>:cat")]), max_new_tokens=12)
    assert out.shape == (1, 12)
    assert "max_length" not in capfd.readouterr().err


@pytest.mark.parametrize("arch,check", [
    ("micro,feed_forward_proj=relu", lambda s: not s.gated and s.act == "relu"),
    ("micro,tie_word_embeddings=true", lambda s: s.scale_output),
])
def test_older_t5_forms_match_transformers(make_set, parity_entries, arch, check):
    """Older CharsiuG2P-era T5 configs: a plain ReLU feed-forward, and a head tied to the
    embedding with the decoder output scaled by d_model**-0.5 (transformers' rule)."""
    from g2p_batch.model.checkpoint import load
    from g2p_batch.model.shapes import T5Shape

    ck, _ = make_set(arch=arch, T=16, batch_sizes=(8,))
    assert check(T5Shape.from_hf_config(load(ck).config))
    engine, _ = _check(make_set, parity_entries[::2], arch, 8, 16)
    # the output scale moves every logit alike, so the argmax cannot show it: the scores can
    _scores_match_transformers(engine, ck, parity_entries[:8])


def _scores_match_transformers(engine, ck, entries):
    """The engine's mean log-probability per row equals transformers' on the same tokens."""
    import torch

    from g2p_batch.decode.tokenizer import encode, pad_batch

    ids = pad_batch([encode(e.lang, e.word) for e in entries], 64, 8)
    out = engine.decode(ids, stop_loops=False)
    model = Reference(ck).model
    src = torch.as_tensor(ids, dtype=torch.long)
    dec = torch.cat([torch.zeros(8, 1, dtype=torch.long), torch.as_tensor(out.tokens[:, :-1], dtype=torch.long)], 1)
    with torch.no_grad():
        logp = model(input_ids=src, attention_mask=(src != 0).long(), decoder_input_ids=dec).logits.log_softmax(-1)
    picked = logp.gather(-1, torch.as_tensor(out.tokens, dtype=torch.long)[..., None])[..., 0].numpy()
    for r in range(8):
        n = int(out.lengths[r])
        np.testing.assert_allclose(out.scores[r], picked[r, :n].mean(), rtol=1e-4, atol=1e-5)
