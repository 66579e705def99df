"""The job: plan from metadata, resume from the manifest, feed shards to actors as they free up.

The driver never reads a row: it holds the plan (file names and row-group ranges), the
manifest and per-shard counts, so its memory does not grow with the input. Each actor has at
most one shard in flight and pulls the next when it finishes, so fast (GPU) and slow (CPU)
actors share one job without either waiting on the other. A shard whose actor dies or fails
goes back to the queue on a fresh actor, up to `max_retries` times; because a shard's output
name is fixed and its write atomic, a retried shard still lands exactly once.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.fs as pafs

from .. import storage
from ..decode.engine import PreparedEngine, import_object
from ..errors import ConfigError, InputError, JobFailed, ShardInputError
from .actor import RowRules, ShardResult, ShardSettings, TranscribeActor
from .config import ActorGroup, JobConfig, resolve_actor_groups
from .lexicon import read_lexicons
from .planner import Plan, Shard, open_parquet, plan_shards, resolve_sources
from .writer import (
    CHECK_COLUMNS,
    REPORT,
    Manifest,
    output_table,
    write_json,
    write_shard,
)

__all__ = ["JobReport", "run_job"]

log = logging.getLogger("g2p_batch")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

STAGES = ("read", "tokenize", "encode", "decode", "write")
# settings that change what lands in the output: a resume under other values would mix results
OUTPUT_SETTINGS = ("input", "word_column", "lang_column", "lang", "checkpoint", "max_output_len",
                   "space_after_colon", "input_eos", "stop_loops", "keep_case", "lexicon", "reference_column", "num_beams", "n_best",
                   "known_langs", "rows_per_shard")


@dataclass
class JobReport:
    output: str
    shards_planned: int = 0
    shards_skipped: int = 0          # committed by an earlier run and still intact
    shards_committed: int = 0        # committed by this run
    failed: list[dict] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)   # every committed row by status, all runs
    languages: dict[str, dict[str, int]] = field(default_factory=dict)  # the same, per language
    check: dict = field(default_factory=dict)  # check mode: PER/WER per language and overall, worst rows
    run_rows: dict[str, int] = field(default_factory=dict)  # this run's rows by status
    skipped_files: list[dict] = field(default_factory=list)  # input files that are not Parquet
    actors: dict[str, dict] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    failed_attempts: int = 0
    wall_s: float = 0.0
    setup_s: float = 0.0             # plan, Ray start, artifacts: before the first dispatch
    driver_s: float = 0.0            # after it: the driver's own work (commits, dispatch), not
                                     # its waits on actors; a large share means it is the bottleneck

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def driver_share(self) -> float:
        return self.driver_s / self.wall_s if self.wall_s else 0.0

    def add(self, result: ShardResult, target: str) -> None:
        self.shards_committed += 1
        for status, n in result.statuses.items():
            self.run_rows[status] = self.run_rows.get(status, 0) + n
        for stage, seconds in result.timings.items():
            self.stages[stage] = self.stages.get(stage, 0.0) + seconds
        a = self.actors.setdefault(result.actor, {"target": target, "node": result.node,
                                                  "shards": 0, "rows": 0, "seconds": 0.0})
        a["shards"] += 1
        a["rows"] += result.rows_in
        a["seconds"] += result.seconds
        a["words_per_s"] = a["rows"] / a["seconds"] if a["seconds"] else 0.0

    def summary(self) -> str:
        rows = ", ".join(f"{n} {s}" for s, n in sorted(self.rows.items())) or "no rows"
        lines = [f"{self.shards_committed} shards written, {self.shards_skipped} already done, "
                 f"{len(self.failed)} failed, of {self.shards_planned}; {rows}; "
                 f"{self.wall_s:.1f}s wall -> {self.output}"]
        for f in self.skipped_files[:10]:
            lines.append(f"  skipped {f['file']}: {f['reason']}")
        for f in self.failed[:10]:
            lines.append(f"  FAILED {f['shard']} ({f['source']}, after {f['attempts']} "
                         f"attempts): {f['error']}")
        if len(self.failed) > 10:
            lines.append(f"  ... and {len(self.failed) - 10} more, listed in {REPORT}")
        if self.failed:
            lines.append("  rerun the same command to retry only the failed shards")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "driver_share": self.driver_share}


def run_job(config: JobConfig, engine_factory: str | Callable[[JobConfig, str], PreparedEngine]
            | None = None) -> JobReport:
    """Transcribe `config.input` into `config.output`; raises JobFailed if any shard failed.

    Everything that can fail before the first shard (inputs and their schemas, the output
    location, the cluster, the engines) is checked before an earlier run's results are touched.
    `engine_factory` (a callable or 'module:function', default `config.engine`) prepares one
    engine per target on the driver; see `engines.py` for the seam.
    """
    t0 = time.perf_counter()
    _check_locations(config)
    plan = plan_shards(config.input, config.word_column, config.lang_column, config.rows_per_shard,
                       (tuple(CHECK_COLUMNS) if config.reference_column else ()) +
                       (("candidates",) if config.num_beams > 1 else ()))
    if config.reference_column:
        _check_reference_column(config, plan)
    lexicon = read_lexicons(config.lexicon_files()) if config.lexicon else None
    try:
        storage.check_writable(config.output)
    except OSError as exc:
        raise ConfigError(f"output: {exc}") from exc
    manifest, todo = _resume(config, plan, _table_sha256(lexicon))
    report = JobReport(output=config.output, shards_planned=len(plan.shards),
                       shards_skipped=len(plan.shards) - len(todo), skipped_files=plan.skipped)
    work = [s for s in todo if s.num_rows]
    log.info("g2p-batch: %d shards (%d rows) from %d files; %d already done; %d rows to go",
             len(plan.shards), plan.total_rows, len(plan.files), report.shards_skipped,
             sum(s.num_rows for s in work))
    if work:
        factory = engine_factory or config.engine
        factory = import_object(factory) if isinstance(factory, str) else factory
        _dispatch(config, factory, manifest, work, report, t0, lexicon)
    for shard in todo:
        if not shard.num_rows:
            _write_empty(config, manifest, shard, report)
    manifest.drop_stale()
    report.rows, report.languages = manifest.totals(), manifest.totals_by_language()
    if config.reference_column:
        report.check = manifest.check_summary(config.worst_rows)
    report.wall_s = time.perf_counter() - t0
    if manifest.replaces is None:   # else an earlier run's results are still the output
        write_json(config.output, REPORT, report.to_dict())
    if not report.ok:
        raise JobFailed(report)
    return report


def _write_empty(config: JobConfig, manifest: Manifest, shard: Shard, report: JobReport) -> None:
    """An empty input file: a schema-only output file, written here (no actor, no engine)."""
    schema = open_parquet(shard.source).schema_arrow
    table = output_table(schema.empty_table(), [], [] if config.reference_column else None, config.num_beams > 1)
    sha, _ = write_shard(table, config.output, shard.name)
    manifest.commit(shard, 0, sha, "driver", {})
    report.shards_committed += 1


def _dispatch(config: JobConfig, factory, manifest: Manifest, todo: list[Shard],
              report: JobReport, t0: float, lexicon=None) -> None:
    """Start Ray and the actors, run every shard in `todo`, fill in the report."""
    import ray

    started = _connect_ray(config)
    pool = None
    try:
        groups = resolve_actor_groups(config, ray.cluster_resources())
        prepared = {g.target: factory(config, g.target) for g in groups}
        prompts = {p.prompt for p in prepared.values()}
        if len(prompts) > 1:
            raise ConfigError(f"the engines disagree on the prompt format ({sorted(map(str, prompts))}); "
                              "set space_after_colon and input_eos explicitly")
        known = config.known_lang_set(next((p.languages for p in prepared.values()
                                            if p.languages), None))
        if config.lang is not None and config.lang not in known:
            raise ConfigError(f"lang {config.lang!r} is not in the model's language list; use "
                              "one of its codes or set known_langs")
        _record_engines(config, manifest, prepared)
        for g in groups:
            log.info("g2p-batch: %d %s actor(s), %s CPU + %s GPU each, %d thread(s)",
                     g.count, g.target, g.num_cpus, g.num_gpus, g.threads)
        pool = _Pool(config, groups, prepared, known, manifest, report, lexicon)
        t1 = time.perf_counter()
        report.setup_s = t1 - t0
        pool.run(todo)
        report.driver_s = time.perf_counter() - t1 - pool.waited
    finally:
        if pool is not None:
            pool.close()
        if started:
            ray.shutdown()


@dataclass
class _Slot:
    group: ActorGroup
    index: int
    actor: Any = None
    label: str = ""
    state: str = "dead"          # dead | starting | idle | busy
    starts: int = 0
    start_failures: int = 0      # consecutive: a slot whose actor cannot start is retired
    retired: bool = False


class _Pool:
    """Actors pulling shards: at most one task in flight per actor, `ray.wait` for the next."""

    def __init__(self, config: JobConfig, groups: list[ActorGroup],
                 prepared: dict[str, PreparedEngine], known: set[str], manifest: Manifest,
                 report: JobReport, lexicon=None):
        import ray

        self.config, self.manifest, self.report = config, manifest, report
        self.remote = ray.remote(TranscribeActor)
        first = next(iter(prepared.values()))
        self.rules = RowRules(first.prompt, frozenset(known), frozenset(first.trained_languages or ()) or None,
                              config.stop_loops, first.input_rules, config.keep_case, config.num_beams,
                              config.n_best)
        self.lexicon = ray.put(lexicon) if lexicon is not None else None  # once: actors share it
        # artifacts go into the object store once per target; every actor gets a reference
        self.blobs = {t: ray.put(p.spec.blob) for t, p in prepared.items()}
        self.specs = {g.target: prepared[g.target].spec.with_(blob=None, threads=g.threads)
                      for g in groups}
        self.settings = ShardSettings(config.output, config.word_column, config.lang_column,
                                      config.lang, config.reference_column, config.worst_rows)
        self.slots = [_Slot(g, i) for g in groups for i in range(g.count)]
        self.inflight: dict[Any, tuple[_Slot, Shard | None]] = {}
        self.pending: deque[Shard] = deque()
        self.attempts: Counter = Counter()
        self.last_start_error = ""
        self.waited = 0.0

    def run(self, shards: list[Shard]) -> None:
        import ray

        self.pending.extend(shards)
        self.bar = Progress(len(shards), sum(s.num_rows for s in shards), self.config.progress)
        with self.bar:
            self._fill()
            while self.inflight:
                t = time.perf_counter()
                (ref,), _ = ray.wait(list(self.inflight), num_returns=1)
                self.waited += time.perf_counter() - t
                slot, shard = self.inflight.pop(ref)
                try:
                    value = ray.get(ref)
                    if shard is not None:
                        self._commit(slot, shard, value)
                    slot.state, slot.start_failures = "idle", 0
                except Exception as exc:    # noqa: BLE001 - every failure is retried or reported
                    self._failed(slot, shard, exc)
                self._fill()
        for shard in self.pending:      # left only when no actor could start
            self._give_up(shard, f"not attempted: no actor could start ({self.last_start_error})")

    def close(self) -> None:
        import ray

        for slot in self.slots:
            if slot.actor is not None:
                ray.kill(slot.actor, no_restart=True)

    def _fill(self) -> None:
        """Give pending shards to idle actors; start actors for what is left over.

        CPU actors wait while a GPU actor is starting: Ray may place a CPU actor on a GPU node,
        and if it takes the CPU a GPU actor needs there, the GPU actor never starts and the job
        waits for it forever (seen as a hang of the two-node test in CI runs)."""
        for slot in self.slots:
            if self.pending and slot.state == "idle":
                shard = self.pending.popleft()
                self.inflight[slot.actor.process.remote(shard, self.settings)] = (slot, shard)
                slot.state = "busy"
        unclaimed = len(self.pending) - sum(s.state == "starting" for s in self.slots)
        gpu_starting = any(s.state == "starting" and s.group.kind == "gpu" for s in self.slots)
        for slot in self.slots:  # GPU slots come first (resolve_actor_groups)
            if unclaimed > 0 and slot.state == "dead" and not slot.retired:
                if slot.group.kind == "cpu" and gpu_starting:
                    break
                self._start(slot)
                gpu_starting |= slot.group.kind == "gpu"
                unclaimed -= 1

    def _start(self, slot: _Slot) -> None:
        g = slot.group
        slot.label = f"{g.kind}-{slot.index}" + (f".{slot.starts}" if slot.starts else "")
        slot.starts += 1
        slot.actor = self.remote.options(
            num_cpus=g.num_cpus, num_gpus=g.num_gpus, max_restarts=0, max_task_retries=0,
            scheduling_strategy="SPREAD", runtime_env={"env_vars": g.env_vars},
        ).remote(self.specs[g.target], self.blobs[g.target], self.rules, slot.label, self.lexicon)
        self.inflight[slot.actor.ready.remote()] = (slot, None)
        slot.state = "starting"

    def _commit(self, slot: _Slot, shard: Shard, result: ShardResult) -> None:
        if result.shard_id != shard.id or result.rows_out != shard.num_rows:
            raise RuntimeError(f"actor {slot.label} wrote {result.rows_out} rows for shard "
                               f"{result.shard_id}, expected {shard.num_rows} for {shard.id}")
        self.manifest.commit(shard, result.rows_out, result.sha256, result.actor, result.statuses, result.languages,
                             result.check)
        self.report.add(result, slot.group.target)
        self.bar.update(result.rows_in, shards=1)

    def _postfix(self) -> None:
        self.bar.update(0, failed=len(self.report.failed))

    def _failed(self, slot: _Slot, shard: Shard | None, exc: Exception) -> None:
        import ray

        error = _describe(exc)
        if shard is not None and _is_input_error(exc):
            # the data, not the actor: retrying cannot help, and the actor stays usable
            slot.state = "idle"
            self.attempts[shard.id] += 1
            self.report.failed_attempts += 1
            self._give_up(shard, error + " (not retried: the same read fails every time)")
            return
        ray.kill(slot.actor, no_restart=True)   # its state is suspect even if it lives
        slot.actor, slot.state = None, "dead"
        if shard is None:
            slot.start_failures += 1
            self.last_start_error = error
            slot.retired = slot.start_failures > self.config.max_retries
            log.warning("actor %s failed to start (%d in a row%s): %s", slot.label,
                        slot.start_failures, ", giving up on it" if slot.retired else "", error)
            return
        self.attempts[shard.id] += 1
        self.report.failed_attempts += 1
        if self.attempts[shard.id] <= self.config.max_retries:
            log.warning("shard %s failed on %s (attempt %d), retrying: %s", shard.id,
                        slot.label, self.attempts[shard.id], error)
            self.pending.appendleft(shard)
        else:
            self._give_up(shard, error)

    def _give_up(self, shard: Shard, error: str) -> None:
        log.error("shard %s failed: %s", shard.id, error)
        self.report.failed.append({"shard": shard.id, "source": shard.source,
                                   "rows": [shard.first_row, shard.first_row + shard.num_rows - 1],
                                   "attempts": self.attempts[shard.id], "error": error})
        if getattr(self, "bar", None) is not None:
            self._postfix()


class Progress:
    """Shards and rows done of total, words/s, ETA and failures: a bar on a terminal, else (under
    `ray job submit`, in logs) a plain line at most every `every` seconds and at the end."""

    def __init__(self, shards: int, rows: int, enabled: bool = True, every: float = 10.0,
                 stream=None):
        import sys

        self.stream = stream or sys.stderr
        self.shards, self.rows, self.enabled, self.every = shards, rows, enabled, every
        self.done_shards = self.done_rows = self.failed = 0
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm
            self.bar = tqdm(total=rows, unit="word", unit_scale=True, desc="g2p", dynamic_ncols=True,
                            file=self.stream)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()

    def update(self, rows: int, shards: int = 0, failed: int | None = None) -> None:
        self.done_rows += rows
        self.done_shards += shards
        self.failed = self.failed if failed is None else failed
        if self.bar is not None:
            self.bar.update(rows)
            self.bar.set_postfix(shards=f"{self.done_shards}/{self.shards}", failed=self.failed, refresh=False)
        elif self.enabled and time.perf_counter() - self.last >= self.every:
            self._line()

    def _line(self) -> None:
        self.last = now = time.perf_counter()
        rate = self.done_rows / max(now - self.t0, 1e-9)
        left = (self.rows - self.done_rows) / rate if rate > 0 else float("inf")
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left != float("inf") else "?"
        print(f"g2p: {self.done_shards}/{self.shards} shards, {self.done_rows:,}/{self.rows:,} rows "
              f"({100 * self.done_rows / max(self.rows, 1):.1f}%), {rate:,.1f} words/s, ETA {eta}, "
              f"{self.failed} failed", file=self.stream, flush=True)


def _is_input_error(exc: Exception) -> bool:
    return isinstance(exc, ShardInputError) or isinstance(getattr(exc, "cause", None), ShardInputError)


def _describe(exc: Exception, limit: int = 1000) -> str:
    """One line: the remote exception when Ray wraps one, the last traceback line when an
    actor's constructor failed, else Ray's own message."""
    cause = getattr(exc, "cause", None)
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    if isinstance(cause, BaseException) and cause is not exc:
        text = f"{type(cause).__name__}: {_ANSI.sub('', str(cause))}"
    elif getattr(exc, "actor_init_failed", False) and lines:
        text = f"actor failed to start: {lines[-1]}"
    else:
        text = f"{type(exc).__name__}: {'; '.join(lines)}"
    return text if len(text) <= limit else text[:limit] + " ..."


def _connect_ray(config: JobConfig) -> bool:
    """Join the Ray this process already has, else the configured or RAY_ADDRESS cluster, else
    one started with `ray start` on this machine, else start a local one. True when we started
    the connection (and so shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = config.ray_address or ("auto" if os.environ.get("RAY_ADDRESS") else None)
    # address=None makes ray.init look for a running cluster before starting a local one
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    return True


def _table_sha256(table) -> str | None:
    """A lexicon's entries, hashed: an edited file under the same path changes the output."""
    if table is None:
        return None
    import hashlib

    h = hashlib.sha256()
    for column in table.columns:
        h.update("\x00".join(column.to_pylist()).encode() + b"\x01")
    return h.hexdigest()


def _fingerprint(config: JobConfig, lexicon_sha256: str | None = None) -> tuple[str, dict]:
    import hashlib
    import json

    settings = {k: getattr(config, k) for k in OUTPUT_SETTINGS}
    if lexicon_sha256:
        settings["lexicon_sha256"] = lexicon_sha256
    if config.precision != "fp32":  # bf16 output differs from fp32's; fp32 outputs keep their fingerprint
        settings["precision"] = config.precision
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return digest, settings


def _resume(config: JobConfig, plan: Plan, lexicon_sha256: str | None = None) -> tuple[Manifest, list[Shard]]:
    """The manifest to extend and the shards still to do; refuses to mix results of other
    settings or another plan into one output directory. Deletes nothing: with overwrite, the
    earlier results go when this run commits its first shard (`Manifest.replaces`)."""
    fingerprint, settings = _fingerprint(config, lexicon_sha256)
    fs, base = storage.resolve(config.output)
    if not storage.publishes_whole(fs):  # object stores have no folders, and no temporary files
        fs.create_dir(base, recursive=True)
        _remove_orphan_tmp(fs, base)
    try:
        manifest = Manifest.load(config.output)
    except ValueError as exc:
        if not config.overwrite:
            raise ConfigError(str(exc)) from exc
        manifest = None                 # overwrite: an unreadable manifest is replaced
    fresh = Manifest(config.output, fingerprint, {"settings": settings})
    if config.overwrite:
        old = [e["file"] for e in manifest.shards.values()] if manifest is not None else []
        fresh.replaces, fresh.stale = old, set(old) & {s.name for s in plan.shards}
        return fresh, list(plan.shards)
    if manifest is None or not manifest.shards:   # nothing committed: other settings are fine
        fresh.save()
        return fresh, list(plan.shards)
    if manifest.fingerprint != fingerprint:
        old = manifest.info.get("settings", {})
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items()
                         if old.get(k) != v) or "unknown settings"
        raise ConfigError(f"{config.output} holds results made with other settings ({diff}); "
                          "set overwrite: true to replace them, or choose a new output")
    planned = {s.id for s in plan.shards}
    stray = sorted(set(manifest.shards) - planned)
    if stray:
        raise ConfigError(f"{config.output} holds {len(stray)} shards this input no longer "
                          f"plans (e.g. {stray[0]}): the input changed since they were written; "
                          "set overwrite: true, or choose a new output")
    todo = []
    for shard in plan.shards:
        if not manifest.is_committed(shard):
            manifest.shards.pop(shard.id, None)     # listed but missing or changed: redo it
            todo.append(shard)
    return manifest, todo


