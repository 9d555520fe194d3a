"""Checkpoints of many files that become visible whole or not at all.

A checkpoint is a directory ``ROOT/NAME`` written by many processes (one file
or more per rank, plus metadata). Readers must never see half of one, and a
crash of any writer, or of a server, before the end must leave the previous
checkpoint as the latest. So:

1. the files are written into a staging directory ``ROOT/.NAME.staging-<token>``
   (``CheckpointDir.stage``), each rank's files fsync'd and closed;
2. once every rank is done, one process writes the commit marker
   ``.commit`` (a manifest: every file and its size) into the staging
   directory, then renames the staging directory to ``ROOT/NAME`` -- one
   atomic rename: the checkpoint appears whole, with its marker, or not at all;
3. the ``ROOT/latest`` pointer (the name, in a file written aside and renamed
   over the old one) moves to it.

A crash before (2) leaves an abandoned staging directory (``cleanup``
removes them) and ``latest`` unchanged; a crash between (2) and (3) leaves a
complete checkpoint that ``latest`` does not name yet (``commit`` of the same
staging directory again finishes the job). ``latest()`` only ever names a
directory that has its marker.

``dfs.torch.DfsStorageWriter`` / ``DfsStorageReader`` plug this into
``torch.distributed.checkpoint``; this module itself never imports torch.

Imports: dfs.common, and a ``dfs.Client`` given by the caller.
"""

from __future__ import annotations

import errno as E
import json
import os
import posixpath
import time
import uuid

from dfs.common import errors as err

__all__ = ["CheckpointDir", "check_name", "COMMIT", "LATEST"]

COMMIT = ".commit"
LATEST = "latest"
_STAGING = ".staging-"


def _invalid(what: str) -> err.InvalidArgument:
    return err.InvalidArgument(what)


def check_name(name: str) -> str:
    """A checkpoint's name: one path component, not hidden, not ``latest``."""
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name.startswith(".") \
            or name == LATEST:
        raise _invalid(f"bad checkpoint name {name!r}: one path component, not starting with '.', not {LATEST!r}")
    return name


