"""ChunkStore versions for snapshots: epochs, keeping the current version before a
change, reads at a snapshot, dropping, counting, the format upgrade, and crash
orderings (each crash point forced by stopping a store operation half-way)."""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfs.common import errors as err
from dfs.common.blocks import block_crcs
from dfs.data import store as store_mod
from dfs.data.store import ChunkStore, Preserved
from dfs.kv import WriteBatch
from dfs.testing.damage import flip_byte

CS = 1 << 20


@pytest.fixture
def store(tmp_path):
    s = ChunkStore(str(tmp_path / "t"), 7, block_size=4096)
    yield s
    s.close()


def files(s: ChunkStore) -> list[str]:
    return sorted(e for b in os.listdir(s._chunks) for e in os.listdir(os.path.join(s._chunks, b)))


def test_a_write_after_a_snapshot_keeps_the_old_bytes(store):
    store.write(1, 0, 0, b"a" * 10_000, 1, chunk_size=CS, epoch=1)
    assert store.stat(1, 0).epoch == 1
    store.write(1, 0, 5000, b"B" * 100, 2, chunk_size=CS, epoch=2, keep=1)  # snapshot 1 is live
    want_new = b"a" * 5000 + b"B" * 100 + b"a" * 4900
    assert store.read(1, 0, 0, CS) == want_new
    assert store.read(1, 0, 0, CS, at=1) == b"a" * 10_000
    assert store.read(1, 0, 4990, 20, at=1) == b"a" * 20
    assert store.read(1, 0, 0, CS, at=2) == want_new
    assert store.read(1, 0, 0, CS, at=0) == b""  # the chunk did not exist then
    [p] = store.versions(1, 0)
    assert p == Preserved(1, 2, 1, 10_000, block_crcs(b"a" * 10_000, 4096))
    # later changes in the same epoch are in place: nothing more is kept
    store.write(1, 0, 0, b"C", 3, chunk_size=CS, epoch=2, keep=1)
    store.truncate(1, 0, 50, 4, epoch=2, keep=1)
    assert len(store.versions(1, 0)) == 1
    assert store.read(1, 0, 0, CS, at=1) == b"a" * 10_000
    assert store.read(1, 0, 0, CS) == b"C" + b"a" * 49


def test_no_live_snapshot_no_copy(store):
    store.write(1, 0, 0, b"x" * 100, 1, chunk_size=CS, epoch=1)
    store.write(1, 0, 0, b"y" * 100, 2, chunk_size=CS, epoch=3)  # snapshots 1, 2 deleted before
    assert store.versions(1, 0) == [] and not store.has_versions()
    assert store.stat(1, 0).epoch == 3
    assert store.read(1, 0, 0, CS, at=1) == b""  # nothing kept: no live snapshot reads it
    assert [f for f in files(store) if "@" in f] == []


def test_versions_across_several_snapshots(store):
    store.write(2, 3, 0, b"one", 1, chunk_size=CS, epoch=1)
    store.write(2, 3, 0, b"two", 2, chunk_size=CS, epoch=2, keep=1)
    store.write(2, 3, 0, b"333", 3, chunk_size=CS, epoch=4, keep=3)  # snapshot 2 deleted, 3 live
    assert [(p.epoch, p.until) for p in store.versions(2, 3)] == [(2, 4), (1, 2)]
    assert [store.read(2, 3, 0, 9, at=s) for s in (0, 1, 2, 3, 4, 9)] == [b"", b"one", b"two", b"two", b"333",
                                                                           b"333"]


def test_truncate_after_a_snapshot(store):
    store.write(1, 1, 0, b"z" * 9000, 1, chunk_size=CS, epoch=1)
    store.truncate(1, 1, 10, 2, epoch=2, keep=1)
    assert store.read(1, 1, 0, CS) == b"z" * 10
    assert store.read(1, 1, 0, CS, at=1) == b"z" * 9000
    store.truncate(1, 1, 10, 3, epoch=3, keep=2)  # same length: only the version moves, not the epoch
    assert store.stat(1, 1).epoch == 2 and len(store.versions(1, 1)) == 1
    store.write(1, 1, 0, b"", 4, chunk_size=CS, epoch=3, keep=2)  # empty write: the same
    assert store.stat(1, 1)[:4] == (4, 0, 10, block_crcs(b"z" * 10, 4096)) and store.stat(1, 1).epoch == 2


