"""Snapshots through the FUSE adapter, in process: ``.snap`` directories in the strict-mode
mount and a snapshot-mode mount served from its manifest. The handlers are called directly
over a Core on the in-process engine with its snapshot registry (dfs/testing/registry.py,
snapfake.py),
counting metadata requests; tests/integration/test_snapshot_client.py mounts for real."""

from __future__ import annotations

import asyncio
import errno
import os
import types

import pyfuse3
import pytest

from dfs.client.core import Core
from dfs.client.mode import StrictMode
from dfs.client.snapdir import SNAP_BIT, SnapChunks, SnapMeta
from dfs.client.snapmode import FOREVER, snapshot_core
from dfs.common.ids import ROOT_INO
from dfs.fuse.ops import DfsOperations
from dfs.testing.snapfake import snapshot_client

CTX = types.SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)


@pytest.fixture
def kernel(monkeypatch):
    told = types.SimpleNamespace(entries=[])
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda ino, attr_only=False: None)

    def reply(token, name, attr, off):
        told.entries.append((name, attr))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    return told


def _fields(**kw):
    names = ("size", "mode", "uid", "gid", "atime", "mtime")
    return types.SimpleNamespace(**{f"update_{n}": kw.get(n, False) for n in names})


def run(fn):
    async def go():
        c, t, meta, chunks, registry = snapshot_client(0)
        await c.makedirs("/d/sub")
        await c.write_bytes("/d/f", b"hello")
        await c.write_bytes("/d/sub/g", b"x" * 70_000)
        await c.snapshot_create("/d", "s1")
        await c.write_bytes("/d/f", b"later")
        smeta = SnapMeta(meta, registry)
        ops = DfsOperations(Core(smeta, SnapChunks(chunks, smeta.ids), StrictMode.for_mount()))
        try:
            d = (await ops.lookup(ROOT_INO, b"d", CTX)).st_ino
            t.take()
            await fn(ops, t, d, c, meta, chunks)
        finally:
            await ops.close_all()
            await c.close()
    asyncio.run(go())


async def _list(ops, ino, kernel):
    kernel.entries.clear()
    fh = await ops.opendir(ino, CTX)
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    return [n for n, _ in kernel.entries]


def test_snap_directories_through_the_mount(kernel):
    async def t(ops, t, d, c, meta, chunks):
        assert b".snap" not in await _list(ops, d, kernel)
        snap = await ops.lookup(d, b".snap", CTX)
        assert snap.st_ino & SNAP_BIT and snap.st_mode & 0o222 == 0 and snap.entry_timeout == 1.0
        assert await _list(ops, snap.st_ino, kernel) == [b".", b"..", b"s1"]
        root = await ops.lookup(snap.st_ino, b"s1", CTX)
        assert root.entry_timeout == 1.0  # the name goes when the snapshot is deleted
        f = await ops.lookup(root.st_ino, b"f", CTX)
        assert f.entry_timeout == f.attr_timeout == 365 * 86400.0  # never changes
        fi = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        assert await ops.read(fi.fh, 0, 100) == b"hello"
        await ops.release(fi.fh)
        fi = await ops.open(f.st_ino, os.O_RDONLY, CTX)
        assert fi.keep_cache  # same version: the kernel keeps its pages
        await ops.release(fi.fh)
        sub = await ops.lookup(root.st_ino, b"sub", CTX)
        g = await ops.lookup(sub.st_ino, b"g", CTX)
        fi = await ops.open(g.st_ino, os.O_RDONLY, CTX)
        assert await ops.read(fi.fh, 0, 100_000) == b"x" * 70_000
        await ops.release(fi.fh)
        assert (await ops.lookup(snap.st_ino, b"nope", CTX)).st_ino == 0
        t.take()
        for call in (ops.mkdir(root.st_ino, b"x", 0o755, CTX), ops.mkdir(d, b".snap", 0o755, CTX),
                     ops.unlink(root.st_ino, b"f", CTX), ops.rmdir(snap.st_ino, b"s1", CTX),
                     ops.rename(root.st_ino, b"f", d, b"f2", 0, CTX), ops.link(f.st_ino, d, b"h", CTX),
                     ops.symlink(root.st_ino, b"l", b"f", CTX), ops.mknod(root.st_ino, b"n", 0o10644, 0, CTX),
                     ops.open(f.st_ino, os.O_WRONLY, CTX), ops.open(f.st_ino, os.O_RDONLY | os.O_TRUNC, CTX),
                     ops.create(root.st_ino, b"n", 0o100644, os.O_WRONLY | os.O_CREAT, CTX),
                     ops.setattr(f.st_ino, types.SimpleNamespace(st_mode=0o600), _fields(mode=True), None, CTX),
                     ops.setattr(f.st_ino, types.SimpleNamespace(st_size=0), _fields(size=True), None, CTX),
                     ops.setxattr(f.st_ino, b"user.a", b"1", CTX), ops.removexattr(f.st_ino, b"user.a", CTX)):
            with pytest.raises(pyfuse3.FUSEError) as ei:
                await call
            assert ei.value.errno == errno.EROFS, call
        assert not {k for k in t.take() if k not in ("GETATTR", "LOOKUP")}  # nothing changed was sent
    run(t)


def test_a_snapshot_mode_mount_sends_no_metadata_request(kernel, tmp_path):
    async def t(ops, t, d, c, meta, chunks):
        info = (await c.snapshot_list("/d"))[0]
        core = await snapshot_core(meta, chunks, info, cache_dir=str(tmp_path))
        ro = DfsOperations(core)
        assert (ro.entry_timeout, ro.attr_timeout, ro.negative_timeout) == (FOREVER,) * 3
        t.take()
        assert sorted(await _list(ro, ROOT_INO, kernel)) == [b".", b"..", b"f", b"sub"]
        f = await ro.lookup(ROOT_INO, b"f", CTX)
        assert (await ro.getattr(f.st_ino, CTX)).st_size == 5
        for _ in range(2):
            fi = await ro.open(f.st_ino, os.O_RDONLY, CTX)
            assert fi.keep_cache
            assert await ro.read(fi.fh, 0, 100) == b"hello"
            await ro.release(fi.fh)
        assert (await ro.lookup(ROOT_INO, b"nope", CTX)).st_ino == 0
        assert (await ro.statfs(CTX)).f_files >= 4
        fi = await ro.open(f.st_ino, os.O_RDONLY, CTX)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ro.flush(fi.fh)
        assert ei.value.errno == errno.ENOSYS  # the kernel stops sending FLUSH: nothing to flush
        await ro.release(fi.fh)
        assert t.take() == {}
        for call in (ro.mkdir(ROOT_INO, b"x", 0o755, CTX), ro.unlink(ROOT_INO, b"f", CTX),
                     ro.open(f.st_ino, os.O_RDWR, CTX),
                     ro.create(ROOT_INO, b"n", 0o100644, os.O_WRONLY | os.O_CREAT, CTX),
                     ro.setattr(f.st_ino, types.SimpleNamespace(st_size=0), _fields(size=True), None, CTX),
                     ro.setxattr(f.st_ino, b"user.a", b"1", CTX)):
            with pytest.raises(pyfuse3.FUSEError) as ei:
                await call
            assert ei.value.errno == errno.EROFS, call
        assert t.take() == {}
        await ro.close_all()
    run(t)
