"""The Python API: `G2P` for a few words in-process, `run_job` for the job, and nothing else
public (`__all__`); `import g2p_batch` loads neither TVM nor Ray until a name needs them."""

from __future__ import annotations

import subprocess
import sys

import pytest

import g2p_batch
from g2p_batch import G2P
from g2p_batch.errors import ConfigError


@pytest.fixture(scope="module")
def g2p(tmp_path_factory):
    from g2p_batch.tools import checkpoints

    root = tmp_path_factory.mktemp("api")
    ck = checkpoints.make("micro", 2, root / "ck", eos_shadow=79)
    return G2P.load(str(ck), batch_sizes=[8], input_buckets=[32, 64], max_output_len=16,
                    artifacts_dir=str(root / "art"), threads=1)


def test_words_of_one_language_and_pairs_give_the_jobs_results(g2p):
    words = ["hello", "world", "", "x" * 80, "😀"]
    one = g2p(words, lang="eng-us")
    pairs = g2p([("eng-us", w) for w in words])
    assert [(r.phonemes, r.status) for r in one] == [(r.phonemes, r.status) for r in pairs]
    assert [r.status for r in one[2:]] == ["error"] * 3 and one[0].status in ("ok", "truncated")
    same = g2p.transcriber.transcribe(["eng-us"] * len(words), words)   # the job's own path
    assert [(r.phonemes, r.status, r.error) for r in one] == [(r.phonemes, r.status, r.error) for r in same]
    assert g2p("hello", lang="eng-us") == one[:1]
    assert g2p([("cmn", "x")])[0].status == "error"                      # not a CharsiuG2P code
    with pytest.raises(ConfigError, match="lang="):
        g2p(["hello"])


def test_run_job_is_the_job(tmp_path):
    from tests.lexicons import check_output, job_config, job_inputs

    expected = job_inputs(tmp_path)
    config = job_config(tmp_path)
    report = g2p_batch.run_job(g2p_batch.JobConfig(**{k: getattr(config, k) for k in (
        "input", "output", "lang_column", "batch_sizes", "max_output_len", "rows_per_shard", "threads_per_actor",
        "progress", "engine")}))
    assert report.ok and sum(report.rows.values()) == expected.num_rows
    check_output(expected, tmp_path / "out")


def test_public_names_are_all_and_load_lazily():
    for name in g2p_batch.__all__:
        assert getattr(g2p_batch, name) is not None, name
    with pytest.raises(AttributeError):
        g2p_batch.Transcriber  # noqa: B018 - private
    code = "import sys, g2p_batch; print(sorted(m for m in ('ray', 'tvm', 'torch') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "[]", res.stderr