class CheckpointDir:
    """The checkpoints under ``root`` on a dfs ``Client``: staging, commit, ``latest``, cleanup."""

    def __init__(self, client, root: str) -> None:
        self.client = client
        self.root = posixpath.normpath(os.fsdecode(root))

    def path(self, name: str) -> str:
        return posixpath.join(self.root, check_name(name))

    # ---------------------------------------------------------------- writing
    def stage(self, name: str, token: str | None = None) -> str:
        """Make and return the staging directory of a save of ``name`` (``token``: distinguishes
        attempts; a fresh one by default). EEXIST if ``name`` is committed already."""
        check_name(name)
        token = token or uuid.uuid4().hex[:16]
        if not token.isalnum():
            raise _invalid(f"bad staging token {token!r}")
        self.client.makedirs(self.root, exist_ok=True)
        if self.client.exists(posixpath.join(self.root, name)):
            e = err.Exists(f"checkpoint {name!r} exists")  # before anyone writes for nothing
            e.filename = posixpath.join(self.root, name)
            raise e
        staging = posixpath.join(self.root, f".{name}{_STAGING}{token}")
        self.client.mkdir(staging)
        return staging

    def commit(self, staging: str, name: str) -> str:
        """Make the staged checkpoint ``name`` visible (marker, one rename) and point ``latest``
        at it; its path. EEXIST if ``name`` is already a checkpoint (other than this one)."""
        final = self.path(name)
        c = self.client
        if posixpath.dirname(posixpath.normpath(staging)) != self.root or \
                not posixpath.basename(staging).startswith(f".{name}{_STAGING}"):
            raise _invalid(f"{staging!r} is not a staging directory of {name!r} under {self.root!r}")
        if not c.exists(staging):
            if self._marker(final) == posixpath.basename(staging):
                self._point_latest(name)  # committed before a crash; finish the job
                return final
            e = err.NotFound(f"no staging directory {staging}")
            e.filename = staging
            raise e
        if c.exists(final):
            e = err.Exists(f"checkpoint {name!r} exists")
            e.filename = final
            raise e
        files = {}
        for top, _dirs, names in c.walk(staging):
            for f in names:
                p = posixpath.join(top, f)
                files[posixpath.relpath(p, staging)] = c.stat(p).st_size
        manifest = {"name": name, "staging": posixpath.basename(staging), "files": files, "time": time.time()}
        self._write_synced(posixpath.join(staging, COMMIT), json.dumps(manifest, sort_keys=True).encode())
        c.rename(staging, final)  # the commit point
        self._point_latest(name)
        return final

    def _write_synced(self, path: str, data: bytes) -> None:
        with self.client.open(path, "wb") as f:
            f.write(data)
            f.flush()
            f.fsync()

    def _point_latest(self, name: str) -> None:
        tmp = posixpath.join(self.root, f".{LATEST}.tmp-{uuid.uuid4().hex[:16]}")
        self._write_synced(tmp, name.encode())
        self.client.replace(tmp, posixpath.join(self.root, LATEST))

    # ---------------------------------------------------------------- reading
    def _marker(self, final: str) -> str | None:
        """The staging directory name a committed checkpoint's marker records (None: no marker)."""
        try:
            return json.loads(bytes(self.client.read_bytes(posixpath.join(final, COMMIT))))["staging"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None

    def manifest(self, name: str) -> dict:
        """The commit marker of checkpoint ``name`` (ENOENT: not a committed checkpoint)."""
        final = self.path(name)
        try:
            return json.loads(bytes(self.client.read_bytes(posixpath.join(final, COMMIT))))
        except FileNotFoundError:
            e = err.NotFound(f"{name!r} is not a committed checkpoint")
            e.filename = final
            raise e from None

    def latest(self) -> str | None:
        """The name ``latest`` points to (None: no checkpoint committed yet)."""
        try:
            name = bytes(self.client.read_bytes(posixpath.join(self.root, LATEST))).decode()
        except FileNotFoundError:
            return None
        self.manifest(name)  # a pointer only ever names a committed checkpoint
        return name

    def names(self) -> list[str]:
        """The committed checkpoints, sorted."""
        if not self.client.exists(self.root):
            return []
        return sorted(n for n in self.client.listdir(self.root)
                      if not n.startswith(".") and n != LATEST and self._marker(posixpath.join(self.root, n)))

    def verify(self, name: str) -> None:
        """Check that every file the marker lists is there with its size (EIO otherwise)."""
        final = self.path(name)
        for rel, size in self.manifest(name)["files"].items():
            p = posixpath.join(final, rel)
            try:
                got = self.client.stat(p).st_size
            except FileNotFoundError:
                got = None
            if got != size:
                e = err.DfsError(f"checkpoint {name!r}: {rel} is {got} bytes, the marker says {size}", code=E.EIO)
                e.filename = p
                raise e

    # ---------------------------------------------------------------- cleanup
    def abandoned(self) -> list[str]:
        """Staging directories (and pointer temporaries) under ``root``: saves that never
        committed, or are committing now."""
        if not self.client.exists(self.root):
            return []
        return sorted(posixpath.join(self.root, n) for n in self.client.listdir(self.root)
                      if n.startswith(".") and (_STAGING in n or n.startswith(f".{LATEST}.tmp-")))

    def cleanup(self, *, older_than: float | None = None) -> list[str]:
        """Remove abandoned staging directories (only those untouched for ``older_than``
        seconds, when given: a save may be running). The paths removed."""
        gone = []
        now = time.time()
        for p in self.abandoned():
            try:
                if older_than is not None and now - self.client.stat(p).st_mtime < older_than:
                    continue
                _rmtree(self.client, p)
            except FileNotFoundError:
                continue
            gone.append(p)
        return gone


def _rmtree(client, path: str) -> None:
    if not client.isdir(path):
        client.remove(path)
        return
    for top, dirs, files in client.walk(path, topdown=False):
        for f in files:
            client.remove(posixpath.join(top, f))
        for d in dirs:
            client.rmdir(posixpath.join(top, d))
    client.rmdir(path)
