"""Byte ids equal transformers' ByT5Tokenizer on every parity word, both prompt formats."""

from __future__ import annotations

import pytest

from g2p_batch.decode.tokenizer import (
    EOS,
    InputTooLong,
    PromptFormat,
    decode,
    encode,
    encode_text,
    pad_batch,
)


def test_matches_byt5_tokenizer(parity_entries):
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    for space in (False, True):
        fmt = PromptFormat(space)
        for e in parity_entries:
            text = fmt.format(e.lang, e.word)
            ids = encode_text(text)
            assert ids == tok(text).input_ids, text
            assert decode(ids) == tok.decode(ids, skip_special_tokens=True)


def test_prompt_format_switch():
    assert PromptFormat().format("eng-us", "cat") == "<eng-us>:cat"
    assert PromptFormat(space_after_colon=True).format("eng-us", "cat") == "<eng-us>: cat"


def test_too_long_names_word_and_limit():
    with pytest.raises(InputTooLong) as err:
        encode("fra", "a" * 70, max_len=64)
    msg = str(err.value)
    assert "'" + "a" * 70 + "'" in msg and "64" in msg and "--max-input-bytes" in msg


def test_decode_stops_at_eos_and_drops_specials_and_extra_ids():
    ids = encode_text("ab") + [3 + ord("c")]
    assert decode(ids) == "ab"
    assert decode([0, 2, 300, 3 + ord("x"), EOS]) == "x"


def test_pad_batch_fills_rows_and_filler():
    out = pad_batch([[5, 1], [6, 7, 1]], 4, batch=3)
    assert out.tolist() == [[5, 1, 0, 0], [6, 7, 1, 0], [0, 0, 0, 0]]
    with pytest.raises(ValueError):
        pad_batch([[1] * 5], 4)
