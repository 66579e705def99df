"""The job on object storage for real: an S3 API server (moto's) started here, input and output
both on s3://, the endpoint through AWS_ENDPOINT_URL as users set it. Each output object is put
whole (no temporary objects, no copies); the manifest is the commit point."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import ray

from g2p_batch import storage
from g2p_batch.errors import ConfigError, InputError
from g2p_batch.job.driver import run_job
from tests.fakes import prepare_fake_engine
from tests.lexicons import (
    check_output,
    job_config,
    job_inputs,
    kill_driver_after_commits,
)

moto_server = pytest.importorskip("moto.server")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def s3():
    """A local S3 endpoint, set in the environment before Ray starts, so actors inherit it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="test",
                      AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield f"http://{host}:{port}"
    ray.shutdown()
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_buckets = iter(range(10_000))


@pytest.fixture
def bucket(s3, tmp_path):
    """A fresh bucket holding the job's test inputs under in/; returns (expected rows, bucket)."""
    import boto3

    name = f"bkt{next(_buckets)}"
    boto3.client("s3", endpoint_url=s3).create_bucket(Bucket=name)
    expected = job_inputs(tmp_path)
    fs, _ = storage.resolve(f"s3://{name}/in")
    for f in sorted((tmp_path / "in").iterdir()):
        with fs.open_output_stream(f"{name}/in/{f.name}") as out:
            out.write(f.read_bytes())
    return expected, name


def _keys(bucket: str, prefix: str) -> list[str]:
    fs, _ = storage.resolve(f"s3://{bucket}")
    from pyarrow.fs import FileSelector
    selector = FileSelector(f"{bucket}/{prefix}", recursive=True, allow_not_found=True)
    return sorted(i.path.split("/", 1)[1] for i in fs.get_file_info(selector)
                  if i.type.name == "File")


def _config(tmp_path, bucket, **kw):
    return job_config(tmp_path, input=f"s3://{bucket}/in", output=f"s3://{bucket}/out", **kw)


def _duckdb_rows(bucket: str, tmp_path: Path) -> int:
    """DuckDB reads S3 through its httpfs extension, which it downloads: offline, it reads a
    byte-for-byte local copy of the output objects instead."""
    import duckdb

    fs, _ = storage.resolve(f"s3://{bucket}")
    local = tmp_path / "mirror"
    local.mkdir()
    for key in _keys(bucket, "out"):
        with fs.open_input_stream(f"{bucket}/{key}") as f:
            (local / key.rsplit("/", 1)[1]).write_bytes(f.read())
    return duckdb.sql(f"select count(*) from read_parquet('{local}/*.parquet')").fetchall()[0][0]


def test_full_run_on_s3_rows_once_no_temporary_objects(bucket, tmp_path):
    expected, name = bucket
    report = run_job(_config(tmp_path, name))
    assert report.ok and report.shards_committed == 6
    check_output(expected, f"s3://{name}/out")
    fs, _ = storage.resolve(f"s3://{name}")
    assert ds.dataset(f"{name}/out", filesystem=fs, format="parquet").count_rows() == expected.num_rows
    assert _duckdb_rows(name, tmp_path) == expected.num_rows
    keys = _keys(name, "out")
    assert all(k.endswith(".parquet") for k in keys if k not in ("out/_manifest.json", "out/_report.json"))
    assert len(keys) == 8 and not any(".tmp-" in k or "probe" in k for k in keys)
    again = run_job(_config(tmp_path, name))           # a rerun resumes: nothing to do
    assert again.shards_skipped == 6 and again.shards_committed == 0


def test_actor_killed_mid_shard_on_s3(bucket, tmp_path):
    expected, name = bucket
    victim = expected.column("word")[45].as_py()
    marker = tmp_path / "died-once"
    report = run_job(_config(tmp_path, name), engine_factory=functools.partial(
        prepare_fake_engine, die_on_word=victim, marker=str(marker)))
    assert marker.read_text() == "died" and report.failed_attempts == 1 and report.shards_committed == 6
    check_output(expected, f"s3://{name}/out")
    assert not [k for k in _keys(name, "out") if ".tmp-" in k]


@pytest.mark.slow
def test_resume_on_s3_after_the_driver_is_killed(bucket, tmp_path):
    expected, name = bucket
    fs, _ = storage.resolve(f"s3://{name}")

    def committed() -> dict:
        try:
            with fs.open_input_stream(f"{name}/out/_manifest.json") as f:
                return json.loads(f.read())["shards"]
        except (FileNotFoundError, OSError, ValueError, KeyError):
            return {}
    kill_driver_after_commits(f"s3://{name}/in", f"s3://{name}/out", lambda: len(committed()))
    done = committed()
    assert 2 <= len(done) < 6
    report = run_job(_config(tmp_path, name))
    assert report.shards_skipped == len(done) and report.shards_committed == 6 - len(done)
    check_output(expected, f"s3://{name}/out")
    assert not [k for k in _keys(name, "out") if ".tmp-" in k or "probe" in k]


def test_storage_problems_are_clear_errors_before_any_work(bucket, tmp_path, monkeypatch):
    expected, name = bucket
    with pytest.raises(ConfigError, match="cannot write to 's3://no-such-bucket/out'.*bucket does not exist"):
        run_job(job_config(tmp_path, input=f"s3://{name}/in", output="s3://no-such-bucket/out"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")   # nothing listens there
    with pytest.raises(InputError, match="cannot list input .*endpoint cannot be reached"):
        run_job(_config(tmp_path, name, progress=False))
    monkeypatch.undo()
    assert _keys(name, "out") == []                                  # nothing was written
