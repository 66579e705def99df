"""Checkpoint loading: local directories always, hub ids with a clear error when offline;
the embedded default; the transformers-5 tied-head quirk handled both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest

from g2p_batch.errors import CheckpointError
from g2p_batch.model import checkpoint
from g2p_batch.model.params import decoder_bias, encoder_bias
from g2p_batch.model.shapes import T5Shape
from g2p_batch.tools import checkpoints


def test_unreachable_hub_id_says_pass_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as err:
        checkpoint.load("charsiu/g2p_multilingual_byT5_tiny_8_layers_100")
    assert "pass the local directory" in str(err.value)


def test_bad_references(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        checkpoint.load(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        checkpoint.load(tmp_path / "f.txt")
    with pytest.raises(CheckpointError, match="neither a local directory nor a hub id"):
        checkpoint.load("no-such-dir")


def test_default_checkpoint_is_embedded_and_fits_25mb():
    cp = checkpoint.load("default")
    assert cp.name == "g2p_tiny_3_1"
    assert (cp.path / "model.safetensors").stat().st_size <= 25 * 2**20
    shape = T5Shape.from_hf_config(cp.config)
    assert (shape.enc_layers, shape.dec_layers, shape.d_model) == (3, 1, 256)
    assert "lm_head.weight" in cp.weights and not shape.scale_output


def test_made_checkpoint_is_untied_and_reloads_identically(tmp_path):
    import torch
    import transformers

    path = checkpoints.make("micro", 3, tmp_path / "ck")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["num_layers"] == 2
    cp = checkpoint.load(path)
    assert not np.array_equal(cp.weights["lm_head.weight"], cp.weights["shared.weight"])
    model = transformers.T5ForConditionalGeneration.from_pretrained(path)
    assert torch.equal(model.lm_head.weight, torch.from_numpy(cp.weights["lm_head.weight"]))
    again = checkpoint.load(checkpoints.make("micro", 3, tmp_path / "ck2"))
    assert again.sha256 == cp.sha256  # seeded: the same bytes


def test_bias_tables_match_transformers(tmp_path):
    import torch
    import transformers

    path = checkpoints.make("micro", 0, tmp_path / "ck")
    model = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
    shape = T5Shape.from_hf_config(json.loads((path / "config.json").read_text()))
    cp = checkpoint.load(path)
    emb = cp.weights["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    with torch.no_grad():
        hf_enc = model.encoder.block[0].layer[0].SelfAttention.compute_bias(40, 40)[0].numpy()
        hf_dec = model.decoder.block[0].layer[0].SelfAttention.compute_bias(200, 200)[0].numpy()
    np.testing.assert_array_equal(encoder_bias(emb, 40, shape), hf_enc)
    demb = cp.weights["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    ours = decoder_bias(demb, 200, shape)
    causal = np.triu(np.ones((200, 200), bool), 1)
    np.testing.assert_array_equal(ours[:, ~causal], hf_dec[:, ~causal])
    assert (ours[:, causal] < -1e38).all()
