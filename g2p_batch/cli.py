"""`g2p-batch`: thin Typer commands over the library. Each command's options are the fields of
its config dataclass (JobConfig, CompileConfig, TrainConfig, BenchConfig), so `--config` YAML
keys, flags and defaults are one list. Library errors (G2PError) become one red line and exit
code 1; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from .compile.artifacts import CompileConfig
from .errors import G2PError
from .job.config import JobConfig
from .tools.bench import BenchConfig
from .tools.train import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, help=__doc__.split(".")[0])

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML file of the command's keys; flags override it")]
SpaceOpt = Annotated[Optional[bool], typer.Option("--space-after-colon/--no-space-after-colon", help="'<lang>: word' instead of '<lang>:word' (default: as the checkpoint declares)")]
InputEosOpt = Annotated[Optional[bool], typer.Option("--input-eos/--no-input-eos", help="end the input with EOS (default: as the checkpoint declares, else no, as CharsiuG2P)")]
StopLoopsOpt = Annotated[bool, typer.Option("--stop-loops/--no-stop-loops", help="stop a row whose output repeats (status truncated)")]
KeepCaseOpt = Annotated[bool, typer.Option("--keep-case", help="feed words in their own case (default: lowercased where the language's training words were all lowercase)")]
LexiconOpt = Annotated[Optional[str], typer.Option(help="lexicon file(s), comma-separated, whose entries win over the model: TSV lang<TAB>word<TAB>pron or Parquet")]
NumBeamsOpt = Annotated[int, typer.Option(help="beam search over this many hypotheses per word (1: greedy)")]
NBestOpt = Annotated[int, typer.Option(help="with --num-beams K: print the N best (<= K), one line each with its score")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="TVM threads (default: all cores)")]


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg="red", err=True)
    raise typer.Exit(1)


def with_config_options(cls, *, exclude: tuple[str, ...] = ()):
    """Give a command one option per field of `cls` (help and default from the field), passed
    to it as one dict `options` (None: not given) beside its own parameters."""
    hints = typing.get_type_hints(cls)

    def option(f: dataclasses.Field) -> inspect.Parameter:
        typ = hints[f.name]
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        base = args[0] if isinstance(typ, types.UnionType) and len(args) == 1 else typ
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_text = f.metadata.get("help", "") + (f" (default: {shown})" if shown not in (None, "") else "")
        if base is bool:
            ann = Annotated[Optional[bool], typer.Option(f"{flag}/--no-{flag[2:]}", help=help_text, show_default=False)]
        elif base in (int, float, str):
            ann = Annotated[Optional[base], typer.Option(flag, help=help_text, show_default=False)]
        else:  # lists ("1,8,32") and str-or-list (known_langs: a file of codes)
            ann = Annotated[Optional[str], typer.Option(flag, help=help_text + " (comma-separated)", show_default=False)]
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ann)

    generated = [option(f) for f in dataclasses.fields(cls) if f.name not in exclude]

    def deco(fn):
        own = [p for name, p in inspect.signature(fn).parameters.items() if name != "options"]
        own_hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=own_hints[p.name], kind=inspect.Parameter.POSITIONAL_OR_KEYWORD
                         if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD else p.kind) for p in own]

        @functools.wraps(fn)
        def wrapper(**kwargs):
            options = {p.name: kwargs.pop(p.name) for p in generated}
            return fn(options=options, **kwargs)

        wrapper.__signature__ = inspect.Signature(own + generated)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + generated}
        del wrapper.__wrapped__  # typer must read the signature above, not fn's
        return wrapper
    return deco


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log each step (compile phases, job plan)")] = False):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")


def _compile_config(options: dict) -> CompileConfig:
    from .settings import load
    return load(CompileConfig, None, **options)


def _load_engine(cfg, threads: int | None):
    """Compile what is missing, then load it on this machine's device."""
    import os

    from .compile.artifacts import ensure_artifacts
    from .runtime import targets
    from .runtime.engine import load_engine
    path = ensure_artifacts(cfg)
    device = "cuda" if targets.kind(targets.resolve(cfg.target)) == "gpu" else "cpu"
    return path, load_engine(path, device=device, threads=threads or os.cpu_count())


