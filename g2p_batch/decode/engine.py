"""The contract between batching (pure Python) and whatever decodes (the TVM runtime, or a
fake in tests): the shapes an engine accepts, what it returns, and how a job names an engine
so the driver can prepare it once and each actor build it (both by import path, so a new
runtime plugs in without touching the job)."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import ConfigError
from .tokenizer import EOS, PAD, PromptFormat

__all__ = [
    "CALL_COST_ROWS", "DEFAULT_BATCH_SIZES", "Bucket", "DecodeOutput", "Engine", "EngineSpec",
    "PreparedEngine", "beam_buckets", "beam_output", "build_engine", "default_input_lengths", "fit_bucket", "greedy_output",
    "import_object",
    "repeating_rows",
]

DEFAULT_BATCH_SIZES = (1, 8, 32, 64)  # compiled unless told: single words up to the bench's 64

# What one more engine call costs, in padding rows: the price the planner weighs padding against
# (batching.choose_batch_sizes). A padding row costs only decoder steps (the packed encoder
# skips it), so both are in units of one row's decoder time: a call's time fits a + b * rows,
# and this is a / b (tiny_8 on 2 CPU threads: 8.9 / 0.86 ms; on an H200: 14.7 / 0.011 ms).
CALL_COST_ROWS = {"cpu": 10.0, "cuda": 1300.0}


@dataclass(frozen=True, order=True)
class Bucket:
    """One compiled shape: `batch` rows of `input_len` input ids (prefix, and EOS if fed)."""

    batch: int
    input_len: int

    @property
    def name(self) -> str:
        return f"b{self.batch}_in{self.input_len}"


def default_input_lengths(max_input_bytes: int) -> list[int]:
    """16, 24, 32, 48, 64, 96, ... up to the limit (always included): steps of at most 1.5x, so
    a padded encoder batch does at most ~1.5x the work of its longest row."""
    out, n = [], 16
    while n < max_input_bytes:
        out.append(n)
        n = n * 3 // 2 if (n & (n - 1)) == 0 else n * 4 // 3
    return out + [max_input_bytes]


def fit_bucket(buckets, rows: int, length: int) -> Bucket:
    """The smallest compiled shape that holds `rows` rows of up to `length` ids: the fewest
    rows first (padding rows cost decoder steps), then the shortest input."""
    fits = [b for b in buckets if b.batch >= rows and b.input_len >= length]
    if not fits:
        raise ConfigError(f"no compiled shape holds {rows} rows of {length} ids; compiled: "
                          f"{sorted(b.name for b in buckets)}")
    return min(fits)


def beam_buckets(buckets, num_beams: int) -> list[Bucket]:
    """Compiled shapes as words of `num_beams` rows each (a b64 bucket holds 16 words of 4
    beams); with 1 beam, the shapes themselves."""
    out = sorted(Bucket(b.batch // num_beams, b.input_len) for b in buckets if b.batch % num_beams == 0)
    if not out:
        raise ConfigError(f"num_beams={num_beams} fits no compiled batch size "
                          f"({sorted({b.batch for b in buckets})}): compile a batch size that is a multiple of it")
    return out


@dataclass
class DecodeOutput:
    tokens: np.ndarray     # [B, T] int32 generated ids (no start token); PAD after EOS
    lengths: np.ndarray    # [B] int32 tokens generated incl. EOS (T when truncated)
    scores: np.ndarray     # [B] float32 mean log-probability of the greedy tokens
    truncated: np.ndarray  # [B] bool: stopped without emitting EOS (at max_output_len or a loop)
    steps: int = 0         # decoder steps actually run (early exit when all rows ended)
    looped: np.ndarray | None = None  # [B] bool: stopped early because its output repeats
    candidates: list | None = None    # beam search: per row, its n-best `beam.Candidate`s, best first


# A row whose last ids repeat one short pattern is the model looping (`ˈɾɾɾˈɾɾɾ...`): it is
# stopped there rather than run to max_output_len. A pattern of p ids counts once the row's last
# max(LOOP_MIN_IDS, LOOP_MIN_REPEATS * p) ids each equal the id p before: 33 copies of one byte,
# 17 of a two-byte IPA letter, 7 of an 8-byte syllable. A model can still break out of such a
# loop and end the word (1 row in 50,000 of the default's test split, itself wrong either way);
# `stop_loops=False` decodes exactly as transformers does. PERF.md has the measurements.
LOOP_MAX_PERIOD = 12
LOOP_MIN_IDS = 32
LOOP_MIN_REPEATS = 6


def repeating_rows(history: np.ndarray) -> np.ndarray:
    """[B, n] ids generated so far -> [B] bool: the row's tail repeats a pattern (see above)."""
    B, n = history.shape
    out = np.zeros(B, bool)
    for p in range(1, LOOP_MAX_PERIOD + 1):
        span = max(LOOP_MIN_IDS, LOOP_MIN_REPEATS * p)
        if span + p > n:
            break
        out |= (history[:, n - span:] == history[:, n - span - p:n - p]).all(axis=1)
    return out


