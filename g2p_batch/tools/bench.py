"""Every engine side by side in one run, on the same words, weights, threads and batches.

Machines here are noisy, so numbers are only compared within one run. With random weights the
engines are forced to the same number of decoder steps (the test split's mean output, 14 ids
incl. EOS): transformers via min_new_tokens = max_new_tokens, CTranslate2 via
min_decoding_length = max_decoding_length, TVM by running exactly that many steps.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..decode.engine import beam_buckets, default_input_lengths, fit_bucket
from ..decode.tokenizer import PromptFormat, encode, encode_text, pad_batch
from ..errors import ArtifactError, ConfigError
from ..model.shapes import PRECISIONS, T5Shape
from ..settings import check_choice, setting
from .lexicon import Entry, charsiu_data, read

ENGINES = ("tvm", "transformers", "ct2-fp32", "ct2-int8", "tvm-beam4", "transformers-beam4", "tvm-bf16")
DEFAULT_ENGINES = ENGINES[:4]  # greedy, as the job runs by default; the -beam4 pair: 4 beams, 4 best;
# tvm-bf16: the bf16 set (AMX) beside the fp32 one, whatever --precision says
BEAMS = 4


@dataclass
class BenchConfig:
    """What `g2p-batch bench` measures and how; every field is a flag."""

    checkpoint: str | None = setting(None, help="checkpoint to time (default: a seeded tiny_8 made in the cache dir)")
    data: str = setting(help="test split directory to sample words from", factory=lambda: str(charsiu_data("test")))
    words: int = setting(2000, help="words sampled evenly over the languages")
    batch: int = setting(64, help="rows per engine call")
    steps: int = setting(14, help="forced decoder steps for every engine; 0: natural EOS (trained checkpoints)")
    threads: int = setting(help="threads for every engine (default: all cores)", factory=lambda: os.cpu_count() or 1)
    engines: str = setting(",".join(DEFAULT_ENGINES), help="comma-separated: " + ",".join(ENGINES))
    precision: str = setting("fp32", help="precision of the tvm engines (tvm-bf16 is always bf16): fp32 or bf16")
    device: str = setting("cpu", help="cpu or cuda")
    latency_runs: int = setting(20, help="batch-1 calls timed for the latency")
    rounds: int = setting(3, help="timed passes per engine, the engines taking turns (with --ray: rounds of all four runs); the median counts")
    seed: int = setting(0, help="seed of the word sample")
    cache_dir: str = setting(help="where bench checkpoints and artifacts are kept", factory=lambda: default_cache_dir())
    max_output_len: int = setting(32, help="compiled output length")
    artifacts: str | None = setting(None, help="prebuilt artifact set to run (weights from --checkpoint), e.g. CUDA modules cross-compiled elsewhere")
    out: str = setting("bench-out", help="folder for bench.json and bench.png (or bench-ray.json, profile.json)")
    actors: int = setting(2, help="actors for --ray")
    shard_rows: int | None = setting(None, help="rows per shard for --ray (default: four shards per actor)")

    def __post_init__(self) -> None:
        self.rounds = max(1, self.rounds)
        names = [e.strip() for e in self.engines.split(",") if e.strip()]
        unknown = [n for n in names if n not in ENGINES]
        if unknown or not names:
            raise ConfigError(f"unknown engine(s) {unknown}; choose from {list(ENGINES)}")
        check_choice("precision", self.precision, PRECISIONS)

    @property
    def forced_steps(self) -> int | None:
        """The steps every engine is made to run; None: each row until its EOS."""
        return self.steps or None

    @property
    def engine_names(self) -> tuple[str, ...]:
        return tuple(e.strip() for e in self.engines.split(",") if e.strip())


def default_cache_dir() -> str:
    """bench/ beside the artifact cache: seeded checkpoints, their artifacts, CTranslate2 copies."""
    from ..compile.artifacts import default_root
    return str(Path(default_root()).parent / "bench")


def sample_words(data: str, n: int, seed: int, max_bytes: int = 64) -> list[Entry]:
    """n test words drawn evenly across all languages, each fitting the compiled input (with
    room for an EOS, so the sample is the same whatever the checkpoint's prompt format)."""
    rows = [e for e in read(data) if len(encode_text(PromptFormat().format(e.lang, e.word))) <= max_bytes]
    return random.Random(seed).sample(rows, min(n, len(rows)))


def input_rows(ckpt: str, entries: list[Entry], check: bool = True) -> list[list[int]]:
    """Every engine's input ids, in the checkpoint's prompt format. With `check`, they must equal
    what transformers' ByT5Tokenizer makes of the CharsiuG2P-style text, as the reference is fed."""
    from ..model.checkpoint import load as load_checkpoint
    from .reference import charsiu_text

    prompt = load_checkpoint(ckpt).prompt()
    rows = [encode(e.lang, e.word, prompt) for e in entries]
    if check:
        from transformers import ByT5Tokenizer

        tok = ByT5Tokenizer()
        texts = [charsiu_text(e.lang, e.word, prompt.space_after_colon) for e in entries]
        upstream = tok(texts, add_special_tokens=prompt.input_eos)["input_ids"]
        bad = next((i for i, (a, b) in enumerate(zip(rows, upstream)) if a != b), None)
        if bad is not None:
            raise AssertionError(f"input ids of {texts[bad]!r} differ from ByT5Tokenizer's: {rows[bad]} vs {upstream[bad]}")
    return rows


def matmul_ceiling(threads: int, n: int = 1024, reps: int = 10) -> float:
    """fp32 GFLOP/s of numpy's best square matmul, the practical roof for this machine."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    try:
        from threadpoolctl import threadpool_limits
        ctx = threadpool_limits(threads)
    except ImportError:  # pragma: no cover
        import contextlib
        ctx = contextlib.nullcontext()
    with ctx:
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


_SETTLE_S = 0.5  # before each pass: the previous engine's idle threads stop spinning (OpenMP
# runtimes spin up to 200 ms after a parallel region), so no pass starts on a shared core


@dataclass
class Runner:
    """One engine ready to time: `run_batch(idx)` decodes those rows; `single()` one word at
    batch 1 (None where the engine has no batch-1 form); `stages` the engine's cumulative
    stage seconds, if it keeps any."""

    run_batch: Callable
    single: Callable | None
    stages: dict | None = None
    note: str | None = None


def _timed_pass(runner: Runner, batches) -> dict:
    if runner.stages is not None:
        runner.stages.update({k: 0.0 for k in runner.stages})
    t = time.perf_counter()
    for idx in batches:
        runner.run_batch(idx)
    out = {"seconds": time.perf_counter() - t}
    if runner.stages is not None:
        out.update({f"{k}_s": v for k, v in runner.stages.items()})
    return out


def _latency_ms(runner: Runner, runs: int) -> float | None:
    if runner.single is None:
        return None
    return 1000 * statistics.median(_timed(runner.single) for _ in range(runs))


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process when the bench's dies, even while stopped. Ctrl-C
    and errors close the engines, but a bench killed outright (SIGKILL, an OOM kill) left them
    stopped for good. Elsewhere the engines still go with the bench's normal exits."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the bench died before the call took hold
        os._exit(1)


def _serve(conn, parent, name, cfg, ckpt, rows, batches, steps) -> None:
    """An engine's own process: load, warm up (first calls page in code and weights), then time
    a pass or the latency whenever the bench asks, until told to stop."""
    _die_with_parent(parent)
    try:
        runner = _make_runner(name, cfg, ckpt, rows, steps)
        runner.run_batch(batches[0])
    except ImportError as exc:
        conn.send(("missing", exc.name))
        return
    except Exception as exc:  # noqa: BLE001 - re-raised in the bench's process
        conn.send(("failed", exc))
        return
    conn.send(("ready", runner.note))
    while (cmd := conn.recv()) != "stop":
        conn.send(_timed_pass(runner, batches) if cmd == "pass" else _latency_ms(runner, cfg.latency_runs))


class Isolated:
    """An engine in a process of its own, stopped (SIGSTOP) while the others run: in one process
    the engines' thread pools meet and slow each other (transformers beside CTranslate2 ran 1.4x
    slower), and even an idle engine in another running process takes CPU from the one timed."""

    def __init__(self, name, cfg, ckpt, rows, batches, steps):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no forked copies of a parent's thread pools
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, os.getpid(), name, cfg, ckpt, rows, batches, steps),
                                daemon=True)
        self.proc.start()
        child.close()  # the child's end lives in the child: its death then reads as EOF here
        kind, info = self._recv()
        if kind == "missing":
            self.close()
            raise ModuleNotFoundError(f"No module named {info!r}", name=info)
        if kind == "failed":
            self.close()
            raise info
        self.note = info
        self._signal("SIGSTOP")

    def _signal(self, name: str) -> None:
        import signal

        if hasattr(signal, name) and self.proc.is_alive():  # POSIX only
            os.kill(self.proc.pid, getattr(signal, name))

    def _recv(self):
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(timeout=5)
            raise RuntimeError(f"the {self.name} engine's process died (exit code {self.proc.exitcode})") from None

    def _ask(self, cmd: str):
        self._signal("SIGCONT")
        try:
            self.conn.send(cmd)
            return self._recv()
        finally:
            self._signal("SIGSTOP")

    def timed_pass(self) -> dict:
        return self._ask("pass")

    def latency_ms(self) -> float | None:
        return self._ask("latency")

    def close(self) -> None:
        self._signal("SIGCONT")
        if self.proc.is_alive():
            try:
                self.conn.send("stop")
            except OSError:
                pass
            self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.kill()


def _measure(engines: dict, rounds: int, progress=print) -> dict:
    """`rounds` timed passes over every batch, the engines taking turns within each round, and
    per engine the median pass; then each engine's batch-1 latency. Taking turns puts every
    engine's passes in the same stretches of time: run once each, one after another, the
    engines met different phases of these shared machines (the same build read 1.66x and 1.93x
    transformers in two back-to-back runs)."""
    passes: dict[str, list] = {name: [] for name in engines}
    for i in range(rounds):
        for name, e in engines.items():
            progress(f"round {i + 1}/{rounds}: {name} ...")
            time.sleep(_SETTLE_S)
            passes[name].append(e.timed_pass())
    out = {}
    for name, e in engines.items():
        by_time = sorted(passes[name], key=lambda p: p["seconds"])
        res = {**by_time[(len(by_time) - 1) // 2], "rounds_seconds": [p["seconds"] for p in passes[name]]}
        time.sleep(_SETTLE_S)
        lat = e.latency_ms()
        if lat is not None:
            res["latency_ms"] = lat
        if e.note:
            res["latency_note"] = e.note
        out[name] = res
    return out


def flops(s: T5Shape, in_len: int, steps: int) -> tuple[float, float]:
    """(encoder + cross-K/V prefill, decoder) FLOPs for one word: 2 per multiply-add."""
    D, I, F, H = s.d_model, s.inner, s.d_ff, s.heads
    ff = (3 if s.gated else 2) * D * F
    enc_layer = in_len * 2 * (4 * D * I + ff) + 2 * 2 * H * in_len * in_len * s.d_kv
    enc = s.enc_layers * enc_layer + in_len * 2 * s.dec_layers * 2 * D * I
    dec = 0.0
    for t in range(steps):
        layer = 2 * (4 * D * I + 2 * D * I + ff) + 2 * 2 * H * s.d_kv * ((t + 1) + in_len)
        dec += s.dec_layers * layer + 2 * D * s.vocab
    return enc, dec


def bench_checkpoint(cfg: BenchConfig) -> str:
    """The checkpoint's local directory: the given one, or the seeded tiny_8 of the issue's
    workload, made once in the cache dir."""
    from ..model import checkpoint as ckpt_mod
    from .checkpoints import make

    if cfg.checkpoint is not None:
        return str(ckpt_mod.resolve(cfg.checkpoint)[1])
    path = Path(cfg.cache_dir) / "tiny_8_seed0"
    if not (path / "config.json").exists():
        make("tiny_8", 0, path)
    return str(path)


def length_sorted_batches(rows: list[list[int]], batch: int) -> list[list[int]]:
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    return [order[i:i + batch] for i in range(0, len(order), batch)]


# --------------------------------------------------------------------------- engines


def _input_lengths(rows: list[list[int]], batch: int) -> list[int]:
    """The input buckets the bench's batches and its one-word latency call run at: a set is
    compiled for those only (a later bench of other words adds what it lacks)."""
    longest = [max(len(rows[i]) for i in b) for b in length_sorted_batches(rows, batch)] + [len(rows[0])]
    return sorted({next(L for L in default_input_lengths(64) if L >= n) for n in longest})


def _tvm_engine(cfg, ckpt, rows, beams: int = 1, precision: str = "fp32"):
    from ..compile.artifacts import CompileConfig, ensure_artifacts
    from ..runtime.engine import load_engine

    target = "cuda" if cfg.device == "cuda" else "llvm"
    if cfg.artifacts:
        return load_engine(cfg.artifacts, device=cfg.device, threads=cfg.threads,
                           params=_params_for(cfg.artifacts, ckpt))
    # on CPU a padded row costs a real row's work: smaller sizes carry the tail batch, as the job's
    # planner would, since the other engines run it as it is. On a GPU padding is nearly free, and
    # each extra module costs a CUDA JIT at load.
    small = (8, 32) if target == "llvm" else ()
    sizes = sorted({s for s in small if s < cfg.batch} | {1, cfg.batch}) if beams == 1 else [beams, beams * cfg.batch]
    art = ensure_artifacts(CompileConfig(checkpoint=ckpt, target=target, precision=precision, batch_sizes=sizes,
                                         max_input_bytes=64, input_buckets=_input_lengths(rows, cfg.batch),
                                         max_output_len=cfg.max_output_len,
                                         artifacts_dir=cfg.cache_dir))
    return load_engine(art, device=cfg.device, threads=cfg.threads)


def _params_for(artifacts: str, ckpt: str) -> dict:
    """The checkpoint's weights laid out for a prebuilt set, whose shape they must have."""
    from ..model.checkpoint import load
    from ..model.params import build_params
    from ..runtime.manifest import read_manifest

    manifest, cp = read_manifest(artifacts), load(ckpt)
    shape = T5Shape(**manifest["shape"])
    if T5Shape.from_hf_config(cp.config) != shape:
        raise ArtifactError(f"checkpoint {ckpt} has shape {T5Shape.from_hf_config(cp.config)}, the artifacts "
                            f"in {artifacts} were compiled for {shape}")
    return build_params(cp.weights, shape, packed=manifest["kernel_target"] == "cpu",
                        precision=manifest.get("precision", "fp32"))


