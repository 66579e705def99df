"""The artifact cache across checkpoint updates: a set is keyed by checkpoint name, so retraining
a checkpoint in place (as each new default does) must not leave stale weights behind."""

from __future__ import annotations

import json
import shutil

import pytest

from g2p_batch import artifacts, checkpoint, verify
from g2p_batch.reference import Reference
from g2p_batch.runtime import load_engine


def _ensure(ck, root):
    return artifacts.ensure_artifacts(checkpoint=str(ck), target="llvm", batch_sizes=[8], input_buckets=[64],
                                      max_input_bytes=64, max_output_len=16, root=str(root), progress=False)


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_new_weights_repack_params_and_keep_compiled_buckets(tmp_path, parity_entries):
    ck, root = tmp_path / "model", tmp_path / "artifacts"
    checkpoint.make("micro", 0, ck, eos_shadow=7)
    first = _manifest(_ensure(ck, root))

    shutil.rmtree(ck)
    checkpoint.make("micro", 1, ck, eos_shadow=7)  # retrained in place: same name and shape
    out = _ensure(ck, root)
    second = _manifest(out)
    assert second["checkpoint"] == checkpoint.load(ck).identity() != first["checkpoint"]
    assert second["params"]["sha256"] != first["params"]["sha256"]
    assert second["buckets"] == first["buckets"]  # same module files, not recompiled
    assert not list(out.glob("*.tmp"))

    rep = verify.run(load_engine(out), parity_entries[:48], 8, reference=Reference(ck, threads=1))
    assert rep.rows == 48 and rep.mismatches == []  # decodes the new weights, exactly


def test_another_architecture_under_the_same_name_is_an_error(tmp_path):
    ck, root = tmp_path / "model", tmp_path / "artifacts"
    checkpoint.make("micro", 0, ck)
    out = _ensure(ck, root)
    shutil.rmtree(ck)
    checkpoint.make("micro_3_1", 0, ck)
    with pytest.raises(artifacts.ArtifactMismatch, match="checkpoint config") as err:
        _ensure(ck, root)
    assert str(out) in str(err.value)


def test_packing_refuses_a_set_another_job_repacked(tmp_path):
    """Two jobs, two checkpoints named alike, one artifacts root: the second re-packs the first's
    params in place, and the first must not ship them under its own name."""
    ck, root = tmp_path / "model", tmp_path / "artifacts"
    checkpoint.make("micro", 0, ck)
    out = _ensure(ck, root)
    mine = checkpoint.load(ck).sha256
    artifacts.verify_packed(artifacts.pack(out), mine, out)

    other = tmp_path / "elsewhere" / "model"
    checkpoint.make("micro", 1, other)
    assert _ensure(other, root) == out
    with pytest.raises(artifacts.ArtifactMismatch, match="its own --artifacts-dir"):
        artifacts.verify_packed(artifacts.pack(out), mine, out)
    artifacts.verify_packed(artifacts.pack(out), checkpoint.load(other).sha256, out)

    (out / "params.safetensors").write_bytes(b"half-written")  # torn: not what the manifest says
    with pytest.raises(artifacts.ArtifactMismatch, match="changed while this job packed them"):
        artifacts.verify_packed(artifacts.pack(out), checkpoint.load(other).sha256, out)
