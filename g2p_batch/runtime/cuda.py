"""CUDA at load time: the cross-compiled modules hold CUDA C, compiled here for this node's own
GPU, and a runtime-only TVM needs its CUDA device API loaded by hand."""

from __future__ import annotations

from pathlib import Path

__all__ = ["register_cuda_jit"]


def register_cuda_jit() -> None:
    """This TVM wheel cross-compiles CUDA modules as CUDA C (it links no CUDA runtime), so the
    GPU node compiles the kernels when it loads them: through NVRTC where cuda-bindings is
    installed, else nvcc. TVM's callback for that lives in tvm.support.nvcc."""
    import tvm
    import tvm_ffi

    if not tvm.cuda(0).exist:
        _load_cuda_sidecar(Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so")

    # tvm.support.nvcc's callback asks the compiler's Target API for the arch, which a
    # runtime-only TVM lacks; the device itself knows it.
    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code, *_):
        import shutil
        import subprocess
        import tempfile

        nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
        arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
        with tempfile.TemporaryDirectory() as d:
            src, out = Path(d) / "kernels.cu", Path(d) / "kernels.fatbin"
            src.write_text(code)
            proc = subprocess.run([nvcc, "--fatbin", "-O3", f"-arch={arch}", "-o", str(out), str(src)],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"nvcc failed on the CUDA kernels: {proc.stderr[-2000:]}")
            return bytearray(out.read_bytes())


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