def test_remove_and_remove_inode_keep_the_versions_snapshots_read(store):
    for k in range(3):
        store.write(5, k, 0, bytes([k + 1]) * 5000, 1, chunk_size=CS, epoch=1)
    before = os.stat(store._file(5, 0)).st_ino
    assert store.remove(5, 0, epoch=2, keep=1) is True
    assert store.stat(5, 0) is None and store.read(5, 0, 0, CS) == b""
    assert store.read(5, 0, 0, CS, at=1) == b"\1" * 5000 and store.read(5, 0, 0, CS, at=2) == b""
    assert os.stat(store._vfile(5, 0, 1)).st_ino == before  # a link, not a copy
    store.write(5, 1, 0, b"new", 2, chunk_size=CS, epoch=2, keep=1)
    assert store.remove_inode(5, epoch=3, keep=2) == 2
    assert list(store.list_chunks(5)) == []
    assert store.read(5, 1, 0, CS, at=1) == b"\2" * 5000
    assert store.read(5, 1, 0, CS, at=2) == b"new" + b"\2" * 4997
    assert store.read(5, 2, 0, CS, at=2) == b"\3" * 5000
    assert store.read(5, 2, 0, CS, at=3) == b""
    assert store.remove(5, 9, epoch=3, keep=2) is False  # nothing there
    # a chunk written anew after its removal: versions restart, the old ones stay
    store.write(5, 0, 0, b"again", 1, chunk_size=CS, epoch=3)
    assert store.read(5, 0, 0, CS) == b"again" and store.read(5, 0, 0, CS, at=1) == b"\1" * 5000
    assert store.read(5, 0, 0, CS, at=2) == b""


def test_zero_copy_extents_of_a_preserved_version(store):
    store.write(1, 0, 0, b"p" * 10_000, 1, chunk_size=CS, epoch=1)
    store.write(1, 0, 0, b"q" * 10_000, 2, chunk_size=CS, epoch=2, keep=1)
    m, fd, start, count, crcs = store.block_extent(1, 0, 5000, 100, at=1)
    try:
        assert isinstance(m, Preserved) and (start, count) == (4096, 4096)
        assert os.pread(fd, count, start) == b"p" * 4096 and crcs == m.crcs[4:8]
    finally:
        os.close(fd)
    fd, off, n = store.read_extent(1, 0, 9000, 5000, at=1)
    try:
        assert os.pread(fd, n, off) == b"p" * 1000
    finally:
        os.close(fd)
    assert store.block_extent(1, 0, 0, 10, at=0) is None
    assert store.read_extent(1, 0, 0, 10, at=0) == (-1, 0, 0)


def test_a_bad_block_of_a_preserved_version_is_found_and_repaired(store):
    store.write(1, 0, 0, b"k" * 9000, 1, chunk_size=CS, epoch=1)
    store.write(1, 0, 0, b"K" * 9000, 2, chunk_size=CS, epoch=2, keep=1)
    flip_byte(store._vfile(1, 0, 1), 5000)
    assert store.scrub(1, 0) == [] and store.scrub(1, 0, preserved=1) == [1]
    with pytest.raises(err.ChecksumError):
        store.read(1, 0, 4096, 10, at=1)
    with pytest.raises(err.ChecksumError):
        store.read_version(1, 0, 1)
    p = store.install_version(1, 0, 1, 2, b"k" * 9000, 1)
    assert p == store.versions(1, 0)[0] and store.scrub(1, 0, preserved=1) == []
    assert store.read_version(1, 0, 1) == (p, b"k" * 9000)
    assert store.remove_version(1, 0, 1) and not store.remove_version(1, 0, 1)
    assert store.read(1, 0, 0, 10, at=1) == b"" and not store.has_versions()


