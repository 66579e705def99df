"""The one settings object of a batch job, loaded from `configs/*.yaml` and flags.

Everything a user can get wrong is checked here, before Ray starts or a file is opened, and
each failure names the key and how to fix it. Actor resources are derived here too (from the
settings and the cluster's totals), so the actor code never decides how big it is.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..decode.engine import DEFAULT_BATCH_SIZES, default_input_lengths
from ..errors import ConfigError
from ..model.languages import model_languages, read_lang_list
from ..model.shapes import PRECISIONS
from ..settings import check_choice, check_int, int_list, load, setting

__all__ = ["ActorGroup", "JobConfig", "TARGETS", "load_config", "resolve_actor_groups"]

TARGETS = ("auto", "llvm", "cuda", "mixed")


@dataclass
class JobConfig:
    """The YAML file, the flags and tests all end here, validated on construction, so no code
    past this point re-checks a setting. Keys that change the output (driver.OUTPUT_SETTINGS)
    must stay fixed across reruns into one output directory."""

    input: str = setting(help="Parquet file, directory, glob or file:// s3:// gs:// URI")
    output: str = setting(help="output directory (Parquet shards, _manifest.json, _report.json)")
    word_column: str = setting("word", help="column holding the words")
    lang_column: str | None = setting(None, help="column holding language codes")
    lang: str | None = setting(None, help="one language code for every row (instead of lang_column)")
    checkpoint: str = setting("default", help="'default' (embedded), a local HF directory, or a hub id")
    target: str = setting("auto", help="auto | llvm | cuda | mixed (GPU and CPU actors in one job)")
    precision: str = setting("fp32", help="CPU actors: fp32 (exact) or bf16 (dense layers on AMX tiles; CPUs with amx_bf16)")
    batch_sizes: list[int] = setting(help="compiled batch sizes", factory=lambda: list(DEFAULT_BATCH_SIZES))
    input_buckets: list[int] = setting(help="compiled input lengths, in ids incl. '<lang>:' (and EOS, if fed)",
                                       factory=lambda: default_input_lengths(64))
    max_output_len: int = setting(64, help="decoder steps before a row counts as truncated")
    rows_per_shard: int = setting(50_000, help="rows per output file (a big row group is cut)")
    num_cpu_actors: int | None = setting(None, help="CPU actors (default: as many as the cluster's CPUs hold)")
    threads_per_actor: int = setting(2, help="TVM threads (and Ray CPUs) per CPU actor")
    num_gpu_actors: int | None = setting(None, help="GPU actors (default: one per GPU in the cluster)")
    max_retries: int = setting(2, help="times a shard whose actor died or failed is tried again")
    overwrite: bool = setting(False, help="start over instead of resuming (earlier results go at the first commit)")
    known_langs: str | list[str] | None = setting(None, help="a file of allowed language codes (default: the model's list)")
    space_after_colon: bool | None = setting(None, help="'<lang>: word' (default: as the checkpoint declares)")
    input_eos: bool | None = setting(None, help="end the input with EOS (default: as the checkpoint declares, else no, as CharsiuG2P)")
    stop_loops: bool = setting(True, help="stop a row whose output repeats (status truncated)")
    keep_case: bool = setting(False, help="feed words in their own case, not lowercased where the training words were all lowercase")
    num_beams: int = setting(1, help="beam search over this many hypotheses per word (1: greedy, the fastest)")
    n_best: int = setting(1, help="with num_beams > 1: candidates kept per word in a candidates column (<= num_beams)")
    lexicon: str | list[str] | None = setting(None, help="lexicon file(s) whose entries win over the model: TSV lang<TAB>word<TAB>pron or Parquet (lang, word, pron), paths or URIs")
    reference_column: str | None = setting(None, help="check mode: a column of reference pronunciations; adds per and match columns and PER/WER to the report")
    worst_rows: int = setting(10, help="check mode: rows with the largest disagreement kept per language in the report")
    artifacts_dir: str | None = setting(None, help="root of compiled artifact sets (default: the user cache)")
    engine: str = setting("g2p_batch.compile.prepare:prepare_tvm_engine",
                          help="'module:function' preparing each target's engine on the driver")
    ray_address: str | None = setting(None, help="Ray cluster (default: RAY_ADDRESS, a running cluster, or a local one)")
    progress: bool = setting(True, help="show a progress bar")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for key in ("input", "output", "word_column", "checkpoint", "artifacts_dir", "engine"):
            value = getattr(self, key)
            if (value is not None or key != "artifacts_dir") and (not isinstance(value, str) or not value.strip()):
                raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
        if (self.lang_column is None) == (self.lang is None):
            raise ConfigError(
                "set exactly one of lang_column (a column of language codes) and lang (one code "
                f"for every row); got lang_column={self.lang_column!r}, lang={self.lang!r}")
        if self.lang_column == self.word_column:
            raise ConfigError(f"lang_column and word_column are both {self.word_column!r}; "
                              "point lang_column at the column of language codes")
        check_choice("target", self.target, TARGETS)
        check_choice("precision", self.precision, PRECISIONS)
        if self.precision == "bf16" and self.target == "cuda":
            raise ConfigError("precision bf16 is a CPU mode (AMX tiles); a cuda job runs fp32: set precision "
                              "fp32 or target llvm")
        self.batch_sizes = int_list("batch_sizes", self.batch_sizes)
        self.input_buckets = int_list("input_buckets", self.input_buckets)
        if isinstance(self.lexicon, str):
            self.lexicon = [x.strip() for x in self.lexicon.split(",") if x.strip()] or None
        if self.lexicon is not None and not (isinstance(self.lexicon, list) and all(isinstance(x, str) for x in self.lexicon)):
            raise ConfigError(f"lexicon must be a path or URI, or a list of them; got {self.lexicon!r}")
        if self.reference_column is not None and self.reference_column in (self.word_column, self.lang_column):
            raise ConfigError(f"reference_column {self.reference_column!r} is also the word or language column; "
                              "point it at the column of reference pronunciations")
        check_int("worst_rows", self.worst_rows, minimum=0)
        check_int("num_beams", self.num_beams, minimum=1)
        check_int("n_best", self.n_best, minimum=1)
        if self.n_best > self.num_beams:
            raise ConfigError(f"n_best={self.n_best} is over num_beams={self.num_beams}: beam search keeps at most "
                              "num_beams candidates; raise num_beams")
        if self.num_beams > 1 and not any(b % self.num_beams == 0 and b >= self.num_beams for b in self.batch_sizes):
            raise ConfigError(f"num_beams={self.num_beams} fits none of batch_sizes {self.batch_sizes}: a compiled "
                              "batch holds whole words' beams, so add a batch size that is a multiple of num_beams")
        for key in ("max_output_len", "rows_per_shard", "threads_per_actor"):
            check_int(key, getattr(self, key), minimum=1)
        check_int("max_retries", self.max_retries, minimum=0)
        for key in ("num_cpu_actors", "num_gpu_actors"):
            if getattr(self, key) is not None:
                check_int(key, getattr(self, key), minimum=0)
        for key in ("overwrite", "space_after_colon", "input_eos", "stop_loops", "keep_case", "progress"):
            value = getattr(self, key)
            if not isinstance(value, bool) and not (value is None and key in ("space_after_colon", "input_eos")):
                raise ConfigError(f"{key} must be true or false, got {value!r}")
        if ":" not in self.engine:
            raise ConfigError(f"engine {self.engine!r} must be an import path 'module:function'")
        if self.target == "llvm" and self.num_gpu_actors:
            raise ConfigError(f"num_gpu_actors={self.num_gpu_actors} needs target 'cuda' or "
                              "'mixed'; set target or num_gpu_actors: 0")
        if self.target == "cuda" and self.num_cpu_actors:
            raise ConfigError(f"num_cpu_actors={self.num_cpu_actors} needs target 'llvm' or "
                              "'mixed'; set target or num_cpu_actors: 0")
        if self.target == "mixed" and self.num_cpu_actors == 0 and self.num_gpu_actors == 0:
            raise ConfigError("target 'mixed' with num_cpu_actors: 0 and num_gpu_actors: 0 "
                              "runs nothing; allow at least one actor")
        if self.known_langs is not None and not isinstance(self.known_langs, (str, list)):
            raise ConfigError("known_langs must be a path to a file of codes, a list of codes, "
                              f"or null for the model's list; got {self.known_langs!r}")

    def lexicon_files(self) -> list[str]:
        return list(self.lexicon or [])

    def known_lang_set(self, model_langs: list[str] | None) -> set[str]:
        """The codes rows may use: the configured ones, else the model's, else CharsiuG2P's list."""
        if isinstance(self.known_langs, list):
            return {str(c).strip() for c in self.known_langs if str(c).strip()}
        if isinstance(self.known_langs, str):
            return set(read_lang_list(self.known_langs, key="known_langs"))
        return set(model_langs or model_languages())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ActorGroup:
    """Identical actors: how many, on which target, and the Ray resources each one asks for."""

    target: str          # "llvm" | "cuda"
    count: int
    num_cpus: float
    num_gpus: float
    threads: int         # TVM_NUM_THREADS inside the actor

    @property
    def kind(self) -> str:
        return "gpu" if self.target == "cuda" else "cpu"

    @property
    def env_vars(self) -> dict[str, str]:
        return {"TVM_NUM_THREADS": str(self.threads), "OMP_NUM_THREADS": str(self.threads)}


def resolve_actor_groups(config: JobConfig, cluster: dict[str, float]) -> list[ActorGroup]:
    """Turn target/actor counts into actor groups that fit `cluster` (`ray.cluster_resources()`).

    "auto" means GPUs when the cluster has any, else CPUs. A GPU actor takes one GPU and one CPU
    (for the host side of the runtime); CPU actors take `threads_per_actor` CPUs each, and by
    default fill what the GPU actors leave.
    """
    cpus, gpus = int(cluster.get("CPU", 0)), int(cluster.get("GPU", 0))
    target = config.target
    if target == "auto":
        target = "cuda" if gpus > 0 else "llvm"
    n_gpu = 0
    if target in ("cuda", "mixed"):
        n_gpu = gpus if config.num_gpu_actors is None else config.num_gpu_actors
        if n_gpu > gpus:
            raise ConfigError(f"num_gpu_actors={n_gpu} but the cluster has {gpus} GPUs; lower "
                              "num_gpu_actors or use target 'llvm'")
        if target == "cuda" and n_gpu == 0:
            raise ConfigError("target 'cuda' but the cluster has no GPUs; use target 'llvm' or "
                              "'auto', or run on a cluster with GPUs")
    n_cpu, threads = 0, config.threads_per_actor
    if target in ("llvm", "mixed"):
        free = cpus - n_gpu
        if config.num_cpu_actors is None:
            n_cpu = free // threads
            if n_cpu == 0 and n_gpu == 0:
                raise ConfigError(f"threads_per_actor={threads} exceeds the cluster's {cpus} CPUs; "
                                  f"set threads_per_actor to at most {max(cpus, 1)}")
        else:
            n_cpu = config.num_cpu_actors
            if n_cpu * threads > free:
                raise ConfigError(
                    f"num_cpu_actors={n_cpu} x threads_per_actor={threads} needs {n_cpu * threads} "
                    f"CPUs, the cluster has {free} free{' after the GPU actors' if n_gpu else ''}; "
                    "lower num_cpu_actors or threads_per_actor")
    groups = []
    if n_gpu:
        groups.append(ActorGroup("cuda", n_gpu, num_cpus=1, num_gpus=1, threads=1))
    if n_cpu:
        groups.append(ActorGroup("llvm", n_cpu, num_cpus=threads, num_gpus=0, threads=threads))
    if not groups:
        raise ConfigError(f"no actor fits target {config.target!r} on a cluster with {cpus} CPUs "
                          f"and {gpus} GPUs; check num_cpu_actors, num_gpu_actors and target")
    return groups


def load_config(path: str | Path | None = None, **overrides) -> JobConfig:
    """A JobConfig from YAML (optional) and overrides (None: not given)."""
    return load(JobConfig, path, **overrides)
