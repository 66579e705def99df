"""Entry point for `ray job submit`: the same job as `g2p-batch run`, from a config file.

    ray job submit --working-dir . -- python jobs/transcribe.py --config configs/local.yaml \\
        --output out/run-2 --max-retries 3

Every JobConfig key is a flag (`rows_per_shard` -> `--rows-per-shard`); flags override the
YAML. Exit status 1 (with the summary on stderr) when the config, the input or a shard fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

# `python jobs/transcribe.py` puts jobs/ on sys.path, not the project root
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from g2p_batch.config import JobConfig, JobError, load_config  # noqa: E402
from g2p_batch.driver import run_job  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="YAML file of JobConfig keys")
    for f in dataclasses.fields(JobConfig):
        flag = "--" + f.name.replace("_", "-")
        ann = str(f.type)
        if ann == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None)
        elif ann.startswith("int"):
            parser.add_argument(flag, dest=f.name, type=int, default=None)
        else:   # strings; lists as "1,8,32"; known_langs as a file path
            parser.add_argument(flag, dest=f.name, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config(args.pop("config"), **args)
        report = run_job(config)
    except JobError as exc:
        print(f"g2p-batch: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
