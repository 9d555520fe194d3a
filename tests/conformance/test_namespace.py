"""The namespace conformance suite.

Every test runs against each engine of the ``ns`` fixture (tests/conftest.py):
the in-memory engine in this process and a real cluster of Raft-replicated
shards in separate processes. A test works inside its own fresh directory
``ns.top`` so the cluster can be shared between tests.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from dfs.common.ids import shard_of
from dfs.common.ops import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE
from dfs.common.records import Caller

ALICE = Caller(1000, 1000, (1000,))
BOB = Caller(1001, 1001, (1001, 2000))


def raises(code: int):
    return pytest.raises(OSError, match=None), code


def expect_errno(code: int, fn, *a, **kw):
    with pytest.raises(OSError) as ei:
        fn(*a, **kw)
    assert ei.value.errno == code, f"expected {errno.errorcode[code]}, got {ei.value!r}"
    return ei.value


def names(c, ino):
    return sorted(e.name for e in c.listdir(ino))


# ---------------------------------------------------------------- basics

def test_create_lookup_getattr(ns):
    c, top = ns.c, ns.top
    a, created = c.create(top, "f", 0o640)
    assert created and stat.S_ISREG(a.mode) and stat.S_IMODE(a.mode) == 0o640 and a.nlink == 1
    assert c.lookup(top, "f") == a
    assert c.getattr(a.ino) == a
    assert a.atime_ns == a.mtime_ns == a.ctime_ns > 0


def test_create_excl_and_open_existing(ns):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f")
    expect_errno(errno.EEXIST, c.create, top, "f")
    b, created = c.create(top, "f", excl=False)
    assert not created and b.ino == a.ino


def test_create_updates_parent_times(ns):
    c, top = ns.c, ns.top
    before = c.getattr(top)
    c.create(top, "f")
    after = c.getattr(top)
    assert after.mtime_ns > before.mtime_ns and after.ctime_ns > before.ctime_ns


def test_umask(ns):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f", 0o666, umask=0o022)
    assert stat.S_IMODE(a.mode) == 0o644
    d = c.mkdir(top, "d", 0o777, umask=0o027)
    assert stat.S_IMODE(d.mode) == 0o750


def test_lookup_missing_and_notdir(ns):
    c, top = ns.c, ns.top
    expect_errno(errno.ENOENT, c.lookup, top, "nope")
    f, _ = c.create(top, "f")
    expect_errno(errno.ENOTDIR, c.lookup, f.ino, "x")
    expect_errno(errno.ENOTDIR, c.create, f.ino, "x")


@pytest.mark.parametrize("bad,code", [
    (b"a/b", errno.EINVAL), (b"a\0b", errno.EINVAL), (b"", errno.EINVAL),
    (b".", errno.EINVAL), (b"..", errno.EINVAL), (b"x" * 256, errno.ENAMETOOLONG),
])
def test_bad_names_change_nothing(ns, bad, code):
    c, top = ns.c, ns.top
    before = c.getattr(top)
    expect_errno(code, c.create, top, bad)
    expect_errno(code, c.mkdir, top, bad)
    expect_errno(code, c.symlink, top, bad, "t")
    assert names(c, top) == []
    assert c.getattr(top) == before


def test_name_max_is_allowed(ns):
    c, top = ns.c, ns.top
    n = "é" * 127 + "x"  # 255 bytes in UTF-8
    assert len(n.encode()) == 255
    c.create(top, n)
    c.mkdir(top, "D" * 255)
    assert sorted(names(c, top)) == sorted([n.encode(), b"D" * 255])


def test_unknown_inode(ns):
    c = ns.c
    bogus = (shard_of(ns.top) << 48) | 0xFFFFFFF0
    expect_errno(errno.ENOENT, c.getattr, bogus)
    expect_errno(errno.ENOENT, c.create, bogus, "x")
    expect_errno(errno.ENOENT, c.setattr, bogus, mode=0o600)


def test_wrong_type_operations(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f")
    d = c.mkdir(top, "d")
    expect_errno(errno.EISDIR, c.unlink, top, "d")
    expect_errno(errno.ENOTDIR, c.rmdir, top, "f")
    expect_errno(errno.EINVAL, c.readlink, f.ino)
    expect_errno(errno.EISDIR, c.setattr, d.ino, size=0)
    expect_errno(errno.ENOTDIR, c.readdir, f.ino)
    expect_errno(errno.EPERM, c.link, d.ino, top, "dl")


# ---------------------------------------------------------------- directories

def test_mkdir_rmdir_nlink(ns):
    c, top = ns.c, ns.top
    t0 = c.getattr(top)
    d = c.mkdir(top, "d", 0o750)
    assert stat.S_ISDIR(d.mode) and d.nlink == 2
    assert c.getattr(top).nlink == t0.nlink + 1
    c.mkdir(d.ino, "sub")
    assert c.getattr(d.ino).nlink == 3
    expect_errno(errno.ENOTEMPTY, c.rmdir, top, "d")
    c.rmdir(d.ino, "sub")
    c.rmdir(top, "d")
    assert c.getattr(top).nlink == t0.nlink
    expect_errno(errno.ENOENT, c.getattr, d.ino)
    expect_errno(errno.EEXIST, c.mkdir, top, "d") if False else None


def test_mkdir_exists(ns):
    c, top = ns.c, ns.top
    c.mkdir(top, "d")
    expect_errno(errno.EEXIST, c.mkdir, top, "d")
    c.create(top, "f")
    expect_errno(errno.EEXIST, c.mkdir, top, "f")
    expect_errno(errno.EEXIST, c.create, top, "d")


def test_directories_spread_over_shards(ns):
    c, top = ns.c, ns.top
    homes = {shard_of(c.mkdir(top, f"d{i}").ino) for i in range(24)}
    assert homes == set(range(c.nshards))


def test_rmdir_nonempty_with_file_and_after_unlink(ns):
    c, top = ns.c, ns.top
    d = c.mkdir(top, "d")
    c.create(d.ino, "f")
    expect_errno(errno.ENOTEMPTY, c.rmdir, top, "d")
    c.unlink(d.ino, "f")
    c.rmdir(top, "d")
    assert names(c, top) == []


# ---------------------------------------------------------------- readdir

def test_readdir_pages_and_cookies(ns):
    c, top = ns.c, ns.top
    d = c.mkdir(top, "big")
    want = {f"f{i:04d}".encode() for i in range(250)}
    for n in want:
        c.create(d.ino, n)
    got, cookie, pages = [], 0, 0
    while True:
        entries, eof = c.readdir(d.ino, cookie, 37)
        got += [e.name for e in entries]
        pages += 1
        if eof:
            break
        cookie = entries[-1].cookie
    assert pages >= 7 and set(got) == want and len(got) == len(want)


def test_readdir_cookie_stable_while_directory_changes(ns):
    c, top = ns.c, ns.top
    d = c.mkdir(top, "d")
    for i in range(100):
        c.create(d.ino, f"a{i}")
    entries, eof = c.readdir(d.ino, 0, 30)
    seen = [e.name for e in entries]
    cookie = entries[-1].cookie
    # change the directory between pages: remove seen and unseen names, add new ones
    for n in seen[:10]:
        c.unlink(d.ino, n)
    c.unlink(d.ino, "a99") if b"a99" not in seen else None
    for i in range(20):
        c.create(d.ino, f"new{i}")
    while True:
        entries, eof = c.readdir(d.ino, cookie, 30)
        seen += [e.name for e in entries]
        if eof:
            break
        cookie = entries[-1].cookie
    assert len(seen) == len(set(seen)), "no entry is returned twice"
    survivors = {f"a{i}".encode() for i in range(100)} - set(seen[:10]) - {b"a99"}
    assert survivors <= set(seen), "every entry present throughout is returned"


def test_readdir_plus_attributes_across_shards(ns):
    c, top = ns.c, ns.top
    for i in range(8):
        c.mkdir(top, f"d{i}")
        c.create(top, f"f{i}")
    entries = c.listdir(top, plus=True)
    assert len(entries) == 16
    for e in entries:
        assert e.attr is not None and e.attr.ino == e.ino
        assert stat.S_IFMT(e.attr.mode) == e.type


def test_readdir_permission(ns):
    c, top = ns.c, ns.top
    d = c.mkdir(top, "private", 0o700)
    expect_errno(errno.EACCES, c.readdir, d.ino, caller=ALICE)


# ---------------------------------------------------------------- setattr

def test_chmod_chown_ctime(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f", 0o644)
    a = c.setattr(f.ino, mode=0o600)
    assert stat.S_IMODE(a.mode) == 0o600 and a.ctime_ns > f.ctime_ns and a.mtime_ns == f.mtime_ns
    b = c.setattr(f.ino, uid=1000, gid=1000)
    assert (b.uid, b.gid) == (1000, 1000) and b.ctime_ns > a.ctime_ns


def test_chmod_by_non_owner_refused(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f", 0o666)
    expect_errno(errno.EPERM, c.setattr, f.ino, mode=0o777, caller=ALICE)
    assert stat.S_IMODE(c.getattr(f.ino).mode) == 0o666


def test_chown_rules(ns):
    c, top = ns.c, ns.top
    c.setattr(top, mode=0o777)
    f, _ = c.create(top, "f", 0o6755, caller=BOB)
    expect_errno(errno.EPERM, c.setattr, f.ino, uid=1000, caller=BOB)  # only root gives files away
    expect_errno(errno.EPERM, c.setattr, f.ino, gid=3000, caller=BOB)  # not a member of 3000
    a = c.setattr(f.ino, gid=2000, caller=BOB)  # a supplementary group: allowed
    assert a.gid == 2000
    assert not a.mode & stat.S_ISUID, "chown clears set-user-id"


def test_truncate_size_and_times(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f", 0o644)
    a = c.setattr(f.ino, size=12345)
    assert a.size == 12345 and a.mtime_ns > f.mtime_ns and a.ctime_ns > f.ctime_ns
    expect_errno(errno.EACCES, c.setattr, f.ino, size=0, caller=ALICE)
    expect_errno(errno.EINVAL, c.setattr, f.ino, size=-1)


def test_utimes_rules(ns):
    c, top = ns.c, ns.top
    c.setattr(top, mode=0o777)
    f, _ = c.create(top, "f", 0o666, caller=BOB)
    a = c.setattr(f.ino, atime_ns=10**18, mtime_ns=10**18 + 5, caller=BOB)
    assert (a.atime_ns, a.mtime_ns) == (10**18, 10**18 + 5)
    expect_errno(errno.EPERM, c.setattr, f.ino, mtime_ns=5, caller=ALICE)  # explicit times: owner only
    b = c.setattr(f.ino, atime_now=True, mtime_now=True, caller=ALICE)  # "now": write permission suffices
    assert b.mtime_ns > a.mtime_ns and b.ctime_ns >= b.mtime_ns - 10**9
    c.setattr(f.ino, mode=0o644, caller=BOB)
    expect_errno(errno.EACCES, c.setattr, f.ino, mtime_now=True, caller=ALICE)


# ---------------------------------------------------------------- special files

def test_mknod_types(ns):
    c, top = ns.c, ns.top
    fifo = c.mknod(top, "fifo", stat.S_IFIFO | 0o644)
    sock = c.mknod(top, "sock", stat.S_IFSOCK | 0o644)
    chr_ = c.mknod(top, "chr", stat.S_IFCHR | 0o600, rdev=(1 << 8) | 3)
    assert stat.S_ISFIFO(fifo.mode) and stat.S_ISSOCK(sock.mode) and stat.S_ISCHR(chr_.mode)
    assert chr_.rdev == (1 << 8) | 3
    c.setattr(top, mode=0o777)
    expect_errno(errno.EPERM, c.mknod, top, "blk", stat.S_IFBLK | 0o600, rdev=1, caller=ALICE)


def test_symlink_readlink(ns):
    c, top = ns.c, ns.top
    s = c.symlink(top, "s", "some/target")
    assert stat.S_ISLNK(s.mode) and s.size == len("some/target")
    assert c.readlink(s.ino) == b"some/target"
    expect_errno(errno.ENAMETOOLONG, c.symlink, top, "long", "x" * 4096)


# ---------------------------------------------------------------- unlink / link

def test_hard_links_across_shards(ns):
    c, top = ns.c, ns.top
    dirs = [c.mkdir(top, f"d{i}") for i in range(12)]
    remote = next(d for d in dirs if shard_of(d.ino) != shard_of(top))
    f, _ = c.create(top, "f")
    a = c.link(f.ino, remote.ino, "link")
    assert a.nlink == 2 and a.ino == f.ino
    assert c.lookup(remote.ino, "link").ino == f.ino
    assert c.getattr(f.ino).nlink == 2
    c.unlink(top, "f")
    assert c.getattr(f.ino).nlink == 1
    assert c.lookup(remote.ino, "link").nlink == 1
    c.unlink(remote.ino, "link")
    expect_errno(errno.ENOENT, c.getattr, f.ino)


def test_link_exists_and_unlink_missing(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f")
    c.create(top, "g")
    expect_errno(errno.EEXIST, c.link, f.ino, top, "g")
    expect_errno(errno.ENOENT, c.unlink, top, "nope")
    assert c.getattr(f.ino).nlink == 1


def test_unlink_ctime(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f")
    c.link(f.ino, top, "g")
    c.unlink(top, "g")
    assert c.getattr(f.ino).ctime_ns > f.ctime_ns


# ---------------------------------------------------------------- permissions

def test_create_needs_write_and_search(ns):
    c, top = ns.c, ns.top
    d = c.mkdir(top, "d", 0o755)
    expect_errno(errno.EACCES, c.create, d.ino, "x", caller=ALICE)
    expect_errno(errno.EACCES, c.mkdir, d.ino, "x", caller=ALICE)
    c.setattr(d.ino, mode=0o777)
    c.create(d.ino, "x", caller=ALICE)
    c.setattr(d.ino, mode=0o666)
    expect_errno(errno.EACCES, c.lookup, d.ino, "x", caller=ALICE)


def test_group_permissions(ns):
    c, top = ns.c, ns.top
    d = c.mkdir(top, "d", 0o770)
    c.setattr(d.ino, gid=2000)
    c.create(d.ino, "byBob", caller=BOB)  # BOB is in group 2000
    expect_errno(errno.EACCES, c.create, d.ino, "byAlice", caller=ALICE)


def test_sticky_directory(ns):
    c, top = ns.c, ns.top
    d = c.mkdir(top, "tmp", 0o1777)
    c.create(d.ino, "alices", caller=ALICE)
    expect_errno(errno.EPERM, c.unlink, d.ino, "alices", caller=BOB)
    expect_errno(errno.EPERM, c.rename, d.ino, "alices", d.ino, "mine", caller=BOB)
    c.unlink(d.ino, "alices", caller=ALICE)


def test_setgid_directory(ns):
    c, top = ns.c, ns.top
    d = c.mkdir(top, "shared", 0o2777)
    c.setattr(d.ino, gid=2000)
    f, _ = c.create(d.ino, "f", caller=ALICE)
    assert f.gid == 2000
    sub = c.mkdir(d.ino, "sub", 0o755, caller=ALICE)
    assert sub.gid == 2000 and sub.mode & stat.S_ISGID


def test_root_bypasses_rw_not_x(ns):
    c, top = ns.c, ns.top
    d = c.mkdir(top, "locked", 0o000)
    c.create(d.ino, "f")  # root writes anyway
    assert names(c, d.ino) == [b"f"]


# ---------------------------------------------------------------- rename

def test_rename_same_dir_and_replace(ns):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "a")
    b, _ = c.create(top, "b")
    c.rename(top, "a", top, "b")
    assert names(c, top) == [b"b"]
    assert c.lookup(top, "b").ino == a.ino
    expect_errno(errno.ENOENT, c.getattr, b.ino)


def test_rename_across_shards_files_and_dirs(ns):
    c, top = ns.c, ns.top
    dirs = [c.mkdir(top, f"d{i}") for i in range(12)]
    by_shard = {}
    for d in dirs:
        by_shard.setdefault(shard_of(d.ino), d)
    assert len(by_shard) >= 2
    d1, d2 = list(by_shard.values())[:2]
    f, _ = c.create(d1.ino, "f")
    c.rename(d1.ino, "f", d2.ino, "g")
    assert names(c, d1.ino) == [] and names(c, d2.ino) == [b"g"]
    assert c.lookup(d2.ino, "g").ino == f.ino
    sub = c.mkdir(d1.ino, "sub")
    c.mkdir(sub.ino, "inner")
    n1, n2 = c.getattr(d1.ino).nlink, c.getattr(d2.ino).nlink
    c.rename(d1.ino, "sub", d2.ino, "sub2")
    assert c.getattr(d1.ino).nlink == n1 - 1 and c.getattr(d2.ino).nlink == n2 + 1
    assert c.lookup(d2.ino, "sub2").ino == sub.ino
    assert names(c, sub.ino) == [b"inner"]


def test_rename_dir_into_own_subtree(ns):
    c, top = ns.c, ns.top
    a = c.mkdir(top, "a")
    b = c.mkdir(a.ino, "b")
    cc = c.mkdir(b.ino, "c")
    expect_errno(errno.EINVAL, c.rename, top, "a", cc.ino, "a")
    expect_errno(errno.EINVAL, c.rename, top, "a", a.ino, "self")
    assert names(c, top) == [b"a"]


def test_rename_dir_over_dir(ns):
    c, top = ns.c, ns.top
    c.mkdir(top, "src")
    full = c.mkdir(top, "full")
    c.create(full.ino, "x")
    expect_errno(errno.ENOTEMPTY, c.rename, top, "src", top, "full")
    empty = c.mkdir(top, "empty")
    c.rename(top, "src", top, "empty")
    expect_errno(errno.ENOENT, c.getattr, empty.ino)
    assert names(c, top) == [b"empty", b"full"]


def test_rename_type_mismatch(ns):
    c, top = ns.c, ns.top
    c.mkdir(top, "d")
    c.create(top, "f")
    expect_errno(errno.ENOTDIR, c.rename, top, "d", top, "f")
    expect_errno(errno.EISDIR, c.rename, top, "f", top, "d")


def test_rename_noreplace(ns):
    c, top = ns.c, ns.top
    c.create(top, "a")
    c.create(top, "b")
    expect_errno(errno.EEXIST, c.rename, top, "a", top, "b", RENAME_NOREPLACE)
    c.rename(top, "a", top, "c", RENAME_NOREPLACE)
    assert names(c, top) == [b"b", b"c"]


def test_rename_exchange(ns):
    c, top = ns.c, ns.top
    d = c.mkdir(top, "d")
    f, _ = c.create(top, "f")
    other = [c.mkdir(top, f"o{i}") for i in range(8)]
    far = next((o for o in other if shard_of(o.ino) != shard_of(top)), other[0])
    g, _ = c.create(far.ino, "g")
    c.rename(top, "d", top, "f", RENAME_EXCHANGE)
    assert c.lookup(top, "d").ino == f.ino and c.lookup(top, "f").ino == d.ino
    c.rename(top, "d", far.ino, "g", RENAME_EXCHANGE)
    assert c.lookup(top, "d").ino == g.ino and c.lookup(far.ino, "g").ino == f.ino
    expect_errno(errno.ENOENT, c.rename, top, "d", top, "nothing", RENAME_EXCHANGE)
    expect_errno(errno.EINVAL, c.rename, top, "d", top, "f", RENAME_EXCHANGE | RENAME_NOREPLACE)


def test_rename_same_inode_is_noop(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f")
    c.link(f.ino, top, "g")
    c.rename(top, "f", top, "g")
    assert names(c, top) == [b"f", b"g"]
    c.rename(top, "f", top, "f")
    assert names(c, top) == [b"f", b"g"]


def test_rename_dir_needs_write_on_itself(ns):
    c, top = ns.c, ns.top
    c.setattr(top, mode=0o777)
    d = c.mkdir(top, "d", 0o555, caller=ALICE)
    other = c.mkdir(top, "o", 0o777, caller=ALICE)
    expect_errno(errno.EACCES, c.rename, top, "d", other.ino, "d", caller=ALICE)
    c.setattr(d.ino, mode=0o755, caller=ALICE)
    c.rename(top, "d", other.ino, "d", caller=ALICE)


def test_rename_updates_times(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f")
    p0 = c.getattr(top)
    c.rename(top, "f", top, "g")
    assert c.getattr(top).mtime_ns > p0.mtime_ns
    assert c.getattr(f.ino).ctime_ns > f.ctime_ns


# ---------------------------------------------------------------- xattrs

def test_xattrs(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f")
    c.setxattr(f.ino, "user.a", b"1")
    assert c.getxattr(f.ino, "user.a") == b"1"
    expect_errno(errno.EEXIST, c.setxattr, f.ino, "user.a", b"2", XATTR_CREATE)
    expect_errno(errno.ENODATA, c.setxattr, f.ino, "user.b", b"2", XATTR_REPLACE)
    c.setxattr(f.ino, "user.a", b"3", XATTR_REPLACE)
    c.setxattr(f.ino, "user.b", b"")
    assert sorted(c.listxattr(f.ino)) == [b"user.a", b"user.b"]
    assert c.getxattr(f.ino, "user.a") == b"3"
    c.removexattr(f.ino, "user.a")
    expect_errno(errno.ENODATA, c.getxattr, f.ino, "user.a")
    expect_errno(errno.ENODATA, c.removexattr, f.ino, "user.a")
    expect_errno(errno.EOPNOTSUPP, c.setxattr, f.ino, "bogus.a", b"1")
    expect_errno(errno.E2BIG, c.setxattr, f.ino, "user.big", b"x" * 70000)
    expect_errno(errno.ERANGE, c.setxattr, f.ino, "user." + "n" * 260, b"1")


def test_xattr_permissions(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f", 0o644)
    expect_errno(errno.EACCES, c.setxattr, f.ino, "user.a", b"1", caller=ALICE)
    c.setxattr(f.ino, "user.a", b"1")
    assert c.getxattr(f.ino, "user.a", caller=ALICE) == b"1"
    c.setxattr(f.ino, "trusted.t", b"1")
    expect_errno(errno.ENODATA, c.getxattr, f.ino, "trusted.t", caller=ALICE)
    assert b"trusted.t" not in c.listxattr(f.ino, caller=ALICE)
    s = c.symlink(top, "s", "f")
    expect_errno(errno.EPERM, c.setxattr, s.ino, "user.a", b"1")


def test_xattrs_removed_with_inode(ns):
    c, top = ns.c, ns.top
    f, _ = c.create(top, "f")
    c.setxattr(f.ino, "user.a", b"1")
    c.unlink(top, "f")
    expect_errno(errno.ENOENT, c.listxattr, f.ino)


# ---------------------------------------------------------------- statfs, batch, idempotency

def test_statfs_counts_inodes(ns):
    c, top = ns.c, ns.top
    s0 = c.statfs()
    for i in range(5):
        c.create(top, f"f{i}")
    s1 = c.statfs()
    assert s1.files_free == s0.files_free - 5 or s1.files - s1.files_free >= 5
    assert s1.name_max == 255


def test_batch_create(ns):
    c, top = ns.c, ns.top
    res = c.create_many(top, [f"b{i}" for i in range(50)] + ["b0"])
    assert all(not isinstance(r, OSError) for r in res[:50])
    assert isinstance(res[50], OSError) and res[50].errno == errno.EEXIST
    assert len(names(c, top)) == 50


def test_retried_request_applies_once(ns):
    """The same request id twice: the second is answered from the idempotency record."""
    from dfs.common.ops import Op

    c, top = ns.c, ns.top
    t = c.aio.t
    rid = os.urandom(16)  # unique: the cluster is shared by the whole session
    args = [top, b"once", stat.S_IFREG | 0o644, 0, True, 0, None]
    first = ns.run(t.call(shard_of(top), Op.CREATE, c.aio.caller, args, rid))
    second = ns.run(t.call(shard_of(top), Op.CREATE, c.aio.caller, args, rid))
    assert first == second
    rid2 = os.urandom(16)
    d = c.mkdir(top, "dir")
    ns.run(t.call(shard_of(top), Op.UNLINK, c.aio.caller, [top, b"once"], rid2))
    ns.run(t.call(shard_of(top), Op.UNLINK, c.aio.caller, [top, b"once"], rid2))  # no ENOENT
    assert names(c, top) == [b"dir"] and d.ino


def test_wrong_shard_refused(ns):
    from dfs.common.ops import Op

    c, top = ns.c, ns.top
    t = c.aio.t
    other = (shard_of(top) + 1) % c.nshards
    expect_errno(10004, ns.run, t.call(other, Op.GETATTR, c.aio.caller, [top]))
    expect_errno(10004, ns.run, t.call(other, Op.CREATE, c.aio.caller,
                                        [top, b"x", stat.S_IFREG | 0o644, 0, True, 0, None], b"w" * 16))
    assert names(c, top) == []


def test_malformed_requests_refused(ns):
    from dfs.common.ops import Op

    c, top = ns.c, ns.top
    t = c.aio.t
    expect_errno(errno.EINVAL, ns.run, t.call(shard_of(top), Op.CREATE, c.aio.caller, [top, "not-bytes"], b"m" * 16))
    expect_errno(errno.EINVAL, ns.run, t.call(shard_of(top), Op.GETATTR, c.aio.caller, ["x", 1, 2]))
    expect_errno(errno.EINVAL, ns.run, t.call(shard_of(top), 999, c.aio.caller, []))
    assert names(c, top) == []


def test_internal_operations_refused_from_clients(ns):
    """Two-phase primitives carry actions without permission checks: only shard servers may send them."""
    from dfs.common.ops import Op

    if ns.engine != "cluster":
        pytest.skip("the in-process engine has no client/server boundary")
    c, top = ns.c, ns.top
    t = c.aio.t
    act = [["dput", top, b"sneaky", top, stat.S_IFDIR, 0]]
    expect_errno(errno.EPERM, ns.run, t.call(shard_of(top), Op.ONEPHASE, c.aio.caller, [b"x" * 16, act], b"i" * 16))
    expect_errno(errno.EPERM, ns.run, t.call(shard_of(top), Op.PREPARE, c.aio.caller, [b"y" * 16, 0, act, []]))
    assert names(c, top) == []


# ---------------------------------------------------------------- layouts

def test_layout_root_default(ns):
    from dfs.common.ids import ROOT_INO
    from dfs.common.layout import DEFAULT_LAYOUT, Layout

    c, top = ns.c, ns.top
    assert Layout.unpack(c.getattr(ROOT_INO).layout) == DEFAULT_LAYOUT
    assert Layout.unpack(c.getattr(top).layout) == DEFAULT_LAYOUT
    f, _ = c.create(top, "f")
    assert f.layout == DEFAULT_LAYOUT.pack()  # a file's layout is explicit from its creation
    assert c.lookup(top, "f").layout == f.layout == c.getattr(f.ino).layout


def test_layout_inherited_by_files_and_subdirectories(ns):
    from dfs.common.layout import Layout

    c, top = ns.c, ns.top
    old, _ = c.create(top, "before")
    lay = Layout(chunk_size=1 << 20, stripe=8, replicas=2).pack()
    a = c.setlayout(top, lay)
    assert a.layout == lay and c.getattr(top).layout == lay
    assert c.getattr(old.ino).layout != lay  # existing files keep theirs
    f, _ = c.create(top, "f")
    assert f.layout == lay and c.getattr(f.ino).layout == lay
    # subdirectories inherit, also when they live on another shard than their parent
    subs = [c.mkdir(top, f"d{i}") for i in range(12)]
    assert {shard_of(d.ino) for d in subs} - {shard_of(top)}, "no subdirectory landed on another shard"
    for d in subs:
        assert d.layout == lay and c.getattr(d.ino).layout == lay
        g, _ = c.create(d.ino, "g")
        assert g.layout == lay
        assert c.mkdir(d.ino, "deeper").layout == lay
    # a subdirectory's own setting applies below it only
    lay2 = Layout(chunk_size=64 << 10, stripe=1, replicas=1).pack()
    c.setlayout(subs[0].ino, lay2)
    assert c.create(subs[0].ino, "h")[0].layout == lay2
    assert c.create(top, "h")[0].layout == lay
    # renames and links keep a file's layout
    c.rename(top, "f", subs[0].ino, "f2")
    assert c.lookup(subs[0].ino, "f2").layout == lay
    assert c.link(f.ino, subs[1].ino, "f3").layout == lay
    # non-regular files carry none
    assert c.symlink(top, "s", "f").layout == 0


def test_setlayout_permissions_and_validation(ns):
    from dfs.common.layout import Layout

    c, top = ns.c, ns.top
    c.setattr(top, mode=0o777)
    d = c.mkdir(top, "alice", caller=ALICE)
    f, _ = c.create(top, "file")
    lay = Layout(chunk_size=8 << 20, stripe=2, replicas=3).pack()
    expect_errno(errno.ENOTDIR, c.setlayout, f.ino, lay)
    expect_errno(errno.EPERM, c.setlayout, d.ino, lay, caller=BOB)
    expect_errno(errno.EPERM, c.setlayout, top, lay, caller=ALICE)
    expect_errno(errno.EINVAL, c.setlayout, d.ino, 0x01000103)  # chunk shift 1
    expect_errno(errno.EINVAL, c.setlayout, d.ino, 0x14000003)  # stripe 0
    before = c.getattr(d.ino)
    a = c.setlayout(d.ino, lay, caller=ALICE)  # the owner may
    assert a.layout == lay and a.ctime_ns > before.ctime_ns and a.mtime_ns == before.mtime_ns
    assert c.setlayout(d.ino, lay).layout == lay  # and root
    assert c.setlayout(d.ino, 0).layout == 0  # back to the default
    from dfs.common.layout import DEFAULT_LAYOUT

    assert c.create(d.ino, "g", caller=ALICE)[0].layout == DEFAULT_LAYOUT.pack()


def test_extend_grows_never_shrinks(ns):
    """A writer's close publishes its size: the larger of the two wins, mtime moves."""
    c, top = ns.c, ns.top
    c.setattr(top, mode=0o777)
    f, _ = c.create(top, "f", 0o644, caller=ALICE)
    a = c.extend(f.ino, 1000, caller=ALICE)
    assert a.size == 1000 and a.mtime_ns > f.mtime_ns
    b = c.extend(f.ino, 10, caller=ALICE)
    assert b.size == 1000 and b.mtime_ns >= a.mtime_ns
    c.setattr(f.ino, mode=0o444, caller=ALICE)
    assert c.extend(f.ino, 2000, caller=ALICE).size == 2000  # an open writer keeps writing after chmod
    d = c.mkdir(top, "d")
    expect_errno(errno.EINVAL, c.extend, d.ino, 5)
    expect_errno(errno.EINVAL, c.extend, f.ino, -1)


def test_setattr_with_grow_publishes_the_size_and_sets_times(ns):
    """setattr(grow=) = extend + setattr in one command: the set mtime wins over the
    write's, the size only grows, and a refused setattr publishes nothing."""
    c, top = ns.c, ns.top
    c.setattr(top, mode=0o777)
    f, _ = c.create(top, "g", 0o644, caller=ALICE)
    a = c.setattr(f.ino, atime_ns=10**18, mtime_ns=2 * 10**18, grow=4096, caller=ALICE)
    assert (a.size, a.atime_ns, a.mtime_ns) == (4096, 10**18, 2 * 10**18)
    assert c.setattr(f.ino, mtime_ns=5, grow=100, caller=ALICE).size == 4096  # never shrinks
    expect_errno(errno.EPERM, c.setattr, f.ino, mtime_ns=7, grow=9000, caller=BOB)  # not the owner
    g = c.getattr(f.ino)
    assert g.size == 4096 and g.mtime_ns == 5  # nothing of the refused command
    expect_errno(errno.EINVAL, c.setattr, f.ino, mtime_ns=7, grow=-1)
