"""CUDA device code: built for the common GPUs when a set is compiled (where nvcc is), picked
at load for the node's GPU, or compiled there by nvcc as a fallback; and a runtime-only TVM's
CUDA device API, which it does not load by itself."""

from __future__ import annotations

import hashlib
import logging
import struct
from pathlib import Path

log = logging.getLogger("g2p_batch.runtime")

__all__ = ["covers", "fatbin_contents", "register_cuda_jit"]


def register_cuda_jit(device_code: dict[str, bytes] | None = None) -> None:
    """This TVM wheel cross-compiles CUDA modules as CUDA C, which TVM hands to this callback
    when the module loads. `device_code` (sha256 of the CUDA source -> fatbin, built by
    `g2p-batch compile` for `targets.CUDA_ARCHS` plus PTX) serves GPUs it covers, so the node
    needs no nvcc; otherwise nvcc compiles for the node's own GPU; with neither, the error names
    the GPU and what the set covers."""
    import tvm
    import tvm_ffi

    if not tvm.cuda(0).exist:
        _load_cuda_sidecar(Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so")
    shipped = dict(device_code or {})

    # tvm.support.nvcc's callback asks the compiler's Target API for the arch, which a
    # runtime-only TVM lacks; the device itself knows it.
    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code, *_):
        arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
        fatbin = shipped.get(hashlib.sha256(code.encode()).hexdigest())
        if fatbin is not None and covers(fatbin, arch):
            return bytearray(fatbin)
        if shipped and fatbin is None:
            log.warning("no shipped device code matches these CUDA kernels; compiling them with nvcc")
        return bytearray(_nvcc(code, arch, fatbin))


def covers(fatbin: bytes, arch: str) -> bool:
    """Whether a fatbin runs on `arch` (sm_XY): machine code for it, or PTX of an older or equal
    compute capability, which the driver compiles."""
    have = fatbin_contents(fatbin)
    cc = int(arch[3:])
    return any(kind == "elf" and sm == cc for kind, sm in have) or any(kind == "ptx" and sm <= cc for kind, sm in have)


def fatbin_contents(data: bytes) -> list[tuple[str, int]]:
    """(kind, sm) of each image in a CUDA fatbin: ("elf", 90) for sm_90 machine code, ("ptx",
    90) for compute_90 PTX. Read from the fatbin's own headers (magic 0xBA55ED50)."""
    magic, _, header, size = struct.unpack_from("<IHHQ", data, 0)
    if magic != 0xBA55ED50:
        raise ValueError("not a CUDA fatbin")
    out, off = [], header
    while off < header + size:
        kind, _, entry_header, padded = struct.unpack_from("<HHII", data, off)
        sm = struct.unpack_from("<I", data, off + 28)[0]
        out.append(({1: "ptx", 2: "elf"}.get(kind, str(kind)), sm))
        off += entry_header + padded
    return out


def _nvcc(code: str, arch: str, shipped: bytes | None) -> bytes:
    import shutil
    import subprocess
    import tempfile

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        have = ", ".join(f"{k} {'sm' if k == 'elf' else 'compute'}_{sm}" for k, sm in fatbin_contents(shipped)) \
            if shipped else "no device code (compiled without nvcc)"
        raise RuntimeError(f"this GPU is {arch}; the artifact set carries {have}, and this node has no nvcc "
                           f"to compile the kernels: compile the set where nvcc is installed (it adds "
                           f"device code for the common GPUs) or install the CUDA toolkit here")
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "kernels.cu", Path(d) / "kernels.fatbin"
        src.write_text(code)
        proc = subprocess.run([nvcc, "--fatbin", "-O3", f"-arch={arch}", "-o", str(out), str(src)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"nvcc failed on the CUDA kernels: {proc.stderr[-2000:]}")
        return out.read_bytes()


def _load_cuda_sidecar(lib: Path) -> None:
    """A runtime-only TVM (TVM_USE_RUNTIME_LIB=1, as on GPU nodes without the compiler) does not
    load its CUDA device API by itself; it needs libcudart 13, which CUDA wheels ship."""
    import ctypes
    import glob
    import sys

    try:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
        return
    except OSError:
        pass
    pats = [f"{p}/nvidia/**/libcudart.so.13*" for p in sys.path if p] + ["/usr/local/cuda*/lib*/libcudart.so.13*"]
    for pat in pats:
        for cand in sorted(glob.glob(pat, recursive=True)):
            try:
                ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
                ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                return
            except OSError:
                continue
    raise RuntimeError(f"could not load {lib}: libcudart.so.13 not found; install the CUDA 13 runtime "
                       f"(e.g. the nvidia-cuda-runtime wheel) or add it to LD_LIBRARY_PATH")
