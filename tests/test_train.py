"""g2p_batch.train on CPU: data encoding, batch plans, LR schedule, and a tiny end-to-end run."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from g2p_batch.decode.tokenizer import EOS, PAD, PromptFormat, encode_text
from g2p_batch.errors import ConfigError
from g2p_batch.tools.train import (
    TrainConfig,
    balanced_rows,
    epoch_plan,
    load_pairs,
    lr_at,
    steps_per_epoch,
    train,
)
from tests.conftest import DATA

SHARED = DATA / "data"  # absent: _subset makes synthetic pairs
LANGS = ("eng-us", "fin", "dut")


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")


def _subset(tmp: Path, n_train: int = 40, n_dev: int = 10) -> tuple[Path, Path]:
    """First lines of a few languages from the shared data; synthetic pairs when it is absent."""
    train_dir, dev_dir = tmp / "train", tmp / "dev"
    for lang in LANGS:
        for split, n, d in (("train", n_train, train_dir), ("dev", n_dev, dev_dir)):
            src = SHARED / split / f"{lang}.tsv"
            if src.exists():
                lines = src.read_text(encoding="utf-8").splitlines()[:n]
            else:  # a learnable toy mapping: the "pronunciation" is the word reversed
                rng = random.Random(f"{lang}{split}")
                words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 7))) for _ in range(n)]
                lines = [f"{w}\t{w[::-1]}" for w in words]
            _write(d / f"{lang}.tsv", lines)
    return train_dir, dev_dir


@pytest.fixture
def one_thread():
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is shared
    yield
    torch.set_num_threads(old)


def test_load_pairs_tokenizes_as_charsiug2p_and_counts_drops(tmp_path):
    _write(tmp_path / "xx.tsv", [
        "abc\tæ b , x",            # variants: train on the first, stripped
        "word\tw ɜː d",
        "x" * 70 + "\tlong",       # input over 64 ids
        "short\t" + "y" * 80,      # target over 64 ids
        "notab",                   # malformed
        "emptypron\t , z",         # malformed: empty first variant
        "",                        # blank lines are not lines
    ])
    (tmp_path / "yy.tsv.gz").write_bytes(gzip.compress("ça\tsa\n".encode("utf-8")))
    ds = load_pairs(tmp_path)
    assert ds.langs == ["xx", "yy"] and ds.files == 2 and len(ds) == 3
    assert ds.per_lang["xx"] == dict(lines=6, kept=2, dropped_input=1, dropped_output=1, malformed=2)
    assert ds.dropped()["dropped_total"] == 4
    # CharsiuG2P's own tokenization: words without special tokens, targets with EOS
    from transformers import ByT5Tokenizer
    tok = ByT5Tokenizer()
    want = [("<xx>:abc", "æ b"), ("<xx>:word", "w ɜː d"), ("<yy>:ça", "sa")]
    for r, (src, tgt) in enumerate(want):
        assert ds.src[r, : ds.src_len[r]].tolist() == tok(src, add_special_tokens=False).input_ids
        assert ds.tgt[r, : ds.tgt_len[r]].tolist() == tok(tgt).input_ids
        assert (ds.src[r, ds.src_len[r]:] == PAD).all() and (ds.tgt[r, ds.tgt_len[r]:] == PAD).all()
    assert ds.src[0, ds.src_len[0] - 1] != EOS and ds.tgt[0, ds.tgt_len[0] - 1] == EOS
    assert ds.src.dtype == np.int16 and ds.src.shape[1] == ds.src_len.max()
    with_eos = load_pairs(tmp_path, fmt=PromptFormat(input_eos=True))
    assert with_eos.src[0, : with_eos.src_len[0]].tolist() == tok("<xx>:abc").input_ids
    # limits: first N lines of each file; tighter length limits drop more
    assert load_pairs(tmp_path, limit_per_lang=1).per_lang["xx"]["kept"] == 1
    assert load_pairs(tmp_path, max_input_bytes=len("<xx>:abc")).per_lang["xx"]["kept"] == 1
    assert load_pairs(tmp_path, max_input_bytes=len("<xx>:abc"),
                      fmt=PromptFormat(input_eos=True)).per_lang["xx"]["kept"] == 0


def test_epoch_plan_is_deterministic_bucketed_and_complete():
    rng = np.random.default_rng(1)
    n = 5000
    src_len = rng.integers(5, 40, n).astype(np.int16)
    tgt_len = np.clip(src_len - 4 + rng.integers(-3, 8, n), 2, 64).astype(np.int16)  # correlated, as in G2P
    a = epoch_plan(src_len, tgt_len, 64, seed=3, epoch=0, chunk_batches=8)
    b = epoch_plan(src_len, tgt_len, 64, seed=3, epoch=0, chunk_batches=8)
    c = epoch_plan(src_len, tgt_len, 64, seed=3, epoch=1, chunk_batches=8)
    d = epoch_plan(src_len, tgt_len, 64, seed=4, epoch=0, chunk_batches=8)
    assert len(a) == steps_per_epoch(n, 64, 8)
    for field in ("order", "starts", "ends", "src_w", "tgt_w"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.order, c.order) and not np.array_equal(a.order, d.order)
    rows = np.concatenate([a.order[s:e] for s, e in zip(a.starts, a.ends)])
    assert np.array_equal(np.sort(rows), np.arange(n))  # every row exactly once
    for s, e, ws, wt in zip(a.starts, a.ends, a.src_w, a.tgt_w):
        assert ws == src_len[a.order[s:e]].max() and wt == tgt_len[a.order[s:e]].max()
    sl, tl = src_len.astype(np.int64), tgt_len.astype(np.int64)
    random_fill = (sl.sum() + tl.sum()) / (n * (sl.max() + tl.max()))
    assert a.tokens.sum() / a.padded.sum() > random_fill + 0.15  # bucketing cuts padding
    assert steps_per_epoch(1000, 64, 4) == len(epoch_plan(src_len[:1000], tgt_len[:1000], 64, 0, 0, 4))


def test_language_balance_reweights_languages_and_keeps_the_epoch_size():
    sizes = [10, 90, 900]
    lang_id = np.repeat(np.arange(3), sizes).astype(np.int16)
    n = lang_id.size
    even = balanced_rows(lang_id, 0.0, np.random.default_rng(0))
    assert even.size == n and np.bincount(lang_id[even]).tolist() == [334, 333, 333]
    # a small language's rows repeat evenly (each 33-34 times), in fresh orders
    assert sorted(set(np.bincount(even[lang_id[even] == 0]).tolist())) == [33, 34]
    half = np.bincount(lang_id[balanced_rows(lang_id, 0.5, np.random.default_rng(0))])
    want = n * np.sqrt(sizes) / np.sqrt(sizes).sum()
    assert half.sum() == n and np.all(np.abs(half - want) < 1)
    # a large language is drawn without repeats when its share is below its rows
    big = balanced_rows(lang_id, 0.5, np.random.default_rng(0))
    assert np.unique(big[lang_id[big] == 2]).size == half[2]

    src_len = (5 + np.arange(n) % 30).astype(np.int16)
    tgt_len = (src_len - 2).astype(np.int16)
    plain = epoch_plan(src_len, tgt_len, 64, seed=3, epoch=0, chunk_batches=4)
    as_data = epoch_plan(src_len, tgt_len, 64, seed=3, epoch=0, chunk_batches=4, lang_id=lang_id, lang_balance=1.0)
    assert np.array_equal(plain.order, as_data.order)  # alpha 1 is the unbalanced plan, draw for draw
    bal = epoch_plan(src_len, tgt_len, 64, seed=3, epoch=0, chunk_batches=4, lang_id=lang_id, lang_balance=0.0)
    assert len(bal) == len(plain) == steps_per_epoch(n, 64, 4)
    rows = np.concatenate([bal.order[s:e] for s, e in zip(bal.starts, bal.ends)])
    assert np.bincount(lang_id[rows]).tolist() == [334, 333, 333]
    for s, e, ws in zip(bal.starts, bal.ends, bal.src_w):
        assert ws == src_len[bal.order[s:e]].max()
    with pytest.raises(ConfigError, match="lang_balance"):
        TrainConfig(data="unused", out="unused", lang_balance=1.5)


def test_lr_schedule_warms_up_and_decays_to_zero():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.0, abs=1e-9)
    # time-aware: past the deadline fraction the LR is ~0 even early in the planned steps
    assert lr_at(20, 1.0, 10, 1000, time_frac=1.0) == pytest.approx(0.0, abs=1e-9)
    assert lr_at(20, 1.0, 10, 1000, time_frac=0.5) == pytest.approx(0.5)


def test_train_config_is_the_one_set_of_defaults():
    """`g2p-batch train` (also `python -m g2p_batch train`) is the one training command."""
    import subprocess
    import sys

    cfg = TrainConfig(data="d", out="o")
    assert (cfg.epochs, cfg.batch_size, cfg.max_minutes, cfg.time_aware_schedule) == (1, 128, 85.0, True)
    res = subprocess.run([sys.executable, "-m", "g2p_batch", "train", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--time-aware-schedule" in res.stdout and "(default: 128)" in res.stdout
    with pytest.raises(ConfigError, match="lang_balance"):
        TrainConfig(lang_balance=2.0)


def test_train_micro_end_to_end(tmp_path, one_thread):
    import torch
    import transformers
    from safetensors import safe_open

    train_dir, dev_dir = _subset(tmp_path)
    out = tmp_path / "ckpt"
    s = train(TrainConfig(data=str(train_dir), out=str(out), arch="micro", epochs=8, batch_size=8, lr=3e-3,
              warmup_steps=5, seed=0, device="cpu", limit_per_lang=20, dev=str(dev_dir),
              log_every=8, dev_generate=6), argv=["pytest"])
    assert s["steps"] == s["planned_steps"] == 8 * s["steps_per_epoch"] == 64
    assert not s["stopped_early"] and s["epochs_completed"] == 8
    assert s["final_loss"] < s["first_loss"] - 1.0, s["loss_history"]
    assert s["dev"]["loss"] < s["first_loss"] and s["dev"]["generated"] == 6
    assert s["amp"] is None  # CPU bf16 is opt-in

    summary = json.loads((out / "training_summary.json").read_text())
    for key in ("steps", "epochs_done", "seconds", "final_loss", "dropped_pairs", "device_name",
                "torch_version", "argv", "data_files", "pairs_per_language", "options"):
        assert key in summary, key
    assert summary["argv"] == ["pytest"] and summary["data_files"] == 3
    assert {k: v["kept"] for k, v in summary["pairs_per_language"].items()} == {lang: 20 for lang in LANGS}
    # the checkpoint declares how it was trained, so nothing downstream guesses
    from g2p_batch.model.checkpoint import load as load_checkpoint
    cp = load_checkpoint(out)
    assert cp.prompt() == PromptFormat(space_after_colon=False, input_eos=False)
    assert cp.trained_languages == sorted(LANGS)

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        assert "lm_head.weight" in f.keys()  # the untied form the TVM loader and transformers 4 read
    model = transformers.T5ForConditionalGeneration.from_pretrained(out)
    cfg = model.config
    assert (cfg.decoder_start_token_id, cfg.eos_token_id, cfg.pad_token_id) == (0, 1, 0)
    assert (cfg.d_model, cfg.num_layers, cfg.num_decoder_layers) == (64, 2, 2)
    ids = torch.tensor([encode_text("<eng-us>:cat")])
    gen = model.float().generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[0] == 1 and gen[0, 0].item() == 0


def test_cpu_bf16_is_opt_in_and_trains(tmp_path, one_thread):
    train_dir, _ = _subset(tmp_path, n_dev=0)
    s = train(TrainConfig(data=str(train_dir), out=str(tmp_path / "ckpt"), arch="micro", epochs=8, batch_size=8, lr=3e-3,
              warmup_steps=5, device="cpu", bf16=True, limit_per_lang=20, log_every=8))
    assert s["amp"] == "bf16" and s["options"]["bf16"] is True
    assert s["final_loss"] < s["first_loss"] - 1.0, s["loss_history"]


def _nan_loss_on(monkeypatch, bad) -> None:
    """Make the training forward's loss NaN on the calls (0-based) that `bad` accepts."""
    import transformers
    T5 = transformers.T5ForConditionalGeneration
    orig, calls = T5.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        out = orig(self, *args, **kwargs)
        if self.training:
            if bad(calls["n"]):
                out.loss = out.loss * float("nan")
            calls["n"] += 1
        return out
    monkeypatch.setattr(T5, "forward", forward)


