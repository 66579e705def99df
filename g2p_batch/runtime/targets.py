"""TVM targets as explicit JSON dicts, detected from the host rather than `mcpu=native`
(which this TVM wheel rejects and silently replaces with generic x86). Shared by the compiler,
which names a set's target, and the runtime, which checks the host can run it."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from ..errors import ConfigError
from ..model.shapes import PRECISIONS
from ..settings import check_choice

# device code shipped in a CUDA set: the datacenter GPUs of the last generations, and PTX the
# driver compiles for anything newer
CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
CUDA_PTX = "compute_90"

__all__ = ["BF16_FLAGS", "CUDA_ARCHS", "CUDA_PTX", "cpu_target", "cuda_target", "enable_amx", "host_cpu",
           "host_cpu_flags", "kind", "required_flags", "resolve", "short_name"]

_X86_LEVELS = [  # (mcpu, flags it needs): the first whose flags the host has wins
    ("skylake-avx512", {"avx512f", "avx512bw", "avx512vl", "avx2", "fma"}),
    ("haswell", {"avx2", "fma", "bmi2"}),
    ("x86-64", set()),
]
# bf16 sets (`--precision bf16`): AMX tiles for the dense layers, AVX-512 for the rest
BF16_MCPU = "sapphirerapids"
BF16_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile", "amx_bf16"}


def host_cpu_flags() -> set[str]:
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def host_cpu() -> dict:
    """The host CPU as benchmarks record it: model name, cores, and the instruction set the
    compiled kernels use (`cpu_target`'s mcpu), since hosts of one pool may differ."""
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    return {"model": model, "cores": os.cpu_count(), "mcpu": cpu_target().get("mcpu", "generic")}


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_target(flags: set[str] | None = None, precision: str = "fp32") -> dict:
    """The widest x86 level the host supports, named portably (haswell = AVX2+FMA) so artifacts
    built on one node load on any node with the same instruction set. bf16 sets always target
    Sapphire Rapids' AMX, whatever the building host has (they are checked where they load)."""
    if precision == "bf16":
        if platform.machine() not in ("x86_64", "AMD64"):
            raise ConfigError(f"precision bf16 needs an x86 CPU with AMX; this is {platform.machine()}: "
                              "use --precision fp32")
        return {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu", "mcpu": BF16_MCPU}
    if platform.machine() not in ("x86_64", "AMD64"):
        return {"kind": "llvm"}
    flags = host_cpu_flags() if flags is None else flags
    mcpu = next(name for name, need in _X86_LEVELS if need <= flags)
    return {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu", "mcpu": mcpu}


def required_flags(target: dict) -> set[str]:
    if target.get("mcpu") == BF16_MCPU:
        return BF16_FLAGS
    return next((need for name, need in _X86_LEVELS if name == target.get("mcpu")), set())


def enable_amx() -> None:
    """Ask Linux for the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA): a process
    that runs a tile instruction without it dies of SIGILL. Once per process, for all threads."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(158, 0x1023, 18) != 0:  # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
        raise ConfigError(f"the kernel refused AMX tile state (errno {ctypes.get_errno()}): bf16 sets need "
                          "Linux 5.16 or newer on a CPU with amx_tile; use --precision fp32")


def cuda_target(arch: str = "sm_90") -> dict:
    return {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32}


def resolve(name: str, precision: str = "fp32") -> dict:
    """'llvm' | 'cuda' | 'cuda:sm_80' | a JSON target string; `precision` bf16 is CPU only."""
    check_choice("precision", precision, PRECISIONS)
    if name == "llvm":
        return cpu_target(precision=precision)
    if precision == "bf16":
        raise ConfigError(f"precision bf16 runs on CPUs with AMX (target llvm), not target {name!r}; "
                          "use --precision fp32 there")
    if name.startswith("cuda"):
        _, _, arch = name.partition(":")
        return cuda_target(arch or "sm_90")
    if name.startswith("{"):
        try:
            return json.loads(name)
        except ValueError as exc:
            raise ConfigError(f"target {name!r} is not valid JSON ({exc})") from exc
    raise ConfigError(f"unknown target {name!r}; use llvm, cuda, cuda:sm_XX or a JSON target dict")


def kind(target: dict) -> str:
    return "gpu" if target["kind"] in ("cuda", "rocm", "vulkan", "metal") else "cpu"


def short_name(target: dict) -> str:
    """The artifact folder's name for a target: hosts of one pool differ (AVX2 and AVX-512 CPUs),
    so each instruction set gets its own set in a shared cache."""
    if target["kind"] == "cuda":
        return f"cuda-{target.get('arch', 'sm_90')}"
    return f"{target['kind']}-{target['mcpu']}" if target.get("mcpu") else target["kind"]
