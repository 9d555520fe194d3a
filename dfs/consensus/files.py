"""Small files of a Raft replica that must come back whole after a power cut.

``write_atomic`` writes a temporary file, fsyncs it, renames it over the old one
and fsyncs the directory, so a reader finds the old contents or the new, never
a mix or an empty file (the classic loss: a rename of data nobody synced).
``read_state``/``write_state`` keep a JSON document with a CRC of its contents,
for state whose damage must stop the replica (term and vote: a voter that
forgot its vote can vote twice in a term). ``CorruptState`` is that refusal.

May import: dfs.common only (no pysyncobj: this is plain file handling).
"""

from __future__ import annotations

import errno
import json
import os
import zlib

from dfs.common.errors import DfsError


class CorruptState(DfsError):
    """A file of a replica's Raft state is damaged (EUCLEAN): the replica refuses to
    start rather than start from less than it promised to keep."""

    errno_value = errno.EUCLEAN


def fsync_dir(path: str) -> None:
    """Make the names in directory ``path`` (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, *, sync: bool = True) -> None:
    """Replace ``path`` by ``data``: a reader (and, with ``sync``, a power cut) sees the
    old file or the new one. Without ``sync`` it survives a crash of this process only."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def _crc(doc: dict) -> int:
    return zlib.crc32(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def write_state(path: str, doc: dict) -> None:
    """``doc`` (JSON-able) with its CRC, atomically and durably."""
    out = dict(doc, crc32=_crc(doc))
    write_atomic(path, json.dumps(out, sort_keys=True).encode() + b"\n")


def read_state(path: str) -> dict | None:
    """The document ``write_state`` left at ``path`` (None: no file); anything else there
    (truncated, unparsable, a wrong CRC) is ``CorruptState``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        crc = doc.pop("crc32")
    except (ValueError, AttributeError, KeyError, TypeError):
        raise CorruptState(f"{path} is damaged ({len(raw)} bytes, not a state document)") from None
    if not isinstance(doc, dict) or crc != _crc(doc):
        raise CorruptState(f"{path} is damaged (its checksum does not match)")
    return doc
