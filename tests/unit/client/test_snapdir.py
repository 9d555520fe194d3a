"""Snapshots through a path in the library: ``PATH/.snap/NAME``, the snapshot commands, EROFS.

Against the in-process engine with the in-process snapshot registry (dfs/testing/registry.py)
and chunk reads at a snapshot (dfs/testing/snapfake.py), through a transport that counts
metadata requests. tests/unit/fuse/test_snap_ops.py does the same through the FUSE
adapter; tests/integration/test_snapshot_client.py against a real cluster."""

from __future__ import annotations

import asyncio
import errno

import pytest

from dfs.client.snapdir import SNAP_BIT
from dfs.testing.snapfake import snapshot_client


def run(fn, **kw):
    async def go():
        c, t, meta, chunks, registry = snapshot_client(3600, **kw)
        try:
            await c.makedirs("/d/sub")
            await c.write_bytes("/d/f", b"one")
            await c.write_bytes("/d/sub/big", b"x" * (5 << 20))  # chunks on the data servers
            await c.symlink("f", "/d/l")
            await c.setxattr("/d/f", "user.k", b"v")
            await c.sync()
            await fn(c, t, meta)
        finally:
            await c.close()

    asyncio.run(go())


def test_snap_directory_shows_the_tree_as_it_was():
    async def t(c, t, meta):
        info = await c.snapshot_create("/d", "s1")
        assert info.name == "s1" and info.root == (await c.stat("/d")).st_ino and info.path == "/d"
        await c.write_bytes("/d/f", b"changed")
        await c.write_bytes("/d/new", b"n")
        await c.remove("/d/sub/big")
        assert ".snap" not in await c.listdir("/d")  # hidden from readdir
        assert await c.listdir("/d/.snap") == ["s1"]
        assert sorted(await c.listdir("/d/.snap/s1")) == ["f", "l", "sub"]
        assert await c.read_bytes("/d/.snap/s1/f") == b"one"
        assert await c.read_bytes("/d/.snap/s1/l") == b"one"  # the symlink, resolved in the snapshot
        assert await c.read_bytes("/d/.snap/s1/sub/big") == b"x" * (5 << 20)
        assert await c.getxattr("/d/.snap/s1/f", "user.k") == b"v"
        assert await c.read_bytes("/d/f") == b"changed"
        st = await c.stat("/d/.snap/s1/f")
        assert st.st_ino & SNAP_BIT and st.st_size == 3
        assert (await c.stat("/d/.snap/s1/f")).st_ino == st.st_ino  # one id per (S, ino)
        assert (await c.stat("/d/.snap/s1")).st_ino != (await c.stat("/d")).st_ino
        assert (await c.stat("/d/.snap")).st_mode & 0o222 == 0
        with pytest.raises(FileNotFoundError):
            await c.stat("/d/.snap/nope")
        with pytest.raises(FileNotFoundError):
            await c.stat("/d/.snap/s1/new")
        # a walk through .. leaves the snapshot as it came in
        assert sorted(await c.listdir("/d/.snap/s1/sub/../..")) == ["s1"]
    run(t)


def test_every_change_in_a_snapshot_is_erofs_and_nothing_is_sent():
    async def t(c, t, meta):
        await c.snapshot_create("/d", "s1")
        await c.stat("/d/.snap/s1/f")
        await c.stat("/d/.snap/s1/sub")
        t.take()
        calls = [
            c.mkdir("/d/.snap/s1/x"), c.mkdir("/d/.snap/x"), c.remove("/d/.snap/s1/f"),
            c.rmdir("/d/.snap/s1/sub"), c.rmdir("/d/.snap/s1"), c.rename("/d/.snap/s1/f", "/d/.snap/s1/g"),
            c.rename("/d/.snap/s1/f", "/d/g"), c.rename("/d/f", "/d/.snap/s1/f"), c.link("/d/.snap/s1/f", "/d/h"),
            c.link("/d/f", "/d/.snap/s1/h"), c.symlink("f", "/d/.snap/s1/m"), c.chmod("/d/.snap/s1/f", 0o600),
            c.chown("/d/.snap/s1/f", 1, 1), c.utime("/d/.snap/s1/f", (1, 1)), c.truncate("/d/.snap/s1/f", 0),
            c.setxattr("/d/.snap/s1/f", "user.a", b"1"), c.removexattr("/d/.snap/s1/f", "user.k"),
            c.open("/d/.snap/s1/f", "r+b"), c.open("/d/.snap/s1/f", "wb"), c.open("/d/.snap/s1/f", "ab"),
            c.open("/d/.snap/s1/new", "wb"), c.open("/d/.snap/s1/new", "xb"), c.write_bytes("/d/.snap/s1/f", b""),
            c.snapshot_create("/d/.snap/s1", "nested"), c.rename("/d/.snap", "/d/x"), c.remove("/d/.snap"),
        ]
        for call in calls:
            with pytest.raises(OSError) as ei:
                await call
            assert ei.value.errno == errno.EROFS, call
        with pytest.raises(FileExistsError):
            await c.mkdir("/d/.snap")  # it exists, as for any existing name
        sent = t.take()
        assert not {k for k in sent if k not in ("GETATTR", "LOOKUP")}, sent  # reads only, no change
        assert await c.read_bytes("/d/.snap/s1/f") == b"one"
    run(t)


