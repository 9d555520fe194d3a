"""The client library (dfs.connect, dfs.client.*): paths, io objects, errors, caches.

Most tests run on both engines of the ``fs`` fixture: the in-process engine
(MetaClient(LocalEngine) + MemoryChunks) and the real ``data_cluster``
(2 shards x 3 replicas, 3 data servers); a few need the real cluster."""

from __future__ import annotations

import asyncio
import errno
import io
import itertools
import os
import stat
import time

import pytest

import dfs
from dfs.client.api import StrictMode, find_cluster
from dfs.common.records import Caller
from dfs.testing.clock import FakeClock

_n = itertools.count()


@pytest.fixture(params=["memory", "cluster"])
def fs(request):
    c = request.getfixturevalue(f"{request.param}_client")
    top = f"/api{next(_n)}"
    c.mkdir(top)
    c.chdir(top)  # relative paths of the test land in its own directory
    yield c
    c.chdir("/")


def test_binary_write_read_seek_tell(fs):
    with fs.open("f.bin", "wb") as f:
        assert f.write(b"0123456789") == 10
        assert f.tell() == 10
    with fs.open("f.bin", "rb") as f:
        assert f.read(3) == b"012"
        assert f.tell() == 3
        f.seek(-2, io.SEEK_END)
        assert f.read() == b"89"
        f.seek(2, io.SEEK_SET)
        f.seek(1, io.SEEK_CUR)
        assert f.read(2) == b"34"
        buf = bytearray(4)
        assert f.readinto(buf) == 4 and buf == b"5678"
        assert f.read() == b"9" and f.read() == b""
    assert fs.stat("f.bin").st_size == 10
    assert isinstance(fs.open("f.bin", "rb"), io.BufferedReader)


def test_text_mode_readline_and_iteration(fs):
    with fs.open("t.txt", "w", encoding="utf-8") as f:
        assert isinstance(f, io.TextIOWrapper)
        f.write("héllo\nwörld\n")
        f.writelines(["a\n", "b"])
    with fs.open("t.txt") as f:
        assert f.readline() == "héllo\n"
        assert list(f) == ["wörld\n", "a\n", "b"]
    with fs.open("t.txt", "rb") as f:
        assert f.readline() == "héllo\n".encode()
    assert fs.read_text("t.txt") == "héllo\nwörld\na\nb"


def test_append_and_plus_modes(fs):
    fs.write_bytes("a", b"abc")
    with fs.open("a", "ab") as f:
        f.write(b"def")
        assert f.tell() == 6
    with fs.open("a", "a+b") as f:
        f.seek(0)
        assert f.read() == b"abcdef"
        f.write(b"g")  # O_APPEND: at the end whatever the position
    assert fs.read_bytes("a") == b"abcdefg"
    with fs.open("a", "r+b") as f:
        f.seek(1)
        f.write(b"XY")
        f.seek(0)
        assert f.read() == b"aXYdefg"
    with fs.open("a", "w+b") as f:  # O_TRUNC
        assert f.read() == b""
        f.write(b"new")
    assert fs.read_bytes("a") == b"new"


def test_truncate(fs):
    fs.write_bytes("t", b"x" * 100)
    with fs.open("t", "r+b") as f:
        f.seek(10)
        assert f.truncate() == 10  # at the position
        assert f.read() == b""
        f.truncate(20)
        f.seek(0)
        assert f.read() == b"x" * 10 + b"\0" * 10
    fs.truncate("t", 5)
    assert fs.read_bytes("t") == b"xxxxx"
    assert fs.stat("t").st_size == 5


def test_open_errors(fs):
    with pytest.raises(FileNotFoundError) as ei:
        fs.open("missing", "r")
    assert ei.value.errno == errno.ENOENT and isinstance(ei.value, dfs.DfsError)
    fs.write_bytes("x", b"1")
    with pytest.raises(FileExistsError):
        fs.open("x", "x")
    with fs.open("y", "xb") as f:
        f.write(b"ok")
    fs.mkdir("d")
    with pytest.raises(IsADirectoryError):
        fs.open("d", "r")
    with pytest.raises(IsADirectoryError):
        fs.open("d", "w")
    with pytest.raises(NotADirectoryError):
        fs.open("x/sub", "w")
    with pytest.raises(FileNotFoundError):
        fs.open("nodir/f", "w")
    with pytest.raises(ValueError):
        fs.open("x", "rw")
    with fs.open("x", "rb") as f, pytest.raises(io.UnsupportedOperation):
        f.write(b"no")
    with fs.open("x", "rb") as f, pytest.raises(io.UnsupportedOperation):
        f.fileno()


