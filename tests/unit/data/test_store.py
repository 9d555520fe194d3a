"""ChunkStore: round trips against a bytearray reference, checksums catching
corruption, scrub + install repair, removal, listing, persistence, ENOSPC."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfs.common import errors as err
from dfs.common.blocks import block_crcs
from dfs.data.store import ChunkMeta, ChunkStore
from dfs.testing.damage import flip_byte

BS = 16  # tiny blocks so short random ops cross many block boundaries
CS = 256  # chunk size for the random tests


@pytest.fixture
def store(tmp_path):
    s = ChunkStore(str(tmp_path / "t"), 7, block_size=4096)
    yield s
    s.close()


def chunk_file(s: ChunkStore, ino: int, index: int) -> str:
    return s._file(ino, index)


# ------------------------------------------------------------------ random ops vs a reference

op = st.one_of(
    st.tuples(
        st.just("w"),
        st.integers(0, 2),  # chunk index
        st.integers(0, CS - 1),
        st.binary(min_size=0, max_size=70),
    ),
    st.tuples(st.just("t"), st.integers(0, 2), st.integers(0, CS)),
    st.tuples(st.just("r"), st.integers(0, 2), st.integers(0, CS + 10), st.integers(0, CS + 10)),
    st.tuples(st.just("rm"), st.integers(0, 2)),
    st.tuples(st.just("reopen"),),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=25))
def test_random_ops_match_reference(ops):
    ref: dict[int, bytearray] = {}
    versions: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as d:
        s = ChunkStore(d, 1, block_size=BS)
        try:
            v = 0
            for o in ops:
                kind = o[0]
                if kind == "w":
                    _, idx, off, data = o
                    data = data[: CS - off]
                    v += 1
                    m = s.write(5, idx, off, data, v, chunk_size=CS)
                    r = ref.setdefault(idx, bytearray())
                    if data:
                        if off > len(r):
                            r.extend(bytes(off - len(r)))
                        r[off:off + len(data)] = data
                    versions[idx] = v
                    assert m.version == v and m.length == len(r)
                elif kind == "t":
                    _, idx, length = o
                    v += 1
                    m = s.truncate(5, idx, length, v)
                    r = ref.setdefault(idx, bytearray())
                    if length < len(r):
                        del r[length:]
                    else:
                        r.extend(bytes(length - len(r)))
                    versions[idx] = v
                    assert m.length == length
                elif kind == "r":
                    _, idx, off, n = o
                    want = bytes(ref.get(idx, b"")[off:off + n])
                    assert s.read(5, idx, off, n) == want
                    fd, foff, cnt = s.read_extent(5, idx, off, n)
                    try:
                        assert cnt == len(want)
                        if cnt:
                            assert os.pread(fd, cnt, foff) == want
                        else:
                            assert fd == -1
                    finally:
                        if fd >= 0:
                            os.close(fd)
                elif kind == "rm":
                    s.remove(5, o[1])
                    ref.pop(o[1], None)
                    versions.pop(o[1], None)
                else:
                    s.close()
                    s = ChunkStore(d, 1, block_size=BS)
                # after every step: the whole store matches, every CRC is right
                for idx in range(3):
                    r = ref.get(idx)
                    m = s.stat(5, idx)
                    if r is None:
                        assert m is None
                        assert s.read(5, idx, 0, CS) == b""
                        continue
                    assert m.length == len(r) and m.version == versions[idx]
                    assert m.crcs == block_crcs(bytes(r), BS)
                    assert s.read(5, idx, 0, CS) == bytes(r)
                    assert s.scrub(5, idx) == []
            assert sorted(i for _, i, _ in s.list_chunks(5)) == sorted(ref)
        finally:
            s.close()


def test_odd_offsets_and_sizes_default_blocks(tmp_path):
    s = ChunkStore(str(tmp_path / "t"), 1)  # 64 KiB blocks
    try:
        cs = 1 << 20
        ref = bytearray()
        rnd = __import__("random").Random(3)
        for v in range(1, 30):
            off = rnd.randrange(0, cs - 1)
            n = rnd.randrange(1, min(200_000, cs - off) + 1)
            data = rnd.randbytes(n)
            s.write(9, 0, off, data, v, chunk_size=cs)
            if off > len(ref):
                ref.extend(bytes(off - len(ref)))
            ref[off:off + n] = data
        assert s.read(9, 0, 0, cs) == bytes(ref)
        assert s.stat(9, 0).crcs == block_crcs(bytes(ref))
        for _ in range(20):
            off = rnd.randrange(0, len(ref))
            n = rnd.randrange(0, 300_000)
            assert s.read(9, 0, off, n) == bytes(ref[off:off + n])
    finally:
        s.close()


def test_hole_reads_zeros_and_file_is_sparse(store):
    cs = 4 << 20
    store.write(1, 0, cs - 10, b"x" * 10, 1, chunk_size=cs)
    m = store.stat(1, 0)
    assert m.length == cs
    assert store.read(1, 0, 0, 100) == bytes(100)
    assert store.read(1, 0, cs - 12, 100) == b"\0\0" + b"x" * 10
    assert os.stat(chunk_file(store, 1, 0)).st_blocks * 512 < 1 << 20
    assert store.scrub(1, 0) == []


def test_stale_bytes_past_length_do_not_leak_into_holes(store):
    store.write(1, 0, 0, b"a" * 5000, 1, chunk_size=1 << 20)
    # Bytes past the length (left by a failed or torn write) must not show
    # through a later hole.
    with open(chunk_file(store, 1, 0), "r+b") as f:
        f.seek(5000)
        f.write(b"G" * 10000)
    store.write(1, 0, 12000, b"b", 2, chunk_size=1 << 20)
    assert store.read(1, 0, 0, 20000) == b"a" * 5000 + bytes(7000) + b"b"
    store.truncate(1, 0, 100, 3)
    with open(chunk_file(store, 1, 0), "r+b") as f:
        f.seek(100)
        f.write(b"G" * 100)
    store.truncate(1, 0, 300, 4)
    assert store.read(1, 0, 0, 1000) == b"a" * 100 + bytes(200)


def test_validation(store):
    with pytest.raises(err.InvalidArgument):
        store.write(1, 0, 10, b"abc", 1, chunk_size=12)
    with pytest.raises(err.InvalidArgument):
        store.write(1, 0, -1, b"abc", 1, chunk_size=12)
    with pytest.raises(err.InvalidArgument):
        store.write(1, 0, 0, b"abc", 0, chunk_size=12)
    with pytest.raises(err.InvalidArgument):
        store.write(-1, 0, 0, b"abc", 1, chunk_size=12)
    with pytest.raises(err.InvalidArgument):
        store.read(1, 0, -1, 3)
    with pytest.raises(err.InvalidArgument):
        store.truncate(1, 0, 13, 1, chunk_size=12)
    assert store.stat(1, 0) is None


def test_empty_write_records_version_only(store):
    m = store.write(1, 0, 0, b"", 4, chunk_size=100)
    assert m == ChunkMeta(4, 0, 0, b"")
    store.write(1, 0, 0, b"hello", 5, chunk_size=100)
    m = store.write(1, 0, 50, b"", 6, chunk_size=100)
    assert (m.version, m.length) == (6, 5)


def test_commit(store):
    store.commit(1, 0, 3)  # missing chunk: nothing
    assert store.stat(1, 0) is None
    store.write(1, 0, 0, b"x", 3, chunk_size=100)
    assert store.stat(1, 0).committed == 0
    store.commit(1, 0, 3)
    store.commit(1, 0, 2)
    m = store.write(1, 0, 1, b"y", 4, chunk_size=100)
    assert (m.version, m.committed) == (4, 3)


# ------------------------------------------------------------------ checksums, scrub, install


def test_corrupt_byte_is_caught_and_repaired(store):
    bs = 4096
    data = os.urandom(3 * bs + 100)
    store.write(2, 1, 0, data, 1, chunk_size=1 << 20)
    flip_byte(chunk_file(store, 2, 1), bs + 5, 0x40)  # block 1
    assert store.read(2, 1, 0, bs) == data[:bs]
    assert store.read(2, 1, 2 * bs, 200) == data[2 * bs:2 * bs + 200]
    for off, n in ((bs, 1), (bs + 5, 1), (0, len(data)), (bs - 1, 2)):
        with pytest.raises(err.ChecksumError) as ei:
            store.read(2, 1, off, n)
        assert ei.value.block == 1 and ei.value.errno == errno.EIO and "checksum" in str(ei.value)
    with pytest.raises(err.ChecksumError):
        store.read_extent(2, 1, bs, 10)
    assert store.counters["checksum_errors"] >= 5
    assert store.scrub(2, 1) == [1]
    # a partial write into the bad block must not bless the corruption
    with pytest.raises(err.ChecksumError):
        store.write(2, 1, bs + 100, b"zz", 2, chunk_size=1 << 20)
    assert store.stat(2, 1).version == 1
    assert store.scrub(2, 1) == [1]
    m = store.install(2, 1, data, 7)
    assert (m.version, m.committed, m.length) == (7, 7, len(data))
    assert store.scrub(2, 1) == []
    assert store.read(2, 1, 0, len(data)) == data


def test_whole_block_overwrite_heals_bad_block(store):
    bs = 4096
    store.write(2, 0, 0, b"a" * 3 * bs, 1, chunk_size=1 << 20)
    flip_byte(chunk_file(store, 2, 0), bs, 0x40)
    store.write(2, 0, bs, b"b" * bs, 2, chunk_size=1 << 20)
    assert store.scrub(2, 0) == []
    assert store.read(2, 0, 0, 3 * bs) == b"a" * bs + b"b" * bs + b"a" * bs


def test_lost_data_is_a_checksum_error(store):
    bs = 4096
    store.write(3, 0, 0, b"q" * (2 * bs + 10), 1, chunk_size=1 << 20)
    os.truncate(chunk_file(store, 3, 0), bs + 10)
    assert store.read(3, 0, 0, bs) == b"q" * bs
    with pytest.raises(err.ChecksumError) as ei:
        store.read(3, 0, bs, 10)
    assert ei.value.block == 1
    assert store.scrub(3, 0) == [1, 2]
    os.unlink(chunk_file(store, 3, 0))
    with pytest.raises(err.ChecksumError) as ei:
        store.read(3, 0, 0, 1)
    assert ei.value.block == 0
    assert store.scrub(3, 0) == [0, 1, 2]
    store.install(3, 0, b"new", 2)
    assert store.read(3, 0, 0, 100) == b"new"


def test_install_replaces_whole_chunk(store):
    store.write(4, 0, 0, b"x" * 10000, 1, chunk_size=1 << 20)
    fd, off, n = store.read_extent(4, 0, 0, 10000)
    try:
        store.install(4, 0, b"short", 9)
        # the returned fd still reads what was verified
        assert os.pread(fd, n, off) == b"x" * 10000
    finally:
        os.close(fd)
    assert store.read(4, 0, 0, 100) == b"short"
    assert store.stat(4, 0).length == 5
    store.install(4, 1, b"", 2)
    assert store.stat(4, 1) == ChunkMeta(2, 2, 0, b"")


def test_read_extent_sendfile(store, tmp_path):
    data = os.urandom(100_000)
    store.write(5, 0, 0, data, 1, chunk_size=1 << 20)
    fd, off, n = store.read_extent(5, 0, 777, 50_000)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    try:
        assert (off, n) == (777, 50_000)
        sent = 0
        while sent < n:
            sent += os.sendfile(out, fd, off + sent, n - sent)
        assert os.pread(out, n, 0) == data[777:50_777]
    finally:
        os.close(fd)
        os.close(out)
    assert store.read_extent(5, 0, 100_000, 10) == (-1, 100_000, 0)
    assert store.read_extent(5, 1, 0, 10) == (-1, 0, 0)


# ------------------------------------------------------------------ remove, list, persistence


def test_remove_remove_inode_list(store):
    for ino in (1, 2, (1 << 64) - 1):
        for idx in (0, 1, 7, 0xFFFFFFFF):
            store.write(ino, idx, 0, b"d%d" % idx, 1, chunk_size=100)
    assert len(list(store.list_chunks())) == 12
    assert [i for _, i, _ in store.list_chunks(2)] == [0, 1, 7, 0xFFFFFFFF]
    assert [(a, i) for a, i, _ in store.list_chunks(start=(2, 5))][:3] == [(2, 7), (2, 0xFFFFFFFF), ((1 << 64) - 1, 0)]
    assert [i for _, i, _ in store.list_chunks(2, start=(2, 2))] == [7, 0xFFFFFFFF]
    store.remove(2, 1)
    store.remove(2, 1)  # idempotent
    assert not os.path.exists(chunk_file(store, 2, 1))
    assert store.read(2, 1, 0, 10) == b""
    assert store.remove_inode(2) == 3
    assert store.remove_inode(2) == 0
    assert list(store.list_chunks(2)) == []
    assert store.remove_inode((1 << 64) - 1) == 4
    assert [(a, i) for a, i, _ in store.list_chunks()] == [(1, 0), (1, 1), (1, 7), (1, 0xFFFFFFFF)]
    assert store.read(1, 7, 0, 10) == b"d7"
    names = [n for d in os.listdir(store._chunks) for n in os.listdir(os.path.join(store._chunks, d))]
    assert len(names) == 4


def test_persistence_and_settings(tmp_path):
    p = str(tmp_path / "t")
    s = ChunkStore(p, 3, block_size=4096)
    s.write(1, 2, 10, b"persist", 5, chunk_size=1 << 20)
    s.commit(1, 2, 5)
    s.close()
    s.close()  # idempotent
    # a leftover temp file of a crashed install goes away on open
    junk = chunk_file(s, 1, 2) + ".abc.tmp"
    open(junk, "wb").close()
    s = ChunkStore(p, 3, block_size=4096)
    try:
        assert not os.path.exists(junk)
        m = s.stat(1, 2)
        assert (m.version, m.committed, m.length) == (5, 5, 17)
        assert s.read(1, 2, 0, 100) == bytes(10) + b"persist"
    finally:
        s.close()
    with pytest.raises(err.InvalidArgument):
        ChunkStore(p, 3, block_size=8192)
    with pytest.raises(err.InvalidArgument):
        ChunkStore(p, 4, block_size=4096)


def test_capacity(store):
    total, free = store.capacity()
    st = os.statvfs(store.path)
    assert total == st.f_blocks * st.f_frsize and 0 <= free <= total


def test_threads_on_different_and_same_chunks(store):
    cs = 1 << 20
    errors = []

    def worker(t: int) -> None:
        try:
            for k in range(30):
                # own chunk (t, k % 3), plus disjoint 1000-byte slots in shared chunk (0, 0)
                store.write(100 + t, k % 3, k * 1000, bytes([t]) * 1000, k + 1, chunk_size=cs)
                store.write(100, 99, (t * 30 + k) * 1000, bytes([t + 1]) * 1000, k + 1, chunk_size=cs)
                store.read(100 + t, k % 3, 0, cs)
        except Exception as e:  # noqa: BLE001 - any failure in a thread is reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    shared = store.read(100, 99, 0, cs)
    assert shared == b"".join(bytes([t + 1]) * 30_000 for t in range(8))
    for t in range(8):
        for idx in range(3):
            assert store.scrub(100 + t, idx) == []


# ------------------------------------------------------------------ ENOSPC on a tiny file system


@pytest.fixture
def tiny_fs():
    d = tempfile.mkdtemp()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", d], check=False, capture_output=True)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", d], check=False)
        os.rmdir(d)


def test_nospace(tiny_fs):
    s = ChunkStore(os.path.join(tiny_fs, "t"), 1, block_size=4096)
    try:
        cs = 4 << 20
        a = os.urandom(512 << 10)
        s.write(1, 0, 0, a, 1, chunk_size=cs)
        s.write(1, 1, 100_000, b"tail", 1, chunk_size=cs)  # sparse: a hole in [0, 100000)
        _, free = s.capacity()
        assert 0 < free < 2 << 20
        # the statvfs check refuses a write that cannot fit
        with pytest.raises(err.NoSpace) as ei:
            s.write(2, 0, 0, os.urandom(3 << 20), 1, chunk_size=cs)
        assert ei.value.errno == errno.ENOSPC
        assert s.stat(2, 0) is None
        # with the check defeated, the kernel's ENOSPC (fallocate / write) is caught
        s.reserve = -(64 << 20)
        with pytest.raises(err.NoSpace):
            s.write(1, 0, 100, os.urandom(3 << 20), 2, chunk_size=cs)  # extends chunk (1, 0)
        with pytest.raises(err.NoSpace):
            s.write(1, 1, 0, os.urandom(3 << 20), 2, chunk_size=cs)  # fills the hole and extends
        with pytest.raises(err.NoSpace):
            s.install(1, 0, os.urandom(3 << 20), 9)
        # nothing acknowledged is damaged, and the failed growth was given back
        assert s.stat(1, 0).version == 1 and s.stat(1, 1).version == 1
        assert s.read(1, 0, 0, cs) == a
        assert s.read(1, 1, 0, cs) == bytes(100_000) + b"tail"
        assert s.scrub(1, 0) == [] and s.scrub(1, 1) == []
        assert os.path.getsize(s._file(1, 0)) == len(a)
        assert [n for n in os.listdir(os.path.dirname(s._file(1, 0))) if n.endswith(".tmp")] == []
        s.reserve = 0
        # the space is still usable afterwards
        s.write(1, 0, len(a), b"more", 3, chunk_size=cs)
        assert s.read(1, 0, len(a), 10) == b"more"
    finally:
        s.close()
