"""The bench's own logic: a conversion made for other weights is never timed as this checkpoint,
TVM pads a batch no further than the compiled sizes force it to, and a padded single word is
not reported as a batch-1 latency."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from g2p_batch.decode.engine import Bucket
from g2p_batch.errors import ConfigError
from g2p_batch.model import checkpoint
from g2p_batch.tools import bench, checkpoints
from g2p_batch.tools.bench import _tvm_batch_runner, convert_ct2


class _Local:
    """`bench.Isolated`'s interface for a runner in this process."""

    def __init__(self, runner, batches, latency_runs):
        self.runner, self.batches, self.latency_runs, self.note = runner, batches, latency_runs, runner.note

    def timed_pass(self):
        return bench._timed_pass(self.runner, self.batches)

    def latency_ms(self):
        return bench._latency_ms(self.runner, self.latency_runs)


def test_ct2_conversion_is_redone_for_new_weights_under_the_same_name(tmp_path):
    ck, out = tmp_path / "model", tmp_path / "cache" / "ct2-model-float32"
    checkpoints.make("micro", 0, ck)
    convert_ct2(str(ck), out, None)
    first = (out / "model.bin").read_bytes()
    assert (out / "source_weights.sha256").read_text() == checkpoint.load(ck).sha256

    convert_ct2(str(ck), out, None)  # same weights: reused, not rewritten
    assert (out / "model.bin").read_bytes() == first

    shutil.rmtree(ck)
    checkpoints.make("micro", 1, ck)  # retrained in place
    convert_ct2(str(ck), out, None)
    assert (out / "model.bin").read_bytes() != first
    assert (out / "source_weights.sha256").read_text() == checkpoint.load(ck).sha256


def test_tvm_runs_the_tail_batch_in_the_smallest_compiled_size_that_holds_it():
    """Padding a 16-word tail to batch 64 would charge TVM for 48 rows the other engines skip."""
    shapes = []
    eng = SimpleNamespace(buckets=[Bucket(b, L) for b in (1, 8, 32, 64) for L in (16, 32)],
                          decode=lambda ids, **kw: shapes.append(ids.shape))
    rows = [[5] * 10] * 63 + [[5] * 20]
    run_batch, input_len = _tvm_batch_runner(eng, rows, 14)
    for idx in (list(range(64)), list(range(48, 64)), [0], list(range(9))):
        run_batch(idx)
    assert shapes == [(64, 32), (32, 32), (1, 16), (32, 16)]
    with pytest.raises(ConfigError, match="no compiled shape holds 65 rows of 20 ids"):
        run_batch(list(range(64)) + [0])


def test_beam_engines_fit_words_times_beams_rows_and_report_batch_1():
    """tvm-beam4: words run in the smallest bucket of words x 4 rows (one word in b4, two in
    b8, three in b256); b1 beside them in the set cannot hold a word's beams."""
    shapes = []
    eng = SimpleNamespace(buckets=[Bucket(b, 16) for b in (1, 4, 8, 256)], stage_seconds={},
                          decode_beams=lambda ids, k, n, **kw: shapes.append((ids.shape, k, n)))
    rows = [[5] * 10] * 64
    run_batch, _ = _tvm_batch_runner(eng, rows, 14, beams=4)
    run_batch(list(range(64)))
    run_batch([0])
    run_batch(list(range(2)))
    run_batch(list(range(3)))
    assert shapes == [((64, 16), 4, 4), ((1, 16), 4, 4), ((2, 16), 4, 4), ((64, 16), 4, 4)]


def test_no_batch_1_latency_from_a_set_without_batch_1(monkeypatch):
    """The H200 bench's batch-4096 set printed 84 ms as TVM's "batch-1" latency: one word padded to
    4096 rows."""
    decoded = []

    def fake_engine(sizes):
        return SimpleNamespace(buckets=[Bucket(b, 16) for b in sizes], stage_seconds={},
                               decode=lambda ids, **kw: decoded.append(ids.shape))
    cfg = SimpleNamespace(batch=8, latency_runs=2)
    rows, batches = [[5] * 10] * 16, [list(range(8)), list(range(8, 16))]

    def measure():
        local = _Local(bench.tvm_runner(cfg, None, rows, 14), batches, cfg.latency_runs)
        return bench._measure({"tvm": local}, 1, progress=lambda m: None)["tvm"]

    monkeypatch.setattr(bench, "_tvm_engine", lambda cfg, ckpt, rows, beams=1, precision="fp32": fake_engine((8,)))
    r = measure()
    assert "latency_ms" not in r and "padded to 8 rows" in r["latency_note"]
    assert len(decoded) == 2  # the two batches; no padded single-word runs
    name, words_per_s, ratio, b1_ms, *_ = bench.table({"engines": {"tvm": r}}).splitlines()[2].split()
    assert name == "tvm" and b1_ms == "-"  # no batch-1 latency to show

    monkeypatch.setattr(bench, "_tvm_engine", lambda cfg, ckpt, rows, beams=1, precision="fp32": fake_engine((1, 8)))
    assert "latency_ms" in measure()


