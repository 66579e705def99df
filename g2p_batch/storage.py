"""Paths and URIs through one door (`pyarrow.fs`), so local disks and object stores take the
same code, and writes that readers only ever see whole."""

from __future__ import annotations

import hashlib
import os
import uuid
from urllib.parse import urlsplit

import pyarrow.fs as pafs

__all__ = ["atomic_write", "file_sha256", "is_uri", "join", "resolve", "sha256_of", "tmp_name", "write_file"]

_CHUNK = 1 << 20


def is_uri(location: str) -> bool:
    """`s3://b/k` and `file:///x` are URIs; `/x`, `x/y` and `C:\\x` are local paths."""
    return len(urlsplit(location).scheme) > 1


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it). Local paths are made absolute, as `from_uri` requires."""
    if not is_uri(location):
        location = os.path.abspath(location)
    return pafs.FileSystem.from_uri(location)


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def tmp_name(name: str) -> str:
    """Hidden (leading dot) so Parquet dataset readers skip a half-written or orphaned file."""
    return f".{name}.tmp-{uuid.uuid4().hex}"


def atomic_write(fs: pafs.FileSystem, directory: str, name: str, data: bytes) -> None:
    """Write `data` beside its final name, then move it over: a reader sees the old file or the
    new one, never a prefix (rename on local disks; object stores publish whole objects)."""
    tmp = join(directory, tmp_name(name))
    fs.create_dir(directory, recursive=True)
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, join(directory, name))
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise


def file_sha256(fs: pafs.FileSystem, *paths: str) -> str | None:
    """Hex digest of the files' bytes, in order, read in chunks; None when one does not exist."""
    digest = hashlib.sha256()
    for path in paths:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def write_file(location: str | os.PathLike, data: bytes) -> None:
    """`atomic_write` by path or URI."""
    fs, path = resolve(str(location))
    directory, _, name = path.rpartition("/")
    atomic_write(fs, directory or "/", name, data)


def sha256_of(*locations: str | os.PathLike) -> str | None:
    """`file_sha256` by paths or URIs (on one filesystem)."""
    resolved = [resolve(str(loc)) for loc in locations]
    return file_sha256(resolved[0][0], *(path for _, path in resolved))
