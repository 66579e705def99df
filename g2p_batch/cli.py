"""`g2p-batch`: thin Typer commands over the library. Library errors (bad checkpoint, artifact
mismatch, bad input, failed job) become one red line and exit code 1; anything else is a bug
and keeps its traceback."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .decoding import DEFAULT_BATCH_SIZES

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split(".")[0])

CheckpointOpt = Annotated[str, typer.Option("--checkpoint", "-c", help="'default' (embedded), a local HF directory, or a hub id")]
TargetOpt = Annotated[str, typer.Option(help="llvm (this CPU), cuda, cuda:sm_XX, or a JSON target dict")]
ArtifactsOpt = Annotated[Optional[str], typer.Option("--artifacts-dir", help="root of compiled artifact sets (default: $G2P_BATCH_CACHE, else ~/.cache/g2p-batch)")]
_BATCH_SIZES = ",".join(map(str, DEFAULT_BATCH_SIZES))
BatchSizesOpt = Annotated[str, typer.Option(help="compiled batch sizes")]
SpaceOpt = Annotated[Optional[bool], typer.Option("--space-after-colon/--no-space-after-colon", help="'<lang>: word' instead of '<lang>:word' (default: as the checkpoint declares)")]
InputEosOpt = Annotated[Optional[bool], typer.Option("--input-eos/--no-input-eos", help="end the input with EOS (default: as the checkpoint declares, else no, as CharsiuG2P)")]
StopLoopsOpt = Annotated[bool, typer.Option("--stop-loops/--no-stop-loops", help="stop a row whose output repeats (status truncated)")]


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of integers") from None


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(1)


def _domain_errors():
    from .artifacts import ArtifactMismatch
    from .checkpoint import CheckpointError
    return (ArtifactMismatch, CheckpointError, FileNotFoundError, ValueError)


def _request(checkpoint, target, batch_sizes, max_input_bytes, input_buckets, max_output_len, artifacts_dir):
    from .artifacts import CompileRequest
    return CompileRequest(checkpoint=checkpoint, target=target, batch_sizes=_ints(batch_sizes),
                          max_input_bytes=max_input_bytes,
                          input_buckets=_ints(input_buckets) if input_buckets else None,
                          max_output_len=max_output_len, root=artifacts_dir)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log each compile phase")] = False):
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(name)s: %(message)s")


@app.command("make-checkpoint")
def make_checkpoint(
    out_dir: Annotated[Path, typer.Argument(help="directory to write config.json + model.safetensors")],
    arch: Annotated[str, typer.Option(help="tiny_8, tiny_12, tiny_16, small, tiny_6_2, tiny_3_1, micro, ... optionally with ,key=value overrides")] = "tiny_8",
    seed: Annotated[int, typer.Option(help="torch seed for the random init")] = 0,
    eos_shadow: Annotated[Optional[int], typer.Option(help="make EOS win wherever this token id would: rows end at varied steps")] = None,
):
    """Write a seeded random-init checkpoint with a CharsiuG2P architecture (needs torch)."""
    from . import checkpoint
    try:
        path = checkpoint.make(arch, seed, out_dir, eos_shadow=eos_shadow)
    except ValueError as exc:
        _fail(exc)
    typer.echo(str(path))


@app.command("compile")
def compile_cmd(
    checkpoint: CheckpointOpt = "default",
    target: TargetOpt = "llvm",
    batch_sizes: BatchSizesOpt = _BATCH_SIZES,
    max_input_bytes: Annotated[int, typer.Option(help="longest input in ids, '<lang>:' prefix (and EOS, if fed) included")] = 64,
    input_buckets: Annotated[str, typer.Option(help="input lengths to compile (default: 16, 32, ... up to max)")] = "",
    max_output_len: Annotated[int, typer.Option(help="decoder steps before a row counts as truncated")] = 64,
    artifacts_dir: ArtifactsOpt = None,
):
    """Compile a checkpoint into TVM artifacts (one module per batch size x input length)."""
    from .artifacts import ensure_artifacts, read_manifest
    req = _request(checkpoint, target, batch_sizes, max_input_bytes, input_buckets, max_output_len, artifacts_dir)
    try:
        path = ensure_artifacts(req)
    except _domain_errors() as exc:
        _fail(exc)
    m = read_manifest(path)
    typer.echo(f"{path}  ({len(m['buckets'])} buckets, target {json.dumps(m['target'])})")


def _engine(req, threads):
    from .artifacts import ensure_artifacts
    from .runtime import load_engine
    from . import targets
    path = ensure_artifacts(req)
    device = "cuda" if targets.kind(targets.resolve(req.target)) == "gpu" else "cpu"
    return path, load_engine(path, device=device, threads=threads)


@app.command()
def transcribe(
    words: Annotated[list[str], typer.Argument(help="words to transcribe")],
    lang: Annotated[str, typer.Option(help="language code, e.g. eng-us, fra, zho-s (the model's list: g2p_batch/data/lang_list.txt)")] = "eng-us",
    checkpoint: CheckpointOpt = "default",
    target: TargetOpt = "llvm",
    batch_sizes: BatchSizesOpt = _BATCH_SIZES,
    max_input_bytes: Annotated[int, typer.Option()] = 64,
    max_output_len: Annotated[int, typer.Option()] = 64,
    space_after_colon: SpaceOpt = None,
    input_eos: InputEosOpt = None,
    stop_loops: StopLoopsOpt = True,
    threads: Annotated[Optional[int], typer.Option(help="TVM threads (default: all cores)")] = None,
    artifacts_dir: ArtifactsOpt = None,
):
    """Print word<TAB>IPA for each word, compiling artifacts on first use. Rows the job would
    mark as errors print their message, and make the exit status 1."""
    import os
    from .transcriber import Transcriber
    req = _request(checkpoint, target, batch_sizes, max_input_bytes, "", max_output_len, artifacts_dir)
    try:
        _, engine = _engine(req, threads or os.cpu_count())
    except _domain_errors() as exc:
        _fail(exc)
    prompt = engine.prompt.override(space_after_colon, input_eos)
    results = Transcriber.for_engine(engine, stop_loops, prompt).transcribe([lang] * len(words), words)
    for w, r in zip(words, results):
        typer.echo(f"{w}\t{r.phonemes}" if r.status == "ok" else f"{w}\t{r.phonemes or ''}\t[{r.status}: {r.error}]")
    if any(r.status == "error" for r in results):
        raise typer.Exit(1)


@app.command()
def verify(
    data: Annotated[Path, typer.Option(help="a word<TAB>pron TSV (language = file stem) or a directory of them")],
    checkpoint: CheckpointOpt = "default",
    limit: Annotated[Optional[int], typer.Option(help="rows to check, spread round-robin over languages")] = None,
    batch_size: Annotated[int, typer.Option(help="rows per batch (must be compiled)")] = 8,
    target: TargetOpt = "llvm",
    max_input_bytes: Annotated[int, typer.Option()] = 64,
    max_output_len: Annotated[int, typer.Option()] = 64,
    space_after_colon: SpaceOpt = None,
    input_eos: InputEosOpt = None,
    stop_loops: StopLoopsOpt = True,
    reference: Annotated[bool, typer.Option("--reference/--no-reference", help="also decode with transformers (inputs tokenized as CharsiuG2P does) and compare ids")] = True,
    threads: Annotated[Optional[int], typer.Option()] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the per-language report here")] = None,
    artifacts_dir: ArtifactsOpt = None,
):
    """Decode with TVM and transformers side by side: mismatching rows (0 expected), PER, WER."""
    import os
    from . import lexicon, verify as V
    from .reference import Reference
    req = _request(checkpoint, target, str(batch_size), max_input_bytes, "", max_output_len, artifacts_dir)
    threads = threads or os.cpu_count()
    try:
        entries = lexicon.read(data, limit=limit)
        path, engine = _engine(req, threads)
    except _domain_errors() as exc:
        _fail(exc)
    prompt = engine.prompt.override(space_after_colon, input_eos)
    ref = None
    if reference:
        from .checkpoint import resolve
        ref = Reference(resolve(checkpoint)[1], threads=threads)
    rep = V.run(engine, entries, batch_size, prompt, ref, progress=True, stop_loops=stop_loops)
    langs = len({e.lang for e in entries})
    typer.echo(f"rows: {rep.rows} over {langs} languages, batch size {batch_size}, skipped (too long): {len(rep.skipped)}")
    typer.echo(f"prompt: {prompt.to_dict()}")
    typer.echo(f"tvm: {rep.rows / max(rep.tvm_seconds, 1e-9):.1f} words/s, truncated rows: {rep.truncated} "
               f"(stopped as loops: {len(rep.looped)})")
    if ref is not None:
        typer.echo(f"transformers: {rep.rows / max(rep.ref_seconds, 1e-9):.1f} words/s")
        typer.echo(f"mismatching rows: {len(rep.mismatches)}")
        if rep.looped:
            typer.echo(f"rows stopped as loops where transformers later ended with EOS: {len(rep.loops_ended_later)}")
    if rep.per_lang:
        per, wer = V.mean_scores(rep.per_lang, "tvm")
        line = f"tvm PER {per:.4f} WER {wer:.4f}"
        if ref is not None:
            rper, rwer = V.mean_scores(rep.per_lang, "ref")
            line += f" | transformers PER {rper:.4f} WER {rwer:.4f}"
        typer.echo(line + f" (mean over {len(rep.per_lang)} languages)")
    if json_out:
        json_out.write_text(json.dumps({"rows": rep.rows, "mismatches": rep.mismatches, "truncated": rep.truncated,
                                        "looped": len(rep.looped), "loops_ended_later": len(rep.loops_ended_later),
                                        "prompt": prompt.to_dict(), "per_lang": rep.per_lang,
                                        "skipped": rep.skipped}, indent=2))
    if rep.mismatches:
        for i in rep.mismatches[:10]:
            typer.echo(f"  mismatch row {i}: tvm {rep.tvm_text[i]!r} vs transformers {rep.ref_text[i]!r}", err=True)
        raise typer.Exit(1)


@app.command()
def run(
    input: Annotated[Optional[str], typer.Option("--input", "-i", help="Parquet file, directory, glob or file:// s3:// gs:// URI")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="output directory (Parquet shards, _manifest.json, _report.json)")] = None,
    word_column: Annotated[Optional[str], typer.Option(help="column holding the words")] = None,
    lang_column: Annotated[Optional[str], typer.Option(help="column holding language codes")] = None,
    lang: Annotated[Optional[str], typer.Option(help="one language code for every row (instead of --lang-column)")] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", "-c", help="'default' (embedded), a local HF directory, or a hub id")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML job config (configs/*.yaml); flags override it")] = None,
    target: Annotated[Optional[str], typer.Option(help="auto | llvm | cuda | mixed")] = None,
    rows_per_shard: Annotated[Optional[int], typer.Option()] = None,
    max_output_len: Annotated[Optional[int], typer.Option()] = None,
    threads_per_actor: Annotated[Optional[int], typer.Option()] = None,
    num_cpu_actors: Annotated[Optional[int], typer.Option()] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite/--resume", help="start over instead of skipping committed shards")] = None,
    space_after_colon: SpaceOpt = None,
    input_eos: InputEosOpt = None,
    stop_loops: Annotated[Optional[bool], typer.Option("--stop-loops/--no-stop-loops", help="stop a row whose output repeats (default: on)")] = None,
    artifacts_dir: ArtifactsOpt = None,
):
    """Transcribe Parquet lexicons with Ray: one Parquet shard out per input shard, resumable."""
    from .config import JobError, load_config
    from .driver import run_job
    overrides = dict(input=input, output=output, word_column=word_column, lang_column=lang_column, lang=lang,
                     checkpoint=checkpoint, target=target, rows_per_shard=rows_per_shard,
                     max_output_len=max_output_len, threads_per_actor=threads_per_actor,
                     num_cpu_actors=num_cpu_actors, overwrite=overwrite, space_after_colon=space_after_colon,
                     input_eos=input_eos, stop_loops=stop_loops, artifacts_dir=artifacts_dir)
    if config is None and (input is None or output is None):
        _fail(ValueError("pass --input and --output (or --config with both)"))
    try:
        report = run_job(load_config(config, **overrides))
    except JobError as exc:
        _fail(exc)
    typer.echo(report.summary())


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="directory of <lang>.tsv(.gz) training files")] = Path("../shared/charsiug2p-data/data/train"),
    out: Annotated[Path, typer.Option(help="checkpoint directory to write")] = Path("checkpoints/trained"),
    arch: Annotated[str, typer.Option()] = "tiny_3_1",
    epochs: Annotated[int, typer.Option()] = 1,
    batch_size: Annotated[int, typer.Option()] = 128,
    lr: Annotated[float, typer.Option()] = 1e-3,
    warmup_steps: Annotated[int, typer.Option()] = 300,
    dropout: Annotated[float, typer.Option()] = 0.0,
    max_minutes: Annotated[float, typer.Option(help="wall-clock budget; the model is saved when it runs out")] = 85.0,
    dev: Annotated[Optional[Path], typer.Option(help="dev split for a final loss / exact-match check")] = None,
    init: Annotated[Optional[Path], typer.Option(help="continue from this checkpoint")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    lang_balance: Annotated[float, typer.Option(help="draw language l in proportion to n_l**this (1: as the data)")] = 1.0,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast (default: on CUDA only; worth it on CPUs with AMX)")] = None,
    input_eos: Annotated[bool, typer.Option("--input-eos/--no-input-eos", help="end inputs with EOS (CharsiuG2P does not; the default checkpoint was trained with it)")] = False,
):
    """Train a CharsiuG2P-style checkpoint (torch; GPU when present). The defaults are the shipped
    default's recipe (MODEL_CARD.md); `python -m g2p_batch.train --help` lists every option."""
    from .train import train as run_training
    summary = run_training(data=str(data), out=str(out), arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                           warmup_steps=warmup_steps, dropout=dropout, max_minutes=max_minutes,
                           dev=str(dev) if dev else None, init=str(init) if init else None,
                           seed=seed, lang_balance=lang_balance, bf16=bf16, time_aware_schedule=True, input_eos=input_eos,
                           argv=sys.argv)
    typer.echo(json.dumps({k: summary[k] for k in ("steps", "epochs_done", "seconds", "final_loss")}))