def _tvm_batch_runner(eng, rows, steps, beams: int = 1):
    """(run_batch(idx), input_len(idx)): a batch of rows padded to the smallest compiled shape
    that holds it (with beams: `beams` rows of the shape per word)."""
    buckets = beam_buckets(eng.buckets, beams)

    def shape(idx):
        return fit_bucket(buckets, len(idx), max(len(rows[i]) for i in idx))

    def run_batch(idx):
        b = shape(idx)
        ids = pad_batch([rows[i] for i in idx], b.input_len, b.batch)
        if beams > 1:
            return eng.decode_beams(ids, beams, beams, max_steps=steps)
        return eng.decode(ids, max_steps=steps, early_exit=steps is None)
    return run_batch, lambda idx: shape(idx).input_len


def _make_runner(name, cfg, ckpt, rows, steps) -> Runner:
    if name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r}; choose from {list(ENGINES)}")
    beams = BEAMS if name.endswith(f"-beam{BEAMS}") else 1
    if name.startswith("tvm"):
        return tvm_runner(cfg, ckpt, rows, steps, beams, "bf16" if name == "tvm-bf16" else cfg.precision)
    if name.startswith("transformers"):
        return transformers_runner(cfg, ckpt, rows, steps, beams)
    return ct2_runner(cfg, ckpt, rows, steps, "float32" if name == "ct2-fp32" else "int8")


