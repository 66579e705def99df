"""TVM targets as explicit JSON dicts, detected from the host rather than `mcpu=native`
(which this TVM wheel rejects and silently replaces with generic x86). Shared by the compiler,
which names a set's target, and the runtime, which checks the host can run it."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from ..errors import ConfigError

# device code shipped in a CUDA set: the datacenter GPUs of the last generations, and PTX the
# driver compiles for anything newer
CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
CUDA_PTX = "compute_90"

__all__ = ["CUDA_ARCHS", "CUDA_PTX", "cpu_target", "cuda_target", "host_cpu", "host_cpu_flags", "kind", "required_flags", "resolve", "short_name"]

_X86_LEVELS = [  # (mcpu, flags it needs): the first whose flags the host has wins
    ("skylake-avx512", {"avx512f", "avx512bw", "avx512vl", "avx2", "fma"}),
    ("haswell", {"avx2", "fma", "bmi2"}),
    ("x86-64", set()),
]


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


def cpu_target(flags: set[str] | None = None) -> dict:
    """The widest x86 level the host supports, named portably (haswell = AVX2+FMA) so artifacts
    built on one node load on any node with the same instruction set."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return {"kind": "llvm"}
    flags = host_cpu_flags() if flags is None else flags
    mcpu = next(name for name, need in _X86_LEVELS if need <= flags)
    return {"kind": "llvm", "mtriple": "x86_64-pc-linux-gnu", "mcpu": mcpu}


def required_flags(target: dict) -> set[str]:
    return next((need for name, need in _X86_LEVELS if name == target.get("mcpu")), set())


def cuda_target(arch: str = "sm_90") -> dict:
    return {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152,
            "thread_warp_size": 32}


def resolve(name: str) -> dict:
    """'llvm' | 'cuda' | 'cuda:sm_80' | a JSON target string."""
    if name == "llvm":
        return cpu_target()
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
