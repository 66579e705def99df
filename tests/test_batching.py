import random

import pytest

from g2p_batch.decode.batching import (
    RowError,
    choose_batch_sizes,
    plan_batches,
    validate_row,
)
from g2p_batch.decode.engine import CALL_COST_ROWS, Bucket
from g2p_batch.decode.tokenizer import PromptFormat, encode

SIZES = [1, 8, 32, 64]
LENS = [16, 32, 64]
BUCKETS = [Bucket(b, n) for b in SIZES for n in LENS]
LANGS = {"eng-us", "fra", "ger"}
CPU = CALL_COST_ROWS["cpu"]


def _words(n, seed=0):
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyzéüß"
    return [("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))),
             rng.choice(sorted(LANGS))) for _ in range(n)]


def test_every_row_exactly_once_and_duplicates_decoded_once():
    pairs = _words(300)
    pairs += pairs[:50]                       # 50 exact duplicates
    pairs.append(("abc", "fra"))
    pairs.append(("abc", "ger"))              # same word, other language: not a duplicate
    words, langs = [w for w, _ in pairs], [l for _, l in pairs]
    plan = plan_batches(langs, words, BUCKETS, known_langs=LANGS, call_cost_rows=CPU)

    assert len(plan.row_items) == len(words)
    in_batches = [i for b in plan.batches for i in b.items]
    assert sorted(in_batches) == list(range(len(plan.items)))          # each item once
    assert len(plan.items) == len(set(zip(langs, words)))              # one item per pair
    for pos, item in enumerate(plan.row_items):                        # fan-out is right
        assert item is not None
        assert (plan.items[item].lang, plan.items[item].word) == (langs[pos], words[pos])
    assert plan.row_items[0] == plan.row_items[300]


def test_batches_use_smallest_fitting_input_bucket_and_compiled_sizes():
    words = [w for w, _ in _words(500, seed=1)]
    plan = plan_batches(["eng-us"] * len(words), words, BUCKETS, known_langs=LANGS, call_cost_rows=CPU)
    for batch in plan.batches:
        assert batch.bucket in BUCKETS
        longest = max(len(plan.items[i].ids) for i in batch.items)
        assert longest <= batch.bucket.input_len
        smaller = [n for n in LENS if n < batch.bucket.input_len]
        assert all(longest > n for n in smaller), "a smaller input bucket would fit"
        assert 0 < len(batch.items) <= batch.bucket.batch


def test_length_group_tails_move_up_so_only_one_batch_pads():
    words = [w for w, _ in _words(250, seed=2)]  # a shard's worth, spread over all three lengths
    plan = plan_batches(["fra"] * len(words), words, [Bucket(b, n) for b in (8, 32) for n in LENS],
                        known_langs=LANGS, call_cost_rows=CPU)
    assert len({b.bucket.input_len for b in plan.batches}) == 3
    assert sum(b.padding_rows > 0 for b in plan.batches) <= 1
    assert sum(b.bucket.batch for b in plan.batches) - len(plan.items) < 8  # the one tail, at most


def _cheapest(n, sizes, c):
    """The exact optimum over every multiset of sizes that covers n (a dynamic programme over
    every count up to n, with no window): the cost to beat."""
    best = {0: 0.0}
    for left in range(1, n + 1):
        best[left] = min(best[max(0, left - s)] + s + c for s in sizes)
    return best[n]


@pytest.mark.parametrize("sizes", [[1, 8, 32, 64], [8, 32], [4], [2, 3, 16], [5, 7], [1, 64, 256, 1024]])
@pytest.mark.parametrize("c", [0.0, CPU, CALL_COST_ROWS["cuda"]])
def test_batch_sizes_are_the_cheapest_cover(sizes, c):
    for n in list(range(1, 300)) + [1000, 2500, 4097, 9001]:
        chosen = choose_batch_sizes(n, sizes, c)
        assert all(s in sizes for s in chosen)
        assert sum(chosen) >= n and sum(chosen) - chosen[-1] < n   # no batch is all padding
        assert chosen == sorted(chosen, reverse=True)              # big batches first
        assert sum(chosen) + c * len(chosen) == pytest.approx(_cheapest(n, sizes, c))


