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
        rows = [e for e in lexicon.read_tsv(data_dir / "data" / "test" / f"{lang}.tsv")  # single words
                if len(e.word.encode()) + len(lang) + 4 <= 64 and not any(c in e.word for c in " -")]
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
    entries = _entries(data_dir, which, per_lang=20)  # 300 words over 15 languages
    want = _reference(cp.path, entries, input_eos)

    table = pa.table({"id": list(range(len(entries))), "word": [e.word for e in entries],
                      "lang": [e.lang for e in entries]})
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "words.parquet", row_group_size=100)
    (tmp_path / "job.yaml").write_text(
        f"input: {tmp_path / 'in'}\noutput: {tmp_path / 'out'}\nlang_column: lang\ncheckpoint: {ck}\n"
        f"batch_sizes: [32]\nmax_output_len: {T}\nrows_per_shard: 100\nthreads_per_actor: 1\n"
        f"artifacts_dir: {art}\nkeep_case: true\nprogress: false\n")  # words as the reference reads them
    res = CliRunner().invoke(app, ["run", "--config", str(tmp_path / "job.yaml")])
    assert res.exit_code == 0, res.output
    out = pq.read_table(tmp_path / "out").sort_by("id")
    assert out.column("id").to_pylist() == list(range(len(entries)))
    _assert_matches(entries, *(out.column(c).to_pylist() for c in ("phonemes", "status", "error")), want, which)

    # `transcribe`, one language per call, on the same compiled set
    for lang in TRAINED_LANGS[::4]:
        idx = [i for i, e in enumerate(entries) if e.lang == lang]
        res = CliRunner().invoke(app, ["transcribe", "--keep-case", "--lang", lang, "--checkpoint", ck, "--batch-sizes", "32",
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


def test_n_best_through_run_transcribe_and_the_api(trained_checkpoint, data_dir, tmp_path, local_ray, art):
    """`--num-beams 4 --n-best 3` on the CharsiuG2P-trained checkpoint: the candidates column,
    `transcribe` and `G2P` all give generate(num_beams=4, num_return_sequences=3)'s candidates
    in its order, fed ByT5Tokenizer(add_special_tokens=False) ids; phonemes is the best."""
    from g2p_batch.api import G2P

    entries = _entries(data_dir, "trained", per_lang=5)[:-5]        # trained languages only
    ref = Reference(trained_checkpoint, threads=2)
    want = []
    for start in range(0, len(entries), 16):
        texts = [charsiu_text(e.lang, e.word) for e in entries[start:start + 16]]
        want += [[(decode(t), s) for t, s in row] for row in ref.beams(ref.input_ids(texts), T, 4, 3)]
    assert len({len(c[0]) for row in want for c in row}) >= 5            # candidates of varied lengths

    def same(got, i):
        assert [p for p, _ in got] == [p for p, _ in want[i]], (entries[i], got, want[i])
        assert [s for _, s in got] == pytest.approx([s for _, s in want[i]], abs=2e-4)

    table = pa.table({"id": list(range(len(entries))), "word": [e.word for e in entries],
                      "lang": [e.lang for e in entries]})
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "words.parquet", row_group_size=40)
    res = CliRunner().invoke(app, ["run", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                                   "--lang-column", "lang", "--checkpoint", str(trained_checkpoint),
                                   "--batch-sizes", "32", "--max-output-len", str(T), "--rows-per-shard", "40",
                                   "--threads-per-actor", "1", "--artifacts-dir", str(art), "--keep-case",
                                   "--num-beams", "4", "--n-best", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = pq.read_table(tmp_path / "out").sort_by("id").to_pylist()
    assert [r["id"] for r in out] == list(range(len(entries)))
    for i, row in enumerate(out):
        same([(c["phonemes"], c["score"]) for c in row["candidates"]], i)
        assert row["phonemes"] == row["candidates"][0]["phonemes"]
        assert row["score"] == pytest.approx(row["candidates"][0]["score"])

    lang = entries[0].lang
    idx = [i for i, e in enumerate(entries) if e.lang == lang]
    res = CliRunner().invoke(app, ["transcribe", "--keep-case", "--lang", lang, "--checkpoint", str(trained_checkpoint),
                                   "--batch-sizes", "32", "--max-output-len", str(T), "--artifacts-dir", str(art),
                                   "--num-beams", "4", "--n-best", "3", "--", *[entries[i].word for i in idx]])
    assert res.exit_code == 0, res.output
    lines = [line.split("\t")[:3] for line in res.output.split("\n") if "\t" in line]  # a status note may follow
    assert len(lines) == 3 * len(idx)
    for k, i in enumerate(idx):
        assert all(w == entries[i].word for w, _, _ in lines[3 * k:3 * k + 3])
        same([(p, float(s)) for _, p, s in lines[3 * k:3 * k + 3]], i)

    g2p = G2P.load(str(trained_checkpoint), batch_sizes=[32], max_output_len=T, artifacts_dir=str(art),
                   keep_case=True, num_beams=4, n_best=3)
    for i, r in zip(idx, g2p([entries[i].word for i in idx], lang=lang)):
        same(list(r.candidates), i)
