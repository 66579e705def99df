"""Train a ByT5-vocabulary T5 (CharsiuG2P style) on `<lang>.tsv` word/pronunciation files.

    python -m g2p_batch.train --data DIR --out DIR [--arch tiny_3_1] [--epochs 4] ...

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

Checkpoint: `checkpoint.save_untied(out)` in `--save-dtype` (an explicit `lm_head.weight`, read
alike by transformers 4 and 5 and by the TVM loader), `generation_config.json` and
`training_summary.json`.

torch / transformers are imported inside `train()`, so `--help` and the data helpers are cheap.
"""

from __future__ import annotations

import argparse
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

from .archs import resolve_arch
from .checkpoint import SAVE_DTYPES, save_untied, write_metadata
from .tokenizer import EOS, OFFSET, PAD, PromptFormat, decode, encode, encode_text

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
        raise FileNotFoundError(f"no <lang>.tsv or <lang>.tsv.gz files in {root}")
    if only_langs is not None:
        found = [(lang, f) for lang, f in found if lang in only_langs]
        if not found:
            raise FileNotFoundError(f"no files in {root} for the languages {sorted(only_langs)[:10]}...")
    found.sort()
    dupes = sorted({lang for lang, _ in found if sum(1 for other, _ in found if other == lang) > 1})
    if dupes:
        raise ValueError(f"{root} holds both .tsv and .tsv.gz for {dupes}; keep one of each")
    langs = [lang for lang, _ in found]
    files = [f for _, f in found]
    srcs, tgts, lens_s, lens_t, ids = [], [], [], [], []
    words_all: list[bytes] = []
    variants_all: list[list[str]] = []
    per_lang: dict[str, dict] = {}
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
                   per_lang=per_lang, files=len(files),
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
                gen = model.generate(input_ids=inp, attention_mask=inp.ne(PAD).long(),
                                     max_length=max_output_len + 1, do_sample=False, num_beams=1)
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


