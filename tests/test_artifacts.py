"""The artifact cache across checkpoint updates: a set is keyed by checkpoint name, so retraining
a checkpoint in place (as each new default does), or another checkpoint of the same name, must
never decode stale or foreign weights."""

from __future__ import annotations

import json
import shutil

import pytest

from g2p_batch.compile import artifacts
from g2p_batch.errors import ArtifactError
from g2p_batch.model import checkpoint
from g2p_batch.runtime.engine import load_engine
from g2p_batch.runtime.manifest import pack, params_file
from g2p_batch.tools import checkpoints, verify
from g2p_batch.tools.reference import Reference


def _ensure(ck, root):
    return artifacts.ensure_artifacts(checkpoint=str(ck), target="llvm", batch_sizes=[8], input_buckets=[64],
                                      max_input_bytes=64, max_output_len=16, artifacts_dir=str(root), progress=False)


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_new_weights_repack_params_and_keep_compiled_buckets(tmp_path, parity_entries):
    ck, root = tmp_path / "model", tmp_path / "artifacts"
    checkpoints.make("micro", 0, ck, eos_shadow=7)
    first = _manifest(_ensure(ck, root))

    shutil.rmtree(ck)
    checkpoints.make("micro", 1, ck, eos_shadow=7)  # retrained in place: same name and shape
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
    checkpoints.make("micro", 0, ck)
    out = _ensure(ck, root)
    shutil.rmtree(ck)
    checkpoints.make("micro_3_1", 0, ck)
    with pytest.raises(ArtifactError, match="checkpoint config") as err:
        _ensure(ck, root)
    assert str(out) in str(err.value)


def test_same_named_checkpoints_share_a_set_and_each_job_packs_its_own_weights(tmp_path):
    """Two jobs, two checkpoints named alike, one artifacts root: whichever weights the manifest
    names last, each job's blob holds its own params (and no one else's), with a manifest that
    says so; a file that no longer matches its manifest stops the packing."""
    from safetensors.numpy import load_file

    from g2p_batch.model.params import build_params
    from g2p_batch.model.shapes import T5Shape
    from g2p_batch.runtime.loader import unpack_cached

    ck, other = tmp_path / "model", tmp_path / "elsewhere" / "model"
    checkpoints.make("micro", 0, ck)
    checkpoints.make("micro", 1, other)
    out = _ensure(ck, root := tmp_path / "artifacts")
    assert _ensure(other, root) == out  # the manifest now names the other weights
    assert len(list(out.glob("params-*.safetensors"))) == 2 and not list(out.glob("*.tmp"))

    for cp in (checkpoint.load(ck), checkpoint.load(other)):
        blob, manifest = pack(out, cp.sha256)
        assert manifest["checkpoint"]["weights_sha256"] == cp.sha256
        got = unpack_cached(blob, root=str(tmp_path / "cache"))
        assert [p.name for p in got.glob("params-*")] == [params_file(cp.sha256)]
        assert _manifest(got) == manifest
        params = load_file(str(got / manifest["params"]["path"]))
        want = build_params(cp.weights, T5Shape.from_hf_config(cp.config), packed=True)
        assert all((params[k] == want[k]).all() for k in want)

    (out / _manifest(out)["buckets"][0]["path"]).write_bytes(b"half-written")
    with pytest.raises(ArtifactError, match="does not match its manifest sha256"):
        pack(out, checkpoint.load(ck).sha256)


def test_a_set_of_another_format_is_refused_by_name(tmp_path):
    """Another format lays params and caches out differently: such a set must fail with the
    folder to remove, not decode garbage."""
    ck, root = tmp_path / "model", tmp_path / "artifacts"
    checkpoints.make("micro", 0, ck)
    out = _ensure(ck, root)
    m = _manifest(out)
    (out / "manifest.json").write_text(json.dumps({**m, "format": 2}))
    with pytest.raises(ArtifactError, match="format") as err:
        load_engine(out)
    assert str(out) in str(err.value)
    with pytest.raises(ArtifactError, match="format: requested 3, artifacts have 2"):
        _ensure(ck, root)


def test_buckets_compiled_by_other_kernel_code_are_reused_with_a_warning(tmp_path, monkeypatch, caplog):
    """A schedule change that keeps the format leaves a cached set correct but maybe slower: it is
    reused, and the warning names the folder to remove."""
    ck, root = tmp_path / "model", tmp_path / "artifacts"
    checkpoints.make("micro", 0, ck)
    out = _ensure(ck, root)
    assert [b["kernel_source"] for b in _manifest(out)["buckets"]] == [artifacts.kernel_source()]
    with caplog.at_level("WARNING", logger="g2p_batch.compile"):
        _ensure(ck, root)
    assert "other g2p-batch kernel code" not in caplog.text
    monkeypatch.setattr(artifacts, "kernel_source", lambda: "another")
    with caplog.at_level("WARNING", logger="g2p_batch.compile"):
        assert _ensure(ck, root) == out
    assert f"1 of 1 buckets in {out} were compiled by other g2p-batch kernel code" in caplog.text


def test_each_instruction_set_gets_its_own_folder():
    """A pool mixes AVX2 and AVX-512 hosts: in a shared cache each set lives beside the other
    instead of one host's refusing the other's as a mismatch."""
    import platform

    from g2p_batch.runtime import targets

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 instruction sets only")
    avx2 = targets.cpu_target({"avx", "avx2", "fma", "bmi2", "f16c", "movbe"})
    avx512 = targets.cpu_target(targets.required_flags({"mcpu": "skylake-avx512"}))
    assert avx2["mcpu"] != avx512["mcpu"]
    assert targets.short_name(avx2) != targets.short_name(avx512)
    assert targets.short_name(targets.cuda_target("sm_80")) == "cuda-sm_80"


def test_a_bucket_that_fails_to_build_fails_the_build_and_keeps_the_others(tmp_path, monkeypatch):
    """Buckets compile on several threads at once: one bucket's error reaches the caller, and
    the buckets built beside it stay in the manifest, so the next call builds only what is
    missing."""
    from g2p_batch.compile import builder

    ck, root = tmp_path / "model", tmp_path / "artifacts"
    checkpoints.make("micro", 0, ck)
    real, built = builder.build_bucket, []

    def build(shape, B, L, *args, fail=True, **kwargs):
        if L == 32 and fail:
            raise RuntimeError("bucket 32 failed")
        built.append(L)
        return real(shape, B, L, *args, **kwargs)
    monkeypatch.setattr(builder, "build_bucket", build)
    kw = dict(checkpoint=str(ck), target="llvm", batch_sizes=[8], input_buckets=[16, 32], max_input_bytes=64,
              max_output_len=8, artifacts_dir=str(root), progress=False)
    with pytest.raises(RuntimeError, match="bucket 32 failed"):
        artifacts.ensure_artifacts(**kw)
    (out,) = (root / ck.name).glob("*-out8")
    assert [b["input_len"] for b in _manifest(out)["buckets"]] == [16]
    monkeypatch.setattr(builder, "build_bucket", lambda *a, **k: build(*a, fail=False, **k))
    assert artifacts.ensure_artifacts(**kw) == out
    assert built == [16, 32] and [b["input_len"] for b in _manifest(out)["buckets"]] == [16, 32]
