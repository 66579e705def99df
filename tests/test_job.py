"""The whole job on a real local Ray (2 CPUs) with real Parquet files and the fake engine."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pytest
import ray

from g2p_batch.errors import ArtifactError, ConfigError, InputError, JobFailed
from g2p_batch.job.driver import run_job
from g2p_batch.job.writer import MANIFEST, REPORT
from tests.fakes import prepare_fake_engine
from tests.lexicons import (
    TOO_LONG,
    check_output,
    job_config,
    job_inputs,
    kill_driver_after_commits,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def test_end_to_end_rows_once_columns_carried_bad_rows_reported(local_ray, tmp_path):
    expected = job_inputs(tmp_path)
    report = run_job(job_config(tmp_path))
    assert report.ok and report.shards_planned == report.shards_committed == 6
    out = check_output(expected, tmp_path / "out")

    by_id = {r["id"]: r for r in out.select(["id", "status", "error", "phonemes"]).to_pylist()}
    messages = {i: by_id[i]["error"] for i in range(2000, 2006)}
    assert "word is null" in messages[2000] and "word is empty" in messages[2001]
    assert "only whitespace" in messages[2002]
    assert "language 'xx' is not one the model knows" in messages[2003]
    assert "add a larger size to input_buckets" in messages[2004] and TOO_LONG in messages[2004]
    assert by_id[2005]["status"] == "truncated" and "raise max_output_len" in by_id[2005]["error"]
    assert messages[2000].startswith("row 35:")        # row index within b.parquet

    assert report.rows == {"ok": 95, "error": 5, "truncated": 1}
    assert set(report.stages) >= {"read", "tokenize", "encode", "decode", "write"}
    assert sum(a["rows"] for a in report.actors.values()) == 101
    assert all(a["words_per_s"] > 0 for a in report.actors.values())
    saved = json.loads((tmp_path / "out" / REPORT).read_text())
    assert saved["ok"] and saved["rows"] == report.rows and 0 < saved["driver_share"] <= 1
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert len(manifest["shards"]) == 6 and manifest["info"]["checkpoint_id"] == "fake-ckpt"
    assert set(manifest["info"]["artifacts"]) == {"llvm"}
    assert sum(e["rows_out"] for e in manifest["shards"].values()) == 101

    # a rerun finds everything committed and does no work
    again = run_job(job_config(tmp_path))
    assert again.shards_skipped == 6 and again.shards_committed == 0
    # other output-changing settings may not resume into this directory
    with pytest.raises(ConfigError, match="max_output_len: 16 -> 32.*overwrite"):
        run_job(job_config(tmp_path, max_output_len=32))
    # a missing or altered shard file is redone; overwrite redoes everything
    first = sorted((tmp_path / "out").glob("*.parquet"))[0]
    first.write_bytes(b"corrupted")
    assert run_job(job_config(tmp_path)).shards_committed == 1
    check_output(expected, tmp_path / "out")
    assert run_job(job_config(tmp_path, overwrite=True)).shards_committed == 6
    check_output(expected, tmp_path / "out")


def test_actor_killed_mid_shard_loses_and_duplicates_nothing(local_ray, tmp_path):
    expected = job_inputs(tmp_path)
    victim = expected.column("word")[45].as_py()      # a word of a.parquet's 3rd shard
    marker = tmp_path / "died-once"
    factory = functools.partial(prepare_fake_engine, die_on_word=victim, marker=str(marker))
    report = run_job(job_config(tmp_path), engine_factory=factory)
    assert marker.read_text() == "died"
    assert report.ok and report.failed_attempts == 1 and report.shards_committed == 6
    check_output(expected, tmp_path / "out")


def test_shard_that_keeps_failing_is_reported_others_commit(local_ray, tmp_path):
    expected = job_inputs(tmp_path)
    victim = expected.column("word")[3].as_py()       # first shard of a.parquet
    factory = functools.partial(prepare_fake_engine, raise_on_word=victim)
    with pytest.raises(JobFailed) as info:
        run_job(job_config(tmp_path, max_retries=1), engine_factory=factory)
    report = info.value.report
    assert report.shards_committed == 5 and len(report.failed) == 1
    failed = report.failed[0]
    assert failed["attempts"] == 2 and "fake device fault" in failed["error"]
    assert failed["shard"] in str(info.value) and "rerun the same command" in str(info.value)
    assert not json.loads((tmp_path / "out" / REPORT).read_text())["ok"]
    # the fix is a rerun: only the failed shard runs, then the output is complete
    rerun = run_job(job_config(tmp_path))
    assert rerun.shards_skipped == 5 and rerun.shards_committed == 1
    check_output(expected, tmp_path / "out")


def test_actors_that_cannot_start_fail_the_job_clearly(local_ray, tmp_path):
    job_inputs(tmp_path)
    factory = functools.partial(prepare_fake_engine, fail_load=True)
    with pytest.raises(JobFailed) as info:
        run_job(job_config(tmp_path, max_retries=0), engine_factory=factory)
    assert len(info.value.report.failed) == 6
    assert ("not attempted: no actor could start (actor failed to start: RuntimeError: fake "
            "engine refuses to load)") in str(info.value)
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_unknown_fixed_lang_fails_before_actors_and_output_stays_usable(local_ray, tmp_path):
    expected = job_inputs(tmp_path)
    with pytest.raises(ConfigError, match="lang 'zz' is not in the model's language list"):
        run_job(job_config(tmp_path, lang_column=None, lang="zz"))
    assert run_job(job_config(tmp_path)).shards_committed == 6     # other settings: fine
    check_output(expected, tmp_path / "out")


def test_engine_preparation_errors_reach_the_user_as_they_are(local_ray, tmp_path):
    """A preparer's own error (a G2PError: the artifacts, the checkpoint) is the message users
    see; anything else it raises is a bug and keeps its type and traceback."""
    job_inputs(tmp_path)

    def mismatched(config, target):
        raise ArtifactError("artifacts in x do not match; remove x to rebuild")

    def buggy(config, target):
        raise KeyError("params")

    with pytest.raises(ArtifactError, match="remove x to rebuild"):
        run_job(job_config(tmp_path), engine_factory=mismatched)
    with pytest.raises(KeyError):
        run_job(job_config(tmp_path), engine_factory=buggy)


def test_bad_input_fails_before_any_work(tmp_path):
    """Planning reads footers only, and stops the job before Ray or any output is touched."""
    job_inputs(tmp_path)
    (tmp_path / "in" / "broken.parquet").write_bytes(b"PAR1\x00\x00garbage")
    with pytest.raises(InputError, match="broken.parquet: cannot read it as Parquet"):
        run_job(job_config(tmp_path))
    (tmp_path / "in" / "broken.parquet").unlink()
    with pytest.raises(InputError, match="a.parquet: has no column 'language'.*set lang_column"):
        run_job(job_config(tmp_path, lang_column="language"))
    assert not (tmp_path / "out").exists()          # planning failed before any output
    with pytest.raises(ConfigError, match="inside the input directory"):
        run_job(job_config(tmp_path, output=str(tmp_path / "in" / "out")))


@pytest.mark.slow
def test_resume_after_driver_killed(local_ray, tmp_path):
    """A driver process SIGKILLed mid-job; the rerun skips what it committed, adds no duplicates."""
    expected = job_inputs(tmp_path)
    out = tmp_path / "out"
    def committed() -> int:
        try:
            return len(json.loads((out / MANIFEST).read_text())["shards"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return 0
    kill_driver_after_commits(str(tmp_path / "in"), str(out), committed)

    committed = json.loads((out / MANIFEST).read_text())["shards"]
    assert 2 <= len(committed) < 6
    before = {e["file"]: (out / e["file"]).stat().st_mtime_ns for e in committed.values()}
    report = run_job(job_config(tmp_path))
    assert report.shards_skipped == len(committed)
    assert report.shards_committed == 6 - len(committed)
    assert {f: (out / f).stat().st_mtime_ns for f in before} == before   # not rewritten
    check_output(expected, out)
    assert not list(out.glob(".*.tmp-*"))


def _read_back(out: Path) -> dict[str, int]:
    """The output folder as users read it: every reader must see every row, once."""
    import duckdb
    import polars as pl
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    glob = str(out / "*.parquet")
    return {"pyarrow.dataset": ds.dataset(out, format="parquet").count_rows(),
            "pyarrow.parquet.read_table": pq.read_table(out).num_rows,
            "duckdb": duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()[0][0],
            "polars": pl.scan_parquet(glob).select(pl.len()).collect().item()}


def test_every_reader_sees_every_row_whatever_the_input_names(local_ray, tmp_path):
    """Output names once began with '_' for inputs such as 词典.parquet, and pyarrow skipped them."""
    import pyarrow as pa

    from tests.lexicons import lexicon, write
    names = ["词典", "(draft) words", "my words", "-dash", "ünïcode"]
    tables = [lexicon(17 + i, seed=i, start_id=100 * i) for i in range(len(names))]
    for name, table in zip(names, tables):
        write(table, tmp_path / "in" / f"{name}.parquet", row_group_size=10)
    run_job(job_config(tmp_path))
    expected = pa.concat_tables(tables)
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith((".", "_"))
                and p.name not in (MANIFEST, REPORT)]
    assert any(p.name.startswith("词典-") for p in (tmp_path / "out").iterdir())
    assert _read_back(tmp_path / "out") == dict.fromkeys(_read_back(tmp_path / "out"), expected.num_rows)
    check_output(expected, tmp_path / "out")


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_overwrite_touches_nothing_until_the_new_run_can_commit(local_ray, tmp_path):
    expected = job_inputs(tmp_path)
    run_job(job_config(tmp_path))
    before = _snapshot(tmp_path / "out")

    def broken(config, target):
        raise ArtifactError("artifacts in x were compiled for max_output_len 64; remove x to rebuild")

    failures = [  # each start-up failure, with overwrite: the earlier results must survive it
        (InputError, lambda: run_job(job_config(tmp_path, overwrite=True, lang_column="language"))),
        (ArtifactError, lambda: run_job(job_config(tmp_path, overwrite=True), engine_factory=broken)),
        (ConfigError, lambda: run_job(job_config(tmp_path, overwrite=True, num_cpu_actors=5))),
        (ConfigError, lambda: run_job(job_config(tmp_path, overwrite=True, lang_column=None, lang="zz"))),
        (ConfigError, lambda: run_job(job_config(tmp_path, overwrite=True, input=str(tmp_path / "out" / "*.parquet"),
                                                 output=str(tmp_path / "out")))),
    ]
    for kind, start in failures:
        with pytest.raises(kind):
            start()
        assert _snapshot(tmp_path / "out") == before
        check_output(expected, tmp_path / "out")
    # a job whose every shard fails also leaves the earlier output as it was
    with pytest.raises(JobFailed):
        run_job(job_config(tmp_path, overwrite=True, max_retries=0),
                engine_factory=functools.partial(prepare_fake_engine, fail_load=True))
    assert _snapshot(tmp_path / "out") == before

    # a run that works replaces everything, even under other shard names
    report = run_job(job_config(tmp_path, overwrite=True, rows_per_shard=30))
    assert report.shards_committed == report.shards_planned == 4
    assert len(list((tmp_path / "out").glob("*.parquet"))) == 4
    check_output(expected, tmp_path / "out")


def test_report_totals_cover_every_committed_shard_after_a_resume(local_ray, tmp_path):
    expected = job_inputs(tmp_path)
    victim = expected.column("word")[3].as_py()
    with pytest.raises(JobFailed):
        run_job(job_config(tmp_path, max_retries=0), engine_factory=functools.partial(
            prepare_fake_engine, raise_on_word=victim))
    report = run_job(job_config(tmp_path))
    assert report.shards_committed == 1 and report.shards_skipped == 5
    assert report.rows == {"ok": 95, "error": 5, "truncated": 1}
    assert sum(report.run_rows.values()) == 20
    saved = json.loads((tmp_path / "out" / REPORT).read_text())
    assert saved["rows"] == report.rows and saved["run_rows"] == report.run_rows
    assert sum(sum(v.values()) for v in report.languages.values()) == expected.num_rows
    again = run_job(job_config(tmp_path))                       # a full resume keeps them too
    assert again.rows == report.rows and again.languages == report.languages


@pytest.mark.parametrize("where", ["glob", "file"])
def test_an_input_inside_the_output_folder_is_refused(tmp_path, where):
    job_inputs(tmp_path)
    source = str(tmp_path / "in" / ("*.parquet" if where == "glob" else "a.parquet"))
    with pytest.raises(ConfigError, match="lies inside the output folder"):
        run_job(job_config(tmp_path, input=source, output=str(tmp_path / "in")))
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.parquet", "b.parquet"]


def test_an_empty_input_writes_its_columns_and_other_files_are_listed(local_ray, tmp_path):
    import pyarrow.dataset as ds

    from tests.lexicons import lexicon, write
    write(lexicon(0), tmp_path / "in" / "empty.parquet", row_group_size=10)
    (tmp_path / "in" / "README.md").write_text("# where these words come from\n")
    report = run_job(job_config(tmp_path))
    assert report.shards_committed == 1 and report.rows == {}
    assert [f["file"].rsplit("/", 1)[1] for f in report.skipped_files] == ["README.md"]
    assert "skipped" in report.summary() and "README.md" in report.summary()
    dataset = ds.dataset(tmp_path / "out", format="parquet")
    assert dataset.count_rows() == 0
    assert {"word", "lang", "phonemes", "status", "error", "score"} <= set(dataset.schema.names)
    assert json.loads((tmp_path / "out" / REPORT).read_text())["skipped_files"]


def test_a_file_with_one_row_group_spreads_over_shards(local_ray, tmp_path):
    from tests.lexicons import lexicon, write
    table = lexicon(95, seed=4)
    write(table, tmp_path / "in" / "one.parquet", row_group_size=10_000)
    report = run_job(job_config(tmp_path, rows_per_shard=20))
    assert report.shards_committed == 5 and len(list((tmp_path / "out").glob("*.parquet"))) == 5
    check_output(table, tmp_path / "out")


def test_a_damaged_file_fails_its_shard_once_without_retries(local_ray, tmp_path):
    """A page that cannot be decoded fails the same way on any actor: reported, not retried."""
    import pyarrow.parquet as pq

    from tests.lexicons import lexicon, write
    path = write(lexicon(40, seed=6), tmp_path / "in" / "w.parquet", row_group_size=20)
    data = bytearray(path.read_bytes())
    page = pq.ParquetFile(path).metadata.row_group(1).column(1).data_page_offset
    data[page:page + 40] = bytes(b ^ 0x5A for b in data[page:page + 40])
    path.write_bytes(bytes(data))
    with pytest.raises(JobFailed) as info:
        run_job(job_config(tmp_path, max_retries=3))
    report = info.value.report
    assert report.shards_committed == 1 and report.failed_attempts == 1
    (failed,) = report.failed
    assert failed["attempts"] == 1 and "damaged" in failed["error"] and "not retried" in failed["error"]
    assert "rows 20..39" in failed["error"] and str(path) in failed["error"]


def test_junk_words_are_errors_not_invented_ipa(local_ray, tmp_path):
    import pyarrow as pa

    from tests.lexicons import write
    words = ["bon\x00jour", "\x07", "\x1b[0m", "a\nb", "abc\u202edef", "😀", "ok", "क\u200dष"]
    write(pa.table({"id": list(range(len(words))), "word": words, "lang": ["fra"] * len(words)}),
          tmp_path / "in" / "j.parquet", row_group_size=10)
    run_job(job_config(tmp_path))
    import pyarrow.parquet as pq
    out = pq.read_table(tmp_path / "out").sort_by("id")
    assert out.column("status").to_pylist() == ["error"] * 6 + ["ok", "ok"]
    assert all(e.startswith(f"row {i}:") for i, e in enumerate(out.column("error").to_pylist()[:6]))
