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
    assert b"__global__" in so.read_bytes()  # CUDA C travels too: the fallback for a GPU not covered

    # device code for the common datacenter GPUs, and PTX the driver compiles for newer ones,
    # read from the fatbin's own headers and recorded in the manifest
    from g2p_batch.runtime.cuda import covers, fatbin_contents
    from g2p_batch.runtime.targets import CUDA_ARCHS
    device = m["buckets"][0]["device_code"]
    fatbin = (art / device["path"]).read_bytes()
    assert sorted(f"sm_{sm}" for kind, sm in fatbin_contents(fatbin) if kind == "elf") == sorted(CUDA_ARCHS)
    assert [sm for kind, sm in fatbin_contents(fatbin) if kind == "ptx"] == [90]
    assert device["archs"] == list(CUDA_ARCHS) and device["ptx"] == ["compute_90"]
    assert all(covers(fatbin, a) for a in ("sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"))
    assert not covers(fatbin, "sm_75")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_a_gpu_the_set_does_not_cover_without_nvcc_is_named(monkeypatch, tmp_path):
    import shutil as sh

    from g2p_batch.runtime import cuda
    fatbin = tmp_path / "k.fatbin"
    (tmp_path / "k.cu").write_text('extern "C" __global__ void k(float* x) { x[threadIdx.x] += 1.0f; }\n')
    import subprocess
    subprocess.run(["nvcc", "--fatbin", "-gencode=arch=compute_90,code=sm_90", "-o", str(fatbin),
                    str(tmp_path / "k.cu")], check=True)
    monkeypatch.setattr(sh, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="this GPU is sm_75; the artifact set carries elf sm_90.*no nvcc"):
        cuda._nvcc("// code", "sm_75", fatbin.read_bytes())


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_kernels_compile_without_spills(tmp_path):
    """The hand-scheduled GPU kernels (attention, greedy head) and the picked dense tiles must
    come out as CUDA that nvcc accepts for sm_90 without spilling registers. Whether they are
    right needs a GPU: tests/gpu/kernel_check.py and the parity tests there."""
    import re
    import subprocess

    from g2p_batch.compile.builder import compile_bucket, cuda_source
    from g2p_batch.model.archs import resolve_arch
    from g2p_batch.model.shapes import T5Shape
    from g2p_batch.runtime import targets

    shape = T5Shape.from_hf_config(resolve_arch("micro"))
    lib = compile_bucket(shape, 8, 64, 24, targets.cuda_target()).mod  # what `compile` exports

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
