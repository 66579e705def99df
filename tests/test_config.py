from pathlib import Path

import pytest

from g2p_batch.errors import ConfigError
from g2p_batch.job.config import (
    ActorGroup,
    JobConfig,
    load_config,
    resolve_actor_groups,
)
from g2p_batch.model.languages import LANG_LIST, read_lang_list

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", ["local.yaml", "gpu_cluster.yaml", "mixed.yaml"])
def test_example_configs_load(name):
    config = load_config(CONFIGS / name)
    assert config.lang_column == "lang" and config.word_column == "word"


def test_overrides_win_and_none_means_not_given():
    config = load_config(CONFIGS / "local.yaml", output="elsewhere", batch_sizes="32,1,8",
                         lang=None)
    assert config.output == "elsewhere" and config.batch_sizes == [1, 8, 32]
    assert config.lang is None


@pytest.mark.parametrize("changes,needle", [
    ({"lang": "fra"}, "set exactly one of lang_column"),
    ({"lang_column": None}, "set exactly one of lang_column"),
    ({"target": "gpu"}, "target 'gpu' is not one of"),
    ({"batch_sizes": [8, 0]}, "batch_sizes must hold positive integers"),
    ({"input_buckets": []}, "input_buckets must be a non-empty list"),
    ({"rows_per_shard": 0}, "rows_per_shard must be an integer >= 1"),
    ({"max_retries": -1}, "max_retries must be an integer >= 0"),
    ({"target": "llvm", "num_gpu_actors": 2}, "num_gpu_actors=2 needs target 'cuda' or 'mixed'"),
    ({"target": "cuda", "num_cpu_actors": 1}, "num_cpu_actors=1 needs target 'llvm' or 'mixed'"),
    ({"overwrite": "yes"}, "overwrite must be true or false"),
    ({"engine": "nocolon"}, "engine 'nocolon' must be an import path"),
])
def test_validation_names_key_and_fix(changes, needle):
    base = dict(input="in", output="out", lang_column="lang")
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        JobConfig(**{**base, **changes})


def test_unknown_key_suggests_the_right_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: a\noutput: b\nlang: fra\nrows_per_shards: 5\n")
    with pytest.raises(ConfigError, match="unknown config key 'rows_per_shards' in .*c.yaml; did you mean 'rows_per_shard'"):
        load_config(path)
    with pytest.raises(ConfigError, match="output is required"):
        load_config(None, input="a", lang="fra")


def _config(**kw):
    return JobConfig(input="in", output="out", lang="fra", **kw)


def test_actor_groups_follow_target_and_cluster():
    assert resolve_actor_groups(_config(), {"CPU": 8}) == [
        ActorGroup("llvm", 4, num_cpus=2, num_gpus=0, threads=2)]
    assert resolve_actor_groups(_config(), {"CPU": 8, "GPU": 2}) == [
        ActorGroup("cuda", 2, num_cpus=1, num_gpus=1, threads=1)]
    mixed = resolve_actor_groups(_config(target="mixed", threads_per_actor=3), {"CPU": 8, "GPU": 2})
    assert mixed == [ActorGroup("cuda", 2, 1, 1, 1), ActorGroup("llvm", 2, 3, 0, 3)]
    assert mixed[1].env_vars["TVM_NUM_THREADS"] == "3"
    explicit = resolve_actor_groups(_config(num_cpu_actors=1, threads_per_actor=1), {"CPU": 8})
    assert explicit == [ActorGroup("llvm", 1, 1, 0, 1)]


@pytest.mark.parametrize("kw,cluster,needle", [
    ({"target": "cuda"}, {"CPU": 4}, "the cluster has no GPUs"),
    ({"threads_per_actor": 4}, {"CPU": 2}, "threads_per_actor=4 exceeds the cluster's 2 CPUs"),
    ({"num_cpu_actors": 3}, {"CPU": 4}, "needs 6 CPUs, the cluster has 4 free"),
    ({"target": "mixed", "num_gpu_actors": 3}, {"CPU": 8, "GPU": 1}, "num_gpu_actors=3 but the cluster has 1 GPUs"),
])
def test_actor_groups_that_cannot_fit_say_so(kw, cluster, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve_actor_groups(_config(**kw), cluster)


def test_known_langs_sources(tmp_path):
    default = set(read_lang_list(LANG_LIST))
    assert len(default) == 100 and {"eng-us", "fra", "zho-s", "jpn"} <= default
    assert _config().known_lang_set(None) == default
    assert _config().known_lang_set(["a", "b"]) == {"a", "b"}
    assert _config(known_langs=["x"]).known_lang_set(["a"]) == {"x"}
    f = tmp_path / "langs.txt"
    f.write_text("# mine\nfra ger\nspa\n")
    assert _config(known_langs=str(f)).known_lang_set(None) == {"fra", "ger", "spa"}
    with pytest.raises(ConfigError, match="known_langs: cannot read"):
        _config(known_langs=str(tmp_path / "missing.txt")).known_lang_set(None)
