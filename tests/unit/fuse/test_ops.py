"""The FUSE adapter over the client core, in process: its handlers are called directly
(no kernel, no mount) over a Core on the in-process engine, with a transport that
counts metadata requests. What the kernel does with the replies is tested through a
real mount in test_posix.py."""

from __future__ import annotations

import asyncio
import errno
import os
import types

import pyfuse3
import pytest

from dfs.client.core import Core
from dfs.client.file import MemoryChunks
from dfs.client.meta import MetaClient
from dfs.client.mode import OpenPlan, StrictMode
from dfs.common import errors as err
from dfs.common.ids import ROOT_INO
from dfs.common.records import ROOT
from dfs.fuse.ops import DfsOperations
from dfs.meta.local import LocalEngine
from dfs.testing.counting import CountingTransport
CTX = types.SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)


class ReadOnlyView(StrictMode):
    """What snapshot mode will do through the hooks, sketched (as in tests/unit/client/test_core.py):
    reads answered from what it learned once, changes refused before anything is sent."""

    def __init__(self) -> None:
        super().__init__(ttl=3600)
        self.names: dict[int, set[bytes]] = {}  # directories listed whole: their names

    def entry(self, parent, name):
        if parent in self.names and name not in self.names[parent]:
            raise err.NotFound()
        return super().entry(parent, name)

    def listed(self, ino, entries):
        super().listed(ino, entries)
        self.names.setdefault(ino, set()).update(e.name for e in entries)

    async def mutate(self, m, send):
        raise err.DfsError("read-only view", code=errno.EROFS)

    def open_plan(self, ino, flags):
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT):
            raise err.DfsError("read-only view", code=errno.EROFS)
        return OpenPlan(revalidate=False, server_handle=False)


def _fields(**kw):
    names = ("size", "mode", "uid", "gid", "atime", "mtime")
    return types.SimpleNamespace(**{f"update_{n}": kw.get(n, False) for n in names})


@pytest.fixture
def kernel(monkeypatch):
    """What the adapter tells the kernel outside replies: inode invalidations, readdir entries."""
    told = types.SimpleNamespace(invalidated=[], entries=[])
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda ino, attr_only=False: told.invalidated.append(ino))

    def reply(token, name, attr, off):
        told.entries.append(name)
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    return told


def run(fn, mode=None):
    async def go():
        t = CountingTransport(LocalEngine(2))
        meta = MetaClient(t, ROOT)
        ops = DfsOperations(Core(meta, MemoryChunks(), mode or StrictMode.for_mount()))
        try:
            d = await ops.mkdir(ROOT_INO, b"d", 0o755, CTX)
            await ops.core.sync()
            t.take()
            await fn(ops, t, d.st_ino)
        finally:
            await ops.close_all()
            await meta.close()
    asyncio.run(go())


async def _create(ops, d, name=b"f", data=b"hello"):
    fi, e = await ops.create(d, name, 0o100644, os.O_WRONLY | os.O_CREAT, CTX)
    await ops.write(fi.fh, 0, data)
    await ops.flush(fi.fh)
    await ops.release(fi.fh)
    return e.st_ino


def test_round_trips_of_the_mount_hot_paths(kernel):
    async def t(ops, t, d):
        ino = await _create(ops, d)
        assert t.take() == {"CREATE": 1, "EXTEND": 1}
        await ops.core.sync()
        assert t.take() == {"CLOSE": 1}  # off the release path, batched
        await ops.getattr(d, CTX)  # the kernel's GETATTR of the directory: from CREATE's reply, once
        assert t.take() == {}
        await ops.getattr(d, CTX)
        assert t.take() == {"GETATTR": 1}
        fi = await ops.open(ino, os.O_RDONLY, CTX)  # attributes and a read handle, one request
        assert await ops.read(fi.fh, 0, 100) == b"hello"
        assert t.take() == {"OPENREAD": 1}
        w = await ops.open(ino, os.O_RDWR, CTX)  # the read handle made durable: one OPEN
        assert t.take() == {"OPEN": 1}
        await ops.write(w.fh, 0, b"J")
        assert await ops.read(fi.fh, 0, 100) == b"Jello"  # one FileHandle for both opens
        for fh in (w.fh, fi.fh):
            await ops.flush(fh)
            await ops.release(fh)
        await ops.core.sync()
        assert t.take() == {"EXTEND": 1, "CLOSEREAD": 1, "CLOSE": 1}
        e = await ops.setattr(ino, types.SimpleNamespace(st_size=2), _fields(size=True), None, CTX)
        assert e.st_size == 2 and t.take() == {"GETATTR": 1, "SETATTR": 1}  # no GETATTR after it
        fh = await ops.opendir(d, CTX)
        await ops.readdir(fh, 0, None)
        await ops.releasedir(fh)
        assert kernel.entries == [b".", b"..", b"f"] and t.take() == {"READDIR": 1}
    run(t)