def test_drop_keeps_what_live_snapshots_read_and_what_it_cannot_judge(store):
    store.write(1, 0, 0, b"1" * 100, 1, chunk_size=CS, epoch=1)
    store.write(1, 0, 0, b"2" * 100, 2, chunk_size=CS, epoch=2, keep=1)
    store.write(1, 0, 0, b"3" * 200, 3, chunk_size=CS, epoch=3, keep=2)
    store.write(2, 0, 0, b"x" * 50, 1, chunk_size=CS, epoch=1)
    store.remove(2, 0, epoch=3, keep=2)
    # versions (1, until 2), (2, 3) of chunk 1.0 and (1, 3) of chunk 2.0
    assert store.usage([1, 2]) == {1: (100, 50), 2: (100, 50)}
    assert store.drop([1, 2], 3) == (0, 0, [])
    # snapshot 2 deleted, but this server's view is older than epoch 3: the versions ending at 3 stay
    assert store.drop([1], 2) == (0, 0, [])
    assert store.drop([1], 3) == (1, 100, [])
    assert [p.epoch for p in store.versions(1, 0)] == [1]
    assert store.usage([1]) == {1: (150, 0)}
    assert store.drop([], 3) == (2, 150, [(2, 0)])  # chunk 2.0 has nothing left; 1.0 its current
    assert not store.has_versions() and store.read(1, 0, 0, 999) == b"3" * 200
    assert [f for f in files(store) if "@" in f] == []


def test_counts_per_snapshot_are_exclusive_or_shared(store):
    store.write(1, 0, 0, b"a" * 1000, 1, chunk_size=CS, epoch=1)
    store.write(1, 0, 0, b"b" * 1000, 2, chunk_size=CS, epoch=4, keep=3)  # (1, 4): read by 1 and 3
    store.write(1, 1, 0, b"c" * 300, 1, chunk_size=CS, epoch=3)
    store.write(1, 1, 0, b"d" * 300, 2, chunk_size=CS, epoch=4, keep=3)  # (3, 4): read by 3 only
    assert store.usage([1, 3]) == {1: (0, 1000), 3: (300, 1000)}
    assert store.usage([3]) == {3: (1300, 0)}
    assert store.usage([]) == {}


def test_keep_must_be_older_than_the_epoch(store):
    with pytest.raises(err.InvalidArgument):
        store.write(1, 0, 0, b"x", 1, chunk_size=CS, epoch=2, keep=2)
    with pytest.raises(err.InvalidArgument):
        store.remove(1, 0, epoch=1, keep=5)
    with pytest.raises(err.InvalidArgument):
        store.install_version(1, 0, 3, 3, b"", 1)
    assert store.stat(1, 0) is None


def test_a_full_target_keeps_nothing_half_made(tmp_path, monkeypatch):
    s = ChunkStore(str(tmp_path / "t"), 1, block_size=4096)
    try:
        s.write(1, 0, 0, b"m" * 50_000, 1, chunk_size=CS, epoch=1)
        monkeypatch.setattr(s, "_free", lambda: 10)
        with pytest.raises(err.NoSpace):
            s.write(1, 0, 0, b"n", 2, chunk_size=CS, epoch=2, keep=1)
        assert s.stat(1, 0)[:4] == (1, 0, 50_000, block_crcs(b"m" * 50_000, 4096)) and s.versions(1, 0) == []
        assert s.read(1, 0, 0, CS) == b"m" * 50_000
    finally:
        s.close()


# ------------------------------------------------------------------ format and crashes

def test_a_store_of_the_format_before_epochs_is_upgraded(tmp_path):
    path = str(tmp_path / "t")
    s = ChunkStore(path, 3, block_size=4096)
    s.write(1, 0, 0, b"old" * 3000, 4, chunk_size=CS, epoch=0)
    s.write(1, 1, 0, b"", 2, chunk_size=CS)
    # rewrite it as format 1 wrote it: no epoch, no format setting
    b = WriteBatch()
    for k, v in list(s._kv.scan_prefix(b"C")):
        version, committed, length, _ = store_mod._VAL.unpack_from(v)
        b.put(k, store_mod._VAL1.pack(version, committed, length) + bytes(v[store_mod._VAL.size:]))
    b.delete(store_mod._SETTING_FORMAT)
    s._kv.write(b)
    s.close()
    s = ChunkStore(path, 3, block_size=4096)
    try:
        assert s.stat(1, 0) == (4, 0, 9000, block_crcs(b"old" * 3000, 4096), 0)
        assert s.read(1, 0, 0, CS) == b"old" * 3000 and s.read(1, 0, 0, CS, at=1) == b"old" * 3000
        assert s.stat(1, 1) == (2, 0, 0, b"", 0)
        # an upgrade cut short by a crash: the values already upgraded are recognised
        b = WriteBatch()
        b.delete(store_mod._SETTING_FORMAT)
        s._kv.write(b)
    finally:
        s.close()
    s = ChunkStore(path, 3, block_size=4096)
    try:
        assert s.stat(1, 0) == (4, 0, 9000, block_crcs(b"old" * 3000, 4096), 0)
    finally:
        s.close()


