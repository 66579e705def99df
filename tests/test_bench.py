"""Bench caches: a conversion made for other weights must never be timed as this checkpoint."""

from __future__ import annotations

import shutil

from g2p_batch import checkpoint
from g2p_batch.bench import convert_ct2


def test_ct2_conversion_is_redone_for_new_weights_under_the_same_name(tmp_path):
    ck, out = tmp_path / "model", tmp_path / "cache" / "ct2-model-float32"
    checkpoint.make("micro", 0, ck)
    convert_ct2(str(ck), out, None)
    first = (out / "model.bin").read_bytes()
    assert (out / "source_weights.sha256").read_text() == checkpoint.load(ck).sha256

    convert_ct2(str(ck), out, None)  # same weights: reused, not rewritten
    assert (out / "model.bin").read_bytes() == first

    shutil.rmtree(ck)
    checkpoint.make("micro", 1, ck)  # retrained in place
    convert_ct2(str(ck), out, None)
    assert (out / "model.bin").read_bytes() != first
    assert (out / "source_weights.sha256").read_text() == checkpoint.load(ck).sha256