def test_a_non_finite_batch_is_skipped_not_learned(tmp_path, one_thread, monkeypatch):
    """One NaN loss once turned every weight into NaN for the rest of a GPU run."""
    from safetensors.numpy import load_file
    _nan_loss_on(monkeypatch, lambda n: n == 2)
    train_dir, _ = _subset(tmp_path, n_dev=0)
    out = tmp_path / "ckpt"
    s = train(TrainConfig(data=str(train_dir), out=str(out), arch="micro", epochs=8, batch_size=8, lr=3e-3,
              warmup_steps=5, device="cpu", limit_per_lang=20, log_every=8))
    assert s["skipped_steps"] == [2] and s["steps"] == s["planned_steps"] and s["updates"] == s["steps"] - 1
    assert s["final_loss"] < s["first_loss"] - 1.0, s["loss_history"]
    assert all(np.isfinite(w.astype(np.float32)).all() for w in load_file(str(out / "model.safetensors")).values())


def test_a_run_of_non_finite_batches_stops_and_keeps_the_last_good_weights(tmp_path, one_thread, monkeypatch):
    from safetensors.numpy import load_file
    _nan_loss_on(monkeypatch, lambda n: n >= 3)
    train_dir, _ = _subset(tmp_path, n_dev=0)
    out = tmp_path / "ckpt"
    s = train(TrainConfig(data=str(train_dir), out=str(out), arch="micro", epochs=50, batch_size=4, device="cpu",
              limit_per_lang=20, log_every=1000))
    assert s["stop_reason"] == "non-finite" and s["skipped_steps"] == list(range(3, 53))
    assert all(np.isfinite(w.astype(np.float32)).all() for w in load_file(str(out / "model.safetensors")).values())


