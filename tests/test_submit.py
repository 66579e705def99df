"""README's cluster line for real: `ray start --head`, then `ray job submit --working-dir . --
python jobs/transcribe.py --config ...` against it (the job server comes with `ray[default]`,
a dependency of the package)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.lexicons import check_output, job_inputs

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_node():
    gcs, dashboard = _free_port(), _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run([RAY, "start", "--head", "--num-cpus", "2", "--port", str(gcs),
                            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                            "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-3000:]
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_readme_submit_line_runs_the_job_on_a_started_cluster(head_node, tmp_path):
    expected = job_inputs(tmp_path)
    config = tmp_path / "job.yaml"
    config.write_text(f"input: {tmp_path / 'in'}\noutput: {tmp_path / 'out'}\nlang_column: lang\n"
                      "engine: tests.fakes:prepare_fake_engine\nbatch_sizes: [1, 8, 32]\nmax_output_len: 16\n"
                      "rows_per_shard: 20\nthreads_per_actor: 1\n")
    # token authentication is on by default on new clusters; the client finds the token that
    # `ray start` wrote under ~/.ray once told to use it
    env = {**os.environ, "RAY_ADDRESS": head_node, "RAY_AUTH_MODE": "token"}
    res = subprocess.run([RAY, "job", "submit", "--working-dir", ".", "--", "python", "jobs/transcribe.py",
                          "--config", str(config)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "succeeded" in res.stdout + res.stderr
    check_output(expected, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "_report.json").read_text())
    assert report["ok"] and sum(report["rows"].values()) == pq.read_table(tmp_path / "out").num_rows