def _record_engines(config: JobConfig, manifest: Manifest,
                    prepared: dict[str, PreparedEngine]) -> None:
    checkpoints = {p.checkpoint_id for p in prepared.values()}
    previous = manifest.info.get("checkpoint_id")
    if manifest.shards and previous is not None and {previous} != checkpoints:
        raise ConfigError(f"{config.output} holds shards from checkpoint {previous}, this run "
                          f"would use {sorted(checkpoints)}; set overwrite: true, or choose a "
                          "new output")
    prompt = next(iter(prepared.values())).prompt.to_dict()
    if manifest.shards and manifest.info.get("prompt", prompt) != prompt:
        raise ConfigError(f"{config.output} holds shards made with prompt {manifest.info['prompt']}, "
                          f"this run would use {prompt}; set overwrite: true, or choose a new output")
    manifest.info.update(
        checkpoint_id=sorted(checkpoints)[0] if len(checkpoints) == 1 else sorted(checkpoints),
        artifacts={t: p.artifacts_hash for t, p in prepared.items()}, prompt=prompt,
        config=config.to_dict())
    manifest.save()


def _remove_orphan_tmp(fs: pafs.FileSystem, base: str) -> None:
    """Half-written files of attempts that died; nothing else writes here during a job."""
    for info in fs.get_file_info(pafs.FileSelector(base)):
        if info.type == pafs.FileType.File and info.base_name.startswith(".") \
                and ".tmp-" in info.base_name:
            fs.delete_file(info.path)