def test_engines_take_turns_each_round_and_the_median_pass_counts(monkeypatch):
    """Passes interleave across engines (one pass of each per round), so a slow phase of the
    machine hits every engine alike, and the reported pass is each engine's median."""
    order, clock = [], [0.0]
    costs = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 9.0, 7.0])}

    def runner(name):
        def run_batch(idx):
            order.append(name)
            clock[0] += next(costs[name])
        return _Local(bench.Runner(run_batch, None), [[1]], 0)

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench, "_SETTLE_S", 0)
    r = bench._measure({"a": runner("a"), "b": runner("b")}, 3, progress=lambda m: None)
    assert order == ["a", "b"] * 3
    assert r["a"]["seconds"] == 2.0 and r["b"]["seconds"] == 7.0
    assert r["a"]["rounds_seconds"] == [3.0, 1.0, 2.0]


def test_ray_scaling_takes_each_ratio_within_its_round_then_the_median():
    """A slow round must not pair with a fast one: here the ratio of the medians would read
    75%, while two of the three rounds, each measured in one phase of the machine, read 95%."""
    def rnd(single, one, two, plain, share):
        job = lambda w: {"steady_words_per_s": w, "end_to_end_words_per_s": w / 2, "driver_share": share}
        return {"single_process_words_per_s": single, "plain_processes_words_per_s": plain,
                "runs": {1: job(one), 2: job(two)}}

    s = bench.scaling_summary([rnd(200, 190, 380, 380, 0.01), rnd(150, 150, 285, 270, 0.03),
                               rnd(210, 200, 300, 420, 0.02)], actors=2)
    assert s["efficiency_vs_single_process"] == pytest.approx(0.95)
    assert s["scaling_efficiency"] == pytest.approx(0.95)                 # 1.0, 0.95, 0.75
    assert s["plain_processes_vs_single_process"] == pytest.approx(0.95)  # 0.95, 0.9, 1.0
    assert s["driver_share"] == 0.03
    assert s["single_process_words_per_s"] == 200


def test_an_engine_in_its_own_process_times_passes_on_request_and_stops(tmp_path):
    """`bench.Isolated`: the engine loads and warms up in a spawned process that stays stopped
    between requests; a failure there (here an unknown engine) comes back as the same error."""
    ck = tmp_path / "model"
    checkpoints.make("micro", 0, ck)
    cfg = bench.BenchConfig(threads=1, latency_runs=2, max_output_len=8)
    rows, batches = [[5, 6, 7, 1]] * 4, [[0, 1], [2, 3]]
    e = bench.Isolated("transformers", cfg, str(ck), rows, batches, 3)
    try:
        time.sleep(0.2)
        assert _state(e.proc.pid) == "T"  # stopped between requests
        p = e.timed_pass()
        assert p["seconds"] > 0 and e.latency_ms() > 0
    finally:
        e.close()
    assert not e.proc.is_alive()
    with pytest.raises(ConfigError, match="unknown engine"):
        bench.Isolated("nope", cfg, str(ck), rows, batches, 3)


_ORPHAN = """
import sys, time
from g2p_batch.tools import bench
cfg = bench.BenchConfig(threads=1, latency_runs=2, max_output_len=8)
e = bench.Isolated("transformers", cfg, sys.argv[1], [[5, 6, 7, 1]] * 2, [[0, 1]], 3)
print(e.proc.pid, flush=True)
time.sleep(600)
"""


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0]
    except FileNotFoundError:
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_stopped_engine_dies_with_a_bench_killed_outright(tmp_path):
    """A bench killed by SIGKILL runs no cleanup; its engine, stopped at the time, must not stay."""
    ck = tmp_path / "model"
    checkpoints.make("micro", 0, ck)
    bench_proc = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(ck)], stdout=subprocess.PIPE, text=True)
    engine = None
    try:
        engine = int(bench_proc.stdout.readline())
        time.sleep(0.2)
        assert _state(engine) == "T"
        bench_proc.kill()
        bench_proc.wait()
        deadline = time.monotonic() + 20
        while _state(engine) not in (None, "Z") and time.monotonic() < deadline:  # Z: dead, not yet reaped
            time.sleep(0.1)
        assert _state(engine) in (None, "Z"), "the engine outlived the bench"
    finally:
        bench_proc.kill()
        if engine is not None and _state(engine) not in (None, "Z"):
            os.kill(engine, 9)  # do not leave a stopped process behind when the test fails


def test_without_a_checkpoint_the_bench_makes_its_seeded_tiny_8(tmp_path):
    path = bench.bench_checkpoint(bench.BenchConfig(cache_dir=str(tmp_path)))
    again = bench.bench_checkpoint(bench.BenchConfig(cache_dir=str(tmp_path)))
    assert path == again == str(tmp_path / "tiny_8_seed0")
    assert checkpoint.load(path).config["num_layers"] == 8