def train(data: str, out: str, arch: str = "tiny_3_1", epochs: int = 4, batch_size: int = 512,
          lr: float = 1e-3, warmup_steps: int = 500, max_minutes: float = 9.0, seed: int = 0,
          device: str = "auto", bf16: bool | None = None, limit_per_lang: int | None = None,
          dev: str | None = None, max_input_bytes: int = 64, max_output_len: int = 64,
          save_dtype: str = "float16", time_aware_schedule: bool = False, weight_decay: float = 0.01,
          grad_clip: float = 1.0, log_every: int = 200, dev_generate: int = 300,
          reserve_seconds: float = 15.0, bucket_chunk: int = 128, embed_init_std: float | None = None,
          init: str | None = None, dropout: float | None = None, position_init: float = 4.0,
          lang_balance: float = 1.0, input_eos: bool = False, argv: list[str] | None = None) -> dict:
    """Train, save to `out`, return the summary (also written to `out/training_summary.json`)."""
    t0 = time.time()
    deadline = t0 + max_minutes * 60.0
    if save_dtype not in SAVE_DTYPES:
        raise ValueError(f"save_dtype {save_dtype!r}: choose one of {SAVE_DTYPES}")
    if batch_size < 1 or epochs < 0 or log_every < 1:
        raise ValueError("batch_size and log_every must be >= 1 and epochs >= 0")
    if not 0.0 <= lang_balance <= 1.0:
        raise ValueError(f"lang_balance {lang_balance}: choose 0 (every language alike) .. 1 (as the data)")
    arch_cfg = resolve_arch(arch)  # fail on a bad arch before the slow parts

    import torch
    import transformers

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev_t = torch.device(device)
    cuda = dev_t.type == "cuda"
    if cuda:
        torch.cuda.manual_seed_all(seed)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # CPU bf16 is opt-in: it is 1.8x faster per step on AMX (MODEL_CARD.md) but slow without native
    # bf16, and the CPU stages before it ran fp32, so their commands stay reproducible
    amp_dtype = torch.bfloat16 if (cuda if bf16 is None else bf16) else None
    device_name = torch.cuda.get_device_name(dev_t) if cuda else (platform.processor() or platform.machine() or "cpu")
    print(f"[train] device {device} ({device_name}), torch {torch.__version__}, transformers "
          f"{transformers.__version__}, amp {'bf16' if amp_dtype else 'off'}", flush=True)

    fmt = PromptFormat(input_eos=input_eos)
    ds = load_pairs(data, max_input_bytes, max_output_len, limit_per_lang, fmt)
    counts = ds.dropped()
    if len(ds) == 0:
        raise ValueError(f"no trainable pairs in {data} ({counts})")
    dev_ds = dev_skipped = None
    if dev:  # only languages the model trains on
        dev_ds = load_pairs(dev, max_input_bytes, max_output_len, None, fmt, keep_text=True,
                            only_langs=set(ds.langs))
        dev_skipped = sorted({p.name.split(".")[0] for p in Path(dev).glob("*.tsv*")} - set(dev_ds.langs))
    t_load = time.time() - t0
    print(f"[train] {ds.files} files, {counts['lines']:,} lines -> {counts['kept']:,} pairs; dropped "
          f"{counts['dropped_input']:,} input > {max_input_bytes} ids, {counts['dropped_output']:,} target > "
          f"{max_output_len} ids, {counts['malformed']:,} malformed; mean ids in/out "
          f"{ds.src_len.mean():.1f}/{ds.tgt_len.mean():.1f}; loaded in {t_load:.1f}s", flush=True)

    torch.manual_seed(seed)  # init on CPU: the same weights whatever the device
    if init:  # continue from a saved checkpoint (a second training session): same arch required
        model = transformers.T5ForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
        if dropout is not None:
            model.config.dropout_rate = dropout
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = dropout
        emb_std = 0.0  # the trained embeddings and position bias stay as they are
    else:
        config = transformers.T5Config(**arch_cfg)
        config.decoder_start_token_id, config.eos_token_id, config.pad_token_id = PAD, EOS, PAD
        if dropout is not None:
            config.dropout_rate = dropout
        model = transformers.T5ForConditionalGeneration(config)
        if position_init > 0:
            _init_position_heads(torch, model, position_init)
        # transformers 5 ties lm_head to `shared` and, for tie_word_embeddings=False archs, does not
        # scale the decoder output: with HF's std-1.0 embedding init the first logits have std
        # ~sqrt(d_model) (initial loss ~170 for d_model 256). A d_model**-0.5 embedding std starts
        # at ~ln(384) and trained ~2.4x lower loss after 150 steps in a CPU check.
        emb_std = config.d_model ** -0.5 if embed_init_std is None else embed_init_std
        if emb_std > 0:
            with torch.no_grad():
                model.shared.weight.normal_(0.0, emb_std)
    gc = model.generation_config
    gc.decoder_start_token_id, gc.eos_token_id, gc.pad_token_id = PAD, EOS, PAD
    gc.max_length = max_output_len + 1  # start token + up to max_output_len ids
    n_params = sum(p.numel() for p in model.parameters())
    model.to(dev_t).train()

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "layer_norm" in name or "relative_attention_bias" in name else decay).append(p)
    opt_kw = {"fused": True} if cuda else {}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-8, **opt_kw)
    params = [p for p in model.parameters()]

    spe = steps_per_epoch(len(ds), batch_size, bucket_chunk)
    total = spe * epochs
    print(f"[train] arch {arch}: {n_params / 1e6:.2f}M params; batch {batch_size}, {spe:,} steps/epoch, "
          f"{epochs} epochs = {total:,} steps; lr {lr:g}, warmup {warmup_steps}, language share "
          f"~ n**{lang_balance:g}, "
          f"{'time-aware ' if time_aware_schedule else ''}cosine; stop by {max_minutes:g} min", flush=True)

    src_dev = torch.from_numpy(ds.src).to(dev_t)
    tgt_dev = torch.from_numpy(ds.tgt).to(dev_t)

    stop = {"reason": None}
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum, frame):
            stop["reason"] = "signal"
        old_handler = signal.signal(signal.SIGTERM, _on_term)

    autocast = torch.autocast(dev_t.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    train_end = deadline - reserve_seconds
    t_train0 = time.time()
    step, epoch, b_in_epoch = 0, 0, 0
    skipped: list[int] = []  # steps whose update was dropped as non-finite
    max_skips = 50
    tokens_seen = padded_seen = 0
    win_loss = torch.zeros((), dtype=torch.float32, device=dev_t)
    win_steps = win_tokens = 0
    win_t = time.time()
    history: list[dict] = []
    cur_lr = 0.0
    try:
        while epoch < epochs and stop["reason"] is None:
            plan = epoch_plan(ds.src_len, ds.tgt_len, batch_size, seed, epoch, bucket_chunk,
                              lang_id=ds.lang_id, lang_balance=lang_balance)
            order_t = torch.from_numpy(plan.order)
            order_dev = order_t.pin_memory().to(dev_t, non_blocking=True) if cuda else order_t
            for b in range(len(plan)):
                now = time.time()
                if now >= train_end:
                    stop["reason"] = "time"
                if stop["reason"] is not None:
                    break
                tf = (now - t_train0) / max(train_end - t_train0, 1e-9) if time_aware_schedule else 0.0
                cur_lr = lr_at(step, lr, warmup_steps, total, tf)
                for g in opt.param_groups:
                    g["lr"] = cur_lr
                inp, mask, lab = _batch(torch, src_dev, tgt_dev, order_dev, plan, b)
                with autocast:
                    loss = model(input_ids=inp, attention_mask=mask, labels=lab, use_cache=False).loss
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip and grad_clip > 0 else math.inf)
                if not bool(torch.isfinite(norm) & torch.isfinite(loss.detach())):  # one sync per step
                    # one bad batch must not turn every weight into NaN (it did on an H200, bf16):
                    # skip the update, keep the weights, and give up after a run of them
                    opt.zero_grad(set_to_none=True)
                    skipped.append(step)
                    print(f"[train] step {step + 1}: non-finite loss or gradient (loss {loss.item():.4g}); "
                          f"update skipped ({len(skipped)} so far)", flush=True)
                    if len(skipped) >= max_skips and skipped[-max_skips] == step - max_skips + 1:
                        stop["reason"] = "non-finite"
                        break
                    step += 1
                    b_in_epoch = b + 1
                    continue
                opt.step()
                opt.zero_grad(set_to_none=True)
                win_loss += loss.detach().float()
                step += 1
                b_in_epoch = b + 1
                win_steps += 1
                win_tokens += int(plan.tokens[b])
                tokens_seen += int(plan.tokens[b])
                padded_seen += int(plan.padded[b])
                if step % log_every == 0 or step == 1:
                    lv = win_loss.item() / win_steps  # syncs
                    t = time.time()
                    history.append({"step": step, "loss": lv, "lr": cur_lr, "elapsed": t - t0})
                    print(f"step {step:>6}/{total} ep {epoch + b_in_epoch / spe:5.2f} loss {lv:.4f} "
                          f"lr {cur_lr:.2e} tok/s {win_tokens / max(t - win_t, 1e-9):,.0f} "
                          f"fill {tokens_seen / max(padded_seen, 1):.2f} elapsed {t - t0:.0f}s", flush=True)
                    win_loss.zero_()
                    win_steps = win_tokens = 0
                    win_t = t
            else:
                epoch += 1
                b_in_epoch = 0
    except KeyboardInterrupt:
        stop["reason"] = "interrupted"
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    if win_steps:
        lv = win_loss.item() / win_steps
        history.append({"step": step, "loss": lv, "lr": cur_lr, "elapsed": time.time() - t0})
    if cuda:
        torch.cuda.synchronize()
    t_train = time.time() - t_train0
    if stop["reason"]:
        print(f"[train] STOPPED EARLY ({stop['reason']}) after {step:,} of {total:,} planned steps "
              f"({step / max(spe, 1):.2f} epochs); saving what we have", flush=True)

    # --- save in the untied form every loader reads alike (save_untied converts a CPU copy)
    out_dir = Path(out)
    save_untied(model, out_dir, save_dtype)
    gc.save_pretrained(out_dir)
    write_metadata(out_dir, fmt, ds.langs)
    summary = {
        "steps": step, "planned_steps": total, "steps_per_epoch": spe, "epochs_planned": epochs,
        "epochs_done": step / max(spe, 1), "epochs_completed": epoch,
        "stopped_early": stop["reason"] is not None, "stop_reason": stop["reason"],
        "seconds": time.time() - t0, "load_seconds": t_load, "train_seconds": t_train,
        "skipped_steps": skipped, "updates": step - len(skipped),  # steps count every batch consumed
        "first_loss": history[0]["loss"] if history else None,
        "final_loss": history[-1]["loss"] if history else None, "final_lr": cur_lr,
        "loss_history": history,
        "tokens_seen": tokens_seen, "tokens_per_second": tokens_seen / max(t_train, 1e-9),
        "padding_fill": tokens_seen / max(padded_seen, 1),
        "pairs": counts, "dropped_pairs": counts["dropped_total"],
        "device": device, "device_name": device_name, "amp": "bf16" if amp_dtype else None,
        "torch_version": torch.__version__, "transformers_version": transformers.__version__,
        "numpy_version": np.__version__, "python_version": platform.python_version(),
        "params": n_params, "arch": arch, "arch_config": arch_cfg, "save_dtype": save_dtype,
        "prompt_format": fmt.to_dict(),
        "options": dict(data=str(data), out=str(out), arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                        warmup_steps=warmup_steps, max_minutes=max_minutes, seed=seed, device=device, bf16=bf16,
                        limit_per_lang=limit_per_lang, dev=dev, max_input_bytes=max_input_bytes,
                        max_output_len=max_output_len, save_dtype=save_dtype,
                        time_aware_schedule=time_aware_schedule, weight_decay=weight_decay,
                        grad_clip=grad_clip, log_every=log_every, dev_generate=dev_generate,
                        reserve_seconds=reserve_seconds, bucket_chunk=bucket_chunk,
                        embed_init_std=emb_std, position_init=position_init, init=init,
                        dropout=dropout, lang_balance=lang_balance, input_eos=input_eos,
                        optimizer="AdamW(betas=(0.9, 0.98), eps=1e-8)"),
        "argv": list(argv) if argv is not None else list(getattr(sys, "orig_argv", sys.argv)),
        "data_files": ds.files,
        "pairs_per_language": ds.per_lang,
        "dev": None,
    }

    def write_summary():
        (out_dir / "training_summary.json").write_text(json.dumps(_jsonable(summary), indent=2, ensure_ascii=False))

    write_summary()  # before dev eval, so a crash there still leaves a complete checkpoint
    print(f"[train] saved {save_dtype} checkpoint to {out_dir} after {summary['seconds']:.0f}s", flush=True)

    if dev_ds is not None and len(dev_ds):
        # evaluate what was saved (rounded to save_dtype), reloaded the way users will load it
        reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out_dir).to(dev_t, dtype=torch.float32)
        # fp32 on CPU: the dev loss is compared across CPU stages, which ran fp32
        summary["dev"] = _evaluate(torch, reloaded, dev_ds, dev_t, amp_dtype if cuda else None, max(batch_size, 256),
                                   dev_generate, seed, max_output_len)
        summary["dev"]["languages"] = len(dev_ds.langs)
        summary["dev"]["skipped_languages_not_in_train"] = dev_skipped
        d = summary["dev"]
        msg = f"[train] dev ({d['pairs']:,} pairs, {d['languages']} languages): loss {d['loss']:.4f}"
        if "generated" in d:
            msg += (f"; greedy exact match on {d['generated']} words: {d['exact_match_first']:.1%} first variant, "
                    f"{d['exact_match_any']:.1%} any variant")
        print(msg, flush=True)
        summary["seconds"] = time.time() - t0
        write_summary()
    return _jsonable(summary)


