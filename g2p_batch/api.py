"""The Python API: a model for a few words in-process, and the job as a function.

    from g2p_batch import G2P, JobConfig, run_job
    g2p = G2P.load("default")                       # compiles on first use, then reuses
    g2p(["hello", "world"], lang="eng-us")          # [RowResult(phonemes=..., status="ok", ...)]
    g2p([("eng-us", "cat"), ("fra", "chat")])       # (lang, word) pairs
    run_job(JobConfig(input="words.parquet", output="out/", lang_column="lang"))
"""

from __future__ import annotations

import os
from typing import Sequence

from .compile.artifacts import CompileConfig, ensure_artifacts
from .decode.transcriber import RowResult, Transcriber
from .errors import ConfigError
from .job.lexicon import entries, read_lexicons
from .runtime import targets
from .runtime.engine import load_engine

__all__ = ["G2P"]


class G2P:
    """One checkpoint's engine on this machine's CPU (or GPU), with the job's row rules: the
    same results as `g2p-batch run` for the same words."""

    def __init__(self, transcriber: Transcriber):
        self.transcriber = transcriber

    @classmethod
    def load(cls, checkpoint: str = "default", *, target: str = "llvm", threads: int | None = None,
             space_after_colon: bool | None = None, input_eos: bool | None = None, stop_loops: bool = True,
             keep_case: bool = False, lexicon: str | list[str] | None = None, num_beams: int = 1,
             n_best: int = 1, **compile_settings) -> "G2P":
        """`checkpoint`: 'default', a local Hugging Face directory or a hub id; `lexicon`: files
        whose entries win over the model; `keep_case`: no lowercasing; `num_beams` > 1: beam
        search, each result's `candidates` holding the `n_best` best. Other keywords are
        CompileConfig's (batch_sizes, precision, max_output_len, artifacts_dir, ...); the artifact set is
        compiled on first use and found in the cache after."""
        config = CompileConfig(checkpoint=checkpoint, target=target, **compile_settings)
        device = "cuda" if targets.kind(targets.resolve(config.target)) == "gpu" else "cpu"
        engine = load_engine(ensure_artifacts(config, progress=False), device=device,
                             threads=threads or os.cpu_count())
        prompt = engine.prompt.override(space_after_colon, input_eos)
        files = [lexicon] if isinstance(lexicon, str) else list(lexicon or [])
        return cls(Transcriber.for_engine(engine, stop_loops, prompt, keep_case,
                                          entries(read_lexicons(files)) if files else None, num_beams, n_best))

    def __call__(self, words: str | Sequence[str] | Sequence[tuple[str, str]],
                 lang: str | None = None) -> list[RowResult]:
        """Words of one language (`lang`), or (lang, word) pairs; one RowResult per word, in order."""
        if isinstance(words, str):
            words = [words]
        if lang is not None:
            langs, words = [lang] * len(words), list(words)
        elif all(isinstance(w, (tuple, list)) and len(w) == 2 for w in words):
            langs, words = [w[0] for w in words], [w[1] for w in words]
        else:
            raise ConfigError("pass lang='...' with a list of words, or a list of (lang, word) pairs")
        return self.transcriber.transcribe(langs, words)