class Crash(Exception):
    pass


def _crash_at(monkeypatch, s: ChunkStore, name: str, after: bool = False):
    """Make the store's next call of ``name`` (a method of it, or of os) crash before (or after) it runs."""
    if hasattr(s, name):
        orig, target = getattr(s, name), s
    else:
        orig, target = getattr(os, name), os

    def boom(*a, **kw):
        monkeypatch.setattr(target, name, orig)
        if after:
            orig(*a, **kw)
        raise Crash(name)
    monkeypatch.setattr(target, name, boom)


def test_crash_while_keeping_before_a_write(tmp_path, monkeypatch):
    path = str(tmp_path / "t")
    s = ChunkStore(path, 1, block_size=4096)
    s.write(1, 0, 0, b"v1" * 3000, 1, chunk_size=CS, epoch=1)
    # the copy renamed to its preserved name, no record yet
    _crash_at(monkeypatch, s, "_put_version")
    with pytest.raises(Crash):
        s.write(1, 0, 0, b"v2", 2, chunk_size=CS, epoch=2, keep=1)
    assert os.path.exists(s._vfile(1, 0, 1))
    s.close()
    s = ChunkStore(path, 1, block_size=4096)  # the file without a record is removed
    assert not os.path.exists(s._vfile(1, 0, 1)) and s.versions(1, 0) == []
    assert s.read(1, 0, 0, CS) == b"v1" * 3000
    # preserved, then the crash before the write: the retry does not copy again
    _crash_at(monkeypatch, s, "_new_crcs")
    with pytest.raises(Crash):
        s.write(1, 0, 0, b"v2", 2, chunk_size=CS, epoch=2, keep=1)
    ino = os.stat(s._vfile(1, 0, 1)).st_ino
    s.close()
    s = ChunkStore(path, 1, block_size=4096)
    try:
        assert s.read(1, 0, 0, CS) == b"v1" * 3000  # the write did not happen
        s.write(1, 0, 0, b"v2", 2, chunk_size=CS, epoch=3, keep=2)  # retried later, in a later epoch
        assert os.stat(s._vfile(1, 0, 1)).st_ino == ino
        [p] = s.versions(1, 0)
        assert (p.epoch, p.until) == (1, 3)  # it ended with the write that really replaced it
        assert s.read(1, 0, 0, CS, at=2) == b"v1" * 3000
        assert s.read(1, 0, 0, 4) == b"v2v1"
    finally:
        s.close()


def test_crash_in_a_remove_that_keeps(tmp_path, monkeypatch):
    path = str(tmp_path / "t")
    s = ChunkStore(path, 1, block_size=4096)
    s.write(1, 0, 0, b"r" * 6000, 1, chunk_size=CS, epoch=1)
    # linked to the preserved name, the batch not written
    _crash_at(monkeypatch, s._kv, "write")
    with pytest.raises(Crash):
        s.remove(1, 0, epoch=2, keep=1)
    s.close()
    s = ChunkStore(path, 1, block_size=4096)
    assert s.read(1, 0, 0, CS) == b"r" * 6000 and s.versions(1, 0) == []
    assert not os.path.exists(s._vfile(1, 0, 1))
    # the batch written, the chunk's name not unlinked: it shares the preserved file's inode
    _crash_at(monkeypatch, s, "unlink")
    with pytest.raises(Crash):
        s.remove(1, 0, epoch=2, keep=1)
    assert os.stat(s._file(1, 0)).st_ino == os.stat(s._vfile(1, 0, 1)).st_ino
    s.close()
    s = ChunkStore(path, 1, block_size=4096)
    try:
        assert s.stat(1, 0) is None and s.read(1, 0, 0, CS, at=1) == b"r" * 6000
        # a new chunk at that name never writes through the old link
        s.write(1, 0, 0, b"fresh", 1, chunk_size=CS, epoch=2)
        s.truncate(1, 0, 3, 2, epoch=2)
        assert s.read(1, 0, 0, CS) == b"fre"
        assert s.read(1, 0, 0, CS, at=1) == b"r" * 6000 and s.scrub(1, 0, preserved=1) == []
    finally:
        s.close()


