"""The real seam: a random-init micro checkpoint compiled with TVM, run as a Ray job through
the default preparer/loader (`engines.prepare_tvm_engine` / `load_tvm_engine`), compared row by
row with the same artifacts loaded in-process. Skipped where TVM or torch is missing."""

from __future__ import annotations

import json
import logging

import pyarrow.parquet as pq
import pytest

pytest.importorskip("tvm")
pytest.importorskip("transformers")

import ray  # noqa: E402

from g2p_batch.decode.transcriber import Transcriber  # noqa: E402
from g2p_batch.job.config import JobConfig  # noqa: E402
from g2p_batch.job.driver import run_job  # noqa: E402
from g2p_batch.job.writer import MANIFEST  # noqa: E402
from g2p_batch.runtime.engine import load_engine  # noqa: E402
from g2p_batch.runtime.loader import unpack_cached  # noqa: E402
from g2p_batch.runtime.manifest import manifest_hash, pack, read_manifest  # noqa: E402
from g2p_batch.storage import sha256_of  # noqa: E402
from g2p_batch.tools import checkpoints  # noqa: E402
from tests.lexicons import lexicon, write  # noqa: E402


@pytest.mark.slow
def test_tvm_engine_through_ray_matches_in_process(tmp_path):
    ckpt = checkpoints.make("micro", 0, tmp_path / "ckpt")
    table = lexicon(40, seed=5)
    write(table, tmp_path / "in" / "w.parquet", row_group_size=20)
    config = JobConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                       lang_column="lang", checkpoint=str(ckpt), target="llvm",
                       batch_sizes=[1, 8], input_buckets=[16, 32], max_output_len=16,
                       rows_per_shard=20, num_cpu_actors=1, threads_per_actor=1,
                       artifacts_dir=str(tmp_path / "art"), progress=False)
    # TMPDIR: the actor unpacks its artifact bytes under tempfile.gettempdir(); keep it here
    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"TMPDIR": str(tmp_path)}})
    try:
        report = run_job(config)
    finally:
        ray.shutdown()
    assert report.ok and report.shards_committed == 2

    art = next((tmp_path / "art").glob("*/llvm*-out16"))
    manifest = read_manifest(art)
    job_manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())["info"]
    assert job_manifest["checkpoint_id"] == manifest["checkpoint"]["weights_sha256"]
    assert job_manifest["artifacts"] == {"llvm": manifest_hash(manifest)}

    # the job cuts 20-row shards, this one call takes all 40 rows: different batches and, where a
    # length group's tail moves up, different input buckets for the same row; results must not move
    local = Transcriber.for_engine(load_engine(art, threads=1))
    want = local.transcribe(table.column("lang").to_pylist(), table.column("word").to_pylist())
    out = pq.read_table(tmp_path / "out").sort_by("id")
    assert out.column("phonemes").to_pylist() == [r.phonemes for r in want]
    assert out.column("status").to_pylist() == [r.status for r in want]
    assert {"ok", "truncated"} & set(out.column("status").to_pylist())   # rows were decoded
    assert list((tmp_path / "g2p-batch-artifacts").iterdir())            # unpacked from bytes


def test_unpack_cached_is_content_addressed(tmp_path):
    src = tmp_path / "set"
    (src / "b1").mkdir(parents=True)
    (src / "b1" / "model.so").write_bytes(b"\x7fELF")
    (src / "p.safetensors").write_bytes(b"{}")
    entry = lambda rel: {"path": rel, "sha256": sha256_of(src / rel)}  # noqa: E731
    (src / "manifest.json").write_text(json.dumps({"checkpoint": {"weights_sha256": "0" * 64},
                                                   "params": entry("p.safetensors"), "buckets": [entry("b1/model.so")]}))
    blob, _ = pack(src)
    a = unpack_cached(blob, root=str(tmp_path / "cache"))
    b = unpack_cached(blob, root=str(tmp_path / "cache"))
    assert a == b and (a / "b1" / "model.so").read_bytes() == b"\x7fELF"
    assert [p.name for p in (tmp_path / "cache" / "g2p-batch-artifacts").iterdir()] == [a.name]
