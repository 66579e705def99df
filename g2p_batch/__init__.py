"""g2p-batch: CharsiuG2P ByT5 grapheme-to-phoneme transcription, compiled with Apache TVM and
run as a Ray batch job (Parquet in, Parquet out).

The public API is `__all__`; everything else is private. Names load on first use, so `import
g2p_batch` stays light (no TVM, no Ray until asked for). The layers, top to bottom: cli, api and
ray_data and tools, job, compile, runtime, model, decode (README.md, "Layout")."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "G2P": "api", "RowResult": "decode.transcriber", "JobConfig": "job.config", "load_config": "job.config",
    "run_job": "job.driver", "JobReport": "job.driver", "CompileConfig": "compile.artifacts",
    "Transcribe": "ray_data", "transcribe_stage": "ray_data", "G2PError": "errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'g2p_batch' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
