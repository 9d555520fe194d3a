"""The power-cut file system (dfs/testing/powercut.py) itself: what a cut keeps and loses.

Each test mounts it over a temporary backing directory, does file I/O with and
without fsync, cuts the power (the FUSE process is killed and mounted again)
and checks what survived: exactly what was fsynced, and the namespace.
"""

from __future__ import annotations

import mmap
import os

import pytest

from dfs.testing.powercut import PowerCut

pytestmark = [pytest.mark.fault]


@pytest.fixture
def pc(tmp_path):
    p = PowerCut(str(tmp_path / "backing"), str(tmp_path / "mnt")).start()
    try:
        yield p
    finally:
        p.stop()


def write(path: str, data: bytes, *, sync: bool, offset: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        if offset is None:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_unsynced_data_is_lost_synced_data_is_kept(pc):
    m = pc.mountpoint
    write(f"{m}/kept", b"a" * 10000, sync=True)
    write(f"{m}/lost", b"b" * 10000, sync=False)
    assert read(f"{m}/lost") == b"b" * 10000  # readable before the cut
    write(f"{m}/kept", b"C" * 100, sync=False, offset=5000)  # an unsynced overwrite
    assert read(f"{m}/kept")[5000:5100] == b"C" * 100
    pc.cut()
    assert read(f"{m}/kept") == b"a" * 10000
    assert read(f"{m}/lost") == b""  # the name is durable, its data is not


def test_rename_of_an_unsynced_temporary_file_loses_its_data(pc):
    m = pc.mountpoint
    write(f"{m}/f", b"old" * 1000, sync=True)
    write(f"{m}/f.tmp", b"new" * 1000, sync=False)
    os.rename(f"{m}/f.tmp", f"{m}/f")
    assert read(f"{m}/f") == b"new" * 1000
    pc.cut()
    assert read(f"{m}/f") == b""  # the classic bug: a rename of a file nobody synced
    write(f"{m}/g.tmp", b"new" * 1000, sync=True)
    os.rename(f"{m}/g.tmp", f"{m}/g")
    pc.cut()
    assert read(f"{m}/g") == b"new" * 1000


def test_an_fsync_through_a_read_only_open_makes_the_data_durable(pc):
    """What a dump loader does (dfs/consensus/snapshot.py): write and rename without a sync,
    then open the file read-only and fsync it. The file system once died on that fsync."""
    m = pc.mountpoint
    write(f"{m}/d.tmp", b"dump" * 1000, sync=False)
    os.rename(f"{m}/d.tmp", f"{m}/d")
    fd = os.open(f"{m}/d", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    pc.cut()
    assert read(f"{m}/d") == b"dump" * 1000


def test_truncate_and_regrow(pc):
    m = pc.mountpoint
    write(f"{m}/t", bytes(range(256)) * 100, sync=True)
    os.truncate(f"{m}/t", 1000)
    write(f"{m}/t", b"x", sync=False, offset=9000)
    got = read(f"{m}/t")
    assert got[:1000] == (bytes(range(256)) * 100)[:1000] and got[1000:9000] == bytes(8000) and got[9000:] == b"x"
    fd = os.open(f"{m}/t", os.O_RDWR)
    os.fsync(fd)
    os.close(fd)
    pc.cut()
    assert read(f"{m}/t") == got


def test_mmap_writes_survive_only_with_msync(pc):
    m = pc.mountpoint
    for name, sync in (("synced", True), ("unsynced", False)):
        write(f"{m}/{name}", bytes(8192), sync=True)
        fd = os.open(f"{m}/{name}", os.O_RDWR)
        try:
            mm = mmap.mmap(fd, 8192)
            mm[100:105] = b"hello"
            if sync:
                mm.flush()
            mm.close()
        finally:
            os.close(fd)
    pc.cut()
    assert read(f"{m}/synced")[100:105] == b"hello"
    assert read(f"{m}/unsynced")[100:105] == bytes(5)


def test_directories_links_and_listing(pc):
    m = pc.mountpoint
    os.makedirs(f"{m}/d/e")
    write(f"{m}/d/e/f", b"1", sync=True)
    os.link(f"{m}/d/e/f", f"{m}/d/g")
    assert os.stat(f"{m}/d/g").st_nlink == 2
    os.rename(f"{m}/d/e", f"{m}/d/e2")
    assert sorted(os.listdir(f"{m}/d")) == ["e2", "g"]
    assert read(f"{m}/d/e2/f") == b"1"
    os.unlink(f"{m}/d/g")
    pc.cut()
    assert sorted(os.listdir(f"{m}/d")) == ["e2"] and read(f"{m}/d/e2/f") == b"1"


def test_a_hard_linked_file_outlives_the_name_it_was_last_seen_under(pc):
    m = pc.mountpoint
    write(f"{m}/sst", b"s" * 5000, sync=True)
    fd = os.open(f"{m}/sst", os.O_RDONLY)  # RocksDB keeps its tables open
    try:
        os.mkdir(f"{m}/ckpt")
        os.link(f"{m}/sst", f"{m}/ckpt/sst")  # a checkpoint links them, is packed, is removed
        assert read(f"{m}/ckpt/sst") == b"s" * 5000
        os.unlink(f"{m}/ckpt/sst")
        os.rmdir(f"{m}/ckpt")
        assert os.fstat(fd).st_size == 5000 and os.pread(fd, 10, 0) == b"s" * 10  # no lookup of a name
    finally:
        os.close(fd)
    assert read(f"{m}/sst") == b"s" * 5000
    write(f"{m}/sst", b"t", sync=False, offset=5000)
    assert read(f"{m}/sst") == b"s" * 5000 + b"t"
    pc.cut()
    assert read(f"{m}/sst") == b"s" * 5000
