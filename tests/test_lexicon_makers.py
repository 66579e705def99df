"""What lexicon makers need: their own entries first, input as the model was trained (NFC, the
language's case, one word at a time), and a check mode against a reference column."""

from __future__ import annotations

import json
import logging
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from g2p_batch.decode.engine import Bucket
from g2p_batch.decode.rules import InputRules, LanguageRules, charsiu_rules
from g2p_batch.decode.tokenizer import PromptFormat
from g2p_batch.decode.transcriber import Transcriber
from g2p_batch.errors import ConfigError, InputError
from g2p_batch.job.driver import run_job
from g2p_batch.job.lexicon import read_lexicons
from g2p_batch.job.writer import REPORT
from tests.fakes import FAKE_SCORE, FakeEngine, fake_phonemes
from tests.lexicons import job_config, write

BUCKETS = [Bucket(b, n) for b in (1, 8, 32) for n in (16, 32, 64)]
RULES = {"eng-us": LanguageRules(lowercase=True, hyphens=True), "tur": LanguageRules(lowercase=False),
         "fin": LanguageRules(lowercase=True, hyphens=False), "vie-n": LanguageRules(lowercase=True, spaces=True)}


def _transcriber(**kw):
    rules = InputRules(RULES, **kw)
    return Transcriber(FakeEngine(BUCKETS, 64), PromptFormat(), None, None, True, rules)


def test_nfd_and_nfc_give_the_same_output():
    t = _transcriber()
    word = "Tiếng Việt"
    nfd, nfc = unicodedata.normalize("NFD", word), unicodedata.normalize("NFC", word)
    assert nfd != nfc
    a, b = t.transcribe(["vie-n", "vie-n"], [nfd, nfc])
    assert a == b and a.phonemes == fake_phonemes(nfc.lower())   # vie-n keeps its spaces, lowercased


def test_case_follows_the_training_words_unless_kept():
    t = _transcriber()
    assert t.transcribe(["eng-us"], ["Hello"])[0].phonemes == "olleh"     # trained on lowercase only
    assert t.transcribe(["tur"], ["İstanbul"])[0].phonemes == fake_phonemes("İstanbul")  # saw both
    kept = _transcriber(keep_case=True)
    assert kept.transcribe(["eng-us"], ["Hello"])[0].phonemes == "olleH"


def test_multi_word_and_hyphenated_entries_are_split_where_training_words_never_were():
    t = _transcriber()
    ice, well, fin, vie = t.transcribe(["eng-us", "eng-us", "fin", "vie-n"],
                                       ["ice  cream", "well-known", "kuusi-kymmentä", "xin chào"])
    assert ice.phonemes == "eci maerc" and ice.status == "ok" and ice.score == pytest.approx(FAKE_SCORE)
    assert well.phonemes == "nwonk-llew"                     # eng-us training words hold hyphens
    assert fin.phonemes == "isuuk ätnemmyk"                  # fin's never do: split
    assert vie.phonemes == fake_phonemes("xin chào")         # vie-n's syllables come with spaces
    bad = t.transcribe(["eng-us"], ["ice " + "x" * 80], first_row=7)[0]
    assert bad.status == "error" and bad.error.startswith("row 7: ") and "(part 2 of 2 of 'ice " in bad.error


def test_the_users_lexicon_wins_whole_or_per_part():
    t = _transcriber()
    t.rules.with_lexicon([("eng-us", "Ice Cream", "ˈaɪs kɹim"), ("eng-us", "cream", "KRIM"), ("fra", "chat", "ʃa")])
    whole, part, other, model = t.transcribe(["eng-us", "eng-us", "fra", "eng-us"],
                                             ["ICE CREAM", "sour cream", "chat", "cat"])
    assert (whole.phonemes, whole.status, whole.score) == ("ˈaɪs kɹim", "lexicon", None)
    assert (part.phonemes, part.status) == ("ruos KRIM", "ok") and part.score == pytest.approx(FAKE_SCORE)
    assert (other.phonemes, other.status) == ("ʃa", "lexicon")   # normalised as fra is: case kept
    assert (model.phonemes, model.status) == ("tac", "ok")
    assert t.decoded_items == 2                                  # only "sour" and "cat" reached the model


