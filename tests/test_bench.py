"""The bench's own logic: a conversion made for other weights is never timed as this checkpoint,
TVM pads a batch no further than the compiled sizes force it to, and a padded single word is
not reported as a batch-1 latency."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from g2p_batch import bench, checkpoint
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


def test_no_batch_1_latency_from_a_set_without_batch_1(monkeypatch):
    """The H200 bench's batch-4096 set printed 84 ms as TVM's "batch-1" latency: one word padded to
    4096 rows."""
    decoded = []

    def fake_engine(sizes):
        return SimpleNamespace(buckets=[Bucket(b, 16) for b in sizes], stage_seconds={},
                               decode=lambda ids, **kw: decoded.append(ids.shape))
    cfg = SimpleNamespace(batch=8, latency_runs=2)
    rows, batches = [[5] * 10] * 16, [list(range(8)), list(range(8, 16))]

    monkeypatch.setattr(bench, "_tvm_engine", lambda cfg, ckpt: fake_engine((8,)))
    r = bench.run_tvm(cfg, None, rows, batches, 14)
    assert "latency_ms" not in r and "padded to 8 rows" in r["latency_note"]
    assert len(decoded) == 3  # the warm-up and the two batches; no padded single-word runs
    assert bench.table({"engines": {"tvm": r}}).splitlines()[2][35:44].strip() == "-"  # the b1 ms column

    monkeypatch.setattr(bench, "_tvm_engine", lambda cfg, ckpt: fake_engine((1, 8)))
    assert "latency_ms" in bench.run_tvm(cfg, None, rows, batches, 14)
