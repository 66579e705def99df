"""Train a ByT5-vocabulary T5 (CharsiuG2P style) on `<lang>.tsv` word/pronunciation files.

    g2p-batch train --data DIR --out DIR [--arch tiny_3_1] [--epochs 1] ...   (TrainConfig)

Data: every `DIR/<lang>.tsv` (or `<lang>.tsv.gz`) holds `word<TAB>pron` lines; a pron may list comma-separated
variants and only the first (stripped) is trained on. Input text is `PromptFormat().format(lang,
word)` (`<lang>:word`) as ByT5 byte ids without EOS, as CharsiuG2P trains (`--input-eos` adds
one); the target is the first variant's byte ids + EOS (both checked against `tokenizer` on a
sample of every file). The checkpoint's `g2p_batch.json` records that format and the languages
trained on, so every later command feeds the model as it was trained.

Speed: all pairs are tokenised once into padded int16 matrices that live on the training
device; an epoch is a permutation cut into large random chunks, each chunk sorted by (input
length // 4, target length) and cut into batches, and the batch order shuffled, so padding stays
small. `--lang-balance A` < 1 replaces the permutation by draws with language l's share
proportional to n_l**A (`balanced_rows`), for runs too short to see the small languages often.
Only one index vector per epoch crosses host -> device. bf16 autocast and fused AdamW on CUDA;
`--bf16` also autocasts on CPU, which AMX runs 1.8x faster per step than fp32.

Time: `--max-minutes` bounds the whole `train()` call (loading, training, saving, dev eval).
Training stops `--reserve-seconds` before that and the model is saved either way; the summary
says whether the run stopped early. With `--time-aware-schedule` the LR decay follows
max(step fraction, wall-clock fraction), so a run that cannot finish its planned epochs still
anneals to ~0 by the deadline (the data order stays seed-determined; only LR values then
depend on speed). A SIGTERM or Ctrl-C also stops training and saves.

Init: T5's defaults, except a d_model**-0.5 std for the embedding (tied to the head in
transformers 5, unscaled, see `--embed-init-std`) and `--position-init`: each self-attention head
but the last starts looking at one relative offset. Without it our models stalled on a
bag-of-characters plateau (see `_init_position_heads`).

Checkpoint: `tools.checkpoints.save_untied(out)` in `--save-dtype` (an explicit
`lm_head.weight`, read alike by transformers 4 and 5 and by the TVM loader),
`generation_config.json`, `g2p_batch.json` and `training_summary.json`.

torch / transformers are imported inside `train()`, so `--help` and the data helpers are cheap.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import platform
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..decode.rules import LanguageRules
from ..decode.tokenizer import (
    EOS,
    OFFSET,
    PAD,
    PromptFormat,
    decode,
    encode,
    encode_text,
)
from ..errors import ConfigError, InputError
from ..model.archs import resolve_arch
from ..model.checkpoint import write_metadata
from ..settings import setting
from .checkpoints import SAVE_DTYPES, save_untied
from .lexicon import charsiu_data
from .reference import greedy_generate

__all__ = ["TrainConfig", "balanced_rows", "epoch_plan", "load_pairs", "lr_at", "steps_per_epoch", "train"]

IGNORE = -100


# ----------------------------------------------------------------------------------------- data

@dataclass
class PairSet:
    """Tokenised pairs: rows of `src`/`tgt` are right-padded with PAD (0); lengths include EOS."""

    src: np.ndarray                 # [N, Ls] int16
    tgt: np.ndarray                 # [N, Lt] int16
    src_len: np.ndarray             # [N] int16
    tgt_len: np.ndarray             # [N] int16
    lang_id: np.ndarray             # [N] int16, index into `langs`
    langs: list[str]
    per_lang: dict[str, dict]       # lang -> {lines, kept, dropped_input, dropped_output, malformed}
    input_rules: dict[str, dict]    # lang -> what its words look like (decode.rules.LanguageRules)
    files: int
    words: list[bytes] | None = None      # kept only with keep_text (dev evaluation)
    variants: list[list[str]] | None = None

    def __len__(self) -> int:
        return int(self.src.shape[0])

    def dropped(self) -> dict:
        tot = {k: sum(v[k] for v in self.per_lang.values())
               for k in ("lines", "kept", "dropped_input", "dropped_output", "malformed")}
        tot["dropped_total"] = tot["dropped_input"] + tot["dropped_output"] + tot["malformed"]
        return tot


def _pack(items: list[bytes], width: int, col0: int, n: int, eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """bytes rows -> [n, width] int16 of byte+OFFSET ids at columns col0.., EOS after (with
    `eos`); lengths."""
    lens = np.fromiter(map(len, items), dtype=np.int64, count=n)
    mat = np.zeros((n, width), dtype=np.int16)
    flat = np.frombuffer(b"".join(items), dtype=np.uint8)
    if flat.size:
        rows = np.repeat(np.arange(n), lens)
        starts = np.cumsum(lens) - lens
        cols = np.arange(flat.size) - np.repeat(starts, lens) + col0
        mat[rows, cols] = flat.astype(np.int16) + OFFSET
    total = lens + col0 + int(eos)
    if eos:
        mat[np.arange(n), total - 1] = EOS
    return mat, total.astype(np.int16)


def load_pairs(data_dir: str | os.PathLike, max_input_bytes: int = 64, max_output_len: int = 64,
               limit_per_lang: int | None = None, fmt: PromptFormat = PromptFormat(),
               keep_text: bool = False, only_langs: set[str] | None = None) -> PairSet:
    """Read and tokenise every `<lang>.tsv` (or `<lang>.tsv.gz`) in `data_dir`, by language code.

    `limit_per_lang` keeps the first N non-blank lines of each file (before filtering). Pairs
    whose input ids (prefix + word, + EOS with `fmt.input_eos`) exceed `max_input_bytes` or whose target ids (first
    variant + EOS) exceed `max_output_len` are dropped and counted; so are lines without a tab,
    an empty word or an empty first variant ("malformed")."""
    root = Path(data_dir)
    found = [(f.name[: -len(".tsv")], f) for f in root.glob("*.tsv")]
    found += [(f.name[: -len(".tsv.gz")], f) for f in root.glob("*.tsv.gz")]
    if not found:
        raise InputError(f"no <lang>.tsv or <lang>.tsv.gz files in {root}; point --data at a folder of them")
    if only_langs is not None:
        found = [(lang, f) for lang, f in found if lang in only_langs]
        if not found:
            raise InputError(f"no files in {root} for the languages {sorted(only_langs)[:10]}...")
    found.sort()
    dupes = sorted({lang for lang, _ in found if sum(1 for other, _ in found if other == lang) > 1})
    if dupes:
        raise InputError(f"{root} holds both .tsv and .tsv.gz for {dupes}; keep one of each")
    langs = [lang for lang, _ in found]
    files = [f for _, f in found]
    srcs, tgts, lens_s, lens_t, ids = [], [], [], [], []
    words_all: list[bytes] = []
    variants_all: list[list[str]] = []
    per_lang: dict[str, dict] = {}
    input_rules: dict[str, dict] = {}
    for li, (lang, path) in enumerate(zip(langs, files)):
        prefix_text = fmt.format(lang, "")
        if fmt.format(lang, "w") != prefix_text + "w":
            raise ValueError(f"prompt format {fmt} is not prefix + word")
        prefix = prefix_text.encode("utf-8")
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        lines = [ln for ln in raw.split(b"\n") if ln.strip()]
        if limit_per_lang is not None:
            lines = lines[:limit_per_lang]
        stats = dict(lines=len(lines), kept=0, dropped_input=0, dropped_output=0, malformed=0)
        max_word = max_input_bytes - len(prefix) - int(fmt.input_eos)
        max_tgt = max_output_len - 1
        words, firsts, prons = [], [], []
        for ln in lines:
            word, tab, pron = ln.partition(b"\t")
            word = word.strip()
            first = pron.split(b",", 1)[0].strip()
            if not tab or not word or not first:
                stats["malformed"] += 1
            elif len(word) > max_word:
                stats["dropped_input"] += 1
            elif len(first) > max_tgt:
                stats["dropped_output"] += 1
            else:
                words.append(word)
                firsts.append(first)
                if keep_text:
                    prons.append(pron)
        n = len(words)
        stats["kept"] = n
        per_lang[lang] = stats
        input_rules[lang] = dataclasses.asdict(LanguageRules.of_words([w.decode("utf-8", "replace") for w in words]))
        s, sl = _pack(words, max_input_bytes, len(prefix), n, eos=fmt.input_eos)
        s[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8).astype(np.int16) + OFFSET
        t, tl = _pack(firsts, max_output_len, 0, n)
        for r in range(min(n, 3)):  # the vectorised path must equal the reference encoder
            try:
                want_s = encode(lang, words[r].decode("utf-8"), fmt)
                want_t = encode_text(firsts[r].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            if s[r, : sl[r]].tolist() != want_s or t[r, : tl[r]].tolist() != want_t:
                raise AssertionError(f"{path}: row {r} tokenises differently from tokenizer.encode")
        srcs.append(s), tgts.append(t), lens_s.append(sl), lens_t.append(tl)
        ids.append(np.full(n, li, dtype=np.int16))
        if keep_text:
            words_all.extend(words)
            variants_all.extend([v.strip() for v in p.decode("utf-8", "replace").split(",") if v.strip()]
                                for p in prons)
    src_len = np.concatenate(lens_s)
    tgt_len = np.concatenate(lens_t)
    ws = int(src_len.max()) if src_len.size else 1
    wt = int(tgt_len.max()) if tgt_len.size else 1
    return PairSet(src=np.ascontiguousarray(np.concatenate(srcs)[:, :ws]),
                   tgt=np.ascontiguousarray(np.concatenate(tgts)[:, :wt]),
                   src_len=src_len, tgt_len=tgt_len, lang_id=np.concatenate(ids), langs=langs,
                   per_lang=per_lang, input_rules=input_rules, files=len(files),
                   words=words_all if keep_text else None, variants=variants_all if keep_text else None)


# -------------------------------------------------------------------------------------- batches

@dataclass
class EpochPlan:
    """One epoch: `order[starts[b]:ends[b]]` are batch b's rows, padded to src_w[b] x tgt_w[b]."""

    order: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    src_w: np.ndarray
    tgt_w: np.ndarray
    tokens: np.ndarray = field(default=None)  # real (non-pad) src+tgt ids per batch
    padded: np.ndarray = field(default=None)  # padded src+tgt slots per batch

    def __len__(self) -> int:
        return int(self.starts.size)