def greedy_output(raw_ids: np.ndarray, raw_logp: np.ndarray, filler: np.ndarray, max_len: int,
                  stop_at: np.ndarray | None = None) -> DecodeOutput:
    """Rows' results from the decoder's raw per-step argmax ids and log-probabilities [B, steps],
    as generate() reports them: tokens up to and including the first EOS, PAD after it; the
    length counts the EOS; the score is the mean log-probability of those tokens, summed in
    step order. `filler` rows (padding a partly used batch) produce nothing; a row with
    `stop_at[r] <= steps` was stopped as a loop and keeps its first `stop_at[r]` tokens.

    The runtime feeds each row its own argmax even after its EOS (generate feeds pad): rows never
    interact, so that changes no kept token, and the host need not touch the ids between steps."""
    B, steps = raw_ids.shape
    stop_at = np.full(B, steps + 1) if stop_at is None else stop_at
    in_range = np.arange(steps)[None, :] < stop_at[:, None]
    ended = np.cumsum((raw_ids == EOS) & in_range, axis=1) > 0  # an EOS at or before each step
    before = np.concatenate([np.zeros((B, 1), bool), ended[:, :-1]], axis=1)
    live = ~filler[:, None] & ~before & in_range
    tokens = np.full((B, max_len), PAD, np.int32)
    tokens[:, :steps] = np.where(live, raw_ids, PAD)
    lengths = live.sum(axis=1).astype(np.int32)
    logp_sum = np.cumsum(np.where(live, raw_logp.astype(np.float64), 0.0), axis=1)[:, -1]
    scores = np.where(lengths > 0, logp_sum / np.maximum(lengths, 1), 0.0).astype(np.float32)
    truncated = ~filler & ~ended[:, -1]
    looped = truncated & (stop_at <= steps)
    return DecodeOutput(tokens=tokens, lengths=lengths, scores=scores, truncated=truncated,
                        steps=steps, looped=looped)


def beam_output(candidates: list, max_len: int, steps: int) -> DecodeOutput:
    """The rows' best candidates as a DecodeOutput (score: the candidate's length-normalised
    log-probability, which at length_penalty 1 is greedy's mean), all of them in `candidates`."""
    B = len(candidates)
    tokens = np.full((B, max_len), PAD, np.int32)
    lengths = np.zeros(B, np.int32)
    scores = np.zeros(B, np.float32)
    truncated = np.zeros(B, bool)
    for r, row in enumerate(candidates):
        if row:
            best = row[0]
            tokens[r, :len(best.tokens)] = best.tokens
            lengths[r], scores[r], truncated[r] = len(best.tokens), best.score, best.truncated
    return DecodeOutput(tokens=tokens, lengths=lengths, scores=scores, truncated=truncated, steps=steps,
                        looped=np.zeros(B, bool), candidates=candidates)


class Engine(Protocol):
    """A loaded model: `decode` takes input ids shaped exactly like one of `buckets`."""

    buckets: list[Bucket]
    max_output_len: int
    call_cost_rows: float  # CALL_COST_ROWS for its device

    def decode(self, input_ids: np.ndarray, *, stop_loops: bool = True) -> DecodeOutput: ...


@dataclass(frozen=True)
class EngineSpec:
    """What an actor needs to build its engine. Picklable; `blob` (the packed artifact set)
    travels to actors as an object-store reference, not inside the spec."""

    target: str                                    # "llvm" | "cuda"
    loader: str = "g2p_batch.runtime.loader:load_tvm_engine"  # "module:function", (spec) -> Engine
    blob: Any = None                               # packed artifacts; the loader knows the format
    threads: int | None = None
    options: dict = field(default_factory=dict)    # loader-specific settings

    def with_(self, **changes) -> "EngineSpec":
        return dataclasses.replace(self, **changes)


@dataclass
class PreparedEngine:
    """A preparer's answer, on the driver: the spec to ship and what the job must know."""

    spec: EngineSpec
    languages: list[str] | None      # the model's codes, when its artifacts list them
    checkpoint_id: str
    artifacts_hash: str | None       # sha256 of the artifact manifest: which compile ran
    prompt: PromptFormat = field(default_factory=PromptFormat)  # how words become input ids
    trained_languages: list[str] | None = None  # None: unknown (every known language trusted)
    input_rules: dict | None = None  # per language: lowercase, hyphens, spaces (decode.rules)


def build_engine(spec: EngineSpec) -> Engine:
    """Called once per actor, in its constructor."""
    return import_object(spec.loader)(spec)


def import_object(path: str) -> Callable:
    """`package.module:function` -> the function; errors say what to fix."""
    module, sep, name = path.partition(":")
    if not sep:
        raise ConfigError(f"{path!r} is not an import path 'module:function'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {path!r} ({exc}); check the module is importable on "
                          "this node and defines that function") from exc