def test_batch_sizes_examples():
    """The plans priced per call (tiny_8 at 2 threads: 3 words in 20 ms as one batch of 8, 39 ms
    as three of 1; 33 words 88 ms as 32 + 1, 100 ms as one 64)."""
    assert choose_batch_sizes(3, SIZES, CPU) == [8]          # not [1, 1, 1]
    assert choose_batch_sizes(33, SIZES, CPU) == [32, 1]     # not [64]
    assert choose_batch_sizes(40, SIZES, CPU) == [32, 8]     # not [64]
    assert choose_batch_sizes(13, SIZES, CPU) == [8, 8]
    assert choose_batch_sizes(17, SIZES, CPU) == [32]
    assert choose_batch_sizes(58, SIZES, CPU) == [64]
    assert choose_batch_sizes(129, SIZES, CPU) == [64, 64, 1]
    assert choose_batch_sizes(3, [8, 32], CPU) == [8]
    assert choose_batch_sizes(0, SIZES, CPU) == []
    gpu, cost = [1, 64, 256, 1024], CALL_COST_ROWS["cuda"]   # configs/compile_cuda.yaml
    assert choose_batch_sizes(20, gpu, cost) == [64]         # one call, not twenty
    assert choose_batch_sizes(300, gpu, cost) == [1024]


def test_non_cross_product_buckets_use_sizes_of_their_length():
    buckets = [Bucket(8, 16), Bucket(1, 16), Bucket(4, 32)]
    words = ["ab"] * 1 + [f"w{i}" for i in range(9)] + ["x" * 20, "y" * 20]
    plan = plan_batches(["fra"] * len(words), words, buckets, known_langs=LANGS, call_cost_rows=CPU)
    assert {b.bucket for b in plan.batches} <= set(buckets)
    assert sum(len(b.items) for b in plan.batches) == len(plan.items)


@pytest.mark.parametrize("lang,word,needle", [
    ("fra", None, "word is null"),
    ("fra", "", "word is empty"),
    ("fra", "  \t", "only whitespace"),
    ("xx", "bonjour", "language 'xx' is not one the model knows"),
    ("eng-uk", "hello", "did you mean eng-us"),
    (None, "bonjour", "language code is null"),
    ("fra", "a" * 80, "add a larger size to input_buckets"),
    ("fra", "bon\x00jour", "control character U+0000"),
    ("fra", "bon\x07", "control character U+0007"),
    ("fra", "\x1b[31mred", "control character U+001B"),
    ("fra", "two\nlines", "control character U+000A"),
    ("fra", "abc\u202edef", "bidirectional control U+202E"),
    ("fra", "\u2066word", "bidirectional control U+2066"),
    ("fra", "😀🎉", "has no letters"),
    ("fra", "?!", "has no letters"),
])
def test_bad_rows_are_errors_naming_row_value_and_fix(lang, word, needle):
    plan = plan_batches(["fra", lang], ["ok", word], BUCKETS, known_langs=LANGS, first_row=100,
                        call_cost_rows=CPU)
    assert plan.row_items[0] is not None and plan.row_items[1] is None
    msg = plan.errors[1]
    assert msg.startswith("row 101: ") and needle in msg


@pytest.mark.parametrize("word", ["\u0915\u094d\u200d\u0937", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "ok\u200d", "7"])
def test_words_with_joiners_or_digits_stay_words(word):
    """ZWJ and ZWNJ spell words in Indic and Perso-Arabic scripts; they are not junk."""
    assert validate_row(0, "fra", word, LANGS, PromptFormat(), 64)


@pytest.mark.parametrize("fmt", [PromptFormat(), PromptFormat(input_eos=True)])
def test_too_long_counts_what_is_really_fed(fmt):
    word = "a" * (64 - len(encode("fra", "", fmt)))    # exactly 64 ids, EOS counted only if fed
    assert len(validate_row(0, "fra", word, LANGS, fmt, 64)) == 64
    assert len(word) == 64 - len("<fra>:") - fmt.input_eos
    with pytest.raises(RowError, match="65 input bytes"):
        validate_row(0, "fra", word + "a", LANGS, fmt, 64)