def _check_reference_column(config: JobConfig, plan: Plan) -> None:
    """Check mode needs its column in every input file, as a string column."""
    for source in plan.files:
        schema = open_parquet(source).schema_arrow
        if config.reference_column not in schema.names:
            raise InputError(f"{source}: has no column {config.reference_column!r} (columns: {schema.names}); "
                             "set reference_column to the column of reference pronunciations")
        if not pa.types.is_string(schema.field(config.reference_column).type) and \
                not pa.types.is_large_string(schema.field(config.reference_column).type):
            raise InputError(f"{source}: column {config.reference_column!r} is "
                             f"{schema.field(config.reference_column).type}, not a string column")


def _check_locations(config: JobConfig) -> None:
    """Input and output must not overlap: a rerun would read the job's own results as input."""
    out_fs, out = storage.resolve(config.output)
    out = out.rstrip("/")
    in_fs, inp = storage.resolve(config.input.split("?", 1)[0])
    try:
        is_dir = in_fs.get_file_info(inp).type == pafs.FileType.Directory
    except OSError:
        return          # unreachable: planning says so, with the fix
    if type(in_fs) is type(out_fs) and is_dir and (out == inp.rstrip("/") or out.startswith(inp.rstrip("/") + "/")):
        raise ConfigError(f"output {config.output!r} is inside the input directory "
                          f"{config.input!r}, so a rerun would read its own results; choose an "
                          "output outside it")
    for source in resolve_sources(config.input):
        fs, path = storage.resolve(source.split("?", 1)[0])
        if type(fs) is type(out_fs) and path.startswith(out + "/"):
            raise ConfigError(f"input file {source!r} lies inside the output folder "
                              f"{config.output!r}, so a rerun would read this job's results as "
                              "input; choose an output folder that holds no input")
