"""Lazy mode through the kernel: real programs on `dfs mount --lazy`, checked through a second,
strict mount of the same cluster (another client) after a barrier (`sync MOUNTPOINT`: an
fsync of the mount's root directory; syncfs(2) never reaches a /dev/fuse daemon)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import time

import pytest

from dfs.testing.mount import dfs_cli, make_tree, mounted, same_tree

pyfuse3 = pytest.importorskip("pyfuse3")


def _write(path: str, data: bytes, mode: str = "wb") -> None:
    with open(path, mode) as f:
        f.write(data)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def lazy_mount(data_cluster, dfs_mount, tmp_path_factory):
    """A lazy mount of the session's data cluster (the strict ``dfs_mount`` is the other client)."""
    mp = str(tmp_path_factory.mktemp("lazymnt"))
    log = str(tmp_path_factory.mktemp("lazylog") / "mount.log")
    with mounted(data_cluster.config_path, mp, log, "--lazy", error_marks=(" ERROR ", '"level": "ERROR"')):
        yield mp


_n = iter(range(10**6))


@pytest.fixture
def both(lazy_mount, dfs_mount, request):
    """(the test's directory in the lazy mount, the same directory in the strict mount)."""
    name = f"lazy{next(_n)}-{request.node.name[:50]}"
    os.mkdir(os.path.join(lazy_mount, name))
    return os.path.join(lazy_mount, name), os.path.join(dfs_mount, name)


def barrier(path: str) -> None:
    """`sync PATH`: coreutils fsyncs it, which for a directory on the mount is FUSE FSYNCDIR."""
    subprocess.run(["sync", path], check=True)


def test_files_and_directories_behave_as_posix_says(both):
    lz, st = both
    os.makedirs(os.path.join(lz, "a/b/c"))
    p = os.path.join(lz, "a/b/c/f.txt")
    _write(p, b"hello world")
    assert _read(p) == b"hello world"
    s = os.stat(p)
    assert stat.S_ISREG(s.st_mode) and s.st_size == 11 and s.st_nlink == 1
    assert sorted(os.listdir(os.path.join(lz, "a/b/c"))) == ["f.txt"]
    _write(p, b"!", "ab")
    assert _read(p) == b"hello world!"
    os.chmod(p, 0o600)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    os.truncate(p, 5)
    assert _read(p) == b"hello"
    os.symlink("f.txt", os.path.join(lz, "a/b/c/l"))
    os.link(p, os.path.join(lz, "a/h"))
    assert os.stat(p).st_nlink == 2 and os.readlink(os.path.join(lz, "a/b/c/l")) == "f.txt"
    os.rename(os.path.join(lz, "a/h"), os.path.join(lz, "a/h2"))
    for fn, args, code in ((os.stat, ("nope",), errno.ENOENT), (os.mkdir, ("a",), errno.EEXIST),
                           (os.rmdir, ("a",), errno.ENOTEMPTY), (os.unlink, ("a",), errno.EISDIR)):
        with pytest.raises(OSError) as ei:
            fn(*(os.path.join(lz, x) for x in args))
        assert ei.value.errno == code
    barrier(lz)
    assert _read(os.path.join(st, "a/b/c/f.txt")) == b"hello"
    assert _read(os.path.join(st, "a/h2")) == b"hello" and os.stat(os.path.join(st, "a/h2")).st_nlink == 2
    assert os.readlink(os.path.join(st, "a/b/c/l")) == "f.txt"
    assert stat.S_IMODE(os.stat(os.path.join(st, "a/b/c/f.txt")).st_mode) == 0o600
    shutil.rmtree(os.path.join(lz, "a"))
    barrier(lz)
    assert os.listdir(st) == []


UNTAR_FILES = 2_000  # the 10,000 are dfs bench lazy's (docs/benchmarks.md); a suite run stays short


@pytest.mark.timeout(900)
def test_untar_and_retar_small_files(both, tmp_path):
    """Untar/re-tar of small files in 140 directories through the lazy
    mount, compared with the local tree after the barrier, through the other (strict) mount."""
    lz, st = both
    src = str(tmp_path / "t10k")
    make_tree(src, UNTAR_FILES)
    tarball = str(tmp_path / "t10k.tar")
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", tarball, "t10k"], check=True)
    t0 = time.monotonic()
    subprocess.run(["tar", "-C", lz, "-xf", tarball], check=True)
    barrier(lz)
    print(f"untar of {UNTAR_FILES:,} files through the lazy mount, to the barrier: {time.monotonic() - t0:.1f} s")
    same_tree(src, os.path.join(st, "t10k"))  # what another client sees
    for dp, _, fns in os.walk(src):
        for n in fns:
            a = os.lstat(os.path.join(dp, n))
            b = os.lstat(os.path.join(st, os.path.relpath(dp, str(tmp_path)), n))
            assert (a.st_mode, a.st_mtime_ns // 10**9, a.st_size) == (b.st_mode, b.st_mtime_ns // 10**9, b.st_size)
    back = str(tmp_path / "back.tar")
    subprocess.run(["tar", "-C", lz, "-cf", back, "t10k"], check=True)  # re-tar through the lazy mount
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-C", str(out), "-xf", back], check=True)
    same_tree(src, str(out / "t10k"))
    subprocess.run(["rm", "-rf", os.path.join(lz, "t10k")], check=True)
    barrier(lz)
    assert os.listdir(st) == []


@pytest.fixture(scope="module")
def local_tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("lazytree") / "src")
    make_tree(root)
    return root


