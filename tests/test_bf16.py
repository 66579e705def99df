"""bf16 mode (`--precision bf16`): the AMX dense kernels against numpy, the weight layout and
rounding, the switch's checks, and a bf16 set of the default checkpoint beside the fp32 one.

Kernels run only on hosts with AMX-BF16 (skipped elsewhere, where a bf16 set must be refused);
layouts, rounding, configs and the refusal run everywhere. Tolerance of the kernels: their sums
of bf16 products are fp32, so they are held to 1e-5 of the largest output, relative, against
float64 sums of the same bf16 inputs; the gated output is itself bf16, so 1% there."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from g2p_batch.compile import amx
from g2p_batch.compile.artifacts import CompileConfig, ensure_artifacts
from g2p_batch.errors import ArtifactError, ConfigError
from g2p_batch.model.params import _pack_bf16, to_bf16
from g2p_batch.runtime import targets

HAS_AMX = targets.BF16_FLAGS <= targets.host_cpu_flags()
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="host lacks AMX-BF16: bf16 kernels cannot run here")


def _unbf16(u: np.ndarray) -> np.ndarray:
    return (u.astype(np.uint32) << 16).view(np.float32)


def test_rounding_is_nearest_even_on_the_bits():
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, 3.0e-39], np.float32)
    # 1 + 2^-8 is halfway: ties go to the even mantissa (1.0); 1 + 3*2^-8 rounds up to 1 + 2^-6
    assert _unbf16(to_bf16(x)).tolist()[:4] == [1.0, 1.0, 1 + 2 ** -6, 1 + 2 ** -7]
    assert _unbf16(to_bf16(x))[4] == -2.5
    lib = tvm.compile(tvm.IRModule({"main": amx.to_bf16(8, 64).with_attr("global_symbol", "main")}), target="llvm")
    v = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    y = tvm.runtime.empty((8, 64), "uint16", tvm.cpu())
    lib["main"](tvm.runtime.tensor(v, tvm.cpu()), y)
    assert np.array_equal(y.numpy(), to_bf16(v))  # the kernel rounds as the params are rounded


def test_weight_pack_puts_k_pairs_side_by_side_per_strip():
    N, K = 32, 64
    w = np.random.default_rng(1).standard_normal((N, K)).astype(np.float32)
    p = _pack_bf16(w)
    assert p.shape == (N // 16, K // 2, 32) and p.dtype == np.uint16
    b = to_bf16(w)
    for s, pair, n, q in [(0, 0, 0, 0), (0, 0, 0, 1), (1, 5, 3, 1), (1, 31, 15, 0)]:
        assert p[s, pair, 2 * n + q] == b[16 * s + n, 2 * pair + q]


@needs_amx
@pytest.mark.parametrize("rows", [1, 8, 16, 32, 64, None])  # None: the encoder's 16*m rows, m odd and even
@pytest.mark.parametrize("epilogue", ["none", "residual", "gated"])
def test_amx_dense_matches_numpy(rows, epilogue):
    targets.enable_amx()
    K, N = 64, 128
    lib = tvm.compile(tvm.IRModule({"main": amx.amx_dense(rows, K, N, epilogue).with_attr("global_symbol", "main")}),
                      target=targets.cpu_target(precision="bf16"))
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    for M in ([48, 64] if rows is None else [rows]):
        x, w, r = (rng.standard_normal(s).astype(np.float32) for s in ((M, K), (N, K), (M, N)))
        xb, wb = to_bf16(x), to_bf16(w)
        want = _unbf16(xb).astype(np.float64) @ _unbf16(wb).astype(np.float64).T
        args = [tvm.runtime.tensor(xb, dev), tvm.runtime.tensor(_pack_bf16(w), dev)]
        if epilogue == "residual":
            args.append(tvm.runtime.tensor(r, dev))
            want = want + r
        if rows is None:
            args.append(M // 16)
        if epilogue == "gated":  # strips alternate gate, linear (params.interleave_gated)
            g, lin = want.reshape(M, N // 32, 2, 16)[:, :, 0], want.reshape(M, N // 32, 2, 16)[:, :, 1]
            want = (0.5 * g * (1 + np.tanh(0.7978845608028654 * (g + 0.044715 * g ** 3))) * lin).reshape(M, N // 2)
        out = tvm.runtime.empty(want.shape, "uint16" if epilogue == "gated" else "float32", dev)
        lib["main"](*args, out)
        got = _unbf16(out.numpy()) if epilogue == "gated" else out.numpy()
        tol = 1e-2 if epilogue == "gated" else 1e-5
        assert np.abs(got - want).max() <= tol * np.abs(want).max(), (M, epilogue)


def test_bf16_switch_checks():
    with pytest.raises(ConfigError, match="multiples of 16"):
        CompileConfig(precision="bf16", batch_sizes=[1, 24])
    with pytest.raises(ConfigError, match="not one of"):
        CompileConfig(precision="fp16")
    with pytest.raises(ConfigError, match="target llvm"):
        targets.resolve("cuda", "bf16")
    from g2p_batch.job.config import JobConfig
    with pytest.raises(ConfigError, match="CPU mode"):
        JobConfig(input="x", output="y", lang="eng-us", target="cuda", precision="bf16")
    assert targets.cpu_target(precision="bf16")["mcpu"] == "sapphirerapids"


@pytest.fixture(scope="module")
def bf16_set(tmp_path_factory):
    """A bf16 set of the embedded default (one bucket); compiling needs no AMX, loading does."""
    root = tmp_path_factory.mktemp("bf16")
    return ensure_artifacts(checkpoint="default", precision="bf16", batch_sizes=[8], input_buckets=[24],
                            max_input_bytes=24, artifacts_dir=str(root), progress=False), root


def test_bf16_set_has_its_own_folder_manifest_and_params(bf16_set):
    import json

    from safetensors.numpy import load_file

    path, _ = bf16_set
    assert path.name == "llvm-sapphirerapids-bf16-out64"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["precision"] == "bf16" and manifest["target"]["mcpu"] == "sapphirerapids"
    params = load_file(str(path / manifest["params"]["path"]))
    assert params["enc0.qkv"].dtype == np.uint16 and params["shared"].dtype == np.float32


def test_bf16_set_is_refused_where_the_cpu_lacks_amx(bf16_set, monkeypatch):
    from g2p_batch.runtime.engine import load_engine

    monkeypatch.setattr(targets, "host_cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    with pytest.raises(ArtifactError, match=r"amx_bf16.*--precision fp32"):
        load_engine(bf16_set[0])


@needs_amx
def test_bf16_decodes_like_fp32_on_most_words(bf16_set):
    """The default checkpoint in bf16 against its fp32 set on the same batches: the accuracy
    gate's measure in small (MODEL_CARD.md has it on the whole test split)."""
    from g2p_batch.decode.tokenizer import InputTooLong, decode, encode, pad_batch
    from g2p_batch.runtime.engine import load_engine
    from g2p_batch.tools.lexicon import charsiu_data, read

    path, root = bf16_set
    fp32_path = ensure_artifacts(checkpoint="default", batch_sizes=[8], input_buckets=[24], max_input_bytes=24,
                                 artifacts_dir=str(root), progress=False)
    bf16, fp32 = load_engine(path, threads=2), load_engine(fp32_path, threads=2)
    rows = []
    for e in read(charsiu_data("test"), limit=400):
        try:
            rows.append(encode(e.lang, e.word, bf16.prompt, 24))
        except InputTooLong:
            continue
    rows = rows[:160]
    same = total = 0
    for i in range(0, len(rows), 8):
        ids = pad_batch(rows[i:i + 8], 24, 8)
        a, b = bf16.decode(ids), fp32.decode(ids)
        for r in range(len(rows[i:i + 8])):
            total += 1
            same += decode(a.tokens[r]) == decode(b.tokens[r])
    assert total >= 100 and same / total >= 0.9, (same, total)


