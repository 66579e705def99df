"""Paths and URIs through one door (`pyarrow.fs`), so local disks and object stores take the
same code, and writes that readers only ever see whole."""

from __future__ import annotations

import hashlib
import os
import uuid
from urllib.parse import urlsplit

import pyarrow.fs as pafs

__all__ = ["atomic_write", "file_sha256", "is_uri", "join", "resolve", "tmp_name"]

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


def file_sha256(fs: pafs.FileSystem, path: str) -> str | None:
    """Hex digest of a file, read in chunks; None when it does not exist."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