def test_stat_lstat_symlinks_and_loops(fs):
    fs.makedirs("a/b")
    fs.write_bytes("a/b/f", b"12345")
    fs.symlink("b", "a/lnk")  # relative target
    fs.symlink("/" + fs.getcwd().strip("/") + "/a/b/f", "abs")
    assert fs.stat("a/lnk/f").st_size == 5
    assert stat.S_ISLNK(fs.lstat("a/lnk").st_mode)
    assert stat.S_ISDIR(fs.stat("a/lnk").st_mode)
    assert fs.readlink("a/lnk") == "b"
    assert fs.read_bytes("abs") == b"12345"
    assert fs.stat("a/lnk/../b/f").st_size == 5  # '..' goes back along the walk (physical parent)
    assert fs.stat("a/b/").st_ino == fs.stat("a/b").st_ino
    with pytest.raises(NotADirectoryError):
        fs.stat("a/b/f/")
    fs.symlink("l2", "l1")
    fs.symlink("l1", "l2")
    with pytest.raises(OSError) as ei:
        fs.stat("l1")
    assert ei.value.errno == errno.ELOOP
    assert stat.S_ISLNK(fs.lstat("l1").st_mode)
    with pytest.raises(OSError) as ei:
        fs.open("l1/x", "w")
    assert ei.value.errno == errno.ELOOP
    fs.symlink("nowhere", "dangling")
    with pytest.raises(FileNotFoundError):
        fs.stat("dangling")
    with fs.open("dangling", "w") as f:  # O_CREAT through a dangling symlink creates its target
        f.write("made")
    assert fs.read_text("nowhere") == "made"
    with pytest.raises(OSError) as ei:
        fs.readlink("a")
    assert ei.value.errno == errno.EINVAL


def test_listdir_scandir_walk(fs):
    fs.makedirs("w/x/y")
    fs.write_bytes("w/f1", b"a")
    fs.write_bytes("w/x/f2", b"bb")
    fs.symlink("x", "w/lx")
    assert sorted(fs.listdir("w")) == ["f1", "lx", "x"]
    with fs.scandir("w") as it:
        ents = {e.name: e for e in it}
    assert ents["x"].is_dir() and not ents["x"].is_file()
    assert ents["f1"].is_file() and ents["f1"].stat().st_size == 1
    assert ents["f1"].attr is not None  # from the one readdirplus
    assert ents["lx"].is_symlink() and ents["lx"].is_dir() and not ents["lx"].is_dir(follow_symlinks=False)
    assert ents["f1"].path == os.path.join("w", "f1") and ents["f1"].inode() == fs.stat("w/f1").st_ino
    got = list(fs.walk("w"))
    assert got == [("w", ["x"], ["f1", "lx"]), ("w/x", ["y"], ["f2"]), ("w/x/y", [], [])] or \
        sorted((d, sorted(ds), sorted(fs_)) for d, ds, fs_ in got) == \
        [("w", ["x"], ["f1", "lx"]), ("w/x", ["y"], ["f2"]), ("w/x/y", [], [])]
    bottom_up = [d for d, _, _ in fs.walk("w", topdown=False)]
    assert bottom_up[-1] == "w" and bottom_up[0] == "w/x/y"
    # pruning in place
    pruned = []
    for d, ds, _ in fs.walk("w"):
        pruned.append(d)
        ds.clear()
    assert pruned == ["w"]
    assert fs.listdir(b"w") and isinstance(fs.listdir(b"w")[0], bytes)


def test_mkdir_makedirs_rmdir_remove(fs):
    fs.makedirs("m/n/o")
    fs.makedirs("m/n/o", exist_ok=True)
    with pytest.raises(FileExistsError):
        fs.makedirs("m/n/o")
    with pytest.raises(FileExistsError):
        fs.mkdir("m")
    fs.write_bytes("m/file", b"")
    with pytest.raises(FileExistsError):
        fs.makedirs("m/file", exist_ok=True)  # exists, but not as a directory
    with pytest.raises(OSError) as ei:
        fs.rmdir("m")
    assert ei.value.errno == errno.ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        fs.rmdir("m/file")
    with pytest.raises(IsADirectoryError):
        fs.remove("m/n")
    fs.remove("m/file")
    fs.rmdir("m/n/o")
    assert not fs.exists("m/n/o") and fs.isdir("m/n")
    with pytest.raises(FileNotFoundError):
        fs.remove("m/file")


