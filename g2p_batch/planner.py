"""Cut the input into shards from Parquet footers alone, and refuse bad input before any work.

A shard is a run of whole row groups of one file, so an actor reads exactly its rows and
nothing else, and a shard's name is a pure function of (file, row groups): a rerun of the same
plan writes the same output names, which is what makes resume and retries exactly-once.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import storage
from .config import JobError
from .writer import OUTPUT_COLUMNS

__all__ = ["InputError", "Plan", "Shard", "open_parquet", "plan_shards", "resolve_sources"]

_GLOB = re.compile(r"[*?\[]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class InputError(JobError, ValueError):
    """Input that cannot be transcribed; the message names the file, the column and the fix."""


@dataclass(frozen=True)
class Shard:
    source: str          # absolute path or URI of the Parquet file (storage.resolve accepts it)
    rg_start: int        # first row group
    rg_stop: int         # one past the last row group
    num_rows: int
    first_row: int       # index in the source file of the shard's first row

    @property
    def row_groups(self) -> list[int]:
        return list(range(self.rg_start, self.rg_stop))

    @property
    def id(self) -> str:
        """`<stem>-<hash8 of the full path>-rg<first>-<last>`: readable, and unique per file."""
        path = self.source.split("?", 1)[0]
        stem = path.rstrip("/").rsplit("/", 1)[-1]
        stem = stem[: -len(".parquet")] if stem.endswith(".parquet") else stem
        stem = _UNSAFE.sub("_", stem)[:80] or "part"
        digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:8]
        return f"{stem}-{digest}-rg{self.rg_start:05d}-{self.rg_stop - 1:05d}"

    @property
    def name(self) -> str:
        return f"{self.id}.parquet"


@dataclass(frozen=True)
class Plan:
    shards: list[Shard]
    files: list[str]

    @property
    def total_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)


def plan_shards(input: str, word_column: str, lang_column: str | None,
                rows_per_shard: int) -> Plan:
    """Shards of about `rows_per_shard` rows (a bigger row group is a shard of its own).

    Every file's footer is read and checked first; all problems are reported together.
    """
    sources = resolve_sources(input)
    problems, shards = [], []
    for source in sources:
        try:
            pf = open_parquet(source)
            check_schema(source, pf.schema_arrow, word_column, lang_column)
        except InputError as exc:
            problems.append(str(exc))
            continue
        shards.extend(_pack(source, pf.metadata, rows_per_shard))
    if problems:
        head = "input file has a problem" if len(problems) == 1 else \
            f"{len(problems)} input files have problems"
        raise InputError(f"{head}; nothing was transcribed:\n  " + "\n  ".join(problems))
    return Plan(shards=shards, files=sources)


def resolve_sources(input: str) -> list[str]:
    """A file, a directory (every non-hidden file under it), or a glob over file names."""
    query = urlsplit(input).query if storage.is_uri(input) else ""
    location = input.split("?", 1)[0] if query else input
    try:
        fs, path = storage.resolve(input)
    except (pa.ArrowInvalid, ValueError, OSError) as exc:
        raise InputError(f"input {input!r} is not a path or a URI pyarrow can open ({exc}); "
                         "use a local path or file://, s3:// or gs:// URI") from exc
    if query:
        path = path.split("?", 1)[0]
    try:
        if _GLOB.search(path):
            paths = _glob(fs, path)
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                paths = [path]
            elif info.type == pafs.FileType.Directory:
                paths = _list_dir(fs, path)
            else:
                raise InputError(f"input {input!r} does not exist; fix the path")
    except OSError as exc:
        raise InputError(f"cannot list input {input!r}: {exc}") from exc
    if not paths:
        raise InputError(f"input {input!r} matches no files; fix the path or the glob")
    return [_source(location, fs, p, query) for p in sorted(paths)]


def open_parquet(source: str) -> pq.ParquetFile:
    """The file's footer (and a handle to read row groups); unreadable -> InputError."""
    try:
        fs, path = storage.resolve(source)
        return pq.ParquetFile(fs.open_input_file(path.split("?", 1)[0]))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{source}: cannot read it as Parquet ({exc}); check the file is "
                         "complete, or remove it from the input") from exc


def check_schema(source: str, schema: pa.Schema, word_column: str,
                 lang_column: str | None) -> None:
    for key, column in (("word_column", word_column), ("lang_column", lang_column)):
        if column is None:
            continue
        count = schema.names.count(column)
        if count != 1:
            what = "has no column" if count == 0 else f"has {count} columns named"
            raise InputError(f"{source}: {what} {column!r} (columns: {schema.names}); set "
                             f"{key} to the column holding the {key.split('_')[0]}s")
        typ = schema.field(column).type
        if not _is_string(typ):
            raise InputError(f"{source}: column {column!r} is {typ}, not a string column; "
                             "write it as string (or large_string, dictionary<string>)")
    clash = [c for c in OUTPUT_COLUMNS if c in schema.names]
    if clash:
        raise InputError(f"{source}: has columns {clash} that the output adds; rename or drop "
                         "them in the input")


def _is_string(typ: pa.DataType) -> bool:
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _pack(source: str, meta: pq.FileMetaData, rows_per_shard: int) -> list[Shard]:
    """Greedy: add row groups until the next would pass rows_per_shard. Empty files give none."""
    shards, start, rows, first_row = [], 0, 0, 0
    for rg in range(meta.num_row_groups):
        n = meta.row_group(rg).num_rows
        if rows and rows + n > rows_per_shard:
            shards.append(Shard(source, start, rg, rows, first_row))
            start, first_row, rows = rg, first_row + rows, 0
        rows += n
    if rows:
        shards.append(Shard(source, start, meta.num_row_groups, rows, first_row))
    return shards


def _hidden(rel: str) -> bool:
    """Spark/Hive conventions: `_SUCCESS`, `.crc` files and `_temporary/` are not data."""
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def _list_dir(fs: pafs.FileSystem, path: str) -> list[str]:
    base = path.rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return [i.path for i in infos if i.type == pafs.FileType.File
            and not _hidden(i.path[len(base):].lstrip("/"))]


def _glob(fs: pafs.FileSystem, pattern: str) -> list[str]:
    """Component-wise, so `*` never crosses a '/' (as in a shell); hidden names as `_hidden`."""
    parts = pattern.split("/")
    fixed = next(i for i, p in enumerate(parts) if _GLOB.search(p))
    base = "/".join(parts[:fixed]) or "/"
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=len(parts) - fixed > 1))
    out = []
    for info in infos:
        cand = info.path.split("/")
        if info.type == pafs.FileType.File and len(cand) == len(parts) and all(
                _match(c, p) for c, p in zip(cand, parts)):
            out.append(info.path)
    return out


def _match(name: str, pattern: str) -> bool:
    """A wildcard does not match a hidden name (`_x`, `.x`) unless the pattern spells it out."""
    if name.startswith((".", "_")) and not pattern.startswith(name[0]):
        return False
    return fnmatch.fnmatchcase(name, pattern)


def _source(location: str, fs: pafs.FileSystem, path: str, query: str) -> str:
    """Back from (filesystem, path) to a string an actor on another node can resolve."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    parts = urlsplit(location)
    if parts.scheme in ("s3", "gs", "gcs"):
        uri = f"{parts.scheme}://{path}"          # the path starts with the bucket
    else:
        uri = f"{parts.scheme}://{parts.netloc}/{path.lstrip('/')}"
    return f"{uri}?{query}" if query else uri
