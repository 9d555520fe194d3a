"""Lazy mode's barriers and errors on a real cluster, through the library.

A lazy client (``dfs.connect(consistency="lazy")``) and a strict one (another client) share
the session's data cluster. The lazy client's write-back delay is long (60 s) so that what
the strict client sees after a barrier was made visible by the barrier, not by the timer:
``Client.sync()``, ``fsync`` of a file, ``Client.close()`` each make everything the lazy
client did before it durable and visible. Conflicts found at flush are raised at the barrier
(and the file's close) with the errno, the operation and the path, once, and logged."""

from __future__ import annotations

import errno
import logging
import stat

import pytest

import dfs
from dfs.testing.wait import until

LONG = 60.0  # the lazy clients' delay: nothing is sent before a barrier asks


@pytest.fixture(scope="module")
def strict(data_cluster):
    c = dfs.connect(mgmt=data_cluster.mgmt_addresses, ttl=0)
    yield c
    c.close()


@pytest.fixture
def lazy(data_cluster):
    c = dfs.connect(mgmt=data_cluster.mgmt_addresses, consistency="lazy", lazy_delay=LONG)
    yield c
    c.close()


_n = iter(range(10**6))


@pytest.fixture
def top(strict, request):
    """A fresh directory for the test (made by the strict client, so both know it)."""
    d = f"/lzb{next(_n)}-{request.node.name[:40]}"
    strict.mkdir(d)
    return d


def _apply(c, top: str) -> dict[str, tuple]:
    """A mix of every namespace change and file sizes (inline and on the data servers)
    through client ``c``; the tree it leaves, as ``_tree`` sees it."""
    c.makedirs(f"{top}/a/b/c")
    c.mkdir(f"{top}/gone")
    big = bytes(range(256)) * 4096 * 3  # 3 MiB: past the inline limit, on the data servers
    c.write_bytes(f"{top}/a/b/c/big", big)
    for i in range(40):
        c.write_bytes(f"{top}/a/f{i}", f"file {i}\n".encode() * (i + 1))
    c.write_bytes(f"{top}/a/b/moved", b"to be renamed")
    c.rename(f"{top}/a/b/moved", f"{top}/a/b/c/renamed")
    c.rename(f"{top}/a/f39", f"{top}/gone/f39")  # into another directory (maybe another shard)
    c.remove(f"{top}/gone/f39")
    c.rmdir(f"{top}/gone")
    c.remove(f"{top}/a/f38")
    c.chmod(f"{top}/a/f1", 0o600)
    c.truncate(f"{top}/a/f2", 3)
    c.utime(f"{top}/a/f3", ns=(1_000_000_000, 2_000_000_000))
    c.symlink("b/c/big", f"{top}/a/ln")
    c.link(f"{top}/a/f4", f"{top}/a/hard")
    with c.open(f"{top}/a/f5", "ab") as f:
        f.write(b"appended")
    tree = {"a": ("d",), "a/b": ("d",), "a/b/c": ("d",), "a/b/c/big": ("f", big, 0o644),
            "a/b/c/renamed": ("f", b"to be renamed", 0o644), "a/ln": ("l", "b/c/big")}
    for i in range(38):
        tree[f"a/f{i}"] = ("f", f"file {i}\n".encode() * (i + 1), 0o644)
    tree["a/f1"] = ("f", tree["a/f1"][1], 0o600)
    tree["a/f2"] = ("f", b"fil", 0o644)
    tree["a/f5"] = ("f", tree["a/f5"][1] + b"appended", 0o644)
    tree["a/hard"] = tree["a/f4"]
    return tree


def _tree(c, top: str) -> dict[str, tuple]:
    out = {}
    for dp, dns, fns in c.walk(top):
        for n in dns + fns:
            p = f"{dp}/{n}"
            rel = p[len(top) + 1:]
            st = c.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", c.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d",)
            else:
                out[rel] = ("f", c.read_bytes(p), stat.S_IMODE(st.st_mode))
    return out


def test_sync_makes_everything_visible_to_another_client(lazy, strict, top):
    want = _apply(lazy, top)
    assert _tree(lazy, top) == want  # the lazy client's own view, at once
    lazy.sync()
    assert _tree(strict, top) == want
    assert strict.stat(f"{top}/a/f4").st_nlink == 2
    assert strict.stat(f"{top}/a/f3").st_mtime_ns == 2_000_000_000
    assert strict.stat(f"{top}/a/f4").st_ino == lazy.stat(f"{top}/a/f4").st_ino  # delegated: final at once


