"""compile/build.py reads the compile configs into one CompileRequest; unknown keys are named."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build_module():
    spec = importlib.util.spec_from_file_location("build", ROOT / "compile" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shipped_compile_configs_load():
    build = _build_module()
    cpu = build.request_from_yaml(ROOT / "configs" / "compile_cpu.yaml")
    assert cpu.target == "llvm" and cpu.root is None  # None: the per-user cache
    assert [b.input_len for b in cpu.buckets() if b.batch == 64] == [16, 24, 32, 48, 64]
    gpu = build.request_from_yaml(ROOT / "configs" / "compile_cuda.yaml", checkpoint="/x")
    assert gpu.target == "cuda:sm_90" and gpu.checkpoint == "/x"


def test_unknown_key_is_named(tmp_path):
    build = _build_module()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("target: llvm\nbatch_size: [1]\n")
    with pytest.raises(SystemExit, match="batch_size"):
        build.request_from_yaml(cfg)
