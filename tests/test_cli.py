"""The CLI end to end on a micro checkpoint: make-checkpoint, compile, transcribe, verify, and
library errors turned into one red line with exit code 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

from typer.testing import CliRunner

from g2p_batch.cli import app
from tests.conftest import FIXTURE_WORDS

runner = CliRunner()


def _invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def test_make_compile_transcribe_verify(tmp_path):
    ck, art = tmp_path / "ck", tmp_path / "art"
    code, out = _invoke("make-checkpoint", "--arch", "micro", "--seed", "1", ck)
    assert code == 0 and (ck / "config.json").exists()
    common = ["--checkpoint", ck, "--max-input-bytes", "32", "--max-output-len", "8", "--artifacts-dir", art]
    code, out = _invoke("compile", *common, "--batch-sizes", "1,8", "--input-buckets", "16,32")
    assert code == 0, out
    manifest = json.loads(next(art.rglob("manifest.json")).read_text())
    assert [(b["batch"], b["input_len"]) for b in manifest["buckets"]] == [(1, 16), (1, 32), (8, 16), (8, 32)]
    assert manifest["checkpoint"]["config"]["num_layers"] == 2 and manifest["prompt"]["space_after_colon"] is False
    assert manifest["target"]["mcpu"] and manifest["target"]["mtriple"]

    code, out = _invoke("transcribe", *common, "--batch-sizes", "1,8", "--lang", "eng-us", "cat", "x" * 40)
    assert code == 1, out  # a row error (the long word) makes the exit status 1; the others still print
    cat = next(line for line in out.splitlines() if "cat\t" in line)
    assert cat.split("cat\t", 1)[1].strip()  # some transcription (random weights: any bytes)
    long = next(line for line in out.splitlines() if "x" * 40 in line)
    assert "[error:" in long and "32" in long  # too long for the compiled input, named

    tsv = tmp_path / "eng-us.tsv"
    tsv.write_text("".join(line + "\n" for line in (FIXTURE_WORDS / "eng-us.tsv").read_text().splitlines()[:12]))
    code, out = _invoke("verify", *common, "--data", tsv, "--batch-size", "8")
    assert code == 0, out
    assert "mismatching rows: 0" in out and "PER" in out


def test_transcribe_refuses_unknown_languages_as_run_does_and_uses_the_user_cache(tmp_path, monkeypatch):
    """`--lang cmn` (not a CharsiuG2P code) printed IPA with exit 0 while `run` marked such rows
    as errors; and artifacts landed in ./artifacts of whatever folder the command ran in."""
    ck = tmp_path / "ck"
    _invoke("make-checkpoint", "--arch", "micro", ck)
    monkeypatch.setenv("G2P_BATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    common = ["--checkpoint", ck, "--batch-sizes", "1", "--max-input-bytes", "16", "--max-output-len", "4"]
    for lang in ("cmn", "xx-nope"):
        code, out = _invoke("transcribe", *common, "--lang", lang, "hello")
        assert code == 1 and f"language {lang!r} is not one the model knows" in out, out
    code, out = _invoke("transcribe", *common, "--lang", "zho-s", "你好")
    assert code == 0, out
    (tmp_path / "mine.tsv").write_text("eng-us\thello\thəˈloʊ\n", encoding="utf-8")
    code, out = _invoke("transcribe", *common, "--lang", "eng-us", "--lexicon", tmp_path / "mine.tsv", "Hello")
    assert code == 0 and "Hello\thəˈloʊ\t[lexicon]" in out, out          # lowercased as eng-us was trained
    code, out = _invoke("transcribe", *common, "--lang", "eng-us", "--lexicon", tmp_path / "mine.tsv",
                        "--keep-case", "Hello")
    assert code == 0 and "[lexicon]" not in out, out
    assert not (tmp_path / "artifacts").exists()
    assert list((tmp_path / "cache" / "artifacts" / "ck").glob("llvm*-out4/manifest.json"))


def test_artifact_mismatch_is_a_clean_error_and_output_lengths_get_sets_of_their_own(tmp_path):
    ck, art = tmp_path / "ck", tmp_path / "art"
    _invoke("make-checkpoint", "--arch", "micro", ck)
    base = ["compile", "--checkpoint", ck, "--batch-sizes", "1", "--max-input-bytes", "16", "--artifacts-dir", art]
    assert _invoke(*base, "--max-output-len", "8")[0] == 0
    assert _invoke(*base, "--max-output-len", "12")[0] == 0      # another length: a set of its own
    assert sorted(p.name.split("-out")[1] for p in (art / "ck").iterdir()) == ["12", "8"]
    shutil.rmtree(ck)
    _invoke("make-checkpoint", "--arch", "micro_3_1", ck)           # another architecture, same name
    code, out = _invoke(*base, "--max-output-len", "8")
    assert code == 1 and out.startswith("error: artifacts in") and "checkpoint config" in out and "remove" in out
    assert "Traceback" not in out


def test_run_needs_input_and_output():
    code, out = _invoke("run")
    assert code == 1 and "input and output are required" in out and "--input and --output" in out


def test_decode_path_needs_neither_torch_nor_transformers(make_set, tmp_path):
    """Ray actors import the runtime only: it must work with torch and transformers absent."""
    _, art = make_set(arch="micro", T=8, batch_sizes=(1,), buckets=(32,))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # any import of them now fails
        sys.modules["transformers"] = None
        from g2p_batch.runtime.engine import load_engine
        from g2p_batch.decode.tokenizer import encode, pad_batch
        eng = load_engine({str(art)!r})
        out = eng.decode(pad_batch([encode("eng-us", "cat")], 32, 1))
        assert out.tokens.shape == (1, 8)
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_bench_runs_engines_side_by_side_and_profiles(tmp_path):
    """The bench on a micro checkpoint and 40 words: every engine asked for reports a rate,
    TVM reports its stages, nothing is written into the checkpoint, and --profile names the
    model's kernels."""
    ck = tmp_path / "ck"
    assert _invoke("make-checkpoint", "--arch", "micro", "--seed", "3", ck)[0] == 0
    common = ["--checkpoint", ck, "--data", FIXTURE_WORDS, "--words", "40", "--batch", "8",
              "--steps", "4", "--threads", "1", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "out"]
    before = sorted(p.name for p in ck.iterdir())
    code, out = _invoke("bench", *common, "--engines", "tvm,transformers,ct2-fp32", "--latency-runs", "2")
    assert code == 0, out
    assert sorted(p.name for p in ck.iterdir()) == before  # the CTranslate2 conversion writes elsewhere
    res = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert set(res["engines"]) == {"tvm", "transformers", "ct2-fp32"} and res["words"] == 40
    assert all(e["words_per_s"] > 0 and e["latency_ms"] > 0 for e in res["engines"].values())
    assert res["engines"]["tvm"]["encode_s"] > 0 and res["engines"]["tvm"]["decode_s"] > 0
    assert res["cpu"]["cores"] >= 1 and res["cpu"]["mcpu"] in out  # which host ran it
    assert (tmp_path / "out" / "bench.png").stat().st_size > 0

    code, out = _invoke("bench", *common, "--profile")
    assert code == 0, out
    prof = json.loads((tmp_path / "out" / "profile.json").read_text())
    names = {k["name"] for k in prof["kernels"]}
    assert {"enc_attn_8x" + str(prof["input_len"]), "embed_n", "greedy_8x384"} <= names
    steps = sum(k["calls"] for k in prof["kernels"] if k["name"] == "greedy_8x384")
    assert steps == 4  # one greedy head per forced step
