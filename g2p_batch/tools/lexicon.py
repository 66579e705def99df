"""CharsiuG2P-style TSV lexicons (`word<TAB>pron`, one file per language code)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = ["Entry", "charsiu_data", "read", "read_tsv"]


def charsiu_data(split: str) -> Path:
    """A split of the CharsiuG2P data: `$G2P_DATA/data/<split>`, else beside this checkout
    (`../shared/charsiug2p-data`), where the project's commands look by default."""
    root = os.environ.get("G2P_DATA") or "../shared/charsiug2p-data"
    return Path(root) / "data" / split


@dataclass(frozen=True)
class Entry:
    lang: str
    word: str
    pron: str | None = None


def read_tsv(path: Path, lang: str | None = None) -> list[Entry]:
    lang = lang or path.stem
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        word, _, pron = line.partition("\t")
        out.append(Entry(lang, word, pron or None))
    return out


def read(path: str | Path, limit: int | None = None) -> list[Entry]:
    """A TSV file, or a directory of `<lang>.tsv`. With `limit`, rows are taken round-robin
    across languages (file order within each), so a small sample still covers every script."""
    path = Path(path)
    files = sorted(path.glob("*.tsv")) if path.is_dir() else [path]
    if not files or not all(f.exists() for f in files):
        raise InputError(f"no .tsv lexicon at {path}; give a word<TAB>pron file or a folder of <lang>.tsv")
    per_lang = [read_tsv(f) for f in files]
    if limit is None:
        return [e for rows in per_lang for e in rows]
    out: list[Entry] = []
    i = 0
    while len(out) < limit and any(i < len(rows) for rows in per_lang):
        out.extend(rows[i] for rows in per_lang if i < len(rows))
        i += 1
    return out[:limit]
