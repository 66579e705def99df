import numpy as np
import pytest

from g2p_batch.decode.engine import Bucket
from g2p_batch.decode.tokenizer import PromptFormat, decode
from g2p_batch.decode.transcriber import RowResult, Transcriber
from tests.fakes import FAKE_SCORE, FakeEngine, fake_phonemes

BUCKETS = [Bucket(b, n) for b in (1, 8, 32) for n in (16, 32, 64)]
LANGS = {"eng-us", "fra"}


def _transcriber(max_output_len=64, **kw):
    engine = FakeEngine(BUCKETS, max_output_len, **kw)
    return Transcriber(engine, PromptFormat(), LANGS), engine


def test_rows_come_back_in_order_with_fake_phonemes():
    t, engine = _transcriber()
    words = [f"word{i}" for i in range(40)] + ["été", "word3"]
    results = t.transcribe(["fra"] * len(words), words)
    assert [r.phonemes for r in results] == [fake_phonemes(w) for w in words]
    assert all(r.status == "ok" and r.error is None for r in results)
    assert all(r.score == pytest.approx(FAKE_SCORE) for r in results)
    assert sum(b for b, _ in engine.calls) >= 41 and t.decoded_items == 41


def test_duplicates_decode_once():
    t, engine = _transcriber()
    results = t.transcribe(["fra"] * 20, ["même"] * 20)
    assert engine.calls == [(1, 16)]
    assert {r.phonemes for r in results} == {"emêm"}


def test_truncated_rows_keep_partial_phonemes_and_say_how_to_fix():
    t, _ = _transcriber(max_output_len=8)
    results = t.transcribe(["fra", "fra", "fra"], ["abcdefghijkl", "ab", "abcdefghijkl"],
                           first_row=10)
    assert results[1] == RowResult("ba", "ok", None, pytest.approx(FAKE_SCORE))
    for pos in (0, 2):
        r = results[pos]
        assert r.status == "truncated" and r.phonemes == "lkjihgfe"
        assert r.error.startswith(f"row {10 + pos}:") and "raise max_output_len" in r.error


def test_bad_rows_are_per_row_errors_good_rows_still_decode():
    t, _ = _transcriber()
    results = t.transcribe(["fra", "fra", "xx", "fra"], ["bon", None, "bon", "x" * 100])
    assert [r.status for r in results] == ["ok", "error", "error", "error"]
    assert results[0].phonemes == "nob"
    assert all(r.phonemes is None and r.score is None and r.error for r in results[1:])


def test_engine_failures_propagate_not_per_row():
    t, _ = _transcriber(raise_on_word="boom")
    with pytest.raises(RuntimeError, match="fake device fault"):
        t.transcribe(["fra", "fra"], ["fine", "boom"])


def test_one_item_api_matches_batch_api():
    t, _ = _transcriber()
    words = ["chat", "", "x" * 100, "oiseau"]
    batch = t.transcribe(["fra"] * len(words), words)
    for pos, w in enumerate(words):
        one, many = t.transcribe_one("fra", w), batch[pos]
        assert (one.phonemes, one.status, one.score) == (many.phonemes, many.status, many.score)
        if one.error:       # same message; only the row number differs
            assert one.error.replace("row 0:", f"row {pos}:") == many.error


def test_timings_split_engine_encode_time():
    """The engine's own encoder seconds are carved out of the measured engine time, and never
    beyond it: a fake that sleeps 50 ms a call and claims 20 ms of encoder, then one that claims
    more than it took."""
    t, _ = _transcriber(delay_s=0.05, encode_s=0.02)
    t.transcribe(["fra"], ["abc"])
    assert set(t.timings) == {"tokenize", "encode", "decode"} and t.timings["tokenize"] > 0
    assert t.timings["encode"] == pytest.approx(0.02)
    assert 0.025 <= t.timings["decode"] < 0.5
    t, _ = _transcriber(encode_s=5.0)
    t.transcribe(["fra"], ["abc"])
    assert 0 < t.timings["encode"] < 0.5 and t.timings["decode"] == 0.0


def test_rows_in_languages_the_checkpoint_never_trained_on_are_marked():
    engine = FakeEngine(BUCKETS, 64)
    t = Transcriber(engine, PromptFormat(), LANGS, trained_langs={"eng-us"})
    ok, untrained = t.transcribe(["eng-us", "fra"], ["cat", "chat"], first_row=4)
    assert ok.status == "ok" and ok.error is None
    assert untrained.status == "untrained" and untrained.phonemes == "tahc"
    assert untrained.error.startswith("row 5:") and "'fra' was not in this checkpoint's training data" in untrained.error
    assert Transcriber(engine, PromptFormat(), LANGS).transcribe(["fra"], ["chat"])[0].status == "ok"


def test_a_row_stopped_as_a_loop_says_so():
    class Looping(FakeEngine):
        def decode(self, input_ids, *, stop_loops=True):
            out = super().decode(input_ids)
            out.looped = np.array([stop_loops and decode(r).endswith("loop") for r in input_ids])
            out.truncated = out.truncated | out.looped
            return out

    words = ["a loop", "fine"]
    r = Transcriber(Looping(BUCKETS, 64), PromptFormat(), LANGS).transcribe(["fra", "fra"], words)
    assert r[0].status == "truncated" and "repeating itself" in r[0].error and "max_output_len" not in r[0].error.split(";")[0]
    assert r[1].status == "ok"
    off = Transcriber(Looping(BUCKETS, 64), PromptFormat(), LANGS, stop_loops=False).transcribe(["fra"], words[:1])
    assert off[0].status == "ok"


def test_for_engine_takes_the_sets_prompt_and_languages():
    engine = FakeEngine(BUCKETS, 64)
    engine.prompt, engine.languages, engine.trained_languages = PromptFormat(input_eos=True), ["fra", "eng-us"], ["fra"]
    t = Transcriber.for_engine(engine)
    assert t.fmt.input_eos and t.known_langs == {"fra", "eng-us"} and t.trained_langs == {"fra"}
    assert [r.status for r in t.transcribe(["fra", "eng-us", "cmn"], ["a", "b", "c"])] == ["ok", "untrained", "error"]