def test_pages_are_kept_only_for_an_unchanged_file(kernel):
    async def t(ops, t, d):
        ino = await _create(ops, d)
        keeps = []
        for _ in range(2):
            fi = await ops.open(ino, os.O_RDONLY, CTX)
            keeps.append(fi.keep_cache)
            await ops.release(fi.fh)
        await ops.core.meta.extend(ino, 10)  # another client's change: the size moves
        fi = await ops.open(ino, os.O_RDONLY, CTX)
        keeps.append(fi.keep_cache)
        await ops.release(fi.fh)
        assert keeps == [False, True, False]
    run(t)


def test_a_file_unlinked_while_open_stays_readable(kernel):
    async def t(ops, t, d):
        ino = await _create(ops, d, data=b"still here")
        await ops.core.sync()  # the creating handle's CLOSE, sent off the release path
        t.take()
        fi = await ops.open(ino, os.O_RDONLY, CTX)
        await ops.unlink(d, b"f", CTX)
        assert t.take() == {"OPENREAD": 1, "UNLINK": 1}  # no silly rename: the service keeps it
        assert await ops.read(fi.fh, 0, 100) == b"still here"
        assert (await ops.getattr(ino, CTX)).st_nlink == 0
        await ops.release(fi.fh)
        assert (await ops.lookup(d, b"f", CTX)).st_ino == 0  # a negative entry: the name is gone
    run(t)


def test_unflushed_writes_show_in_the_size(kernel):
    async def t(ops, t, d):
        ino = await _create(ops, d, data=b"abc")
        fi = await ops.open(ino, os.O_WRONLY, CTX)
        await ops.write(fi.fh, 3, b"defg")
        assert (await ops.getattr(ino, CTX)).st_size == 7
        await ops.release(fi.fh)
    run(t)


def test_the_mode_reaches_the_mount(kernel):
    """The same mode object under the FUSE face: reads answered from its memory, changes
    refused before anything is sent."""
    async def t(ops, t, d):
        ino = await _create(ops, d)
        await ops.core.sync()
        view = ReadOnlyView()
        ro = DfsOperations(Core(ops.core.meta, ops.core.data, view))
        e = await ro.lookup(d, b"f", CTX)
        fh = await ro.opendir(d, CTX)
        await ro.readdir(fh, 0, None)
        await ro.releasedir(fh)
        t.take()
        assert (await ro.lookup(d, b"f", CTX)).st_ino == e.st_ino == ino
        assert (await ro.getattr(ino, CTX)).st_size == 5
        assert (await ro.lookup(d, b"nope", CTX)).st_ino == 0  # a negative entry, known from the listing
        fi = await ro.open(ino, os.O_RDONLY, CTX)
        assert await ro.read(fi.fh, 0, 10) == b"hello"
        await ro.release(fi.fh)
        assert t.take() == {}
        for call in (ro.mkdir(d, b"x", 0o755, CTX), ro.unlink(d, b"f", CTX), ro.open(ino, os.O_WRONLY, CTX),
                     ro.create(d, b"n", 0o100644, os.O_WRONLY | os.O_CREAT, CTX),
                     ro.setattr(ino, types.SimpleNamespace(st_mode=0o600), _fields(mode=True), None, CTX),
                     ro.setattr(ino, types.SimpleNamespace(st_size=0), _fields(size=True), None, CTX)):
            with pytest.raises(pyfuse3.FUSEError) as ei:
                await call
            assert ei.value.errno == errno.EROFS
        assert t.take() == {}
        await ro.close_all()
    run(t)


def test_errors_become_fuse_errors(kernel):
    async def t(ops, t, d):
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.mkdir(d, b"n" * 256, 0o755, CTX)
        assert ei.value.errno == errno.ENAMETOOLONG
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.getxattr(d, b"security.selinux", CTX)  # answered locally
        assert ei.value.errno == errno.EOPNOTSUPP and t.take() == {}
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.rmdir(d, b"missing", CTX)
        assert ei.value.errno == errno.ENOENT
    run(t)
