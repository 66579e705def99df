"""Greedy KV-cache decoding over compiled TVM modules; needs tvm and numpy only.

One `TVMEngine` holds every compiled bucket of one artifact set on one device. Weights are
uploaded once and shared by the buckets; each bucket keeps its own cache tensors, allocated
once and reused batch after batch (stale values are never read: the causal bias gives future
positions zero weight).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..decode.beam import beam_search
from ..decode.engine import (
    CALL_COST_ROWS,
    LOOP_MIN_IDS,
    Bucket,
    DecodeOutput,
    beam_output,
    greedy_output,
    repeating_rows,
)
from ..decode.tokenizer import EOS, PAD, PromptFormat
from ..errors import ArtifactError
from ..model.params import bucket_params
from ..model.shapes import NEG_INF, TOKEN_BLOCK, T5Shape, cache_shapes, param_specs
from . import targets
from .manifest import FORMAT, read_manifest, verify_files

__all__ = ["TVMEngine", "load_engine", "pack_tokens", "set_threads"]


def set_threads(threads: int | None) -> None:
    """TVM's CPU pool defaults to half the logical cores (1 on a 2-core box); it reads
    TVM_NUM_THREADS when the pool starts, so this must run before the first module call."""
    if threads:
        os.environ["TVM_NUM_THREADS"] = str(threads)


@dataclass
class _BucketVM:
    vm: object
    args: dict  # function name -> list of device tensors (weights)
    k_cache: object
    v_cache: object
    pos: list   # device tensors holding 0..T-1, made once
    window: int = 0  # a `step_w{window}` function exists: use it while pos < window
    functions: tuple = ()  # the VM functions the bucket has (step_logits: beam search)


class TVMEngine:
    def __init__(self, compiled: dict[Bucket, object], params: dict[str, np.ndarray], specs_by_bucket: dict,
                 cache_shapes: dict, max_output_len: int, device: str = "cpu", windows: dict | None = None,
                 functions: dict | None = None):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        self._tvm = tvm
        self.device = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
        self._on_cpu = device != "cuda"
        self.max_output_len = max_output_len
        self.call_cost_rows = CALL_COST_ROWS[device]
        self.buckets = sorted(compiled)
        self.stage_seconds = {"encode": 0.0, "decode": 0.0}  # seconds, summed over decode() calls
        uploaded: dict[tuple, object] = {}

        def upload(name, arr):
            key = (name, arr.shape)
            if key not in uploaded:
                uploaded[key] = tvm.runtime.tensor(arr, self.device)
            return uploaded[key]

        self._vms: dict[Bucket, _BucketVM] = {}
        for b, lib in compiled.items():
            vm = VirtualMachine(lib, self.device)
            specs, per_bucket = specs_by_bucket[b]
            args = {fn: [upload(n, per_bucket[n] if n in per_bucket else params[n]) for n, _ in spec]
                    for fn, spec in specs.items()}
            kshape, vshape = cache_shapes[b]
            self._vms[b] = _BucketVM(
                vm=vm, args=args,
                k_cache=tvm.runtime.tensor(np.zeros(kshape, np.float32), self.device),
                v_cache=tvm.runtime.tensor(np.zeros(vshape, np.float32), self.device),
                pos=[tvm.runtime.tensor(np.array([t], np.int32), self.device) for t in range(max_output_len)],
                window=(windows or {}).get(b, 0), functions=tuple((functions or {}).get(b, ())))

    def set_instrument(self, fn) -> None:
        """Call `fn` around every VM call of every bucket (the per-kernel profile of
        `g2p-batch bench --profile`); see tvm.runtime.vm.VirtualMachine.set_instrument."""
        for bv in self._vms.values():
            bv.vm.set_instrument(fn)

    def _encode(self, bv: _BucketVM, ids: np.ndarray, copies: int = 1):
        """The padding mask and the cross-attention keys and values of a batch (`pack_tokens`
        for `copies`); its seconds go to stage_seconds["encode"]."""
        tvm, dev = self._tvm, self.device
        t0 = time.perf_counter()
        mask = tvm.runtime.tensor(np.where(ids != PAD, 0.0, NEG_INF).astype(np.float32), dev)
        tok, where, gather = (tvm.runtime.tensor(a, dev) for a in pack_tokens(ids, copies))
        ck, cv = bv.vm["encode"](tok, where, gather, mask, *bv.args["encode"])
        dev.sync()
        self.stage_seconds["encode"] += time.perf_counter() - t0
        return mask, ck, cv

    def decode(self, input_ids: np.ndarray, max_steps: int | None = None, early_exit: bool = True, *,
               stop_loops: bool = True) -> DecodeOutput:
        """Greedy decode of one compiled-shape batch. `stop_loops` ends a row whose output repeats
        (`decoding.repeating_rows`). `max_steps` (<= max_output_len) and `early_exit=False` exist
        for benchmarks that force every engine to run the same steps."""
        B, L = input_ids.shape
        bv = self._vms.get(Bucket(B, L))
        if bv is None:
            raise ValueError(f"no compiled bucket for batch {B} x {L} input ids; compiled: "
                             f"{[b.name for b in self.buckets]}")
        tvm, dev = self._tvm, self.device
        T = min(max_steps or self.max_output_len, self.max_output_len)
        ids = np.ascontiguousarray(input_ids, dtype=np.int32)
        mask, ck, cv = self._encode(bv, ids)
        t1 = time.perf_counter()

        filler = ids[:, 0] == PAD  # rows padding a partly used batch never hold the loop open
        done = filler.copy()
        stop_at = np.full(B, T + 1)  # tokens a row keeps; T + 1: not stopped
        step_in = tvm.runtime.tensor(np.zeros(B, np.int32), dev)  # decoder_start_token_id = 0
        raw_ids, raw_logp = [], []
        step_full = bv.vm["step"]
        step_short = bv.vm[f"step_w{bv.window}"] if bv.window else step_full
        for t in range(T):
            step = step_short if t < bv.window else step_full
            out = step(step_in, bv.pos[t], bv.k_cache, bv.v_cache, ck, cv, mask, *bv.args["step"])
            step_in = out[0]  # straight back in: the host reads ids only to stop early (greedy_output)
            raw_ids.append(out[0].numpy() if early_exit else out[0])
            raw_logp.append(out[1])
            if early_exit:
                done |= raw_ids[-1] == EOS
                if stop_loops and t + 1 > LOOP_MIN_IDS:
                    looping = repeating_rows(np.stack(raw_ids, axis=1)) & ~done
                    stop_at[looping] = t + 1
                    done |= looping
                if done.all():
                    break
        result = greedy_output(np.stack([a if early_exit else a.numpy() for a in raw_ids], axis=1),
                               np.stack([a.numpy() for a in raw_logp], axis=1), filler, T, stop_at)
        self.stage_seconds["decode"] += time.perf_counter() - t1
        return result

    def decode_beams(self, input_ids: np.ndarray, num_beams: int, n_best: int, length_penalty: float = 1.0,
                     max_steps: int | None = None) -> DecodeOutput:
        """Beam search (`decode.beam`) for R rows in the compiled bucket of R * num_beams rows:
        each row once per beam (the encoder runs on the first copy only), `step_logits` for the
        whole distribution, and the self-attention cache reordered on the host as beams are
        selected. No loop stop:
        a repeating beam runs to max_output_len, as in transformers. `max_steps` (benchmarks):
        fewer steps than max_output_len."""
        R, L = input_ids.shape
        K = num_beams
        bv = self._vms.get(Bucket(R * K, L))
        if bv is None or "step_logits" not in bv.functions:
            raise ArtifactError(f"no compiled bucket with step_logits for {R} rows x {K} beams of {L} input ids; "
                                f"compiled: {[b.name for b in self.buckets]} (recompile to get beam search)")
        tvm, dev = self._tvm, self.device
        T = min(max_steps or self.max_output_len, self.max_output_len)
        mask, ck, cv = self._encode(bv, np.ascontiguousarray(np.repeat(input_ids, K, axis=0), dtype=np.int32), K)
        t1 = time.perf_counter()
        step_fn, pos = bv.vm["step_logits"], iter(bv.pos)
        identity = np.arange(R * K)
        per_block = bv.k_cache.shape[-1]  # CPU keys come in blocks of positions (key_cache_shape)
        t = 0

        def step(tokens, parents):
            nonlocal t
            moved = None if parents is None else np.flatnonzero(parents != identity)
            if moved is not None and len(moved):
                # only rows that take another beam's history, and only the positions written so far
                for cache, span in ((bv.k_cache, -(-t // per_block)), (bv.v_cache, t)):
                    if self._on_cpu:
                        view = np.from_dlpack(cache)
                        view[:, moved, :, :span] = view[:, parents[moved], :, :span]
                    else:
                        cache.copyfrom(cache.numpy()[:, parents])
            t += 1
            out = step_fn(tvm.runtime.tensor(np.asarray(tokens, np.int32), dev), next(pos), bv.k_cache,
                          bv.v_cache, ck, cv, mask, *bv.args["step"])
            return out[0].numpy()

        filler = input_ids[:, 0] == PAD
        candidates, steps = beam_search(step, R, K, n_best, T, filler, length_penalty)
        result = beam_output(candidates, self.max_output_len, steps)
        self.stage_seconds["decode"] += time.perf_counter() - t1
        return result


def pack_tokens(ids: np.ndarray, copies: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A padded batch [B, L] -> the encoder's packed inputs: token ids and their `b*L + i`
    places, both [m, TOKEN_BLOCK] (real tokens first, then pad rows up to the block), and
    `gather` [B, L], the packed row of every (b, j), 0 where (b, j) is padding (masked).
    `copies` > 1: rows come in runs of that many equal rows (beams); only the first of each run
    is packed, and the others gather its rows, so the encoder runs once per word."""
    B, L = ids.shape
    real = ids.reshape(-1) != PAD
    if copies > 1:
        real &= (np.arange(B * L) // L) % copies == 0
    places = np.flatnonzero(real).astype(np.int32)
    n = len(places)
    m = max(1, -(-n // TOKEN_BLOCK))
    tok = np.full(m * TOKEN_BLOCK, PAD, np.int32)
    tok[:n] = ids.reshape(-1)[places]
    where = np.zeros(m * TOKEN_BLOCK, np.int32)
    where[:n] = places
    gather = np.zeros(B * L, np.int32)
    gather[places] = np.arange(n, dtype=np.int32)
    gather = gather.reshape(B, L)
    if copies > 1:
        gather = gather[np.arange(B) - np.arange(B) % copies]
    return tok.reshape(m, TOKEN_BLOCK), where.reshape(m, TOKEN_BLOCK), gather


def load_engine(artifact_dir: str | Path, device: str = "cpu", threads: int | None = None,
                params: dict[str, np.ndarray] | None = None) -> TVMEngine:
    """Load every bucket of an artifact set; checks the files against the manifest and the host
    CPU against the target's instruction set first, so a mismatch fails with a reason.

    The compiled modules depend on the model's shape, not its weights: `params` (built by
    `model.params.build_params` for the same shape and layout) replaces the set's own, e.g. to
    run CUDA modules cross-compiled elsewhere on another checkpoint's weights."""
    import tvm
    from safetensors.numpy import load_file

    set_threads(threads)
    path = Path(artifact_dir)
    manifest = read_manifest(path)
    if device == "cuda":
        from .cuda import register_cuda_jit
        register_cuda_jit({b["device_code"]["source_sha256"]: (path / b["device_code"]["path"]).read_bytes()
                           for b in manifest["buckets"] if b.get("device_code")})
    if manifest.get("format") != FORMAT:  # the params layout and the modules' arguments differ
        raise ArtifactError(f"artifacts in {path} have format {manifest.get('format')}, this g2p-batch reads "
                            f"format {FORMAT}; remove {path} and compile them again")
    verify_files(path, manifest, params=params is None)
    target = manifest["target"]
    if (targets.kind(target) == "gpu") != (device == "cuda"):
        raise ArtifactError(f"artifacts in {path} are for {target['kind']}, not device {device!r}")
    precision = manifest.get("precision", "fp32")
    missing = targets.required_flags(target) - targets.host_cpu_flags()
    if device == "cpu" and missing and targets.host_cpu_flags():
        fix = ("a bf16 set runs on CPUs with AMX (Sapphire Rapids or newer): use --precision fp32 here"
               if precision == "bf16" else "compile them on (or for) this node with --target llvm")
        raise ArtifactError(f"artifacts in {path} need CPU features {sorted(missing)} this host lacks; {fix}")
    if precision == "bf16":
        targets.enable_amx()
    shape = T5Shape(**manifest["shape"])
    T = manifest["max_output_len"]
    packed = manifest["kernel_target"] == "cpu"
    if params is None:
        params = load_file(str(path / manifest["params"]["path"]))
    compiled, specs, caches, windows, per_len, functions = {}, {}, {}, {}, {}, {}
    for entry in manifest["buckets"]:
        b = Bucket(entry["batch"], entry["input_len"])
        windows[b] = max((int(f[len("step_w"):]) for f in entry.get("functions", []) if f.startswith("step_w")),
                         default=0)
        functions[b] = entry.get("functions", [])
        compiled[b] = tvm.runtime.load_module(str(path / entry["path"]))
        if b.input_len not in per_len:  # bias tables depend on the length only, not the batch
            per_len[b.input_len] = bucket_params(params, shape, b.input_len, T)
        specs[b] = (param_specs(shape, packed, b.input_len, T, precision), per_len[b.input_len])
        caches[b] = cache_shapes(shape, b.batch, T, packed)
    engine = TVMEngine(compiled, params, specs, caches, T, device, windows, functions)
    # what the set says about its checkpoint: how words become ids, and which codes it knows
    engine.prompt = PromptFormat.from_dict(manifest.get("prompt", {}))
    engine.languages = manifest.get("languages") or None
    engine.trained_languages = manifest.get("trained_languages") or None
    engine.input_rules = manifest.get("input_rules")
    engine.shape = shape
    engine.precision = precision
    return engine
