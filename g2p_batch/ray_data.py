"""Transcription as a Ray Data stage, for pipelines that already read, clean, join and write
with `ray.data`:

    stage = transcribe_stage("default", lang_column="lang")          # compiles once, here
    ds = ray.data.read_parquet("s3://bucket/words/")
    ds = ds.map_batches(Transcribe, **stage.map_batches_kwargs())     # adds phonemes, status, ...
    ds.write_parquet("s3://bucket/ipa/")

`transcribe_stage` prepares the engine on the driver (the job's own preparer: artifacts found or
compiled, packed into one blob put in the object store once), reads the cluster to choose the
actors' resources, and picks the batch size from the compiled shapes. Each `Transcribe` actor
loads the engine once, in its constructor, from the shipped bytes (no shared filesystem), and
adds the job's four columns to every batch with the same per-row statuses as `g2p-batch run`:
a bad row never fails the batch. What Ray Data does not give (resume, a manifest, one output
file per input shard) stays with `g2p-batch run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .decode.engine import (
    DEFAULT_BATCH_SIZES,
    PreparedEngine,
    default_input_lengths,
    import_object,
)
from .errors import ConfigError
from .job.actor import RowRules, TranscribeActor
from .job.config import resolve_actor_groups
from .job.lexicon import read_lexicons
from .job.writer import output_table
from .model.shapes import PRECISIONS
from .settings import check_choice, setting

__all__ = ["StageConfig", "Transcribe", "TranscribeStage", "transcribe_stage"]

ROWS_PER_CALL = 16  # a Ray Data batch holds this many of the largest compiled batch


@dataclass
class StageConfig:
    """What the stage transcribes with; the engine settings mean what they mean in JobConfig."""

    checkpoint: str = setting("default", help="'default' (embedded), a local HF directory, or a hub id")
    word_column: str = setting("word", help="column holding the words")
    lang_column: str | None = setting(None, help="column holding language codes")
    lang: str | None = setting(None, help="one language code for every row (instead of lang_column)")
    target: str = setting("auto", help="auto | llvm | cuda")
    precision: str = setting("fp32", help="CPU actors: fp32 (exact) or bf16 (dense layers on AMX tiles)")
    batch_sizes: list[int] = setting(help="compiled batch sizes", factory=lambda: list(DEFAULT_BATCH_SIZES))
    input_buckets: list[int] = setting(help="compiled input lengths", factory=lambda: default_input_lengths(64))
    max_output_len: int = setting(64, help="decoder steps before a row counts as truncated")
    threads_per_actor: int = setting(2, help="TVM threads (and Ray CPUs) per CPU actor")
    num_cpu_actors: int | None = setting(None, help="CPU actors in the pool (default: what the cluster's CPUs hold)")
    num_gpu_actors: int | None = setting(None, help="GPU actors in the pool (default: one per GPU)")
    space_after_colon: bool | None = setting(None, help="'<lang>: word' (default: as the checkpoint declares)")
    input_eos: bool | None = setting(None, help="EOS after the input (default: as the checkpoint declares)")
    stop_loops: bool = setting(True, help="stop a row whose output repeats")
    keep_case: bool = setting(False, help="feed words in their own case (default: as the training words were)")
    lexicon: list[str] | None = setting(None, help="lexicon files whose entries win over the model")
    num_beams: int = setting(1, help="beam search over this many hypotheses per word (1: greedy)")
    n_best: int = setting(1, help="with num_beams > 1: candidates kept per word (a candidates column)")
    artifacts_dir: str | None = setting(None, help="root of compiled artifact sets (default: the user cache)")
    engine: str = setting("g2p_batch.compile.prepare:prepare_tvm_engine", help="'module:function' preparer")
    progress: bool = setting(True, help="show compile progress")

    def __post_init__(self) -> None:
        if isinstance(self.lexicon, str):
            self.lexicon = [self.lexicon]
        if (self.lang_column is None) == (self.lang is None):
            raise ConfigError("set exactly one of lang_column (a column of language codes) and lang "
                              f"(one code for every row); got lang_column={self.lang_column!r}, lang={self.lang!r}")
        check_choice("target", self.target, ("auto", "llvm", "cuda"))
        check_choice("precision", self.precision, PRECISIONS)


@dataclass
class TranscribeStage:
    """Everything `ds.map_batches(Transcribe, ...)` needs: pass `**map_batches_kwargs()`."""

    constructor_kwargs: dict
    batch_size: int
    actors: int
    num_cpus: float
    num_gpus: float
    env_vars: dict = field(default_factory=dict)

    def map_batches_kwargs(self) -> dict:
        import ray.data
        return dict(fn_constructor_kwargs=self.constructor_kwargs, batch_size=self.batch_size,
                    batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=self.actors),
                    num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                    runtime_env={"env_vars": self.env_vars})


def transcribe_stage(checkpoint: str = "default", **settings) -> TranscribeStage:
    """Prepare the engine here (compile what is missing, ship the bytes once) and size the
    actor pool for the cluster this process is connected to (`ray.init` first). One CPU is
    left to the pipeline's read and write tasks: a pool holding every CPU starves them, and the
    dataset never starts (on 2 CPUs: one actor of one thread)."""
    import dataclasses

    import ray

    config = StageConfig(checkpoint=checkpoint, **settings)
    if not ray.is_initialized():
        ray.init()
    cluster = dict(ray.cluster_resources())
    cluster["CPU"] = max(int(cluster.get("CPU", 0)) - 1, 1)
    if config.num_cpu_actors is None and config.threads_per_actor > cluster["CPU"] and not cluster.get("GPU"):
        config = dataclasses.replace(config, threads_per_actor=cluster["CPU"])
    group = resolve_actor_groups(config, cluster)[0]  # one device kind per stage: GPUs when the cluster has any
    prepared: PreparedEngine = import_object(config.engine)(config, group.target)
    known = set(prepared.languages) if prepared.languages else None
    trained = set(prepared.trained_languages) if prepared.trained_languages else None
    spec = prepared.spec.with_(blob=None, threads=group.threads)
    rules = RowRules(prepared.prompt, frozenset(known) if known else None, frozenset(trained) if trained else None,
                     config.stop_loops, prepared.input_rules, config.keep_case, config.num_beams, config.n_best)
    lexicon = ray.put(read_lexicons(config.lexicon)) if config.lexicon else None
    return TranscribeStage(
        constructor_kwargs=dict(spec=spec, blob=ray.put(prepared.spec.blob), rules=rules, lexicon=lexicon,
                                word_column=config.word_column, lang_column=config.lang_column, lang=config.lang),
        batch_size=ROWS_PER_CALL * max(config.batch_sizes), actors=group.count, num_cpus=group.num_cpus,
        num_gpus=group.num_gpus, env_vars=group.env_vars)


class Transcribe:
    """The Ray Data callable class: one engine per actor, loaded here; a batch in, the batch
    with `phonemes`, `status`, `error` and `score` added out (and `candidates` with num_beams > 1;
    every other column kept)."""

    def __init__(self, spec, blob, rules: RowRules, lexicon=None, word_column: str = "word",
                 lang_column: str | None = None, lang: str | None = None):
        import ray

        # Ray Data passes constructor kwargs as they are: the object-store references are read here
        blob, lexicon = (ray.get(x) if isinstance(x, ray.ObjectRef) else x for x in (blob, lexicon))
        self.transcriber = TranscribeActor(spec, blob, rules, "ray-data", lexicon).transcriber
        self.word_column, self.lang_column, self.lang = word_column, lang_column, lang

    def __call__(self, batch):
        words = batch.column(self.word_column).to_pylist()
        langs = batch.column(self.lang_column).to_pylist() if self.lang_column else [self.lang] * len(words)
        return output_table(batch, self.transcriber.transcribe(langs, words),
                            candidates=self.transcriber.num_beams > 1)