def test_rename_replace_link(fs):
    fs.write_bytes("r1", b"one")
    fs.write_bytes("r2", b"two")
    fs.rename("r1", "r3")
    assert not fs.exists("r1") and fs.read_bytes("r3") == b"one"
    fs.replace("r2", "r3")
    assert fs.read_bytes("r3") == b"two" and not fs.exists("r2")
    fs.makedirs("rd/sub")
    fs.rename("rd", "rd2")
    assert fs.isdir("rd2/sub") and not fs.exists("rd")
    fs.link("r3", "hard")
    assert fs.stat("hard").st_ino == fs.stat("r3").st_ino
    assert fs.stat("r3").st_nlink == 2
    with pytest.raises(FileExistsError):
        fs.link("r3", "hard")
    fs.remove("r3")
    assert fs.read_bytes("hard") == b"two" and fs.stat("hard").st_nlink == 1
    with pytest.raises(FileNotFoundError):
        fs.rename("nope", "x")


def test_chmod_chown_utime(fs):
    fs.write_bytes("p", b"")
    fs.chmod("p", 0o600)
    assert stat.S_IMODE(fs.stat("p").st_mode) == 0o600
    fs.chown("p", 1234, 5678)
    st = fs.stat("p")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    fs.chown("p", -1, 42)
    assert (fs.stat("p").st_uid, fs.stat("p").st_gid) == (1234, 42)
    fs.utime("p", ns=(1_000_000_000, 2_000_000_000))
    st = fs.stat("p")
    assert st.st_atime_ns == 1_000_000_000 and st.st_mtime_ns == 2_000_000_000 and st.st_mtime == 2.0
    fs.utime("p", (10.5, 20.25))
    assert fs.stat("p").st_mtime == 20.25
    before = time.time()
    fs.utime("p")
    assert fs.stat("p").st_mtime >= before - 5


def test_xattrs_and_statfs(fs):
    fs.write_bytes("xa", b"")
    fs.setxattr("xa", "user.color", b"blue")
    assert fs.getxattr("xa", "user.color") == b"blue"
    assert "user.color" in fs.listxattr("xa")
    fs.removexattr("xa", "user.color")
    with pytest.raises(OSError) as ei:
        fs.getxattr("xa", "user.color")
    assert ei.value.errno == errno.ENODATA
    s = fs.statfs("/")
    assert s.f_bsize > 0 and s.f_namemax == 255 and s.f_files >= s.f_ffree


def test_open_unlinked_file_lives_until_close(fs):
    """POSIX: unlink removes the name; the open file stays readable and writable until closed."""
    with fs.open("doomed", "wb") as f:
        f.write(b"before")
    f = fs.open("doomed", "r+b")
    ino = fs.stat("doomed").st_ino
    fs.remove("doomed")
    assert not fs.exists("doomed")
    f.seek(0, 2)
    f.write(b"+after")
    f.flush()
    f.seek(0)
    assert f.read() == b"before+after"
    f.close()
    fs.sync()  # the handle's CLOSE goes out in the background
    with pytest.raises(FileNotFoundError):
        fs.run(fs.meta.getattr(ino))


