"""Config dataclasses from YAML files and flags: one loader for every entry point.

Each concern has one dataclass (JobConfig, CompileConfig, TrainConfig, BenchConfig) whose fields
carry their help text; `load` reads a YAML mapping, applies overrides (None means "not given")
and names an unknown key with its closest match. The CLI builds its options from the same
fields, so the YAML keys, the flags and the defaults cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

__all__ = ["check_int", "int_list", "load", "setting"]

T = TypeVar("T")


def setting(default: Any = dataclasses.MISSING, *, help: str, factory=None) -> Any:
    """A dataclass field with its help text (shown by `--help`)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def load(cls: type[T], path: str | Path | None = None, **overrides) -> T:
    """YAML (optional), then keyword overrides; an override of None means 'not given'."""
    values: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {str(path)!r}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {str(path)!r} must be a mapping of keys to values")
        values.update(loaded or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {list(fields)}"
            where = f" in {path}" if path else ""
            raise ConfigError(f"unknown config key {key!r}{where}{hint}")
    missing = [f.name for f in fields.values() if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and f.name not in values]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required; set "
                          "it in the YAML or pass " + " and ".join("--" + m.replace("_", "-") for m in missing))
    return cls(**values)


def int_list(key: str, value) -> list[int]:
    """A list or a comma-separated string ('1,8,32' from a flag) -> sorted unique positives."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"{key} must be a non-empty list of positive integers, got {value!r}")
    out = []
    for v in value:
        try:
            n = int(v)
        except (TypeError, ValueError):
            n = 0
        if n < 1 or isinstance(v, bool) or (isinstance(v, float) and v != n):
            raise ConfigError(f"{key} must hold positive integers; {v!r} is not one")
        out.append(n)
    return sorted(set(out))


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key} {value!r} is not one of {list(choices)}")


def check_int(key: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