def steps_per_epoch(n: int, batch_size: int, chunk_batches: int) -> int:
    chunk = batch_size * chunk_batches
    return (n // chunk) * chunk_batches + -(-(n % chunk) // batch_size)


def balanced_rows(lang_id: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """One epoch's worth of row draws (as many as there are rows), language l's share
    proportional to n_l ** alpha, in random order.

    Accuracy is reported as a mean over languages, and the train files range from 1.6k to 125k
    lines: a run that sees a fraction of an epoch, proportional to the data, leaves the small
    languages with a few hundred examples each (amh, bur, ady, egy had PER 0.5-0.98 after 0.35
    epochs). alpha < 1 draws them more often, by repeating their rows in fresh random orders,
    and the large ones less."""
    n = int(lang_id.size)
    counts = np.bincount(lang_id.astype(np.int64))
    w = np.where(counts > 0, counts.astype(np.float64) ** alpha, 0.0)
    share = n * w / w.sum()
    quota = np.floor(share).astype(np.int64)
    quota[np.argsort(quota - share, kind="stable")[: n - int(quota.sum())]] += 1  # largest remainders
    by_lang = np.argsort(lang_id, kind="stable")
    parts, off = [], 0
    for c, q in zip(counts, quota):
        rows = by_lang[off:off + c]
        off += c
        if q:
            parts.append(np.concatenate([rng.permutation(rows) for _ in range(-(-q // c))])[:q])
    return rng.permutation(np.concatenate(parts))


def epoch_plan(src_len: np.ndarray, tgt_len: np.ndarray, batch_size: int, seed: int, epoch: int,
               chunk_batches: int = 128, shuffle: bool = True, lang_id: np.ndarray | None = None,
               lang_balance: float = 1.0) -> EpochPlan:
    """Length-bucketed batches, a pure function of (lengths, batch_size, seed, epoch[, languages]).

    shuffle: random permutation, chunks of `batch_size * chunk_batches` rows each sorted by
    (src length // 4, tgt length), batches shuffled. With `lang_id` and `lang_balance` < 1 the
    permutation is replaced by `balanced_rows`. Without shuffle: one global length sort (evaluation)."""
    n = int(src_len.size)
    # coarse input-length bins, target length within: ~0.89 of padded slots are real ids on the
    # CharsiuG2P train set at batch 512 (0.76 with a plain (src, tgt) sort)
    key = (src_len.astype(np.int64) // 4) * 1024 + tgt_len.astype(np.int64)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        balanced = lang_id is not None and lang_balance != 1.0 and n > 0
        perm = balanced_rows(lang_id, lang_balance, rng) if balanced else rng.permutation(n)
        chunk = batch_size * chunk_batches
        parts, starts = [], []
        for c0 in range(0, n, chunk):
            idx = perm[c0:c0 + chunk]
            parts.append(idx[np.argsort(key[idx], kind="stable")])
            starts.append(np.arange(c0, c0 + idx.size, batch_size))
        order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        chunk_end = np.minimum((starts // chunk + 1) * chunk, n)
        ends = np.minimum(starts + batch_size, chunk_end)
        b = rng.permutation(starts.size)
        starts, ends = starts[b], ends[b]
    else:
        order = np.argsort(key, kind="stable")
        starts = np.arange(0, n, batch_size)
        ends = np.minimum(starts + batch_size, n)
    if n:
        s_sorted, t_sorted = src_len[order].astype(np.int64), tgt_len[order].astype(np.int64)
        # batches are contiguous in `order`; reduceat needs ascending offsets
        asc = np.argsort(starts)
        src_w = np.empty(starts.size, np.int64)
        tgt_w = np.empty(starts.size, np.int64)
        src_w[asc] = np.maximum.reduceat(s_sorted, starts[asc])
        tgt_w[asc] = np.maximum.reduceat(t_sorted, starts[asc])
        cs = np.concatenate([[0], np.cumsum(s_sorted + t_sorted)])
        tokens = cs[ends] - cs[starts]
    else:
        src_w = tgt_w = tokens = np.zeros(0, np.int64)
    return EpochPlan(order=order.astype(np.int64), starts=starts.astype(np.int64), ends=ends.astype(np.int64),
                     src_w=src_w, tgt_w=tgt_w, tokens=tokens, padded=(ends - starts) * (src_w + tgt_w))


# ------------------------------------------------------------------------------------ schedule

def lr_at(step: int, base_lr: float, warmup: int, total: int, time_frac: float = 0.0,
          min_ratio: float = 0.0) -> float:
    """Linear warmup over `warmup` steps, then cosine decay to `min_ratio * base_lr` at the end of
    the planned steps, or at time_frac = 1 when that comes first (time-aware schedule)."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    span = max(1, total - warmup)
    progress = min(1.0, max((step - warmup) / span if step >= warmup else 0.0, time_frac))
    return base_lr * warm * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# --------------------------------------------------------------------------------------- train

def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def _batch(torch, src_dev, tgt_dev, order_dev, plan: EpochPlan, b: int):
    s, e = int(plan.starts[b]), int(plan.ends[b])
    ii = order_dev[s:e]
    inp = src_dev[ii, : int(plan.src_w[b])].long()
    lab = tgt_dev[ii, : int(plan.tgt_w[b])].long()
    mask = inp.ne(PAD).long()
    lab = lab.masked_fill(lab.eq(PAD), IGNORE)
    return inp, mask, lab


def _evaluate(torch, model, ds: PairSet, device, amp_dtype, batch_size: int, n_generate: int,
              seed: int, max_output_len: int) -> dict:
    """Token-weighted dev loss over every dev pair, and greedy exact match on a seeded sample."""
    model.eval()
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    src_dev = torch.from_numpy(ds.src).to(device)
    tgt_dev = torch.from_numpy(ds.tgt).to(device)
    plan = epoch_plan(ds.src_len, ds.tgt_len, batch_size, seed, 0, shuffle=False)
    order_dev = torch.from_numpy(plan.order).to(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    ntok = 0
    with torch.no_grad(), autocast:
        for b in range(len(plan)):
            inp, mask, lab = _batch(torch, src_dev, tgt_dev, order_dev, plan, b)
            n = int(ds.tgt_len[plan.order[plan.starts[b]:plan.ends[b]]].astype(np.int64).sum())
            out = model(input_ids=inp, attention_mask=mask, labels=lab, use_cache=False)
            loss_sum += out.loss.double() * n
            ntok += n
    res = {"pairs": len(ds), "loss": float(loss_sum.item() / max(ntok, 1)), "target_tokens": ntok}
    if n_generate > 0 and len(ds):
        rng = np.random.default_rng([seed, 7919])
        pick = np.sort(rng.choice(len(ds), size=min(n_generate, len(ds)), replace=False))
        pick = pick[np.argsort(ds.src_len[pick], kind="stable")]
        hyps: list[str] = []
        with torch.no_grad(), autocast:
            for c0 in range(0, pick.size, 256):
                rows = pick[c0:c0 + 256]
                w = int(ds.src_len[rows].max())
                inp = torch.from_numpy(ds.src[rows, :w].astype(np.int64)).to(device)
                gen = greedy_generate(model, inp, max_output_len)
                hyps.extend(decode(r) for r in gen[:, 1:].tolist())
        first = sum(h == ds.variants[i][0] for h, i in zip(hyps, pick))
        anyv = sum(h in ds.variants[i] for h, i in zip(hyps, pick))
        res.update(generated=int(pick.size), exact_match_first=first / pick.size,
                   exact_match_any=anyv / pick.size,
                   examples=[{"lang": ds.langs[ds.lang_id[i]], "word": ds.words[i].decode("utf-8", "replace"),
                              "ref": ds.variants[i][0], "hyp": h} for h, i in list(zip(hyps, pick))[:8]])
    model.train()
    return res


def _init_position_heads(torch, model, strength: float) -> None:
    """Start each self-attention head looking at one fixed offset (encoder -2..+2, decoder 0..-3).

    T5 knows positions only through this bias, and with Adam the content logits (q.k, no 1/sqrt(d)
    scaling) outgrow a small random bias within a few hundred steps. Trained that way, the first
    default's cross-attention stayed uniform (entropy 2.96 of 3.0 nats) and it spelled a bag of
    the input's characters ("ora" -> "aro"); on one language and 5 CPU minutes this init took
    dev loss from 1.45 to 0.25 (MODEL_CARD.md). The last head of each stack starts free (zero bias)."""
    from transformers.models.t5.modeling_t5 import T5Attention

    cfg = model.config
    for stack, offsets, bidirectional in ((model.encoder, (-2, -1, 0, 1, 2), True),
                                          (model.decoder, (0, -1, -2, -3), False)):
        att = stack.block[0].layer[0].SelfAttention
        bias = torch.zeros_like(att.relative_attention_bias.weight)  # [buckets, heads]
        for h, off in zip(range(cfg.num_heads - 1), offsets):
            b = T5Attention._relative_position_bucket(torch.tensor(off), bidirectional=bidirectional,
                                                      num_buckets=cfg.relative_attention_num_buckets,
                                                      max_distance=cfg.relative_attention_max_distance)
            bias[int(b), h] = strength
        with torch.no_grad():
            att.relative_attention_bias.weight.copy_(bias)


@dataclass
class TrainConfig:
    """Training's one set of defaults: the embedded default's first stage (MODEL_CARD.md)."""

    data: str = setting(help="directory of <lang>.tsv (or .tsv.gz) training files",
                        factory=lambda: str(charsiu_data("train")))
    out: str = setting("checkpoints/trained", help="checkpoint directory to write")
    arch: str = setting("tiny_3_1", help="archs.py name[,key=value...]")
    epochs: int = setting(1, help="planned epochs (the wall-clock budget may stop training first)")
    batch_size: int = setting(128, help="pairs per step")
    lr: float = setting(1e-3, help="peak learning rate (2e-3 diverged at batch 128)")
    warmup_steps: int = setting(300, help="linear warmup steps")
    max_minutes: float = setting(85.0, help="wall-clock bound on the whole run (load, train, save, dev eval)")
    seed: int = setting(0, help="seed of the init and the data order")
    init: str | None = setting(None, help="continue from this checkpoint directory (same arch)")
    dropout: float | None = setting(0.0, help="dropout rate (None: the arch's config)")
    device: str = setting("auto", help="auto | cpu | cuda | cuda:N")
    bf16: bool | None = setting(None, help="bf16 autocast (default: on CUDA only; worth it on CPUs with AMX)")
    limit_per_lang: int | None = setting(None, help="first N lines of each file")
    dev: str | None = setting(None, help="directory of <lang>.tsv dev files, evaluated at the end")
    max_input_bytes: int = setting(64, help="longest input in ids incl. the <lang>: prefix (and EOS)")
    max_output_len: int = setting(64, help="longest target in ids incl. EOS")
    input_eos: bool = setting(False, help="end inputs with EOS (CharsiuG2P does not; the embedded default was trained with it)")
    save_dtype: str = setting("float16", help="float16 | bfloat16 | float32")
    time_aware_schedule: bool = setting(True, help="decay the LR by max(step, wall-clock) progress, reaching ~0 by the deadline")
    weight_decay: float = setting(0.01, help="AdamW weight decay")
    grad_clip: float = setting(1.0, help="gradient norm clip (0: none)")
    log_every: int = setting(200, help="steps between log lines")
    dev_generate: int = setting(300, help="dev words decoded for greedy exact match (0: none)")
    reserve_seconds: float = setting(15.0, help="stop training this long before max_minutes, for saving and dev eval")
    bucket_chunk: int = setting(128, help="batches per length-sorted random chunk")
    embed_init_std: float | None = setting(None, help="std of the (tied) embedding init; default d_model**-0.5; <= 0 keeps HF's 1.0")
    lang_balance: float = setting(1.0, help="draw language l in proportion to n_l**this: 1 as the data, 0 every language alike")
    position_init: float = setting(4.0, help="initial relative-bias logit of each head's own offset (0: HF's random init)")

    def __post_init__(self) -> None:
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"save_dtype {self.save_dtype!r}: choose one of {SAVE_DTYPES}")
        if self.batch_size < 1 or self.epochs < 0 or self.log_every < 1:
            raise ConfigError("batch_size and log_every must be >= 1 and epochs >= 0")
        if not 0.0 <= self.lang_balance <= 1.0:
            raise ConfigError(f"lang_balance {self.lang_balance}: choose 0 (every language alike) .. 1 (as the data)")
        resolve_arch(self.arch)  # fail on a bad arch before the slow parts


@dataclass
class _Run:
    """What the training loop leaves behind."""

    step: int = 0
    epoch: int = 0
    b_in_epoch: int = 0
    skipped: list[int] = field(default_factory=list)  # steps whose update was dropped as non-finite
    tokens_seen: int = 0
    padded_seen: int = 0
    history: list[dict] = field(default_factory=list)
    lr: float = 0.0
    stop: str | None = None
    seconds: float = 0.0


def train(cfg: TrainConfig, argv: list[str] | None = None) -> dict:
    """Train, save to `cfg.out`, return the summary (also in `out/training_summary.json`)."""
    t0 = time.time()
    import torch
    import transformers

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else "cpu" if cfg.device == "auto" else cfg.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.manual_seed_all(cfg.seed)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # CPU bf16 is opt-in: 1.8x faster per step on AMX, slow on CPUs without native bf16
    amp_dtype = torch.bfloat16 if (cuda if cfg.bf16 is None else cfg.bf16) else None
    device_name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine() or "cpu")
    print(f"[train] device {device} ({device_name}), torch {torch.__version__}, transformers "
          f"{transformers.__version__}, amp {'bf16' if amp_dtype else 'off'}", flush=True)

    fmt = PromptFormat(input_eos=cfg.input_eos)
    ds, dev_ds, dev_skipped = load_data(cfg, fmt)
    t_load = time.time() - t0
    model = build_model(torch, transformers, cfg)
    run = fit(torch, model, ds, cfg, device, amp_dtype, deadline=t0 + cfg.max_minutes * 60.0)
    summary = _summary(cfg, ds, run, model, t0, t_load, str(device), device_name, amp_dtype, fmt, argv)
    out_dir = save(model, cfg, fmt, ds, summary)
    print(f"[train] saved {cfg.save_dtype} checkpoint to {out_dir} after {summary['seconds']:.0f}s", flush=True)
    if dev_ds is not None and len(dev_ds):
        summary["dev"] = evaluate_dev(torch, transformers, out_dir, dev_ds, dev_skipped, cfg, device, amp_dtype)
        summary["seconds"] = time.time() - t0
        _write_summary(out_dir, summary)
    return _jsonable(summary)


def load_data(cfg: TrainConfig, fmt: PromptFormat) -> tuple[PairSet, PairSet | None, list[str] | None]:
    """The training pairs, and the dev pairs of the same languages (with the dev languages left out)."""
    ds = load_pairs(cfg.data, cfg.max_input_bytes, cfg.max_output_len, cfg.limit_per_lang, fmt)
    counts = ds.dropped()
    if len(ds) == 0:
        raise InputError(f"no trainable pairs in {cfg.data} ({counts})")
    dev_ds = dev_skipped = None
    if cfg.dev:
        dev_ds = load_pairs(cfg.dev, cfg.max_input_bytes, cfg.max_output_len, None, fmt, keep_text=True,
                            only_langs=set(ds.langs))
        dev_skipped = sorted({p.name.split(".")[0] for p in Path(cfg.dev).glob("*.tsv*")} - set(dev_ds.langs))
    print(f"[train] {ds.files} files, {counts['lines']:,} lines -> {counts['kept']:,} pairs; dropped "
          f"{counts['dropped_input']:,} input > {cfg.max_input_bytes} ids, {counts['dropped_output']:,} target > "
          f"{cfg.max_output_len} ids, {counts['malformed']:,} malformed; mean ids in/out "
          f"{ds.src_len.mean():.1f}/{ds.tgt_len.mean():.1f}", flush=True)
    return ds, dev_ds, dev_skipped


def build_model(torch, transformers, cfg: TrainConfig):
    """A fresh T5 of `cfg.arch` with this project's init, or `cfg.init` to continue from."""
    torch.manual_seed(cfg.seed)  # init on CPU: the same weights whatever the device
    if cfg.init:
        model = transformers.T5ForConditionalGeneration.from_pretrained(cfg.init, dtype=torch.float32)
        if cfg.dropout is not None:
            model.config.dropout_rate = cfg.dropout
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = cfg.dropout
    else:
        config = transformers.T5Config(**resolve_arch(cfg.arch))
        config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = PAD, EOS, PAD
        if cfg.dropout is not None:
            config.dropout_rate = cfg.dropout
        model = transformers.T5ForConditionalGeneration(config)
        if cfg.position_init > 0:
            _init_position_heads(torch, model, cfg.position_init)
        # transformers 5 ties lm_head to `shared` and, for tie_word_embeddings=False archs, does not
        # scale the decoder output: with HF's std-1.0 embedding init the first logits have std
        # ~sqrt(d_model); a d_model**-0.5 std starts near ln(384)
        std = config.d_model ** -0.5 if cfg.embed_init_std is None else cfg.embed_init_std
        if std > 0:
            with torch.no_grad():
                model.shared.weight.normal_(0.0, std)
    gc = model.generation_config
    gc.decoder_start_token_id, gc.eos_token_id, gc.pad_token_id = PAD, EOS, PAD
    gc.max_length = cfg.max_output_len + 1  # start token + up to max_output_len ids
    return model


def _optimizer(torch, model, cfg: TrainConfig, cuda: bool):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "layer_norm" in name or "relative_attention_bias" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8, **({"fused": True} if cuda else {}))


def fit(torch, model, ds: PairSet, cfg: TrainConfig, device, amp_dtype, deadline: float) -> _Run:
    """The training loop: until the planned epochs end, the deadline nears, SIGTERM or Ctrl-C.
    A batch whose loss or gradient is not finite is skipped, not learned (one such update once
    made every weight NaN), and 50 in a row stop the run."""
    cuda = device.type == "cuda"
    model.to(device).train()
    opt = _optimizer(torch, model, cfg, cuda)
    params = list(model.parameters())
    spe = steps_per_epoch(len(ds), cfg.batch_size, cfg.bucket_chunk)
    total = spe * cfg.epochs
    print(f"[train] arch {cfg.arch}: {sum(p.numel() for p in params) / 1e6:.2f}M params; batch {cfg.batch_size}, "
          f"{spe:,} steps/epoch, {cfg.epochs} epochs = {total:,} steps; lr {cfg.lr:g}, warmup {cfg.warmup_steps}, "
          f"language share ~ n**{cfg.lang_balance:g}, {'time-aware ' if cfg.time_aware_schedule else ''}cosine; "
          f"stop by {cfg.max_minutes:g} min", flush=True)
    src_dev, tgt_dev = torch.from_numpy(ds.src).to(device), torch.from_numpy(ds.tgt).to(device)
    run = _Run()
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum, frame):
            run.stop = "signal"
        old_handler = signal.signal(signal.SIGTERM, _on_term)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    train_end, t_start = deadline - cfg.reserve_seconds, time.time()
    win_loss = torch.zeros((), dtype=torch.float32, device=device)
    win_steps = win_tokens = 0
    win_t = time.time()
    try:
        while run.epoch < cfg.epochs and run.stop is None:
            plan = epoch_plan(ds.src_len, ds.tgt_len, cfg.batch_size, cfg.seed, run.epoch, cfg.bucket_chunk,
                              lang_id=ds.lang_id, lang_balance=cfg.lang_balance)
            order = torch.from_numpy(plan.order)
            order_dev = order.pin_memory().to(device, non_blocking=True) if cuda else order
            for b in range(len(plan)):
                now = time.time()
                if now >= train_end:
                    run.stop = "time"
                if run.stop is not None:
                    break
                tf = (now - t_start) / max(train_end - t_start, 1e-9) if cfg.time_aware_schedule else 0.0
                run.lr = lr_at(run.step, cfg.lr, cfg.warmup_steps, total, tf)
                for g in opt.param_groups:
                    g["lr"] = run.lr
                inp, mask, lab = _batch(torch, src_dev, tgt_dev, order_dev, plan, b)
                with autocast:
                    loss = model(input_ids=inp, attention_mask=mask, labels=lab, use_cache=False).loss
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                run.step += 1
                run.b_in_epoch = b + 1
                if not bool(torch.isfinite(norm) & torch.isfinite(loss.detach())):  # one sync per step
                    opt.zero_grad(set_to_none=True)
                    run.skipped.append(run.step - 1)
                    print(f"[train] step {run.step}: non-finite loss or gradient (loss {loss.item():.4g}); "
                          f"update skipped ({len(run.skipped)} so far)", flush=True)
                    if len(run.skipped) >= 50 and run.skipped[-50] == run.step - 50:
                        run.stop = "non-finite"
                        break
                    continue
                opt.step()
                opt.zero_grad(set_to_none=True)
                win_loss += loss.detach().float()
                win_steps += 1
                win_tokens += int(plan.tokens[b])
                run.tokens_seen += int(plan.tokens[b])
                run.padded_seen += int(plan.padded[b])
                if run.step % cfg.log_every == 0 or run.step == 1:
                    lv, t = win_loss.item() / win_steps, time.time()  # .item() syncs
                    run.history.append({"step": run.step, "loss": lv, "lr": run.lr, "elapsed": t - t_start})
                    print(f"step {run.step:>6}/{total} ep {run.epoch + run.b_in_epoch / spe:5.2f} loss {lv:.4f} "
                          f"lr {run.lr:.2e} tok/s {win_tokens / max(t - win_t, 1e-9):,.0f} "
                          f"fill {run.tokens_seen / max(run.padded_seen, 1):.2f} elapsed {t - t_start:.0f}s", flush=True)
                    win_loss.zero_()
                    win_steps = win_tokens = 0
                    win_t = t
            else:
                run.epoch += 1
                run.b_in_epoch = 0
    except KeyboardInterrupt:
        run.stop = "interrupted"
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    if win_steps:
        run.history.append({"step": run.step, "loss": win_loss.item() / win_steps, "lr": run.lr,
                            "elapsed": time.time() - t_start})
    if cuda:
        torch.cuda.synchronize()
    run.seconds = time.time() - t_start
    if run.stop:
        print(f"[train] STOPPED EARLY ({run.stop}) after {run.step:,} of {total:,} planned steps "
              f"({run.step / max(spe, 1):.2f} epochs); saving what we have", flush=True)
    return run


def _summary(cfg, ds, run: _Run, model, t0, t_load, device, device_name, amp_dtype, fmt, argv) -> dict:
    import torch
    import transformers

    spe = steps_per_epoch(len(ds), cfg.batch_size, cfg.bucket_chunk)
    counts = ds.dropped()
    return {
        "steps": run.step, "planned_steps": spe * cfg.epochs, "steps_per_epoch": spe, "epochs_planned": cfg.epochs,
        "epochs_done": run.step / max(spe, 1), "epochs_completed": run.epoch,
        "stopped_early": run.stop is not None, "stop_reason": run.stop,
        "seconds": time.time() - t0, "load_seconds": t_load, "train_seconds": run.seconds,
        "skipped_steps": run.skipped, "updates": run.step - len(run.skipped),  # steps count every batch consumed
        "first_loss": run.history[0]["loss"] if run.history else None,
        "final_loss": run.history[-1]["loss"] if run.history else None, "final_lr": run.lr,
        "loss_history": run.history,
        "tokens_seen": run.tokens_seen, "tokens_per_second": run.tokens_seen / max(run.seconds, 1e-9),
        "padding_fill": run.tokens_seen / max(run.padded_seen, 1),
        "pairs": counts, "dropped_pairs": counts["dropped_total"],
        "device": device, "device_name": device_name, "amp": "bf16" if amp_dtype else None,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "numpy_version": np.__version__, "python_version": platform.python_version(),
        "params": sum(p.numel() for p in model.parameters()), "arch": cfg.arch,
        "arch_config": resolve_arch(cfg.arch), "save_dtype": cfg.save_dtype, "prompt_format": fmt.to_dict(),
        "options": {**dataclasses.asdict(cfg), "optimizer": "AdamW(betas=(0.9, 0.98), eps=1e-8)"},
        "argv": list(argv) if argv is not None else list(getattr(sys, "orig_argv", sys.argv)),
        "data_files": ds.files, "pairs_per_language": ds.per_lang, "dev": None,
    }


def save(model, cfg: TrainConfig, fmt: PromptFormat, ds: PairSet, summary: dict) -> Path:
    """The checkpoint in the untied form every loader reads alike, its metadata and summary
    (written before the dev evaluation, so a crash there still leaves a complete checkpoint)."""
    out_dir = Path(cfg.out)
    save_untied(model, out_dir, cfg.save_dtype)
    model.generation_config.save_pretrained(out_dir)
    write_metadata(out_dir, fmt, ds.langs, ds.input_rules)
    _write_summary(out_dir, summary)
    return out_dir


def _write_summary(out_dir: Path, summary: dict) -> None:
    (out_dir / "training_summary.json").write_text(json.dumps(_jsonable(summary), indent=2, ensure_ascii=False))


def evaluate_dev(torch, transformers, out_dir: Path, dev_ds: PairSet, dev_skipped, cfg: TrainConfig, device,
                 amp_dtype) -> dict:
    """Dev loss and greedy exact match of what was saved (rounded to save_dtype), reloaded the
    way users load it; fp32 on CPU, so CPU runs compare."""
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out_dir).to(device, dtype=torch.float32)
    d = _evaluate(torch, reloaded, dev_ds, device, amp_dtype if device.type == "cuda" else None,
                  max(cfg.batch_size, 256), cfg.dev_generate, cfg.seed, cfg.max_output_len)
    d.update(languages=len(dev_ds.langs), skipped_languages_not_in_train=dev_skipped)
    msg = f"[train] dev ({d['pairs']:,} pairs, {d['languages']} languages): loss {d['loss']:.4f}"
    if "generated" in d:
        msg += (f"; greedy exact match on {d['generated']} words: {d['exact_match_first']:.1%} first variant, "
                f"{d['exact_match_any']:.1%} any variant")
    print(msg, flush=True)
    return d

