"""CUDA artifacts on a real GPU: decoding must equal transformers row by row.

Needs a CUDA device; skipped elsewhere. The modules are cross-compiled on a CPU machine
(`G2P_CUDA_SET` names such a set, built by tests/test_cuda_build.py's recipe) so that this runs
with a runtime-only TVM on the GPU node."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.gpu

try:
    from g2p_batch.runtime.cuda import register_cuda_jit

    register_cuda_jit()
except Exception:  # no CUDA runtime on this machine: nothing to test here
    pass
if not tvm.cuda(0).exist:
    pytest.skip("no CUDA device", allow_module_level=True)


@pytest.fixture(scope="module")
def cuda_set():
    path = os.environ.get("G2P_CUDA_SET")
    if not path:
        pytest.fail("set G2P_CUDA_SET to a folder holding checkpoint/ and artifacts/ (a CUDA artifact set)")
    root = Path(path)
    return root / "checkpoint", root / "artifacts"


def _verified(engine, reference, entries, batch: int):
    """verify.run's report, once it has shown every row equal to transformers'."""
    from g2p_batch.tools import verify

    rep = verify.run(engine, entries, batch, reference=reference)
    assert rep.mismatches == [], [(rep.tvm_text[i], rep.ref_text[i]) for i in rep.mismatches[:5]]
    return rep


def test_cuda_matches_transformers(cuda_set, parity_entries):
    from g2p_batch.runtime.engine import load_engine
    from g2p_batch.tools.reference import Reference

    ck, art = cuda_set
    engine = load_engine(art, device="cuda")
    assert "cuda" in str(engine.device)
    assert _verified(engine, Reference(ck), parity_entries, 8).rows == 500


def test_cuda_early_exit_and_truncation(cuda_set, parity_entries):
    import numpy as np

    from g2p_batch.decode.tokenizer import encode, pad_batch
    from g2p_batch.runtime.engine import load_engine

    ck, art = cuda_set
    engine = load_engine(art, device="cuda")
    ids = pad_batch([encode(e.lang, e.word) for e in parity_entries[:5]], 32, 8)
    out = engine.decode(ids)
    assert (out.lengths[5:] == 0).all() and not out.truncated[5:].any(), "filler rows must not decode"
    # row by row: a truncated row ran to max_output_len or was stopped as a loop; others ended
    T = engine.max_output_len
    assert ((out.lengths[:5] == T) | out.looped[:5] | ~out.truncated[:5]).all()
    assert (out.truncated[:5] | (out.tokens[:5] == 1).any(axis=1)).all()
    assert np.isfinite(out.scores).all()


@pytest.fixture(scope="module")
def large_set():
    """The bench's tiny_8 modules for batches 1 and 1024 (the hand-scheduled GPU attention, greedy
    head and picked dense tiles at the shapes the bench times), with weights from the set's
    checkpoint, and its transformers reference (loaded once for both tests).
    `G2P_CUDA_LARGE_SET` names a folder like G2P_CUDA_SET's."""
    from g2p_batch.runtime.engine import load_engine
    from g2p_batch.tools.bench import _params_for
    from g2p_batch.tools.reference import Reference

    path = os.environ.get("G2P_CUDA_LARGE_SET")
    if not path:
        pytest.skip("G2P_CUDA_LARGE_SET not set (tests/gpu/device_run.sh sets it)")
    ck, art = Path(path) / "checkpoint", Path(path) / "artifacts"
    return load_engine(art, device="cuda", params=_params_for(str(art), str(ck))), Reference(ck)


def test_cuda_large_batch_matches_transformers(large_set, parity_entries):
    """500 words in one 1024-row batch."""
    engine, ref = large_set
    batch = max(b.batch for b in engine.buckets)
    assert _verified(engine, ref, parity_entries, batch).rows == 500


def test_cuda_batch_1_matches_transformers(large_set, parity_entries):
    """One word per call, as the bench's latency is timed: at one row the dense tile picks and
    the reductions' launch shapes differ from the 1024-row ones."""
    engine, ref = large_set
    assert min(b.batch for b in engine.buckets) == 1
    assert _verified(engine, ref, parity_entries[:60], 1).rows == 60