# ----------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m g2p_batch.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="directory of <lang>.tsv (or .tsv.gz) training files")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--arch", default="tiny_3_1", help="archs.py name[,key=value...]")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3, help="2e-3 diverged at batch 128 (MODEL_CARD.md)")
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--max-minutes", type=float, default=9.0,
                   help="wall-clock bound on the whole run (load+train+save+dev eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="continue training from this checkpoint directory")
    p.add_argument("--dropout", type=float, default=None, help="override the config's dropout_rate")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on CUDA only; pass it on a CPU with AMX or AVX512-BF16)")
    p.add_argument("--limit-per-lang", type=int, default=None, help="first N lines of each file")
    p.add_argument("--dev", default=None, help="directory of <lang>.tsv dev files, evaluated at the end")
    p.add_argument("--max-input-bytes", type=int, default=64, help="max input ids incl. <lang>: prefix (and EOS)")
    p.add_argument("--input-eos", action=argparse.BooleanOptionalAction, default=False,
                   help="end inputs with EOS (CharsiuG2P does not; the embedded default was trained with it)")
    p.add_argument("--max-output-len", type=int, default=64, help="max target ids incl. EOS")
    p.add_argument("--save-dtype", default="float16", choices=SAVE_DTYPES)
    p.add_argument("--time-aware-schedule", action=argparse.BooleanOptionalAction, default=False,
                   help="decay LR by max(step, wall-clock) progress so it reaches ~0 by the deadline")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0, help="0 disables")
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--dev-generate", type=int, default=300, help="dev words for greedy exact match (0: none)")
    p.add_argument("--reserve-seconds", type=float, default=15.0,
                   help="stop training this long before --max-minutes, for saving and dev eval")
    p.add_argument("--bucket-chunk", type=int, default=128, help="batches per length-sorted random chunk")
    p.add_argument("--embed-init-std", type=float, default=None,
                   help="std of the (tied) embedding init; default d_model**-0.5; <= 0 keeps HF's 1.0")
    p.add_argument("--lang-balance", type=float, default=1.0,
                   help="language l is drawn in proportion to n_l**this: 1 as the data, 0 every language alike")
    p.add_argument("--position-init", type=float, default=4.0,
                   help="initial relative-bias logit of each head's own offset (0: HF's random init)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = train(**vars(args))
    brief = {k: summary[k] for k in ("steps", "planned_steps", "epochs_done", "stopped_early", "seconds",
                                     "final_loss", "dropped_pairs", "device_name", "torch_version")}
    if summary.get("dev"):
        brief["dev"] = {k: v for k, v in summary["dev"].items() if k != "examples"}
    print(json.dumps(brief), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
