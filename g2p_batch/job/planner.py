"""Cut the input into shards from Parquet footers alone, and refuse bad input before any work.

A shard is a range of rows of one file (whole row groups where they fit `rows_per_shard`, a
big row group cut into pieces), so an actor reads its rows and little else, and a shard's name
is a pure function of (file, rows): a rerun of the same plan writes the same output names,
which is what makes resume and retries exactly-once.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .. import storage
from ..errors import InputError
from .writer import OUTPUT_COLUMNS

__all__ = ["InputError", "Plan", "Shard", "open_parquet", "plan_shards", "resolve_sources"]

log = logging.getLogger("g2p_batch")
_GLOB = re.compile(r"[*?\[]")
_UNSAFE = re.compile(r"[^\w.-]+")   # \w is Unicode-aware: a stem like 词典 stays readable
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@dataclass(frozen=True)
class Shard:
    source: str          # absolute path or URI of the Parquet file (storage.resolve accepts it)
    first_row: int       # index in the source file of the shard's first row
    num_rows: int
    rg_start: int        # first row group holding its rows
    rg_stop: int         # one past the last
    skip: int = 0        # rows of row group rg_start before first_row (a cut row group)

    @property
    def row_groups(self) -> list[int]:
        return list(range(self.rg_start, self.rg_stop))

    @property
    def id(self) -> str:
        """`<stem>-<hash8 of the full path>-r<first>-<last>`: readable, unique per file, and never
        starting with '_' or '.', which Parquet dataset readers (pyarrow, Spark, Hive) skip."""
        path = self.source.split("?", 1)[0]
        stem = path.rstrip("/").rsplit("/", 1)[-1]
        stem = next((stem[: -len(x)] for x in PARQUET_SUFFIXES if stem.endswith(x)), stem)
        stem = _UNSAFE.sub("_", unicodedata.normalize("NFC", stem)).strip("._-")[:80] or "part"
        digest = hashlib.sha256(path.encode("utf-8")).hexdigest()[:8]
        rows = f"r{self.first_row:09d}-{self.first_row + self.num_rows - 1:09d}" if self.num_rows else "empty"
        return f"{stem}-{digest}-{rows}"

    @property
    def name(self) -> str:
        return f"{self.id}.parquet"


@dataclass(frozen=True)
class Plan:
    shards: list[Shard]
    files: list[str]
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"}: not Parquet, left out

    @property
    def total_rows(self) -> int:
        return sum(s.num_rows for s in self.shards)


def plan_shards(input: str, word_column: str, lang_column: str | None,
                rows_per_shard: int, added: tuple[str, ...] = ()) -> Plan:
    """Shards of at most `rows_per_shard` rows.

    Every file's footer is read and checked first; all problems are reported together. A file
    found by listing a folder or a glob that is not Parquet (a README, a `.csv`) is skipped with
    a warning; a named file, or one called `*.parquet`, that cannot be read is an error.
    """
    sources, listed = resolve_sources(input, with_listing=True)
    problems, shards, files, skipped = [], [], [], []
    for source in sources:
        try:
            pf = open_parquet(source)
        except InputError as exc:
            if listed and not source.split("?", 1)[0].lower().endswith(PARQUET_SUFFIXES):
                log.warning("skipping %s: not a Parquet file", source)
                skipped.append({"file": source, "reason": "not a Parquet file"})
            else:
                problems.append(str(exc))
            continue
        try:
            check_schema(source, pf.schema_arrow, word_column, lang_column, added)
        except InputError as exc:
            problems.append(str(exc))
            continue
        files.append(source)
        shards.extend(_cut(source, pf.metadata, rows_per_shard))
    if problems:
        head = "input file has a problem" if len(problems) == 1 else \
            f"{len(problems)} input files have problems"
        raise InputError(f"{head}; nothing was transcribed:\n  " + "\n  ".join(problems))
    if not files:
        raise InputError(f"input {input!r} holds no Parquet files (skipped: "
                         f"{', '.join(s['file'] for s in skipped[:5])}); fix the path or the glob")
    return Plan(shards=shards, files=files, skipped=skipped)


def resolve_sources(input: str, with_listing: bool = False):
    """A file, a directory (every non-hidden file under it), or a glob over file names. With
    `with_listing`, also whether the files came from a listing (a directory or a glob)."""
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
        listed = True
        if _GLOB.search(path):
            paths = _glob(fs, path)
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.File:
                paths, listed = [path], False
            elif info.type == pafs.FileType.Directory:
                paths = _list_dir(fs, path)
            else:
                raise InputError(f"input {input!r} does not exist; fix the path")
    except OSError as exc:
        raise InputError(f"cannot list input {input!r}: {storage.explain(exc)}") from exc
    if not paths:
        raise InputError(f"input {input!r} matches no files; fix the path or the glob")
    sources = [_source(location, fs, p, query) for p in sorted(paths)]
    return (sources, listed) if with_listing else sources


def open_parquet(source: str) -> pq.ParquetFile:
    """The file's footer (and a handle to read row groups); unreadable -> InputError."""
    try:
        fs, path = storage.resolve(source)
        return pq.ParquetFile(fs.open_input_file(path.split("?", 1)[0]))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"{source}: cannot read it as Parquet ({exc}); check the file is "
                         "complete, or remove it from the input") from exc


def check_schema(source: str, schema: pa.Schema, word_column: str,
                 lang_column: str | None, added: tuple[str, ...] = ()) -> None:
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
    clash = [c for c in [*OUTPUT_COLUMNS, *added] if c in schema.names]
    if clash:
        raise InputError(f"{source}: has columns {clash} that the output adds; rename or drop "
                         "them in the input")


def _is_string(typ: pa.DataType) -> bool:
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ)


def _cut(source: str, meta: pq.FileMetaData, rows_per_shard: int) -> list[Shard]:
    """Whole row groups while they fit `rows_per_shard`; a bigger row group (pandas and pyarrow
    write a file as one by default) is cut into even pieces, so such a file still spreads over
    actors and progress moves per piece. An empty file gets one empty shard (a schema-only
    output file, so readers see its columns)."""
    shards: list[Shard] = []
    start, rows, first, pos = 0, 0, 0, 0      # the open run of row groups; pos: next row's index
    for rg in range(meta.num_row_groups):
        n = meta.row_group(rg).num_rows
        if rows and rows + n > rows_per_shard:
            shards.append(Shard(source, first, rows, start, rg))
            rows = 0
        if n > rows_per_shard:
            pieces = -(-n // rows_per_shard)
            size = -(-n // pieces)
            shards.extend(Shard(source, pos + k, min(size, n - k), rg, rg + 1, k) for k in range(0, n, size))
        elif n:
            if not rows:
                start, first = rg, pos
            rows += n
        pos += n
    if rows:
        shards.append(Shard(source, first, rows, start, meta.num_row_groups))
    return shards or [Shard(source, 0, 0, 0, 0)]


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