def test_opens_in_a_snapshot_take_no_handle_and_repeat_nothing():
    async def t(c, t, meta):
        await c.snapshot_create("/d", "s1")
        assert await c.read_bytes("/d/.snap/s1/f") == b"one"
        await c.stat("/d/.snap/s1/sub/big")
        t.take()
        for _ in range(3):
            f = await c.open("/d/.snap/s1/f", "rb")
            assert not c.core.leases.held  # no server handle
            assert await f.read() == b"one"
            await f.close()
            assert (await c.stat("/d/.snap/s1/sub/big")).st_size == 5 << 20
        sent = t.take()
        assert not {k for k in sent if "OPEN" in k or "HANDLE" in k}, sent
        assert sent == {}  # a snapshot never changes: kept without expiry
    run(t)


def test_bad_snapshot_commands_are_refused_and_change_nothing():
    async def t(c, t, meta):
        await c.snapshot_create("/d", "s1")
        for name, code in (("", errno.EINVAL), (".", errno.EINVAL), ("..", errno.EINVAL), ("a/b", errno.EINVAL),
                           ("a\0b", errno.EINVAL), ("x" * 256, errno.ENAMETOOLONG), ("s1", errno.EEXIST)):
            with pytest.raises(OSError) as ei:
                await c.snapshot_create("/d", name)
            assert ei.value.errno == code, name
        with pytest.raises(NotADirectoryError):
            await c.snapshot_create("/d/f", "s2")
        with pytest.raises(FileNotFoundError):
            await c.snapshot_create("/nope", "s2")
        with pytest.raises(FileNotFoundError):
            await c.snapshot_delete("/d", "s2")
        with pytest.raises(FileNotFoundError):
            await c.snapshot_delete("/d/sub", "s1")  # the name is the directory's
        assert [i.name for i in await c.snapshot_list()] == ["s1"]
        assert [i.name for i in await c.snapshot_list("/d")] == ["s1"]
        assert await c.snapshot_list("/d/sub") == []
    run(t)


def test_delete_and_diff():
    async def t(c, t, meta):
        await c.snapshot_create("/d", "a")
        await c.write_bytes("/d/f", b"changed")
        await c.write_bytes("/d/sub/new", b"n")
        await c.remove("/d/l")
        await c.snapshot_create("/d", "b")
        await c.mkdir("/d/later")
        d = await c.snapshot_diff("/d", "a", "b")
        assert d.added == ["/sub/new"] and d.removed == ["/l"]
        assert "/f" in d.modified and "/sub" in d.modified
        d = await c.snapshot_diff("/d", "b")
        assert d.added == ["/later"] and d.removed == [] and d.modified == []
        st = await c.stat("/d/.snap/a/f")
        await c.snapshot_delete("/d", "a")
        assert await c.listdir("/d/.snap") == ["b"]
        assert st.st_size == 3
        # what this client had looked up stays (within its cache's time); its data is gone
        with pytest.raises(OSError) as ei:
            await c.read_bytes("/d/.snap/a/sub/big")
        assert ei.value.errno == errno.ESTALE
        c.mode.clear()
        with pytest.raises(FileNotFoundError):
            await c.stat("/d/.snap/a")
    run(t)


def test_the_snapshot_directory_name_is_an_option():
    async def t(c, t, meta):
        await c.snapshot_create("/d", "s1")
        assert await c.read_bytes("/d/.snapshots/s1/f") == b"one"
        with pytest.raises(FileNotFoundError):
            await c.stat("/d/.snap")
    run(t, snapdir=".snapshots")
    with pytest.raises(OSError) as ei:
        run(lambda *a: None, snapdir="a/b")
    assert ei.value.errno == errno.EINVAL