def test_time_limit_stops_and_still_saves(tmp_path, one_thread):
    train_dir, _ = _subset(tmp_path, n_train=20, n_dev=0)
    out = tmp_path / "ckpt"
    s = train(TrainConfig(data=str(train_dir), out=str(out), arch="micro", epochs=50, batch_size=4, device="cpu",
              max_minutes=0.0, reserve_seconds=0.0, log_every=1000))
    assert s["stopped_early"] and s["stop_reason"] == "time" and s["steps"] < s["planned_steps"]
    assert (out / "model.safetensors").exists() and (out / "training_summary.json").exists()


def test_position_init_points_each_head_at_its_offset():
    """Each initialised head attends mostly to its own offset; the last head of each stack is free."""
    import torch
    import transformers

    from g2p_batch.model.archs import resolve_arch
    from g2p_batch.tools.train import _init_position_heads

    torch.manual_seed(0)
    config = transformers.T5Config(**resolve_arch("micro"))
    config._attn_implementation = "eager"
    model = transformers.T5ForConditionalGeneration(config).eval()
    _init_position_heads(torch, model, 4.0)
    L = 12
    ids = torch.randint(3, 259, (2, L))
    with torch.no_grad():
        out = model(input_ids=ids, decoder_input_ids=ids, output_attentions=True)
    q = torch.arange(L)
    for atts, offsets in ((out.encoder_attentions[0], (-2, -1, 0)), (out.decoder_attentions[0], (0, -1, -2))):
        for h, off in enumerate(offsets):
            keep = (q + off >= 0) & (q + off < L)
            hit = atts[:, h].argmax(-1)[:, keep] == (q + off)[keep]
            assert hit.float().mean() > 0.9, (h, off)
            assert atts[:, h].max(-1).values[:, keep].mean() > 0.2
        free = atts[:, len(offsets)]  # micro has 4 heads: 3 pinned, 1 free, near uniform at init
        assert free.max(-1).values.mean() < 0.5
