"""A deterministic stand-in for the TVM engine, plugged in through the real seam.

`FakeEngine` "transcribes" a word as its characters reversed, so a test can check every output
row against its input row. It goes through the same path as the real engine: the driver calls
`prepare_fake_engine` (a preparer), puts its small artifact blob in the object store, and each
actor builds the engine with `load_fake_engine` (a loader) from the resolved bytes.

Failure switches, for the fault tests (each takes a word; the marker file makes it one-shot):
- `die_on_word`: the worker process exits hard (`os._exit(1)`) on a batch holding that word;
- `raise_on_word`: decode raises RuntimeError, like a runtime/device fault.
And for ordering actors by state rather than by time: `signal` (a file each decode touches)
and `wait_for` (a file decode waits for, up to 60 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from g2p_batch.decode.beam import Candidate
from g2p_batch.decode.engine import (
    CALL_COST_ROWS,
    Bucket,
    DecodeOutput,
    EngineSpec,
    PreparedEngine,
    beam_output,
)
from g2p_batch.decode.tokenizer import EOS, PAD, decode, encode_text

FAKE_SCORE = -0.1


def fake_phonemes(word: str) -> str:
    return word[::-1]


class FakeEngine:
    def __init__(self, buckets: list[Bucket], max_output_len: int, *, die_on_word: str | None = None,
                 raise_on_word: str | None = None, marker: str | None = None,
                 delay_s: float = 0.0, encode_s: float = 0.0, signal: str | None = None,
                 wait_for: str | None = None):
        self.buckets = sorted(buckets)
        self.max_output_len = max_output_len
        self.call_cost_rows = CALL_COST_ROWS["cpu"]
        self.die_on_word, self.raise_on_word, self.marker = die_on_word, raise_on_word, marker
        self.delay_s, self.encode_s = delay_s, encode_s
        self.signal, self.wait_for = signal, wait_for
        self.stage_seconds = {"encode": 0.0}
        self.calls: list[tuple[int, int]] = []

    def decode(self, input_ids: np.ndarray, *, stop_loops: bool = True) -> DecodeOutput:
        B, L = input_ids.shape
        if Bucket(B, L) not in self.buckets:
            raise ValueError(f"shape {(B, L)} is not a compiled bucket")
        self.calls.append((B, L))
        if self.signal:
            Path(self.signal).touch()
        deadline = time.monotonic() + 60
        while self.wait_for and not Path(self.wait_for).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.stage_seconds["encode"] += self.encode_s
        if self.delay_s:
            time.sleep(self.delay_s)
        T = self.max_output_len
        tokens = np.full((B, T), PAD, dtype=np.int32)
        lengths = np.zeros(B, dtype=np.int32)
        truncated = np.zeros(B, dtype=bool)
        for r in range(B):
            text = decode(input_ids[r])
            word = text.split(">:", 1)[1].lstrip(" ") if ">:" in text else ""
            self._faults(word)
            ids = encode_text(fake_phonemes(word)) if text else [EOS]
            if len(ids) > T:
                ids, truncated[r] = ids[:T], True
            tokens[r, : len(ids)] = ids
            lengths[r] = len(ids)
        return DecodeOutput(tokens, lengths, np.full(B, FAKE_SCORE, np.float32), truncated,
                            steps=int(lengths.max(initial=0)))

    def decode_beams(self, input_ids: np.ndarray, num_beams: int, n_best: int) -> DecodeOutput:
        """Candidate j of a word: its reversal with j "~" appended, score FAKE_SCORE * (j + 1)."""
        R, L = input_ids.shape
        if Bucket(R * num_beams, L) not in self.buckets:
            raise ValueError(f"{R} rows x {num_beams} beams of {L} ids fit no compiled bucket")
        self.calls.append((R * num_beams, L))
        rows = []
        for r in range(R):
            text = decode(input_ids[r])
            word = text.split(">:", 1)[1].lstrip(" ") if ">:" in text else ""
            rows.append([Candidate(np.array(encode_text(fake_phonemes(word) + "~" * j), np.int32),
                                   FAKE_SCORE * (j + 1), False) for j in range(n_best)] if text else [])
        return beam_output(rows, self.max_output_len, 1)

    def _faults(self, word: str) -> None:
        once = self.marker is None or not Path(self.marker).exists()
        if word and word == self.die_on_word and once:
            if self.marker:
                Path(self.marker).write_text("died")
            os._exit(1)
        if word and word == self.raise_on_word and once:
            if self.marker:
                Path(self.marker).write_text("raised")
            raise RuntimeError(f"fake device fault on {word!r}")


def prepare_fake_engine(config, target: str, **options) -> PreparedEngine:
    """Preparer: the job's buckets as a small JSON "artifact". Options may also come from the
    FAKE_ENGINE env var (JSON), for drivers run as a subprocess."""
    options = {**json.loads(os.environ.get("FAKE_ENGINE", "{}")), **options}
    languages = options.pop("languages", None)
    input_rules = options.pop("input_rules", None)
    manifest = {"buckets": [[b, n] for b in config.batch_sizes for n in config.input_buckets],
                "max_output_len": config.max_output_len, "target": target}
    blob = json.dumps(manifest).encode()
    return PreparedEngine(
        spec=EngineSpec(target=target, loader="tests.fakes:load_fake_engine", blob=blob,
                        options=options),
        languages=languages, checkpoint_id="fake-ckpt", input_rules=input_rules,
        artifacts_hash=hashlib.sha256(blob).hexdigest())


def load_fake_engine(spec: EngineSpec) -> FakeEngine:
    """Loader: runs in the actor, from the resolved blob (not a path: nothing is shared)."""
    if spec.options.get("fail_load"):
        raise RuntimeError("fake engine refuses to load")
    manifest = json.loads(spec.blob)
    return FakeEngine([Bucket(b, n) for b, n in manifest["buckets"]], manifest["max_output_len"],
                      **{k: v for k, v in spec.options.items() if k != "fail_load"})
