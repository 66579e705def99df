"""The CUDA path builds on a machine without a GPU (nvcc only): modules, manifest, fatbins."""

from __future__ import annotations

import shutil

import pytest


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_artifacts_build_without_gpu(make_set):
    from g2p_batch.artifacts import read_manifest, verify_files

    ck, art = make_set(arch="micro", T=8, batch_sizes=(8,), buckets=(32,), target="cuda")
    m = read_manifest(art)
    assert m["target"]["kind"] == "cuda" and m["target"]["arch"] == "sm_90"
    assert m["kernel_target"] == "gpu"
    assert [(b["batch"], b["input_len"]) for b in m["buckets"]] == [(8, 32)]
    verify_files(art, m)
    so = art / m["buckets"][0]["path"]
    assert b"__global__" in so.read_bytes()  # the kernels travel as CUDA C, compiled on the GPU node at load