def test_fsync_of_a_file_is_a_barrier_for_everything_before_it(lazy, strict, top):
    lazy.mkdir(f"{top}/d")
    lazy.write_bytes(f"{top}/d/before", b"closed before the fsync")
    with lazy.open(f"{top}/d/synced", "wb") as f:
        f.write(b"x" * 10_000)
        f.fsync()
        assert strict.read_bytes(f"{top}/d/before") == b"closed before the fsync"
        assert strict.read_bytes(f"{top}/d/synced") == b"x" * 10_000


def test_close_of_the_client_is_a_barrier(data_cluster, strict, top):
    c = dfs.connect(mgmt=data_cluster.mgmt_addresses, consistency="lazy", lazy_delay=LONG)
    want = _apply(c, top)
    c.close()
    assert _tree(strict, top) == want


def test_changes_reach_other_clients_without_a_barrier(data_cluster, strict, top):
    """The delay bounds how long a change waits: another client sees it without any barrier."""
    c = dfs.connect(mgmt=data_cluster.mgmt_addresses, consistency="lazy", lazy_delay=0.2)
    try:
        c.write_bytes(f"{top}/soon", b"visible without a barrier")
        c.mkdir(f"{top}/dir")
        until(lambda: strict.exists(f"{top}/soon") and strict.exists(f"{top}/dir"), 60,
              "the lazy client's changes to reach the service")
        assert strict.read_bytes(f"{top}/soon") == b"visible without a barrier"
    finally:
        c.close()


def test_a_taken_name_is_reported_at_the_barrier_with_op_and_path(lazy, strict, top, caplog):
    lazy.mkdir(f"{top}/d")  # the lazy client made /d: it knows everything it holds
    lazy.sync()
    strict.write_bytes(f"{top}/d/taken", b"strict")
    lazy.write_bytes(f"{top}/d/taken", b"lazy")  # the lazy view says the name is free
    lazy.write_bytes(f"{top}/d/mine", b"mine")
    with caplog.at_level(logging.WARNING, logger="dfs.client.writeback"):
        with pytest.raises(FileExistsError) as ei:
            lazy.sync()
    e = ei.value
    assert e.errno == errno.EEXIST and e.filename == f"{top}/d/taken"
    assert f"create {top}/d/taken" in str(e)
    assert f"create {top}/d/taken" in caplog.text  # the log names it too
    lazy.sync()  # reported once
    assert strict.read_bytes(f"{top}/d/taken") == b"strict"  # the other client's file untouched
    assert strict.read_bytes(f"{top}/d/mine") == b"mine"  # the rest applied


def test_a_removed_parent_is_reported_at_the_barrier(lazy, strict, top):
    lazy.mkdir(f"{top}/p")  # made here: the lazy client knows it holds nothing else
    lazy.sync()
    strict.rmdir(f"{top}/p")
    lazy.write_bytes(f"{top}/p/x", b"orphan")  # its view still has /p: nothing is asked
    with pytest.raises(OSError) as ei:
        lazy.sync()
    assert ei.value.errno == errno.ENOENT and ei.value.filename == f"{top}/p/x"
    assert f"create {top}/p/x" in str(ei.value)
    assert not strict.exists(f"{top}/p")


def test_a_permission_changed_meanwhile_is_reported_at_the_barrier(data_cluster, strict, top):
    strict.chmod(top, 0o777)
    c = dfs.connect(mgmt=data_cluster.mgmt_addresses, consistency="lazy", lazy_delay=LONG, uid=1234, gid=1234,
                    groups=())
    try:
        c.mkdir(f"{top}/w", mode=0o755)  # made here: its attributes are the lazy client's to know
        c.sync()
        strict.chown(f"{top}/w", 0, 0)  # root's now: 1234 may not create in it
        c.write_bytes(f"{top}/w/mine", b"no")
        with pytest.raises(PermissionError) as ei:
            c.sync()
        assert ei.value.errno == errno.EACCES and ei.value.filename == f"{top}/w/mine"
        assert f"create {top}/w/mine" in str(ei.value)
    finally:
        c.close()
    assert strict.listdir(f"{top}/w") == []