def tvm_runner(cfg, ckpt, rows, steps, beams: int = 1, precision: str = "fp32") -> Runner:
    eng = _tvm_engine(cfg, ckpt, rows, beams, precision)
    run_batch, _ = _tvm_batch_runner(eng, rows, steps, beams)
    smallest = min(b.batch for b in beam_buckets(eng.buckets, beams))
    if smallest == 1:
        return Runner(run_batch, lambda: run_batch([0]), eng.stage_seconds)
    # a prebuilt set without batch 1 (the GPU's 4096 set) would time one word padded to a batch
    return Runner(run_batch, None, eng.stage_seconds,
                  note=f"no batch-1 module: one word runs padded to {smallest} rows, so no latency is reported")


def profile_tvm(cfg: BenchConfig) -> dict:
    """Per-kernel time of one batch (the median-length one of the bench's workload), through
    the VM's call instrumentation: 0.27 has no VM profiler. The callback adds a few µs per call,
    so the kernels' sum slightly exceeds the uninstrumented wall time printed beside it. On a
    GPU it waits for the device around every call (otherwise it would time the launches only),
    so there the sum exceeds the wall time by the syncs."""
    from collections import defaultdict

    ckpt = bench_checkpoint(cfg)
    rows = input_rows(ckpt, sample_words(cfg.data, cfg.words, cfg.seed), check=False)
    idx = length_sorted_batches(rows, cfg.batch)[len(rows) // cfg.batch // 2]
    eng = _tvm_engine(cfg, ckpt, rows, precision=cfg.precision)
    run_batch, input_len = _tvm_batch_runner(eng, rows, cfg.forced_steps)
    for _ in range(2):
        run_batch(idx)
    wall = _timed(lambda: run_batch(idx))
    spent, calls, start = defaultdict(float), defaultdict(int), [0.0]

    sync = eng.device.sync if cfg.device == "cuda" else (lambda: None)

    def instrument(func, name, before, ret, *args):
        sync()
        if before:
            start[0] = time.perf_counter()
        else:
            spent[name] += time.perf_counter() - start[0]
            calls[name] += 1
        return 0  # VMInstrumentReturnKind.kNoOp: run the call as usual
    eng.set_instrument(instrument)
    run_batch(idx)
    kernels = [{"name": k, "ms": 1e3 * v, "calls": calls[k]} for k, v in sorted(spent.items(), key=lambda kv: -kv[1])]
    return {"batch": cfg.batch, "input_len": input_len(idx), "steps": cfg.forced_steps, "wall_ms": 1e3 * wall, "kernels": kernels}


def transformers_runner(cfg, ckpt, rows, steps, beams: int = 1) -> Runner:
    from .reference import Reference

    ref = Reference(ckpt, threads=cfg.threads, device="cuda" if cfg.device == "cuda" else "cpu")

    def run_batch(idx):
        ids = pad_batch([rows[i] for i in idx], max(len(rows[i]) for i in idx))
        if beams > 1:
            return ref.beams(ids, steps or cfg.max_output_len, beams, beams, min_new_tokens=steps or 0)
        return ref.generate_raw(ids, steps or cfg.max_output_len, steps or 0)

    return Runner(run_batch, lambda: run_batch([0]))


def convert_ct2(ckpt: str, out: Path, quantization: str | None) -> Path:
    """Reused only for the weights it was made from: a checkpoint retrained in place keeps its
    name, and a stale conversion would time (and decode) the old model."""
    from ..model.checkpoint import load as load_checkpoint

    source, stamp = load_checkpoint(ckpt).sha256, out / "source_weights.sha256"
    if (out / "model.bin").exists() and stamp.exists() and stamp.read_text() == source:
        return out
    import tempfile

    import ctranslate2
    from transformers import ByT5Tokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    # The converter reads the vocabulary from a tokenizer beside the weights: give it a linked
    # copy of the checkpoint, never writing into the user's (or the shipped) checkpoint folder.
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        for f in Path(ckpt).iterdir():
            if f.is_file():
                (Path(tmp) / f.name).symlink_to(f.resolve())
        ByT5Tokenizer().save_pretrained(tmp)
        ctranslate2.converters.TransformersConverter(tmp).convert(str(out), quantization=quantization, force=True)
    stamp.write_text(source)
    return out


def ct2_runner(cfg, ckpt, rows, steps, compute_type) -> Runner:
    import ctranslate2
    from transformers import ByT5Tokenizer

    path = convert_ct2(ckpt, Path(cfg.cache_dir) / f"ct2-{Path(ckpt).name}-{compute_type}",
                       None if compute_type == "float32" else compute_type)
    tr = ctranslate2.Translator(str(path), device=cfg.device, compute_type=compute_type,
                                inter_threads=1, intra_threads=cfg.threads)
    tok = ByT5Tokenizer()
    src = [tok.convert_ids_to_tokens(r) for r in rows]
    kw = dict(min_decoding_length=steps, max_decoding_length=steps) if steps else dict(max_decoding_length=cfg.max_output_len)

    def run_batch(idx):
        return tr.translate_batch([src[i] for i in idx], beam_size=1, max_batch_size=len(idx), **kw)

    return Runner(run_batch, lambda: run_batch([0]))


# --------------------------------------------------------------------------- driver


def run(cfg: BenchConfig, progress=print) -> dict:

    ckpt_path = bench_checkpoint(cfg)
    shape = T5Shape.from_hf_config(json.loads((Path(ckpt_path) / "config.json").read_text()))
    entries = sample_words(cfg.data, cfg.words, cfg.seed)
    rows = input_rows(ckpt_path, entries, check=any(e != "tvm" for e in cfg.engine_names))
    batches = length_sorted_batches(rows, cfg.batch)
    steps = cfg.forced_steps
    mean_in = float(np.mean([len(r) for r in rows]))
    enc_f, dec_f = flops(shape, round(mean_in), steps or 14)
    progress(f"{len(rows)} words over {len({e.lang for e in entries})} languages, batch {cfg.batch}, "
             f"{'forced ' + str(steps) if steps else 'natural-EOS'} steps, {cfg.threads} threads, device {cfg.device}")
    result = {"config": asdict(cfg), "words": len(rows), "mean_input_ids": mean_in,
              "gflop_per_word": (enc_f + dec_f) / 1e9, "engines": {}}
    if cfg.device == "cpu":
        from ..runtime.targets import host_cpu
        result["cpu"] = host_cpu()
        progress(f"cpu: {result['cpu']['model']}, {result['cpu']['cores']} cores, kernels for {result['cpu']['mcpu']}")
        result["matmul_ceiling_gflops"] = matmul_ceiling(cfg.threads)
        progress(f"fp32 matmul ceiling (numpy, {cfg.threads} threads): {result['matmul_ceiling_gflops']:.1f} GFLOP/s")
    engines, failed = {}, {}
    try:
        for name in cfg.engine_names:  # loaded one at a time, each in its own process (`Isolated`)
            progress(f"loading {name} ...")
            try:
                engines[name] = Isolated(name, cfg, ckpt_path, rows, batches, steps)
            except ImportError as exc:
                failed[name] = {"error": f"not installed: {exc.name} (pip install g2p-batch[bench])"}
        measured = _measure(engines, cfg.rounds, progress)
    finally:
        for e in engines.values():
            e.close()
    for name in cfg.engine_names:
        r = measured.get(name) or failed[name]
        if "seconds" in r:
            r["words_per_s"] = len(rows) / r["seconds"]
        if "encode_s" in r:
            r["encode_gflops"] = len(rows) * enc_f / 1e9 / max(r["encode_s"], 1e-9)
            if steps:
                r["decode_gflops"] = len(rows) * dec_f / 1e9 / max(r["decode_s"], 1e-9)
        result["engines"][name] = r
    base = result["engines"].get("transformers", {}).get("words_per_s")
    for r in result["engines"].values():
        if base and "words_per_s" in r:
            r["vs_transformers"] = r["words_per_s"] / base
    return result


def table(result: dict) -> str:
    head = f"{'engine':<14}{'words/s':>10}{'x transf.':>11}{'b1 ms':>9}{'enc s':>8}{'dec s':>8}{'enc GF/s':>10}{'dec GF/s':>10}"
    lines = [head, "-" * len(head)]
    for name, r in result["engines"].items():
        if "error" in r:
            lines.append(f"{name:<14}  {r['error']}")
            continue

        def f(key, fmt):
            width = int(fmt.split(".")[0])
            return format(r[key], fmt) if key in r else "-".rjust(width)
        lines.append(f"{name:<14}{f('words_per_s', '10.1f')}{f('vs_transformers', '11.2f')}{f('latency_ms', '9.2f')}"
                     f"{f('encode_s', '8.2f')}{f('decode_s', '8.2f')}{f('encode_gflops', '10.1f')}{f('decode_gflops', '10.1f')}")
    rounds = result.get("config", {}).get("rounds", 1)
    if rounds > 1:
        lines.append(f"each engine: the median of {rounds} timed passes, the engines taking turns")
    if "matmul_ceiling_gflops" in result:
        lines.append(f"fp32 matmul ceiling: {result['matmul_ceiling_gflops']:.1f} GFLOP/s; "
                     f"{result['gflop_per_word']:.3f} GFLOP/word -> roof "
                     f"{result['matmul_ceiling_gflops'] / result['gflop_per_word']:.0f} words/s")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in result["engines"].items() if "words_per_s" in r]
    vals = [result["engines"][n]["words_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.barh(names, vals, color=["#2a7" if n.startswith("tvm") else "#888" for n in names])
    for y, v in enumerate(vals):
        ax.text(v, y, f" {v:.0f}", va="center")
    cfg = result["config"]
    ax.set_xlim(0, max(vals) * 1.15)
    ax.set_xlabel("words/s (higher is better)")
    ax.set_title(f"g2p-batch bench: {result['words']} words, batch {cfg['batch']}, {cfg['threads']} threads, {cfg['device']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------- Ray scaling


def _one_thread_seconds(art, langs: list, words: list, warm: int, ready=None) -> float:
    """Load the set on one thread, warm up on the first `warm` words (and wait for `ready`), then
    time one call on all the words."""
    from ..decode.transcriber import Transcriber
    from ..runtime.engine import load_engine

    tr = Transcriber.for_engine(load_engine(art, threads=1))
    tr.transcribe(langs[:warm], words[:warm])
    if ready is not None:
        ready.wait()
    t = time.perf_counter()
    tr.transcribe(langs, words)
    return time.perf_counter() - t


def _plain_share(art, langs: list, words: list, start, done) -> None:
    """One process of `_plain_processes` (TVM_NUM_THREADS=1 comes from the parent's environment)."""
    done.put(_one_thread_seconds(art, langs, words, 8, start))


def _plain_processes(art: str, entries: list, n: int) -> float:
    """Words/s of `n` plain processes (no Ray) each transcribing its 1/n of the words at once:
    what the machine allows `n` single-threaded engines, the ceiling of Ray's scaling."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    start, done = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_plain_share, args=(art, [e.lang for e in entries[i::n]],
                                                    [e.word for e in entries[i::n]], start, done))
             for i in range(n)]
    for p in procs:
        p.start()
    start.wait()
    slowest = max(done.get(timeout=3600) for _ in procs)
    for p in procs:
        p.join()
    return len(entries) / slowest


def profile_lines(res: dict) -> list[str]:
    return [f"one batch of {res['batch']} x {res['input_len']} ids, {res['steps'] or 'natural-EOS'} steps: "
            f"{res['wall_ms']:.1f} ms uninstrumented"] + \
           [f"{k['name']:40s} {k['ms']:8.2f} ms  x{k['calls']}" for k in res["kernels"]]


def ray_summary_line(res: dict) -> str:
    n = res["actors"]
    return (f"median of {len(res['rounds'])} rounds: steady-state scaling 1 -> {n} actors: "
            f"{100 * res['scaling_efficiency']:.1f}% (vs {n} x the single-process runtime: "
            f"{100 * res['efficiency_vs_single_process']:.1f}%; {n} plain processes without Ray: "
            f"{100 * res['plain_processes_vs_single_process']:.1f}%); end to end after setup: "
            f"{100 * res['end_to_end_scaling']:.1f}%; driver share at most {100 * res['driver_share']:.2f}% of wall time")


def ray_scaling(cfg: BenchConfig, progress=print) -> dict:
    """The whole Parquet job on 1 and on `cfg.actors` CPU actors of one thread each, against the
    single-process runtime on one thread, on the same words.

    Shards default to four per actor, so that a slow shard does not hold the job's end; each is
    batched on its own. On 2 shared cores the machine's own noise is as large as Ray's cost
    (PERF.md, "Ray"), so each of
    `cfg.rounds` rounds measures all four (single process, 1 actor, `actors` actors, plain
    processes) within a minute of each other, odd rounds in reverse order so that a steady drift
    cancels, and the ratios reported are the medians of the rounds' own ratios
    (`scaling_summary`).

    Two throughputs per job: steady state, rows over the busiest actor's processing time (read,
    transcribe, write: what scales), and end to end, rows over the wall time after the driver's
    setup (so actor start-up, imports and engine loading count against it). The driver's share
    is its own work over the job's wall time."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..compile.artifacts import CompileConfig, ensure_artifacts
    from ..job.config import JobConfig
    from ..job.driver import run_job

    actors = cfg.actors
    ckpt = bench_checkpoint(cfg)
    entries = sample_words(cfg.data, cfg.words, cfg.seed)
    langs, words = [e.lang for e in entries], [e.word for e in entries]
    T = cfg.forced_steps or cfg.max_output_len  # random weights: every row runs to T, like forced steps
    tmp = Path(tempfile.mkdtemp(prefix="g2p-ray-bench-"))
    src = tmp / "words.parquet"
    four_per_actor = max(1, len(entries) // (4 * actors))
    shard_rows = cfg.shard_rows or four_per_actor
    per_group = min(shard_rows, four_per_actor)
    pq.write_table(pa.table({"lang": langs, "word": words}), src, row_group_size=per_group)
    root = str(Path(cfg.cache_dir) / f"ray-out{T}")  # an artifact set holds one output length
    req = CompileConfig(checkpoint=ckpt, target="llvm", batch_sizes=[1, 8, 32, cfg.batch], max_output_len=T,
                        artifacts_dir=root)
    art = ensure_artifacts(req)
    os.environ["TVM_NUM_THREADS"] = "1"  # this process, and the plain processes it spawns
    counts, input_buckets = sorted({1, actors}), sorted({b.input_len for b in req.buckets()})

    def single() -> tuple[float, str]:
        wps = len(entries) / _one_thread_seconds(art, langs, words, cfg.batch)
        return wps, f"single process, 1 thread: {wps:.1f} words/s"

    def job(n: int) -> tuple[dict, str]:
        rep = run_job(JobConfig(
            input=str(src), output=str(tmp / f"out{n}"), lang_column="lang", checkpoint=ckpt, target="llvm",
            batch_sizes=req.batch_sizes, input_buckets=input_buckets,
            max_output_len=T, rows_per_shard=shard_rows, num_cpu_actors=n, threads_per_actor=1,
            artifacts_dir=root, overwrite=True, progress=False))
        run = {"wall_s": rep.wall_s, "setup_s": rep.setup_s,
               "steady_words_per_s": len(entries) / max(max(a["seconds"] for a in rep.actors.values()), 1e-9),
               "end_to_end_words_per_s": len(entries) / max(rep.wall_s - rep.setup_s, 1e-9),
               "driver_share": rep.driver_share, "actors": rep.actors}
        return run, (f"{n} actor(s): {run['steady_words_per_s']:.1f} words/s steady, "
                     f"{run['end_to_end_words_per_s']:.1f} end to end after setup, "
                     f"driver share {100 * rep.driver_share:.2f}%")

    def plain() -> tuple[float, str]:
        wps = _plain_processes(art, entries, actors)
        return wps, f"{actors} plain processes (no Ray), 1 thread each: {wps:.1f} words/s"

    steps = [("single", single)] + [(n, lambda n=n: job(n)) for n in counts] + [("plain", plain)]
    rounds = []
    for r in range(cfg.rounds):
        got = {}
        for key, measure in steps[::-1] if r % 2 else steps:
            got[key], line = measure()
            progress(f"round {r + 1}: {line}")
        rounds.append({"single_process_words_per_s": got["single"], "plain_processes_words_per_s": got["plain"],
                       "runs": {n: got[n] for n in counts}})
    return {"words": len(entries), "shard_rows": shard_rows, "row_group_rows": per_group, "actors": actors,
            **scaling_summary(rounds, actors), "rounds": rounds}


def scaling_summary(rounds: list[dict], actors: int) -> dict:
    """Each ratio within its round, then the median over rounds: a ratio of two medians would
    pair a fast phase's numerator with a slow phase's denominator."""
    def median_of(ratio) -> float:
        return statistics.median(ratio(r) for r in rounds)

    def steady(r, n):
        return r["runs"][n]["steady_words_per_s"]

    return {
        "scaling_efficiency": median_of(lambda r: steady(r, actors) / (actors * steady(r, 1))),
        "efficiency_vs_single_process": median_of(
            lambda r: steady(r, actors) / (actors * r["single_process_words_per_s"])),
        "plain_processes_vs_single_process": median_of(  # the machine's own ceiling
            lambda r: r["plain_processes_words_per_s"] / (actors * r["single_process_words_per_s"])),
        "end_to_end_scaling": median_of(lambda r: r["runs"][actors]["end_to_end_words_per_s"]
                                        / (actors * r["runs"][1]["end_to_end_words_per_s"])),
        "driver_share": max(r["runs"][actors]["driver_share"] for r in rounds),  # the worst round
        "single_process_words_per_s": median_of(lambda r: r["single_process_words_per_s"]),
        "steady_words_per_s": {n: median_of(lambda r, n=n: steady(r, n)) for n in rounds[0]["runs"]},
    }