@app.command()
@with_config_options(JobConfig)
def run(options: dict, config: ConfigOpt = None):
    """Transcribe Parquet lexicons with Ray: one Parquet shard out per input shard, resumable."""
    from .job.config import load_config
    from .job.driver import run_job
    try:
        report = run_job(load_config(config, **options))
    except G2PError as exc:
        _fail(exc)
    typer.echo(report.summary())


@app.command("compile")
@with_config_options(CompileConfig)
def compile_cmd(options: dict, config: ConfigOpt = None):
    """Compile a checkpoint into TVM artifacts (one module per batch size x input length)."""
    from .compile.artifacts import ensure_artifacts
    from .runtime.manifest import read_manifest
    from .settings import load
    try:
        path = ensure_artifacts(load(CompileConfig, config, **options))
    except G2PError as exc:
        _fail(exc)
    m = read_manifest(path)
    typer.echo(f"{path}  ({len(m['buckets'])} buckets, target {json.dumps(m['target'])})")


@app.command()
@with_config_options(CompileConfig)
def transcribe(
    options: dict,
    words: Annotated[list[str], typer.Argument(help="words to transcribe")],
    lang: Annotated[str, typer.Option(help="language code, e.g. eng-us, fra, zho-s (the model's list: g2p_batch/data/lang_list.txt)")] = "eng-us",
    space_after_colon: SpaceOpt = None,
    input_eos: InputEosOpt = None,
    stop_loops: StopLoopsOpt = True,
    keep_case: KeepCaseOpt = False,
    lexicon: LexiconOpt = None,
    num_beams: NumBeamsOpt = 1,
    n_best: NBestOpt = 1,
    threads: ThreadsOpt = None,
):
    """Print word<TAB>IPA for each word (word<TAB>IPA<TAB>score per candidate with --n-best),
    compiling artifacts on first use. Rows the job would mark as errors print their message,
    and make the exit status 1."""
    from .decode.transcriber import Transcriber
    from .job.lexicon import entries, read_lexicons
    try:
        entries_ = entries(read_lexicons(lexicon.split(","))) if lexicon else None
        _, engine = _load_engine(_compile_config(options), threads)
        prompt = engine.prompt.override(space_after_colon, input_eos)
        transcriber = Transcriber.for_engine(engine, stop_loops, prompt, keep_case, entries_, num_beams, n_best)
    except G2PError as exc:
        _fail(exc)
    results = transcriber.transcribe([lang] * len(words), words)
    for w, r in zip(words, results):
        note = "" if r.status == "ok" else f"\t[{r.status}: {r.error}]" if r.error else f"\t[{r.status}]"
        if n_best > 1 and r.candidates:
            for j, (p, s) in enumerate(r.candidates):
                typer.echo(f"{w}\t{p}\t{'' if s is None else f'{s:.4f}'}" + (note if j == 0 else ""))
            continue
        typer.echo(f"{w}\t{r.phonemes or ''}{note}")
    if any(r.status == "error" for r in results):
        raise typer.Exit(1)


@app.command()
@with_config_options(CompileConfig, exclude=("batch_sizes",))
def verify(
    options: dict,
    data: Annotated[Path, typer.Option(help="a word<TAB>pron TSV (language = file stem) or a directory of them")],
    limit: Annotated[Optional[int], typer.Option(help="rows to check, spread round-robin over languages")] = None,
    batch_size: Annotated[int, typer.Option(help="rows per batch (compiled if missing)")] = 8,
    space_after_colon: SpaceOpt = None,
    input_eos: InputEosOpt = None,
    stop_loops: StopLoopsOpt = True,
    keep_case: KeepCaseOpt = False,
    capitalize: Annotated[bool, typer.Option("--capitalize", help="capitalise every word first: what the case rules do with capitalised input")] = False,
    reference: Annotated[bool, typer.Option("--reference/--no-reference", help="also decode with transformers (inputs tokenized as CharsiuG2P does) and compare ids")] = True,
    threads: ThreadsOpt = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="write the per-language report here")] = None,
):
    """Decode with TVM and transformers side by side: mismatching rows (0 expected), PER, WER.
    With --precision bf16 the fp32 set decodes the same rows too, and bf16's accuracy gate
    against it (not byte identity) sets the exit status."""
    import dataclasses
    import os

    from .decode.rules import InputRules
    from .model.checkpoint import resolve
    from .tools import lexicon
    from .tools import verify as V
    from .tools.reference import Reference
    threads = threads or os.cpu_count()
    try:
        cfg = _compile_config({**options, "batch_sizes": [batch_size]})
        entries = lexicon.read(data, limit=limit)
        _, engine = _load_engine(cfg, threads)
        fp32 = _load_engine(dataclasses.replace(cfg, precision="fp32"), threads)[1] if cfg.precision == "bf16" else None
        ref = Reference(resolve(cfg.checkpoint)[1], threads=threads) if reference else None
    except G2PError as exc:
        _fail(exc)
    prompt = engine.prompt.override(space_after_colon, input_eos)
    rules = InputRules.from_dict(engine.input_rules, keep_case)
    rep = V.run(engine, entries, batch_size, prompt, ref, progress=True, stop_loops=stop_loops, rules=rules,
                capitalize=capitalize, fp32=fp32)
    for line in V.summary_lines(rep, entries, batch_size, prompt, ref is not None):
        typer.echo(line)
    gate_ok = True
    if fp32 is not None:
        gate, gate_ok = V.bf16_gate(rep)
        for line in gate:
            typer.echo(line)
    if json_out:
        json_out.write_text(json.dumps(V.to_json(rep, prompt), indent=2))
    if fp32 is not None:  # bf16 is judged by its gate; mismatches against transformers are expected
        raise typer.Exit(0 if gate_ok else 1)
    if rep.mismatches:
        for i in rep.mismatches[:10]:
            typer.echo(f"  mismatch row {i}: tvm {rep.tvm_text[i]!r} vs transformers {rep.ref_text[i]!r}", err=True)
        raise typer.Exit(1)