def test_crash_in_a_drop_leaks_only_a_file(tmp_path, monkeypatch):
    path = str(tmp_path / "t")
    s = ChunkStore(path, 1, block_size=4096)
    s.write(1, 0, 0, b"d" * 100, 1, chunk_size=CS, epoch=1)
    s.write(1, 0, 0, b"e" * 100, 2, chunk_size=CS, epoch=2, keep=1)
    _crash_at(monkeypatch, s, "unlink")
    with pytest.raises(Crash):
        s.drop([], 2)
    assert s.versions(1, 0) == [] and os.path.exists(s._vfile(1, 0, 1))
    s.close()
    s = ChunkStore(path, 1, block_size=4096)
    try:
        assert not os.path.exists(s._vfile(1, 0, 1))
    finally:
        s.close()


# ------------------------------------------------------------------ random ops vs a reference

BS, RCS = 16, 256
op = st.one_of(
    st.tuples(st.just("w"), st.integers(0, 2), st.integers(0, RCS - 1), st.binary(min_size=0, max_size=70)),
    st.tuples(st.just("t"), st.integers(0, 2), st.integers(0, RCS)),
    st.tuples(st.just("rm"), st.integers(0, 2)),
    st.tuples(st.just("rmi"),),
    st.tuples(st.just("snap"),),
    st.tuples(st.just("del"), st.integers(0, 5)),
    st.tuples(st.just("drop"),),
    st.tuples(st.just("reopen"),),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=30))
def test_random_ops_every_snapshot_reads_what_it_was(ops):
    ref: dict[int, bytearray] = {}
    snaps: dict[int, dict[int, bytes]] = {}  # live snapshot -> the chunks as they were
    epoch = 1
    versions: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as d:
        s = ChunkStore(d, 1, block_size=BS)
        try:
            for o in ops:
                kind = o[0]
                keep = max(snaps) if snaps else 0
                if kind == "w":
                    _, idx, off, data = o
                    data = data[:RCS - off]
                    versions[idx] = versions.get(idx, 0) + 1
                    s.write(5, idx, off, data, versions[idx], chunk_size=RCS, epoch=epoch, keep=keep)
                    r = ref.setdefault(idx, bytearray())
                    if data:
                        if off > len(r):
                            r.extend(bytes(off - len(r)))
                        r[off:off + len(data)] = data
                elif kind == "t":
                    _, idx, length = o
                    versions[idx] = versions.get(idx, 0) + 1
                    s.truncate(5, idx, length, versions[idx], epoch=epoch, keep=keep)
                    r = ref.setdefault(idx, bytearray())
                    del r[length:]
                    r.extend(bytes(length - len(r)))
                elif kind == "rm":
                    s.remove(5, o[1], epoch=epoch, keep=keep)
                    ref.pop(o[1], None)
                    versions.pop(o[1], None)
                elif kind == "rmi":
                    s.remove_inode(5, epoch=epoch, keep=keep)
                    ref.clear()
                    versions.clear()
                elif kind == "snap":
                    snaps[epoch] = {k: bytes(v) for k, v in ref.items()}
                    epoch += 1
                elif kind == "del":
                    live = sorted(snaps)
                    if live:
                        del snaps[live[o[1] % len(live)]]
                elif kind == "drop":
                    s.drop(sorted(snaps), epoch)
                else:
                    s.close()
                    s = ChunkStore(d, 1, block_size=BS)
                for idx in range(3):
                    assert s.read(5, idx, 0, RCS) == bytes(ref.get(idx, b""))
                    for sn, image in snaps.items():
                        assert s.read(5, idx, 0, RCS, at=sn) == image.get(idx, b""), (sn, idx)
                        for p in s.versions(5, idx):
                            assert s.scrub(5, idx, preserved=p.epoch) == []
            s.drop(sorted(snaps), epoch)
            used = s.usage(sorted(snaps))
            need = sum(p.length for _, _, p in s.list_versions())
            assert sum(a for a, _ in used.values()) <= need
        finally:
            s.close()
