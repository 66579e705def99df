"""One worker: holds an engine for its whole life and turns shards into output files.

A plain class (the driver wraps it with `ray.remote` and the resources its config derived), so
tests can run it in-process. The engine is built once in the constructor: loading compiled
modules costs seconds, a shard milliseconds to minutes.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from ..decode.engine import EngineSpec, build_engine
from ..decode.metrics import matches, word_scores
from ..decode.rules import InputRules
from ..decode.tokenizer import PromptFormat
from ..decode.transcriber import Transcriber
from ..errors import InputError, ShardInputError
from .lexicon import entries
from .planner import Shard, open_parquet
from .writer import output_table, write_shard

__all__ = ["RowRules", "ShardResult", "ShardSettings", "TranscribeActor", "read_shard"]


@dataclass(frozen=True)
class ShardSettings:
    """The per-job facts `process` needs besides the shard itself."""

    output: str
    word_column: str
    lang_column: str | None
    lang: str | None
    reference_column: str | None = None   # check mode
    worst_rows: int = 10


@dataclass
class ShardResult:
    shard_id: str
    rows_in: int
    rows_out: int
    sha256: str
    size_bytes: int
    statuses: dict[str, int]
    unique_words: int
    timings: dict[str, float]     # seconds: read, tokenize, encode, decode, write
    seconds: float
    actor: str
    node: str | None
    languages: dict[str, dict[str, int]] = field(default_factory=dict)  # lang -> status -> rows
    check: dict[str, dict] = field(default_factory=dict)  # check mode: lang -> n, per_sum, wrong, worst


class _Metrics:
    """The actor's Ray metrics, exported by each node's metrics agent to the Ray dashboard and
    Prometheus (`ray_g2p_*`); nothing outside Ray."""

    def __init__(self, label: str):
        self.on = _node_id() is not None
        if not self.on:
            return
        from ray.util.metrics import Counter, Gauge, Histogram

        self.tags = {"actor": label}
        self.rows = Counter("g2p_rows", "rows written, by status", tag_keys=("actor", "status"))
        self.words_per_s = Gauge("g2p_words_per_second", "rows per second of the actor's last shard",
                                 tag_keys=("actor",))
        self.fill = Histogram("g2p_batch_fill", "share of an engine call's rows that are real words",
                              boundaries=[0.125, 0.25, 0.5, 0.75, 0.9, 1.0], tag_keys=("actor",))
        seconds = [0.01, 0.1, 1, 10, 60, 600]
        self.encode = Histogram("g2p_encode_seconds", "encoder seconds per shard", boundaries=seconds,
                                tag_keys=("actor",))
        self.decode = Histogram("g2p_decode_seconds", "decoder seconds per shard", boundaries=seconds,
                                tag_keys=("actor",))

    def record(self, result: "ShardResult", fills: list[float]) -> None:
        if not self.on:
            return
        for status, n in result.statuses.items():
            self.rows.inc(n, tags={**self.tags, "status": status})
        self.words_per_s.set(result.rows_in / max(result.seconds, 1e-9), tags=self.tags)
        for f in fills:
            self.fill.observe(f, tags=self.tags)
        self.encode.observe(result.timings.get("encode", 0.0), tags=self.tags)
        self.decode.observe(result.timings.get("decode", 0.0), tags=self.tags)


@dataclass(frozen=True)
class RowRules:
    """How every actor of a job turns rows into results, beside the engine itself."""

    fmt: PromptFormat = field(default_factory=PromptFormat)
    known_langs: frozenset | None = None
    trained_langs: frozenset | None = None
    stop_loops: bool = True
    input_rules: dict | None = None     # per language, `decode.rules.LanguageRules` fields
    keep_case: bool = False
    num_beams: int = 1                  # > 1: beam search, n_best candidates per row
    n_best: int = 1


class TranscribeActor:
    def __init__(self, spec: EngineSpec, blob, rules: RowRules = RowRules(), label: str = "actor",
                 lexicon: pa.Table | None = None):
        # `blob` and `lexicon` arrive as arguments of their own so Ray resolves their object-store
        # references here: the lexicon is read once per actor, not per shard
        if blob is not None:
            spec = spec.with_(blob=blob)
        self.label = label
        self.target = spec.target
        input_rules = InputRules.from_dict(rules.input_rules, rules.keep_case)
        if lexicon is not None:
            input_rules.with_lexicon(entries(lexicon))
        self.transcriber = Transcriber(build_engine(spec), rules.fmt, rules.known_langs, rules.trained_langs,
                                       rules.stop_loops, input_rules, rules.num_beams, rules.n_best)
        self.metrics = _Metrics(label)

    def ready(self) -> dict:
        """Answers once the constructor (engine load) has finished."""
        return {"label": self.label, "target": self.target, "pid": os.getpid(), "node": _node_id()}

    def process(self, shard: Shard, settings: ShardSettings) -> ShardResult:
        start = time.perf_counter()
        table = read_shard(shard)
        words = table.column(settings.word_column).to_pylist()
        langs = (table.column(settings.lang_column).to_pylist() if settings.lang_column
                 else [settings.lang] * len(words))
        read = time.perf_counter() - start

        before = dict(self.transcriber.timings)
        items_before = self.transcriber.decoded_items
        fills_before = len(self.transcriber.batch_fill)
        results = self.transcriber.transcribe(langs, words, first_row=shard.first_row)

        t_write = time.perf_counter()
        checks, check = None, {}
        if settings.reference_column:
            refs = table.column(settings.reference_column).to_pylist()
            checks, check = check_rows(shard, langs, words, refs, results, settings.worst_rows)
        out = output_table(table, results, checks, self.transcriber.num_beams > 1)
        sha, size = write_shard(out, settings.output, shard.name)
        end = time.perf_counter()

        timings = {k: v - before.get(k, 0.0) for k, v in self.transcriber.timings.items()}
        timings.update(read=read, write=end - t_write)
        languages: dict[str, Counter] = {}
        for lang, r in zip(langs, results):
            languages.setdefault(str(lang), Counter())[r.status] += 1
        result = ShardResult(
            shard_id=shard.id, rows_in=shard.num_rows, rows_out=out.num_rows, sha256=sha,
            size_bytes=size, statuses=dict(Counter(r.status for r in results)),
            unique_words=self.transcriber.decoded_items - items_before, timings=timings,
            seconds=end - start, actor=self.label, node=_node_id(),
            languages={k: dict(v) for k, v in languages.items()}, check=check)
        self.metrics.record(result, self.transcriber.batch_fill[fills_before:])
        del self.transcriber.batch_fill[:]
        return result


def check_rows(shard: Shard, langs, words, refs, results, worst: int):
    """Check mode: each transcribed row with a reference gets (PER, matches a variant), as
    `verify` scores; per language the sums and the `worst` rows by PER (likely dictionary or
    model errors)."""
    checks, by_lang = [], {}
    for pos, (lang, word, ref, r) in enumerate(zip(langs, words, refs, results)):
        if not ref or not ref.strip() or r.phonemes is None or r.status == "error":
            checks.append(None)
            continue
        per, wrong = word_scores(r.phonemes, ref)
        checks.append((per, matches(r.phonemes, ref)))
        s = by_lang.setdefault(str(lang), {"n": 0, "per_sum": 0.0, "wrong": 0, "worst": []})
        s["n"] += 1
        s["per_sum"] += per
        s["wrong"] += int(wrong)
        s["worst"].append({"row": shard.first_row + pos, "source": shard.source, "word": word, "reference": ref,
                           "phonemes": r.phonemes, "status": r.status, "per": per})
    for s in by_lang.values():
        s["worst"] = sorted(s["worst"], key=lambda w: -w["per"])[:worst]
    return checks, by_lang


def read_shard(shard: Shard) -> pa.Table:
    """The shard's rows. pyarrow raises the same OSError for a damaged page as for a dropped
    connection, so a failed read is tried again at once: failing twice alike, it is the data
    (ShardInputError, not retried elsewhere); otherwise the error stays retryable."""
    errors = []
    for _ in range(2):
        try:
            table = open_parquet(shard.source).read_row_groups(shard.row_groups)
            break
        except (pa.ArrowException, OSError, InputError) as exc:
            errors.append(exc)
            if len(errors) == 2 and str(errors[0]) != str(exc):
                raise
    else:
        first = " ".join(str(errors[0]).split())
        raise ShardInputError(f"{shard.source}: rows {shard.first_row}..{shard.first_row + shard.num_rows - 1} "
                              f"cannot be read ({first}), twice alike: the file is damaged; rewrite it "
                              "or remove it from the input") from None
    table = table.slice(shard.skip, shard.num_rows)
    if table.num_rows != shard.num_rows:
        raise ShardInputError(f"{shard.source}: row groups {shard.rg_start}..{shard.rg_stop - 1} hold "
                              f"{table.num_rows + shard.skip} rows, the plan expected at least "
                              f"{shard.num_rows + shard.skip}; the file changed during the job, rerun it")
    return table


def _node_id() -> str | None:
    try:
        import ray
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:       # outside Ray (unit tests): no node to name
        return None
