"""The library (dfs.connect) and the mount on the same cluster: close-to-open both ways.

A close in one makes the data, size and mtime visible to an open in the other that
starts after it, even when the other side has the file's attributes cached."""

from __future__ import annotations

import os

import pytest

import dfs


@pytest.fixture(scope="module")
def lib(data_cluster):
    c = dfs.connect(mgmt=data_cluster.mgmt_addresses)
    yield c
    c.close()


@pytest.fixture
def both(dfs_mount, lib, request):
    """(the directory in the mount, the same directory's path in the library)."""
    name = f"lm-{request.node.name[:50]}"
    os.mkdir(os.path.join(dfs_mount, name))
    return os.path.join(dfs_mount, name), "/" + name


def test_library_write_seen_by_mount_open(both, lib):
    mdir, ldir = both
    with lib.open(f"{ldir}/f", "wb") as f:
        f.write(b"one")
    p = os.path.join(mdir, "f")
    with open(p, "rb") as f:
        assert f.read() == b"one"
    assert os.stat(p).st_size == 3  # the kernel now caches size 3 for attr_timeout
    with lib.open(f"{ldir}/f", "ab") as f:
        f.write(b" two three")
    with open(p, "rb") as f:  # an open after the close: all of it, cached size or not
        assert f.read() == b"one two three"
    assert os.stat(p).st_size == 13


def test_mount_write_seen_by_library_open(both, lib):
    mdir, ldir = both
    p = os.path.join(mdir, "g")
    with open(p, "wb") as f:
        f.write(b"first")
    assert lib.stat(f"{ldir}/g").st_size == 5  # the library caches it too
    with open(p, "ab") as f:
        f.write(b" and more")
    with lib.open(f"{ldir}/g", "rb") as f:
        assert f.read() == b"first and more"
    st = lib.stat(f"{ldir}/g")
    assert st.st_size == 14 and st.st_mtime_ns == os.stat(p).st_mtime_ns


def test_names_both_ways(both, lib):
    mdir, ldir = both
    lib.mkdir(f"{ldir}/from-lib")
    lib.open(f"{ldir}/from-lib/x", "wb").close()
    assert os.listdir(os.path.join(mdir, "from-lib")) == ["x"]
    os.rename(os.path.join(mdir, "from-lib", "x"), os.path.join(mdir, "from-lib", "y"))
    assert lib.listdir(f"{ldir}/from-lib") == ["y"]
    lib.remove(f"{ldir}/from-lib/y")
    assert os.listdir(os.path.join(mdir, "from-lib")) == []


def test_open_unlinked_across(both, lib):
    """A file the mount holds open survives an unlink by the library (server open handles)."""
    mdir, ldir = both
    p = os.path.join(mdir, "held")
    with open(p, "wb") as f:
        f.write(b"still here")
    f = open(p, "rb")
    try:
        lib.remove(f"{ldir}/held")
        assert not lib.exists(f"{ldir}/held")
        assert f.read() == b"still here"
    finally:
        f.close()


def test_kept_page_cache_never_hides_a_change(both, lib):
    """The mount lets the kernel keep a file's cached pages across opens while the file is
    unchanged; a same-size rewrite elsewhere whose writer then sets the mtime back (as
    rsync and tar do) is still seen by the next open (the ctime moved)."""
    mdir, ldir = both
    p = os.path.join(mdir, "same-size")
    lib.write_bytes(f"{ldir}/same-size", b"A" * 100_000)
    for _ in range(3):  # opens of an unchanged file (the later ones may keep the pages)
        with open(p, "rb") as f:
            assert f.read() == b"A" * 100_000
    st = lib.stat(f"{ldir}/same-size")
    lib.write_bytes(f"{ldir}/same-size", b"B" * 100_000)
    lib.utime(f"{ldir}/same-size", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert lib.stat(f"{ldir}/same-size").st_mtime_ns == st.st_mtime_ns
    with open(p, "rb") as f:
        assert f.read() == b"B" * 100_000
    with open(p, "r+b") as f:  # a write through the mount, then a read open
        f.write(b"C")
    with open(p, "rb") as f:
        assert f.read() == b"C" + b"B" * 99_999
    assert lib.read_bytes(f"{ldir}/same-size") == b"C" + b"B" * 99_999


def test_a_directory_the_library_filled_lists_whole_through_the_mount(both, lib):
    """Entries made by another client (several readdir pages of them, created in batches)
    all show in ``ls -l`` and ``os.listdir`` through the mount, every time."""
    import subprocess

    mdir, ldir = both
    ino = lib.stat(ldir).st_ino
    names = [f"f{i:07d}" for i in range(2000)]
    for k in range(0, len(names), 1000):
        for r in lib.run(lib.meta.create_many(ino, names[k:k + 1000])):
            assert not isinstance(r, Exception), r
    for _ in range(3):
        out = subprocess.run(["ls", "-l", mdir], check=True, capture_output=True, text=True).stdout
        assert len(out.splitlines()) - 1 == len(names)
        assert sorted(os.listdir(mdir)) == names