def test_large_file_across_chunks(fs):
    data = os.urandom(3 * (1 << 20) + 12345)
    with fs.open("big", "wb") as f:
        for i in range(0, len(data), 300_000):
            f.write(data[i:i + 300_000])
    assert fs.stat("big").st_size == len(data)
    with fs.open("big", "rb") as f:
        assert f.read() == data
        f.seek(len(data) // 2)
        assert f.read(1000) == data[len(data) // 2:len(data) // 2 + 1000]


def test_permission_denied_as_unprivileged_caller(cluster_client, data_cluster):
    top = f"/perm{next(_n)}"
    cluster_client.mkdir(top, 0o755)
    cluster_client.write_bytes(f"{top}/secret", b"s")
    cluster_client.chmod(f"{top}/secret", 0o600)
    cluster_client.write_bytes(f"{top}/public", b"p")
    cluster_client.chmod(f"{top}/public", 0o644)
    with dfs.connect(mgmt=data_cluster.mgmt_addresses, uid=1000, gid=1000, groups=()) as user:
        assert user.caller == Caller(1000, 1000, ())
        with pytest.raises(PermissionError) as ei:
            user.open(f"{top}/secret", "rb")
        assert ei.value.errno == errno.EACCES
        assert user.read_bytes(f"{top}/public") == b"p"
        with pytest.raises(PermissionError):
            user.open(f"{top}/public", "ab")
        with pytest.raises(PermissionError):
            user.open(f"{top}/new", "wb")  # the service checks write on the directory
        with pytest.raises(PermissionError):
            user.mkdir(f"{top}/d")
        with pytest.raises(PermissionError):
            user.chmod(f"{top}/public", 0o777)
        with pytest.raises(PermissionError):
            user.remove(f"{top}/public")


def test_close_to_open_between_clients(data_cluster):
    """Two clients, each with attribute caches: what one closed, the other's next open sees."""
    top = f"/cto{next(_n)}"
    with dfs.connect(mgmt=data_cluster.mgmt_addresses, uid=0, gid=0, groups=(), ttl=60) as a, \
            dfs.connect(mgmt=data_cluster.mgmt_addresses, uid=0, gid=0, groups=(), ttl=60) as b:
        a.mkdir(top)
        a.write_bytes(f"{top}/f", b"v1")
        assert b.read_bytes(f"{top}/f") == b"v1"  # b now caches the entry and attributes (60 s)
        with a.open(f"{top}/f", "ab") as f:
            f.write(b"-and-more")
        assert b.read_bytes(f"{top}/f") == b"v1-and-more"  # open revalidates
        # a file replaced under the same name: the open looks the name up afresh
        a.write_bytes(f"{top}/g", b"other")
        a.replace(f"{top}/g", f"{top}/f")
        assert b.read_bytes(f"{top}/f") == b"other"
        # a cached stat may lag by at most the TTL; the writer's own view never does
        assert a.stat(f"{top}/f").st_size == 5


def test_attr_cache_ttl(memory_client):
    """A change made by someone else shows in stat after at most the TTL; 0 disables the cache."""
    c = memory_client
    top = f"/ttl{next(_n)}"
    c.mkdir(top)
    c.write_bytes(f"{top}/f", b"abc")
    clock = FakeClock()
    c.aio.mode = StrictMode(0.3, clock=clock)
    try:
        ino = c.stat(f"{top}/f").st_ino
        c.run(c.meta.setattr(ino, mode=0o600))  # behind the cache's back
        assert stat.S_IMODE(c.stat(f"{top}/f").st_mode) == 0o644  # still cached
        clock.advance(0.29)
        assert stat.S_IMODE(c.stat(f"{top}/f").st_mode) == 0o644  # still within the TTL
        clock.advance(0.02)
        assert stat.S_IMODE(c.stat(f"{top}/f").st_mode) == 0o600
        c.aio.mode = StrictMode(0)
        c.run(c.meta.setattr(ino, mode=0o640))
        assert stat.S_IMODE(c.stat(f"{top}/f").st_mode) == 0o640
    finally:
        c.aio.mode = StrictMode()


def test_async_client(data_cluster):
    async def go():
        async with await dfs.aconnect(mgmt=data_cluster.mgmt_addresses, uid=0, gid=0, groups=()) as c:
            top = f"/async{next(_n)}"
            await c.makedirs(f"{top}/d")
            async with await c.open(f"{top}/d/f", "wb") as f:
                await f.write(b"hello ")
                await f.write(b"world")
                await f.fsync()
            async with await c.open(f"{top}/d/f", "rb") as f:
                assert await f.read(5) == b"hello"
                assert await f.tell() == 5
                await f.seek(-5, io.SEEK_END)
                assert await f.read() == b"world"
                assert await f.pread(0, 5) == b"hello"
            assert (await c.stat(f"{top}/d/f")).st_size == 11
            assert await c.listdir(f"{top}/d") == ["f"]
            assert [(d, ds, fs_) async for d, ds, fs_ in c.walk(top)] == [(top, ["d"], []), (f"{top}/d", [], ["f"])]
            with pytest.raises(ValueError):
                await c.open(f"{top}/d/f", "r")  # text mode is the sync Client's
            with pytest.raises(FileNotFoundError):
                await c.stat(f"{top}/missing")
    asyncio.run(go())


def test_find_cluster(tmp_path, data_cluster, monkeypatch):
    want = data_cluster.mgmt_addresses
    assert find_cluster(mgmt="h:1, h:2") == ["h:1", "h:2"]
    assert find_cluster(data_cluster.config_path) == want  # a cluster file
    assert find_cluster(data_cluster.root) == want  # a data folder
    assert find_cluster(data=data_cluster.root) == want
    assert find_cluster("127.0.0.1:1,127.0.0.1:2") == ["127.0.0.1:1", "127.0.0.1:2"]
    monkeypatch.setenv("DFS_CLUSTER", data_cluster.root)
    assert find_cluster() == want
    monkeypatch.delenv("DFS_CLUSTER")
    monkeypatch.setattr("dfs.common.config.DEFAULT_DATA", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError):
        find_cluster()
    with dfs.connect(data_cluster.config_path, uid=0, gid=0) as c:
        assert c.stat("/").st_ino == 1 or stat.S_ISDIR(c.stat("/").st_mode)
