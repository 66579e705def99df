"""Output files, the manifest, and one actor run in-process (no Ray)."""

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

from g2p_batch.decode.tokenizer import PromptFormat
from g2p_batch.decode.transcriber import RowResult
from g2p_batch.job.actor import RowRules, ShardSettings, TranscribeActor
from g2p_batch.job.config import JobConfig
from g2p_batch.job.planner import plan_shards
from g2p_batch.job.writer import (
    MANIFEST,
    OUTPUT_COLUMNS,
    Manifest,
    output_table,
    write_shard,
)
from tests.fakes import fake_phonemes, prepare_fake_engine
from tests.lexicons import LANGS, lexicon, write


def test_output_table_keeps_input_columns_and_adds_typed_ones():
    t = lexicon(3)
    results = [RowResult("a", "ok", None, -0.5), RowResult(None, "error", "bad", None),
               RowResult("b", "truncated", "cut", -1.0)]
    out = output_table(t, results)
    assert out.schema.names == t.schema.names + list(OUTPUT_COLUMNS)
    assert out.select(t.schema.names).equals(t)
    assert [out.schema.field(c).type for c in OUTPUT_COLUMNS] == list(OUTPUT_COLUMNS.values())
    assert out.column("error").to_pylist() == [None, "bad", "cut"]
    assert out.column("score").type == pa.float32()


def test_write_is_atomic_and_checksummed(tmp_path):
    t = output_table(lexicon(4), [RowResult("x", "ok", None, 0.0)] * 4)
    sha, size = write_shard(t, str(tmp_path / "out"), "s.parquet")
    data = (tmp_path / "out" / "s.parquet").read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha and len(data) == size
    sha2, _ = write_shard(t.slice(0, 2), str(tmp_path / "out"), "s.parquet")   # replaces
    assert sha2 != sha and pq.read_table(tmp_path / "out" / "s.parquet").num_rows == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s.parquet"]


def test_manifest_commit_load_and_checksum_check(tmp_path):
    out = str(tmp_path / "out")
    path = write(lexicon(10), tmp_path / "w.parquet", 5)
    shard_a, shard_b = plan_shards(str(path), "word", "lang", 5).shards
    table = output_table(lexicon(5), [RowResult("x", "ok", None, 0.0)] * 5)
    sha, _ = write_shard(table, out, shard_a.name)
    m = Manifest(out, "fp", {"checkpoint_id": "c"})
    m.commit(shard_a, 5, sha, "cpu-0", {"ok": 4, "error": 1})
    loaded = Manifest.load(out)
    assert loaded.fingerprint == "fp" and loaded.info == {"checkpoint_id": "c"}
    entry = loaded.shards[shard_a.id]
    assert entry["rows_in"] == entry["rows_out"] == 5 and entry["first_row"] == 0
    assert loaded.totals() == {"error": 1, "ok": 4}
    assert loaded.is_committed(shard_a) and not loaded.is_committed(shard_b)
    (tmp_path / "out" / shard_a.name).write_bytes(b"changed")
    assert not loaded.is_committed(shard_a)
    assert Manifest.load(str(tmp_path / "nothing")) is None
    assert (tmp_path / "out" / MANIFEST).exists()


def test_actor_process_in_process(tmp_path):
    """The actor class without Ray: reads only its row groups, writes one checked file."""
    path = write(lexicon(30, seed=3), tmp_path / "in" / "w.parquet", 10)
    config = JobConfig(input=str(path), output=str(tmp_path / "out"), lang_column="lang")
    prepared = prepare_fake_engine(config, "llvm")
    actor = TranscribeActor(prepared.spec, None, RowRules(PromptFormat(), frozenset(LANGS)), "cpu-0")
    shard = plan_shards(str(path), "word", "lang", 10).shards[1]
    settings = ShardSettings(config.output, "word", "lang", None)
    result = actor.process(shard, settings)

    out = pq.read_table(tmp_path / "out" / shard.name)
    src = pq.read_table(path).slice(10, 10)
    assert out.select(src.schema.names).equals(src)
    assert out.column("phonemes").to_pylist() == [fake_phonemes(w) for w in src.column("word").to_pylist()]
    assert result.rows_in == result.rows_out == 10 and result.statuses == {"ok": 10}
    assert set(result.timings) == {"read", "tokenize", "encode", "decode", "write"}
    assert hashlib.sha256((tmp_path / "out" / shard.name).read_bytes()).hexdigest() == result.sha256

    fixed = actor.process(shard, ShardSettings(config.output, "word", None, "fra"))
    assert fixed.statuses == {"ok": 10}