@app.command("make-checkpoint")
def make_checkpoint(
    out_dir: Annotated[Path, typer.Argument(help="directory to write config.json + model.safetensors")],
    arch: Annotated[str, typer.Option(help="tiny_8, tiny_12, tiny_16, small, tiny_3_1, micro, ... with ,key=value overrides (feed_forward_proj=relu, tie_word_embeddings=true)")] = "tiny_8",
    seed: Annotated[int, typer.Option(help="torch seed for the random init")] = 0,
    eos_shadow: Annotated[Optional[int], typer.Option(help="make EOS win wherever this token id would: rows end at varied steps")] = None,
):
    """Write a seeded random-init checkpoint with a CharsiuG2P architecture (needs torch)."""
    from .tools import checkpoints
    try:
        path = checkpoints.make(arch, seed, out_dir, eos_shadow=eos_shadow)
    except G2PError as exc:
        _fail(exc)
    typer.echo(str(path))


@app.command()
@with_config_options(TrainConfig)
def train(options: dict, config: ConfigOpt = None):
    """Train a CharsiuG2P-style checkpoint (torch; GPU when present). The defaults are the
    embedded default's first stage (MODEL_CARD.md)."""
    from .settings import load
    from .tools.train import train as run_training
    try:
        summary = run_training(load(TrainConfig, config, **options), argv=sys.argv)
    except G2PError as exc:
        _fail(exc)
    typer.echo(json.dumps({k: summary[k] for k in ("steps", "epochs_done", "seconds", "final_loss")}))


@app.command()
@with_config_options(BenchConfig)
def bench(
    options: dict,
    config: ConfigOpt = None,
    ray: Annotated[bool, typer.Option("--ray", help="instead: the Parquet job on 1 and --actors actors (1 thread each)")] = False,
    profile: Annotated[bool, typer.Option("--profile", help="instead: per-kernel TVM time of one batch")] = False,
):
    """Benchmark TVM against transformers and CTranslate2 in one run: table, JSON and PNG."""
    from .settings import load
    from .tools import bench as B
    try:
        cfg = load(BenchConfig, config, **options)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        if profile:
            res = B.profile_tvm(cfg)
            (out / "profile.json").write_text(json.dumps(res, indent=2))
            lines = B.profile_lines(res)
        elif ray:
            res = B.ray_scaling(cfg, progress=lambda m: typer.echo(m, err=True))
            (out / "bench-ray.json").write_text(json.dumps(res, indent=2))
            lines = [B.ray_summary_line(res)]
        else:
            res = B.run(cfg, progress=lambda m: typer.echo(m, err=True))
            (out / "bench.json").write_text(json.dumps(res, indent=2))
            B.plot(res, out / "bench.png")
            lines = [B.table(res), f"wrote {out / 'bench.json'} and {out / 'bench.png'}"]
    except G2PError as exc:
        _fail(exc)
    for line in lines:
        typer.echo(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
