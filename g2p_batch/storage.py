"""Paths and URIs through one door (`pyarrow.fs`), so local disks and object stores (S3 and
S3-compatible stores through `AWS_ENDPOINT_URL`; GCS) take the same code, and writes that readers
only ever see whole."""

from __future__ import annotations

import hashlib
import os
import uuid
from urllib.parse import urlsplit

import pyarrow.fs as pafs

__all__ = ["atomic_write", "check_writable", "explain", "file_sha256", "is_uri", "join", "publishes_whole", "resolve",
           "sha256_of", "tmp_name", "write_file"]

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


def publishes_whole(fs: pafs.FileSystem) -> bool:
    """Object stores show an object only once its upload completes: a direct put is already
    atomic there, where write-then-rename would copy every byte twice and could leave a
    temporary object behind."""
    return fs.type_name in ("s3", "gcs")


def atomic_write(fs: pafs.FileSystem, directory: str, name: str, data: bytes) -> None:
    """A reader sees the old file or the new one, never a prefix: a direct put on object
    stores, a hidden file renamed over the final name elsewhere."""
    if publishes_whole(fs):
        with fs.open_output_stream(join(directory, name)) as out:
            out.write(data)
        return
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


def check_writable(location: str) -> None:
    """Write and delete a small probe object under `location`, so an unreachable endpoint,
    missing credentials, a missing bucket or a read-only prefix fail before any work, as an
    OSError saying which of them it looks like."""
    fs, base = resolve(location)
    probe = join(base, f"_g2p_batch_probe-{uuid.uuid4().hex}")
    try:
        if not publishes_whole(fs):
            fs.create_dir(base, recursive=True)
        with fs.open_output_stream(probe) as out:
            out.write(b"probe")
        fs.delete_file(probe)
    except OSError as exc:
        raise OSError(f"cannot write to {location!r}: {explain(exc)}") from exc


def explain(exc: OSError) -> str:
    """A storage error on one line, with the likely fix."""
    text = " ".join(str(exc).split())
    low = text.lower()
    if "bucket" in low and ("not found" in low or "does not exist" in low or "nosuchbucket" in low):
        hint = "the bucket does not exist: create it or fix the name"
    elif "connect" in low or "curl" in low or "resolve host" in low:
        hint = "the endpoint cannot be reached: check AWS_ENDPOINT_URL (or the store's address) and the network"
    elif "access denied" in low or "forbidden" in low or "credential" in low or "signature" in low:
        hint = "the store refused: check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws) and the prefix's permissions"
    else:
        hint = "check the path, the credentials and that this prefix may be written"
    return f"{text}; {hint}"


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
