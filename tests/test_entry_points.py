"""Every entry point is the one Typer app over the config dataclasses: the YAML keys, the flags
and the defaults cannot drift apart (`jobs/transcribe.py` and `compile/build.py` included)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from g2p_batch.cli import app
from g2p_batch.compile.artifacts import CompileConfig
from g2p_batch.errors import ConfigError
from g2p_batch.job.config import JobConfig
from g2p_batch.settings import load
from g2p_batch.tools.bench import BenchConfig
from g2p_batch.tools.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def _options(command: str) -> set[str]:
    cmd = typer.main.get_command(app).commands[command]
    return {p.name for p in cmd.params if p.param_type_name == "option"}


@pytest.mark.parametrize("command,cls,left_out", [
    ("run", JobConfig, set()), ("compile", CompileConfig, set()), ("transcribe", CompileConfig, set()),
    ("verify", CompileConfig, {"batch_sizes"}), ("train", TrainConfig, set()), ("bench", BenchConfig, set()),
])
def test_each_config_field_is_a_flag(command, cls, left_out):
    assert {f.name for f in dataclasses.fields(cls)} - left_out <= _options(command)


@pytest.mark.parametrize("script,command", [("jobs/transcribe.py", "run"), ("compile/build.py", "compile")])
def test_the_scripts_are_the_cli(script, command):
    res = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in _options(command):
        assert "--" + name.replace("_", "-") in res.stdout, name


def test_shipped_compile_configs_load():
    cpu = load(CompileConfig, ROOT / "configs" / "compile_cpu.yaml")
    assert cpu.target == "llvm" and cpu.artifacts_dir is None  # None: the per-user cache
    assert [b.input_len for b in cpu.buckets() if b.batch == 64] == [16, 24, 32, 48, 64]
    gpu = load(CompileConfig, ROOT / "configs" / "compile_cuda.yaml", checkpoint="/x")
    assert gpu.target == "cuda:sm_90" and gpu.checkpoint == "/x"


def test_unknown_key_is_named_by_the_script(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("target: llvm\nbatch_size: [1]\n")
    with pytest.raises(ConfigError, match="'batch_size'.*did you mean 'batch_sizes'"):
        load(CompileConfig, cfg)
    res = subprocess.run([sys.executable, str(ROOT / "compile" / "build.py"), str(cfg)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and "unknown config key 'batch_size'" in res.stderr
