"""The one settings object of a batch job, loaded from `configs/*.yaml` and CLI overrides.

Everything a user can get wrong is checked here, before Ray starts or a file is opened, and
each failure names the key and how to fix it. Actor resources are derived here too (from the
settings and the cluster's totals), so the actor code never decides how big it is.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .decoding import DEFAULT_BATCH_SIZES

__all__ = [
    "ActorGroup", "ConfigError", "JobError", "DEFAULT_LANG_LIST", "JobConfig", "TARGETS", "load_config",
    "read_lang_list", "resolve_actor_groups",
]

TARGETS = ("auto", "llvm", "cuda", "mixed")
DEFAULT_LANG_LIST = Path(__file__).parent / "data" / "lang_list.txt"
DEFAULT_ENGINE = "g2p_batch.engines:prepare_tvm_engine"


class JobError(Exception):
    """Base of the job's own failures (bad config, bad input, failed shards): the one thing a
    CLI catches to print a message and exit 1; anything else is a bug and keeps its traceback."""


class ConfigError(JobError, ValueError):
    """A setting that cannot work; the message names the key and the fix."""


@dataclass
class JobConfig:
    """The YAML file, CLI flags and tests all end here, validated on construction, so no code
    past this point re-checks a setting. Keys that change the output (see driver.py's
    OUTPUT_SETTINGS) must stay fixed across reruns into one output directory."""

    input: str
    output: str
    word_column: str = "word"
    lang_column: str | None = None
    lang: str | None = None
    checkpoint: str = "default"
    target: str = "auto"
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    input_buckets: list[int] = field(default_factory=lambda: [16, 24, 32, 48, 64])
    max_output_len: int = 64
    rows_per_shard: int = 50_000
    num_cpu_actors: int | None = None    # None: as many as the cluster's CPUs hold
    threads_per_actor: int = 2
    num_gpu_actors: int | None = None    # None: one per GPU in the cluster
    max_retries: int = 2
    overwrite: bool = False
    known_langs: str | list[str] | None = None  # a file of codes, a list, or None: the model's
    space_after_colon: bool | None = None  # None: as the checkpoint was trained (its metadata,
    input_eos: bool | None = None          # else CharsiuG2P's `<lang>:word` without EOS)
    stop_loops: bool = True                # end a row whose output repeats (status truncated)
    artifacts_dir: str | None = None       # None: the per-user cache (artifacts.default_root)
    engine: str = DEFAULT_ENGINE         # "module:function" preparing engines on the driver
    ray_address: str | None = None       # None: RAY_ADDRESS, a running cluster, or a local one
    progress: bool = True

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
        if self.target not in TARGETS:
            raise ConfigError(f"target {self.target!r} is not one of {list(TARGETS)}")
        self.batch_sizes = _int_list("batch_sizes", self.batch_sizes)
        self.input_buckets = _int_list("input_buckets", self.input_buckets)
        for key in ("max_output_len", "rows_per_shard", "threads_per_actor"):
            _check_int(key, getattr(self, key), minimum=1)
        _check_int("max_retries", self.max_retries, minimum=0)
        for key in ("num_cpu_actors", "num_gpu_actors"):
            if getattr(self, key) is not None:
                _check_int(key, getattr(self, key), minimum=0)
        for key in ("overwrite", "space_after_colon", "input_eos", "stop_loops", "progress"):
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

    def known_lang_set(self, model_langs: list[str] | None) -> set[str]:
        """The codes rows may use: the configured ones, else the model's, else the default list."""
        if isinstance(self.known_langs, list):
            return {str(c).strip() for c in self.known_langs if str(c).strip()}
        if isinstance(self.known_langs, str):
            return read_lang_list(self.known_langs, key="known_langs")
        if model_langs:
            return set(model_langs)
        return read_lang_list(DEFAULT_LANG_LIST)

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


def read_lang_list(path: str | Path, key: str = "known_langs") -> set[str]:
    """Language codes, one per line or whitespace-separated; '#' starts a comment."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {str(path)!r} ({exc}); give a file of language "
                          "codes, one per line") from exc
    codes = {tok for line in text.splitlines() for tok in line.split("#", 1)[0].split()}
    if not codes:
        raise ConfigError(f"{key}: {str(path)!r} holds no language codes")
    return codes


def load_config(path: str | Path | None = None, **overrides) -> JobConfig:
    """YAML (optional) then keyword overrides; an override of None means 'not given'."""
    values: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {str(path)!r}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {str(path)!r} must be a mapping of keys to values")
        values.update(loaded or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = [f.name for f in dataclasses.fields(JobConfig)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {names}"
            raise ConfigError(f"unknown config key {key!r}{hint}")
    for key in ("input", "output"):
        if key not in values:
            raise ConfigError(f"{key} is required; set it in the YAML or pass --{key}")
    return JobConfig(**values)


def _int_list(key: str, value) -> list[int]:
    """Accepts a list or a comma-separated string ('1,8,32' from a CLI flag); sorted, unique."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key} must be a non-empty list of positive integers, got {value!r}")
    out = []
    for v in value:
        try:
            n = int(v)
        except (TypeError, ValueError):
            n = 0
        if n < 1 or isinstance(v, bool) or (isinstance(v, float) and v != n):
            raise ConfigError(f"{key} must hold positive integers; {v!r} is not one")
        out.append(n)
    return sorted(set(out))


def _check_int(key: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