@app.command()
def bench(
    data: Annotated[Path, typer.Option(help="test split directory to sample words from")] = Path("../shared/charsiug2p-data/data/test"),
    checkpoint: Annotated[Optional[str], typer.Option(help="default: a seeded tiny_8 checkpoint made in the cache dir")] = None,
    words: Annotated[int, typer.Option()] = 2000,
    batch: Annotated[int, typer.Option()] = 64,
    steps: Annotated[int, typer.Option(help="forced decoder steps; 0 = natural EOS (trained checkpoints)")] = 14,
    threads: Annotated[Optional[int], typer.Option(help="threads for every engine (default: all cores)")] = None,
    engines: Annotated[str, typer.Option(help="comma-separated: tvm,transformers,ct2-fp32,ct2-int8")] = "tvm,transformers,ct2-fp32,ct2-int8",
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    latency_runs: Annotated[int, typer.Option()] = 20,
    rounds: Annotated[int, typer.Option(help="timed passes per engine, the engines taking turns (with --ray: rounds of all four runs); the median counts")] = 3,
    out: Annotated[Path, typer.Option(help="folder for bench.json and bench.png")] = Path("bench-out"),
    cache_dir: Annotated[Optional[str], typer.Option(help="where bench checkpoints and artifacts are kept (default: bench/ in the user cache)")] = None,
    artifacts: Annotated[Optional[str], typer.Option(help="prebuilt artifact set to run (weights from --checkpoint)")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="instead: the Parquet job on 1 and --actors actors (1 thread each)")] = False,
    actors: Annotated[int, typer.Option(help="actors for --ray")] = 2,
    shard_rows: Annotated[Optional[int], typer.Option(help="rows per shard for --ray (default: four shards per actor)")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="instead: per-kernel TVM time of one batch")] = False,
):
    """Benchmark TVM against transformers and CTranslate2 in one run: table, JSON and PNG."""
    import os
    from . import bench as B
    cfg = B.BenchConfig(checkpoint=checkpoint, data=str(data), words=words, batch=batch, steps=steps or None,
                        threads=threads or os.cpu_count() or 1, engines=tuple(e.strip() for e in engines.split(",")),
                        device=device, latency_runs=latency_runs, rounds=max(1, rounds), cache_dir=cache_dir or B.default_cache_dir(),
                        artifacts=artifacts)
    out.mkdir(parents=True, exist_ok=True)
    if profile:
        res = B.profile_tvm(cfg)
        (out / "profile.json").write_text(json.dumps(res, indent=2))
        typer.echo(f"one batch of {res['batch']} x {res['input_len']} ids, {res['steps'] or 'natural-EOS'} steps: "
                   f"{res['wall_ms']:.1f} ms uninstrumented")
        for k in res["kernels"]:
            typer.echo(f"{k['name']:40s} {k['ms']:8.2f} ms  x{k['calls']}")
        return
    if ray:
        res = B.ray_scaling(cfg, actors, shard_rows, progress=lambda m: typer.echo(m, err=True))
        (out / "bench-ray.json").write_text(json.dumps(res, indent=2))
        typer.echo(f"median of {len(res['rounds'])} rounds: steady-state scaling 1 -> {actors} actors: "
                   f"{100 * res['scaling_efficiency']:.1f}% "
                   f"(vs {actors} x the single-process runtime: {100 * res['efficiency_vs_single_process']:.1f}%; "
                   f"{actors} plain processes without Ray: {100 * res['plain_processes_vs_single_process']:.1f}%); "
                   f"end to end after setup: {100 * res['end_to_end_scaling']:.1f}%; "
                   f"driver share at most {100 * res['driver_share']:.2f}% of wall time")
        return
    try:
        result = B.run(cfg, progress=lambda m: typer.echo(m, err=True))
    except _domain_errors() as exc:
        _fail(exc)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    B.plot(result, out / "bench.png")
    typer.echo(B.table(result))
    typer.echo(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
