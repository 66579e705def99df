"""Shared fixtures: seeded checkpoints and their compiled artifacts, built once per session.

TVM's pool reads its thread count when it starts, and its spinning workers slow torch in the
same process, so both are set before anything imports tvm."""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
if "G2P_BATCH_CACHE" not in os.environ:  # compiled sets land here unless a test names a folder
    import tempfile
    os.environ["G2P_BATCH_CACHE"] = tempfile.mkdtemp(prefix="g2p-batch-test-cache-")
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

DATA = Path(os.environ.get("G2P_DATA", Path(__file__).resolve().parents[2] / "shared" / "charsiug2p-data"))
FIXTURE_WORDS = Path(__file__).parent / "fixtures" / "words"

# 25 languages, 20 words each (tests/fixtures/words): Latin, Cyrillic, Arabic, Devanagari, Thai,
# Hangul, CJK, Georgian, Armenian, Greek, Ethiopic, Khmer, Tamil and Odia scripts
PARITY_LANGS = ["eng-us", "fra", "ger", "pol", "vie-n", "rus", "ukr", "bul", "ara", "fas", "urd", "hin",
                "san", "tha", "kor", "jpn", "zho-s", "yue", "geo", "arm-e", "gre", "amh", "khm", "tam", "ori"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The CharsiuG2P data; tests that need it skip, naming where it was looked for."""
    if not (DATA / "data" / "test").is_dir():
        pytest.skip(f"CharsiuG2P data not found at {DATA}; set G2P_DATA to the charsiug2p-data folder")
    return DATA


@pytest.fixture(scope="session")
def parity_entries():
    """500 test-split words (20 per language, tests/fixtures/words), each fitting 64 input ids."""
    from g2p_batch.tools import lexicon

    out = [e for lang in PARITY_LANGS for e in lexicon.read_tsv(FIXTURE_WORDS / f"{lang}.tsv")]
    assert len(out) == 500
    return out


# one language per script, for a checkpoint trained in the test session
TRAINED_LANGS = ["eng-us", "pol", "vie-n", "ukr", "fas", "hin", "tha", "kor", "zho-s", "geo", "gre", "amh",
                 "tam", "khm"]


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, data_dir) -> Path:
    """A micro checkpoint trained for about 300 steps the CharsiuG2P way (`<lang>:word`, no EOS
    on the input) on 200 words of each of TRAINED_LANGS: it has learned to end its outputs, so
    rows end at varied steps, and it still loops often, as real models sometimes do."""
    import shutil

    import torch

    from g2p_batch.tools.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    (root / "train").mkdir()
    for lang in TRAINED_LANGS:
        lines = (data_dir / "data" / "train" / f"{lang}.tsv").read_text(encoding="utf-8").splitlines()[:200]
        (root / "train" / f"{lang}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    threads = torch.get_num_threads()
    try:
        summary = train(TrainConfig(data=str(root / "train"), out=str(root / "ckpt"), arch="micro", epochs=4,
                                    batch_size=32, lr=3e-3, warmup_steps=30, dropout=None, seed=0, device="cpu",
                                    log_every=1000, dev_generate=0))
    finally:
        torch.set_num_threads(threads)
    assert summary["steps"] >= 300 and summary["final_loss"] < 2.5, summary["loss_history"]
    shutil.rmtree(root / "train")
    return root / "ckpt"


@pytest.fixture(scope="session")
def make_set(tmp_path_factory):
    """(arch, seed, eos_shadow, T, batch sizes, buckets, target) -> (checkpoint dir, artifact dir),
    built once per session."""
    from g2p_batch.compile import artifacts
    from g2p_batch.tools import checkpoints

    root = tmp_path_factory.mktemp("sets")
    cache = {}

    def make(arch="micro", seed=0, eos_shadow=None, T=16, batch_sizes=(1, 8), buckets=(32, 64), target="llvm"):
        key = (arch, seed, eos_shadow, T, tuple(batch_sizes), tuple(buckets), target)
        if key not in cache:
            ck = root / f"{arch}_{seed}_{eos_shadow}"
            if not (ck / "config.json").exists():
                checkpoints.make(arch, seed, ck, eos_shadow=eos_shadow)
            art = artifacts.ensure_artifacts(checkpoint=str(ck), target=target, batch_sizes=list(batch_sizes),
                                             max_input_bytes=max(buckets), input_buckets=list(buckets),
                                             max_output_len=T, artifacts_dir=str(root / "artifacts" / f"T{T}"),
                                             progress=False)
            cache[key] = (ck, art)
        return cache[key]

    return make
