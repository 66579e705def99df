"""Exact by CharsiuG2P's own rules: `run` and `transcribe` against transformers fed the way
CharsiuG2P's code feeds it (`ByT5Tokenizer(..., add_special_tokens=False)` for a checkpoint
trained that way; with EOS for the embedded default, whose metadata says it was trained so).

The reference never goes through the project's encoder, so a wrong convention on our side
shows up here as mismatches (the last test shows that it does)."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from typer.testing import CliRunner

from g2p_batch.cli import app
from g2p_batch.decode.tokenizer import PromptFormat, decode
from g2p_batch.decode.transcriber import Transcriber
from g2p_batch.model import checkpoint
from g2p_batch.runtime.engine import load_engine
from g2p_batch.tools import lexicon
from g2p_batch.tools.reference import Reference, charsiu_text
from tests.conftest import TRAINED_LANGS

T = 32
UNTRAINED = {"trained": "fin", "default": "fra"}  # a known language the checkpoint never saw


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """One artifact root for the module: each checkpoint's set is compiled once."""
    return tmp_path_factory.mktemp("art")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _entries(data_dir, which: str, per_lang: int = 25) -> list[lexicon.Entry]:
    out = []
    for lang in TRAINED_LANGS + [UNTRAINED[which]]:
        rows = [e for e in lexicon.read_tsv(data_dir / "data" / "test" / f"{lang}.tsv")
                if len(e.word.encode()) + len(lang) + 4 <= 64]
        out += rows[:per_lang]
    return out


def _reference(ck, entries, input_eos: bool) -> list[str]:
    ref = Reference(ck, threads=2)
    texts = [charsiu_text(e.lang, e.word) for e in entries]
    out = []
    for start in range(0, len(texts), 32):  # as CharsiuG2P's README: padding=True per batch
        out += [decode(r) for r in ref.transcribe(texts[start:start + 32], T, input_eos)]
    return out


def _assert_matches(entries, phonemes, statuses, errors, want, which):
    """ok and max-length rows equal the reference; a row stopped as a loop is its beginning."""
    ended = 0
    for e, got, status, error, ref in zip(entries, phonemes, statuses, errors, want, strict=True):
        assert status in ("ok", "truncated", "untrained"), (e, status)
        if status == "truncated" and "repeating" in error:   # stopped as a loop
            assert ref.startswith(got), (e, got, ref)
        else:
            assert got == ref, (e, got, ref)
        ended += status != "truncated"
        assert (status == "untrained") == (e.lang == UNTRAINED[which] and status != "truncated"), (e, status)
    assert ended >= len(entries) // 2, "most rows should end with EOS"
    lengths = {len(p.encode()) for p, s in zip(phonemes, statuses) if s == "ok"}
    assert len(lengths) >= 5, f"rows should end at varied steps: {sorted(lengths)}"


@pytest.mark.parametrize("which", ["trained", "default"])
def test_run_and_transcribe_equal_the_charsiug2p_reference(which, trained_checkpoint, data_dir, tmp_path,
                                                          local_ray, art):
    ck = str(trained_checkpoint) if which == "trained" else "default"
    cp = checkpoint.load(ck)
    input_eos = which == "default"
    assert cp.prompt() == PromptFormat(input_eos=input_eos)      # from the checkpoint's metadata
    entries = _entries(data_dir, which)
    want = _reference(cp.path, entries, input_eos)

    table = pa.table({"id": list(range(len(entries))), "word": [e.word for e in entries],
                      "lang": [e.lang for e in entries]})
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "words.parquet", row_group_size=100)
    (tmp_path / "job.yaml").write_text(
        f"input: {tmp_path / 'in'}\noutput: {tmp_path / 'out'}\nlang_column: lang\ncheckpoint: {ck}\n"
        f"batch_sizes: [32]\nmax_output_len: {T}\nrows_per_shard: 100\nthreads_per_actor: 1\n"
        f"artifacts_dir: {art}\nprogress: false\n")
    res = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "job.yaml")])
    assert res.exit_code == 0, res.output
    out = pq.read_table(tmp_path / "out").sort_by("id")
    assert out.column("id").to_pylist() == list(range(len(entries)))
    _assert_matches(entries, *(out.column(c).to_pylist() for c in ("phonemes", "status", "error")), want, which)

    # `transcribe`, one language per call, on the same compiled set
    for lang in TRAINED_LANGS[::4]:
        idx = [i for i, e in enumerate(entries) if e.lang == lang]
        res = CliRunner().invoke(app, ["transcribe", "--lang", lang, "--checkpoint", ck, "--batch-sizes", "32",
                                       "--max-output-len", str(T), "--artifacts-dir", str(art),
                                       "--", *[entries[i].word for i in idx]])
        assert res.exit_code == 0, res.output
        lines = [line for line in res.output.split("\n") if "\t" in line]
        assert len(lines) == len(idx)
        for i, line in zip(idx, lines):
            word, got, *status = line.split("\t")
            assert word == entries[i].word
            if status and "repeating" in status[0]:   # "[truncated: ...]": a row stopped as a loop
                assert want[i].startswith(got), (line, want[i])
            elif status:
                assert status[0].startswith(("[truncated", "[untrained")) and got == want[i], (line, want[i])
            else:
                assert got == want[i], (line, want[i])


def test_the_wrong_input_convention_is_caught(trained_checkpoint, data_dir, art):
    """What the project did before: an EOS after every input. The reference disagrees with it on
    a large share of rows, so the test above would fail with it."""
    from g2p_batch.compile.artifacts import ensure_artifacts

    entries = _entries(data_dir, "trained", per_lang=10)
    want = _reference(trained_checkpoint, entries, input_eos=False)
    engine = load_engine(ensure_artifacts(checkpoint=str(trained_checkpoint), batch_sizes=[32], max_output_len=T,
                                          artifacts_dir=str(art), progress=False))
    langs, words = [e.lang for e in entries], [e.word for e in entries]
    right = Transcriber.for_engine(engine, stop_loops=False).transcribe(langs, words)
    wrong = Transcriber(engine, PromptFormat(input_eos=True), stop_loops=False).transcribe(langs, words)
    assert [r.phonemes for r in right] == want
    differ = sum(r.phonemes != w for r, w in zip(wrong, want))
    assert differ >= len(entries) // 10, f"only {differ} of {len(entries)} rows differ"
