"""The CUDA path builds on a machine without a GPU (nvcc only): modules, manifest, fatbins."""

from __future__ import annotations

import shutil

import pytest


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_artifacts_build_without_gpu(make_set):
    from g2p_batch.runtime.manifest import read_manifest, verify_files

    ck, art = make_set(arch="micro", T=8, batch_sizes=(8,), buckets=(32,), target="cuda")
    m = read_manifest(art)
    assert m["target"]["kind"] == "cuda" and m["target"]["arch"] == "sm_90"
    assert m["kernel_target"] == "gpu"
    assert [(b["batch"], b["input_len"]) for b in m["buckets"]] == [(8, 32)]
    verify_files(art, m)
    so = art / m["buckets"][0]["path"]
    assert b"__global__" in so.read_bytes()  # the kernels travel as CUDA C, compiled on the GPU node at load


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_kernels_compile_without_spills(tmp_path):
    """The hand-scheduled GPU kernels (attention, greedy head) and the picked dense tiles must
    come out as CUDA that nvcc accepts for sm_90 without spilling registers. Whether they are
    right needs a GPU: tests/gpu/kernel_check.py and the parity tests there."""
    import re
    import subprocess

    from g2p_batch.compile.builder import compile_bucket
    from g2p_batch.model.archs import resolve_arch
    from g2p_batch.model.shapes import T5Shape
    from g2p_batch.runtime import targets

    shape = T5Shape.from_hf_config(resolve_arch("micro"))
    lib = compile_bucket(shape, 8, 64, 24, targets.cuda_target()).mod  # what `compile` exports

    def cuda_source(m):
        for sub in m.imports:
            if sub.kind == "cuda":
                return sub.inspect_source()
            found = cuda_source(sub)
            if found:
                return found
    src = cuda_source(lib)
    bodies = {}  # kernel name -> its CUDA body (declarations skipped)
    for part in src.split('extern "C" __global__ ')[1:]:
        head, _, body = part.partition("{")
        name = re.search(r"(\w+)\(", head.split(")", 1)[1])
        if body and name and not head.rstrip().endswith(";"):
            bodies[name.group(1)] = body
    warp_reduced = [n for n, b in bodies.items() if "__shfl_down_sync" in b]
    for name in ("greedy_8x384", "self_attn_8x24_w16_l0", "cross_attn_8x64_l1"):
        assert any(n.startswith(name) for n in warp_reduced), (name, sorted(bodies))
    # the encoder's attention stages a sequence's keys per (sequence, head) block, rows padded
    # to d_kv + 1 floats: 63 rows of 17 and a last one of 16 for micro's 64 keys of 16
    enc = next(b for n, b in bodies.items() if n.startswith("enc_attn_8x64"))
    assert "__shared__ alignas(64) float ks_ptr[1087];" in enc, enc[:500]
    (tmp_path / "k.cu").write_text(src)
    proc = subprocess.run(["nvcc", "--cubin", "-arch=sm_90", "-O3", "-Xptxas", "-v", "k.cu", "-o", "k.cubin"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    spills = [line for line in proc.stderr.splitlines() if "spill" in line and " 0 bytes spill stores" not in line]
    assert not spills, spills