def test_lexicon_files_tsv_and_parquet_errors_name_file_and_line(tmp_path):
    good = tmp_path / "a.tsv"
    good.write_text("eng-us\tcat\tkæt\n\neng-us\tdog\tdɔɡ\n", encoding="utf-8")
    later = tmp_path / "b.parquet"
    pq.write_table(pa.table({"lang": ["eng-us"], "word": ["cat"], "pron": ["KAT"], "extra": [1]}), later)
    table = read_lexicons([str(good), str(later)])
    assert table.to_pylist()[-1] == {"lang": "eng-us", "word": "cat", "pron": "KAT"} and table.num_rows == 3
    bad = tmp_path / "bad.tsv"
    bad.write_text("eng-us\tcat\tkæt\neng-us cat kæt\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"lexicon .*bad.tsv, line 2: expected lang<TAB>word<TAB>pron"):
        read_lexicons([str(bad)])
    pq.write_table(pa.table({"lang": ["x", "x"], "word": ["y", None], "pron": ["z", "z"]}), tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"n.parquet, row 1: word is empty"):
        read_lexicons([str(tmp_path / "n.parquet")])
    pq.write_table(pa.table({"language": ["x"], "word": ["y"], "pron": ["z"]}), tmp_path / "c.parquet")
    with pytest.raises(InputError, match=r"c.parquet: has no column\(s\) \['lang'\]"):
        read_lexicons([str(tmp_path / "c.parquet")])


def test_the_shipped_rules_are_the_charsiug2p_training_words():
    rules = charsiu_rules()
    assert len(rules) == 91 and rules["eng-us"]["lowercase"] and not rules["tur"]["lowercase"]
    assert rules["vie-n"]["spaces"] and not rules["pol"]["hyphens"] and rules["eng-us"]["hyphens"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def test_the_job_with_a_lexicon_and_a_reference_column(local_ray, tmp_path, monkeypatch):
    words = ["Cat", unicodedata.normalize("NFD", "café"), "ice cream", "dog", "bird", None]
    refs = ["tac", "éfac", "eci maerc", "DOX,DOG", "xxxx", "y"]
    table = pa.table({"id": list(range(6)), "word": words, "lang": ["eng-us"] * 6, "pron": refs})
    write(table, tmp_path / "in" / "words.parquet", row_group_size=10)
    (tmp_path / "mine.tsv").write_text("eng-us\tdog\tDOG\n", encoding="utf-8")
    monkeypatch.setenv("FAKE_ENGINE", json.dumps({"input_rules": {"eng-us": {"lowercase": True}}}))
    report = run_job(job_config(tmp_path, lexicon=str(tmp_path / "mine.tsv"), reference_column="pron",
                                worst_rows=2, max_output_len=32))
    out = pq.read_table(tmp_path / "out").sort_by("id").to_pylist()
    assert [r["phonemes"] for r in out] == ["tac", "éfac", "eci maerc", "DOG", "drib", None]
    assert [r["status"] for r in out] == ["ok", "ok", "ok", "lexicon", "ok", "error"]
    assert [r["match"] for r in out] == [True, True, True, True, False, None]   # any variant
    assert out[3]["per"] == pytest.approx(1 / 3)               # PER against the first variant, "DOX"
    assert out[4]["per"] == pytest.approx(1.0) and out[0]["per"] == 0.0
    check = json.loads((tmp_path / "out" / REPORT).read_text())["check"]
    eng = check["languages"]["eng-us"]
    assert eng["rows"] == 5 and eng["wer"] == pytest.approx(2 / 5)
    assert eng["per"] == pytest.approx((0 + 0 + 0 + 1 / 3 + 1) / 5)
    assert [w["word"] for w in eng["worst"]] == ["bird", "dog"] and check["overall"]["languages"] == 1
    assert report.rows == {"error": 1, "lexicon": 1, "ok": 4}

    (tmp_path / "mine.tsv").write_text("eng-us\tdog\tDAWG\n", encoding="utf-8")   # edited in place
    with pytest.raises(ConfigError, match="other settings .*lexicon_sha256"):
        run_job(job_config(tmp_path, lexicon=str(tmp_path / "mine.tsv"), reference_column="pron",
                           worst_rows=2, max_output_len=32))

    (tmp_path / "broken.tsv").write_text("eng-us\tdog\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"broken.tsv, line 1"):
        run_job(job_config(tmp_path, output=str(tmp_path / "out2"), lexicon=str(tmp_path / "broken.tsv")))
    assert not (tmp_path / "out2").exists()                       # before any work


def test_languages_whose_training_words_are_not_nfc_are_fed_as_written():
    """grc's training words spell some accents with combining marks: composing them moved the
    input away from what the model saw. Elsewhere, precomposed forms NFC would replace (CJK
    compatibility ideographs) stay as written."""
    decomposed = unicodedata.normalize("NFD", "βοῦστον")
    assert not LanguageRules.of_words(["ά", decomposed]).nfc and LanguageRules.of_words(["ά"]).nfc
    assert not charsiu_rules()["grc"]["nfc"] and charsiu_rules()["gre"]["nfc"]
    rules = InputRules({"grc": LanguageRules(nfc=False), "zho-t": LanguageRules()})
    assert rules.normalise("grc", decomposed) == decomposed
    assert rules.normalise("zho-t", "\uf9b1") == "\uf9b1" != unicodedata.normalize("NFC", "\uf9b1")
    assert rules.normalise("zho-t", unicodedata.normalize("NFD", "한국")) == "한국"   # conjoining jamo composed


def test_n_best_candidates_for_whole_words_lexicon_rows_and_parts():
    t = Transcriber(FakeEngine(BUCKETS, 64), PromptFormat(), None, {"eng-us"}, True, InputRules(RULES),
                    num_beams=4, n_best=3)
    assert t.buckets == sorted(Bucket(b // 4, n) for b in (8, 32) for n in (16, 32, 64))
    t.rules.with_lexicon([("eng-us", "dog", "DOG")])
    cat, dog, ice, fra = t.transcribe(["eng-us", "eng-us", "eng-us", "fra"], ["cat", "dog", "ice cream", "chat"])
    assert cat.candidates == (("tac", FAKE_SCORE), ("tac~", 2 * FAKE_SCORE), ("tac~~", 3 * FAKE_SCORE))
    assert cat.phonemes == "tac" and cat.score == pytest.approx(FAKE_SCORE)
    assert dog.candidates == (("DOG", None),) and ice.candidates == (("eci maerc", pytest.approx(FAKE_SCORE)),)
    assert fra.status == "untrained" and fra.candidates[0] == ("tahc", FAKE_SCORE)
    with pytest.raises(ConfigError, match="num_beams=3 fits no compiled batch size"):
        Transcriber(FakeEngine(BUCKETS, 64), num_beams=3, n_best=1)
    with pytest.raises(ConfigError, match="n_best=5"):
        Transcriber(FakeEngine(BUCKETS, 64), num_beams=4, n_best=5)


def test_n_best_job_config_and_output_column(tmp_path):
    from g2p_batch.job.writer import CANDIDATES, output_table

    with pytest.raises(ConfigError, match="n_best=3 is over num_beams=2"):
        job_config(tmp_path, num_beams=2, n_best=3)
    with pytest.raises(ConfigError, match="num_beams=3 fits none of batch_sizes"):
        job_config(tmp_path, num_beams=3, batch_sizes=[8, 32])
    empty = output_table(pa.table({"word": pa.array([], pa.string())}), [], None, candidates=True)
    assert empty.schema.field("candidates").type == CANDIDATES       # every shard of the job alike
