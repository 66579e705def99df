"""Small real Parquet lexicons for tests: extra columns of several types ride along; and the
job-level helpers (inputs with bad rows, a config, a row-by-row output check)."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from g2p_batch.decode.tokenizer import decode, encode_text
from g2p_batch.job.config import JobConfig
from tests.fakes import FAKE_SCORE, fake_phonemes

LANGS = ["eng-us", "fra", "ger", "spa"]
MAX_OUT = 16
TOO_LONG = "x" * 70                      # over the largest input bucket (64)
LONG = "abcdefghijklmnopqrstuvwxyz"      # fits the input, over max_output_len: truncated


def lexicon(n: int, seed: int = 0, start_id: int = 0) -> pa.Table:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyzàéöß") for _ in range(rng.randint(2, 12)))
             for _ in range(n)]
    for i in range(0, n, 7):          # some duplicates, to exercise the fan-out
        words[i] = words[0]
    return pa.table({
        "id": pa.array(range(start_id, start_id + n), pa.int64()),
        "word": pa.array(words, pa.string()),
        "lang": pa.array([LANGS[i % len(LANGS)] for i in range(n)], pa.string()),
        "freq": pa.array([rng.random() for _ in range(n)], pa.float64()),
        "note": pa.array([f"n{i}" for i in range(n)], pa.large_string()),
        "tags": pa.array([[i % 3] for i in range(n)], pa.list_(pa.int16())),
    })


def write(table: pa.Table, path: Path, row_group_size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def job_inputs(tmp_path: Path) -> pa.Table:
    """Two files, 95 rows in row groups of 10, plus bad rows; returns all rows."""
    a = lexicon(60, seed=1)
    b = lexicon(35, seed=2, start_id=1000)
    bad = pa.table({
        "id": pa.array([2000, 2001, 2002, 2003, 2004, 2005], pa.int64()),
        "word": pa.array([None, "", "   ", "bonjour", TOO_LONG, LONG], pa.string()),
        "lang": pa.array(["fra", "fra", "fra", "xx", "fra", "eng-us"], pa.string()),
    })
    bad = pa.table({c: bad.column(c) if c in bad.column_names else pa.nulls(6, b.schema.field(c).type)
                    for c in b.column_names})
    b = pa.concat_tables([b, bad.cast(b.schema)])
    write(a, tmp_path / "in" / "a.parquet", row_group_size=10)
    write(b, tmp_path / "in" / "b.parquet", row_group_size=10)
    return pa.concat_tables([a, b])


def job_config(tmp_path: Path, **kw) -> JobConfig:
    base = dict(input=str(tmp_path / "in"), output=str(tmp_path / "out"), lang_column="lang",
                batch_sizes=[1, 8, 32], max_output_len=MAX_OUT, rows_per_shard=20,
                threads_per_actor=1, progress=False, engine="tests.fakes:prepare_fake_engine")
    return JobConfig(**{**base, **kw})


def _expected(word: str | None) -> str | None:
    return decode(encode_text(fake_phonemes(word))[:MAX_OUT]) if word else None


def check_output(expected: pa.Table, out_dir: Path | str) -> pa.Table:
    """Every input row exactly once, its columns unchanged, its transcription right (a local
    folder, or a URI such as s3://bucket/prefix)."""
    from g2p_batch import storage

    fs, path = storage.resolve(str(out_dir))
    out = pq.read_table(path, filesystem=fs)     # the '_' bookkeeping files are skipped
    assert out.num_rows == expected.num_rows
    assert sorted(out.column("id").to_pylist()) == sorted(expected.column("id").to_pylist())
    out = out.sort_by("id")
    expected = expected.sort_by("id")
    assert out.select(expected.column_names).equals(expected)
    for word, lang, phon, status, error, score in zip(*(out.column(c).to_pylist() for c in (
            "word", "lang", "phonemes", "status", "error", "score"))):
        if status == "error":
            assert phon is None and score is None and error.startswith("row ")
        else:
            assert phon == _expected(word) and score == pytest.approx(FAKE_SCORE)
            assert status == ("truncated" if len(encode_text(word[::-1])) > MAX_OUT else "ok")
            assert (error is None) == (status == "ok")
    return out


def kill_driver_after_commits(input: str, output: str, committed, n: int = 2, timeout: float = 90.0) -> None:
    """Run the job (the fake engine, 0.4 s a batch) through `jobs/transcribe.py` in a process
    of its own on the running Ray, and SIGKILL it once `committed()` counts `n` shards."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
           "FAKE_ENGINE": json.dumps({"delay_s": 0.4})}
    cmd = [sys.executable, str(root / "jobs" / "transcribe.py"), "--input", input, "--output", output,
           "--lang-column", "lang", "--batch-sizes", "1,8,32", "--max-output-len", str(MAX_OUT),
           "--rows-per-shard", "20", "--num-cpu-actors", "1", "--threads-per-actor", "1", "--no-progress",
           "--engine", "tests.fakes:prepare_fake_engine"]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout
        while committed() < n:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, f"the driver committed no {n} shards in {timeout:.0f} s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