def test_a_bf16_job_does_not_resume_into_an_fp32_output():
    """Precision is part of the output's fingerprint (a resume under the other is refused);
    fp32 outputs written before the switch existed keep theirs."""
    import dataclasses

    from g2p_batch.job.config import JobConfig
    from g2p_batch.job.driver import _fingerprint

    fp32 = JobConfig(input="in.parquet", output="out", lang="eng-us", target="llvm")
    bf16 = dataclasses.replace(fp32, precision="bf16")
    assert _fingerprint(fp32)[0] != _fingerprint(bf16)[0]
    assert "precision" not in _fingerprint(fp32)[1] and _fingerprint(bf16)[1]["precision"] == "bf16"


def test_a_bf16_set_of_a_non_gated_checkpoint_is_refused_before_anything_is_written(tmp_path):
    from g2p_batch.tools import checkpoints

    ck = checkpoints.make("micro,feed_forward_proj=relu", 0, tmp_path / "ck")
    with pytest.raises(ConfigError, match="gated-gelu.*--precision fp32"):
        ensure_artifacts(checkpoint=str(ck), precision="bf16", batch_sizes=[8], input_buckets=[24],
                         max_input_bytes=24, artifacts_dir=str(tmp_path / "art"), progress=False)
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").rglob("*.safetensors"))
