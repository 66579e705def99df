"""The bench's own logic: a conversion made for other weights is never timed as this checkpoint,
and TVM pads a batch no further than the compiled sizes force it to."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from g2p_batch import checkpoint
from g2p_batch.bench import _tvm_batch_runner, convert_ct2
from g2p_batch.decoding import Bucket


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


def test_tvm_runs_the_tail_batch_in_the_smallest_compiled_size_that_holds_it():
    """Padding a 16-word tail to batch 64 would charge TVM for 48 rows the other engines skip."""
    shapes = []
    eng = SimpleNamespace(buckets=[Bucket(b, L) for b in (1, 8, 32, 64) for L in (16, 32)],
                          decode=lambda ids, **kw: shapes.append(ids.shape))
    rows = [[5] * 10] * 63 + [[5] * 20]
    run_batch, input_len = _tvm_batch_runner(eng, SimpleNamespace(batch=64), rows, 14)
    for idx in (list(range(64)), list(range(48, 64)), [0], list(range(9))):
        run_batch(idx)
    assert shapes == [(64, 32), (32, 32), (1, 16), (32, 16)]
    with pytest.raises(ValueError, match="no compiled batch size holds 65 rows"):
        run_batch(list(range(64)) + [0])