def test_repeating_rows_finds_loops_not_words():
    import numpy as np

    from g2p_batch.decode.engine import LOOP_MIN_IDS, repeating_rows
    from g2p_batch.decode.tokenizer import byte_ids

    def ids(text):
        return byte_ids(text)
    rows = {
        "one byte": ids("a" * 40),
        "two-byte letter": ids("ɾ" * 20),
        "syllable": ids("ˈɾɾɾ" * 8),
        "word": ids("ˈæntɪdɪsˌɛstæblɪʃmənˈtɛɹiənɪzəm"),
        "reduplication": ids("humuhumunukunukuʔapuʔa"),
        "five copies": ids("xa˥" * 5),
        "short run": ids("x" * LOOP_MIN_IDS),
    }
    n = max(map(len, rows.values()))
    hist = np.array([[5] * (n - len(r)) + r for r in rows.values()])  # right-aligned: the tails matter
    got = dict(zip(rows, repeating_rows(hist).tolist()))
    assert got == {"one byte": True, "two-byte letter": True, "syllable": True, "word": False,
                   "reduplication": False, "five copies": False, "short run": False}


def test_greedy_output_keeps_a_stopped_rows_tokens_and_marks_it():
    import numpy as np

    from g2p_batch.decode.engine import greedy_output
    from g2p_batch.decode.tokenizer import EOS, PAD

    raw = np.array([[10, 11, 12, 13], [10, EOS, 12, 13], [10, 11, 12, 13]], np.int32)
    out = greedy_output(raw, np.zeros((3, 4), np.float32), np.zeros(3, bool), 6, np.array([2, 2, 5]))
    assert out.tokens[0].tolist() == [10, 11, PAD, PAD, PAD, PAD] and out.lengths.tolist() == [2, 2, 4]
    assert out.looped.tolist() == [True, False, False] and out.truncated.tolist() == [True, False, True]


def test_known_langs_none_accepts_any_code():
    plan = plan_batches(["zz"], ["word"], BUCKETS, known_langs=None, call_cost_rows=CPU)
    assert plan.errors == {}


def test_greedy_output_matches_generate_step_by_step():
    """`decoding.greedy_output` rebuilds, after the loop, what the step-by-step bookkeeping of
    generate() records: each row stops at its first EOS (PAD after, EOS counted), later raw ids
    of a finished row are ignored, filler rows give nothing, and rows without EOS are truncated."""
    import numpy as np

    from g2p_batch.decode.engine import greedy_output
    from g2p_batch.decode.tokenizer import EOS, PAD

    rng = np.random.default_rng(7)
    B, steps, T = 9, 6, 8
    raw = rng.integers(3, 50, (B, steps)).astype(np.int32)
    raw[0, 0] = EOS                       # ends at once
    raw[1, [2, 4]] = EOS                  # a second EOS after the first is ignored
    raw[2, steps - 1] = EOS               # ends on the last step
    raw[4, 1] = EOS                       # a filler row: nothing, whatever it decodes
    logp = rng.uniform(-3, 0, (B, steps)).astype(np.float32)
    filler = np.zeros(B, bool)
    filler[4] = True
    want_tok, want_len, want_sum, done = np.zeros((B, T), np.int32), np.zeros(B, np.int32), np.zeros(B), filler.copy()
    for t in range(steps):  # the loop the runtime ran before, with generate's pad for finished rows
        live = ~done
        nxt = np.where(live, raw[:, t], PAD)
        want_tok[:, t] = nxt
        want_len += live
        want_sum += np.where(live, logp[:, t], 0.0)
        done |= nxt == EOS
    out = greedy_output(raw, logp, filler, T)
    assert (out.tokens == want_tok).all() and (out.lengths == want_len).all()
    np.testing.assert_array_equal(out.scores, np.where(want_len > 0, want_sum / np.maximum(want_len, 1), 0).astype(np.float32))
    assert out.truncated.tolist() == (~done).tolist() and out.steps == steps
    assert out.lengths[:3].tolist() == [1, 3, 6] and out.lengths[4] == 0 and (out.tokens[4] == PAD).all()