def test_cp_a(both, local_tree):
    lz, st = both
    dst = os.path.join(lz, "cpa")
    subprocess.run(["cp", "-a", local_tree, dst], check=True)
    barrier(lz)
    same_tree(local_tree, os.path.join(st, "cpa"))
    for dp, _, fns in os.walk(local_tree):
        for n in fns:
            a = os.lstat(os.path.join(dp, n))
            b = os.lstat(os.path.join(st, "cpa", os.path.relpath(dp, local_tree), n))
            assert (a.st_mode, a.st_mtime_ns, a.st_size) == (b.st_mode, b.st_mtime_ns, b.st_size)


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed")
def test_rsync_a(both, local_tree):
    lz, st = both
    subprocess.run(["rsync", "-a", local_tree + "/", lz + "/r/"], check=True)
    barrier(lz)
    same_tree(local_tree, os.path.join(st, "r"))
    r = subprocess.run(["rsync", "-a", "--itemize-changes", local_tree + "/", st + "/r/"], check=True,
                       capture_output=True, text=True)
    assert r.stdout.strip() == ""  # sizes and mtimes as rsync left them, seen by another client
    r = subprocess.run(["rsync", "-a", "--itemize-changes", local_tree + "/", lz + "/r/"], check=True,
                       capture_output=True, text=True)
    assert r.stdout.strip() == ""


def test_a_conflict_is_reported_at_the_barrier(both):
    lz, st = both
    d = os.path.join(lz, "d")
    os.mkdir(d)
    _write(os.path.join(d, "mine"), b"lazy")
    barrier(lz)  # the lazy client knows everything /d holds: it made it
    _write(os.path.join(st, "d", "taken"), b"strict")  # another client takes a name
    fd = os.open(os.path.join(d, "taken"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"lazy")
    try:
        os.close(fd)  # does not wait for the create
    except FileExistsError:
        pass  # the write-back sent it (and the service refused it) before the close: it says so
    dfd = os.open(d, os.O_RDONLY)
    try:
        with pytest.raises(FileExistsError):
            os.fsync(dfd)  # the barrier reports it
        os.fsync(dfd)  # once
    finally:
        os.close(dfd)
    assert _read(os.path.join(st, "d", "taken")) == b"strict"
    assert _read(os.path.join(st, "d", "mine")) == b"lazy"


def test_fsync_of_a_file_is_a_barrier_for_everything_before_it(both):
    lz, st = both
    os.makedirs(os.path.join(lz, "x/y"))
    _write(os.path.join(lz, "x/y/before"), b"closed before")
    os.rename(os.path.join(lz, "x/y/before"), os.path.join(lz, "x/before"))
    fd = os.open(os.path.join(lz, "x/y/synced"), os.O_WRONLY | os.O_CREAT, 0o640)
    try:
        os.write(fd, b"s" * 200_000)
        os.fsync(fd)
        assert _read(os.path.join(st, "x/before")) == b"closed before"
        assert _read(os.path.join(st, "x/y/synced")) == b"s" * 200_000
        assert stat.S_IMODE(os.stat(os.path.join(st, "x/y/synced")).st_mode) == 0o640
    finally:
        os.close(fd)


def test_the_unmount_is_a_barrier(data_cluster, dfs_mount, tmp_path):
    """What a lazy mount did is on the service once `dfs umount` returns (its daemon's barrier),
    with a write-back delay long enough that nothing else could have sent it."""
    mp = str(tmp_path / "mnt")
    os.mkdir(mp)
    r = dfs_cli("mount", mp, "--cluster", data_cluster.config_path, "--log-file", str(tmp_path / "m.log"), "--lazy",
             "--lazy-delay", "600")
    assert r.returncode == 0, r.stdout + r.stderr
    name = f"unmount{next(_n)}"
    try:
        os.makedirs(os.path.join(mp, name, "a"))
        for i in range(50):
            _write(os.path.join(mp, name, "a", f"f{i}"), b"%d" % i * 100)
        os.symlink("a/f0", os.path.join(mp, name, "l"))
    finally:
        u = dfs_cli("umount", mp)
        assert u.returncode == 0, u.stdout + u.stderr
    st = os.path.join(dfs_mount, name)
    assert sorted(os.listdir(os.path.join(st, "a"))) == sorted(f"f{i}" for i in range(50))
    assert all(_read(os.path.join(st, "a", f"f{i}")) == b"%d" % i * 100 for i in range(50))
    assert os.readlink(os.path.join(st, "l")) == "a/f0"
