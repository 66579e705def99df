"""Watching a job: a progress line where there is no terminal (ray job submit, logs), Ray
metrics that the dashboard and Prometheus read, and per-language counts in the report."""

from __future__ import annotations

import io
import json
import logging
import socket
import time
import urllib.request

import pytest
import ray

from g2p_batch.job.driver import Progress, run_job
from g2p_batch.job.writer import REPORT
from tests.lexicons import job_config, job_inputs


def test_progress_without_a_terminal_prints_plain_lines():
    out = io.StringIO()
    with Progress(shards=4, rows=400, every=0.0, stream=out) as p:
        p.update(100, shards=1)
        p.update(0, failed=1)
        p.update(200, shards=2)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("g2p: 1/4 shards, 100/400 rows (25.0%),") and "words/s, ETA" in lines[0]
    assert lines[-1].startswith("g2p: 3/4 shards, 300/400 rows (75.0%)") and lines[-1].endswith("1 failed")
    quiet = io.StringIO()
    with Progress(shards=1, rows=1, enabled=False, stream=quiet) as p:
        p.update(1, shards=1)
    assert quiet.getvalue() == ""


@pytest.fixture(scope="module")
def ray_with_metrics():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": 500})
    yield port
    ray.shutdown()


def _scrape(port: int, want: str, timeout: float = 60.0) -> str:
    deadline = time.time() + timeout
    while True:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            if want in text:
                return text
        except OSError:
            pass
        assert time.time() < deadline, f"{want} never appeared at the metrics endpoint"
        time.sleep(0.5)


def _value(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_actors_export_ray_metrics_and_the_report_counts_languages(ray_with_metrics, tmp_path):
    expected = job_inputs(tmp_path)
    report = run_job(job_config(tmp_path))
    assert report.ok
    text = _scrape(ray_with_metrics, 'ray_g2p_rows_total{')
    deadline = time.time() + 60
    while _value(text, "ray_g2p_rows_total") < expected.num_rows and time.time() < deadline:
        time.sleep(0.5)
        text = _scrape(ray_with_metrics, "ray_g2p_rows_total{")
    assert _value(text, "ray_g2p_rows_total", status="ok") == report.rows["ok"]
    assert _value(text, "ray_g2p_rows_total", status="error") == report.rows["error"]
    for metric in ("ray_g2p_batch_fill_bucket", "ray_g2p_encode_seconds_bucket", "ray_g2p_decode_seconds_bucket",
                   "ray_g2p_words_per_second"):
        assert metric + "{" in text, metric

    saved = json.loads((tmp_path / "out" / REPORT).read_text())
    langs = saved["languages"]
    assert sum(n for statuses in langs.values() for n in statuses.values()) == expected.num_rows
    assert langs["xx"] == {"error": 1}
    per_lang = {}
    for lang in expected.column("lang").to_pylist():
        per_lang[lang] = per_lang.get(lang, 0) + 1
    assert {k: sum(v.values()) for k, v in langs.items() if k != "None"} == \
        {k: v for k, v in per_lang.items() if k is not None}
