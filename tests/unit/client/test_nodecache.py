"""The node-local data cache (dfs/client/nodecache.py): entries verified on the way out,
bounded with LRU eviction, shared by processes, rebuilt when not the cluster's."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import threading

import pytest

from dfs.client.nodecache import BLOCK, CacheKey, CachedChunks, NodeCache, parse_size
from dfs.common import errors as err
from dfs.common.layout import Layout

LAYOUT = Layout(chunk_size=1 << 20)


def key(i: int, snap: int = 5) -> CacheKey:
    return CacheKey(snap, 1234, 100 + i, 0)


def test_put_get_ranges(tmp_path):
    c = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
    data = os.urandom(3 * BLOCK + 17)
    c.put(key(0), data)
    assert c.get(key(0)) == data
    assert c.get(key(0), BLOCK - 5, 10) == data[BLOCK - 5:BLOCK + 5]
    assert c.get(key(0), 3 * BLOCK, 1 << 20) == data[3 * BLOCK:]
    assert c.get(key(0), len(data) + 1, 10) == b""
    c.put(key(1), b"")  # an empty chunk at the snapshot is an answer too
    assert c.get(key(1)) == b""
    assert c.get(key(2)) is None
    assert (c.stats.hits, c.stats.misses) == (5, 1)


@pytest.mark.parametrize("where", ["header", "crcs", "data", "truncated"])
def test_corrupt_entry_is_dropped_never_served(tmp_path, where):
    c = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
    data = os.urandom(2 * BLOCK)
    c.put(key(0), data)
    p = c.path(key(0))
    raw = bytearray(open(p, "rb").read())
    if where == "truncated":
        raw = raw[:-1]
    else:
        at = {"header": 5, "crcs": 17, "data": len(raw) - BLOCK // 2}[where]
        raw[at] ^= 0xFF
    open(p, "wb").write(raw)
    if where == "data":  # a range of the good blocks only is served: each block is checked as it is read
        assert c.get(key(0), 0, 10) == data[:10]
    assert c.get(key(0), BLOCK, 10) is None
    assert not os.path.exists(p) and c.stats.corrupt == 1
    c.put(key(0), data)  # fetched again
    assert c.get(key(0)) == data


def test_lru_eviction_keeps_recently_used(tmp_path):
    c = NodeCache(str(tmp_path), "c1@a:1", 10 * (BLOCK + 64))
    for i in range(8):
        c.put(key(i), bytes([i]) * BLOCK)
        os.utime(c.path(key(i)), ns=(i * 10**9, i * 10**9))  # a clear order, whatever the clock's grain
    assert c.get(key(0), 0, 1) == b"\0"  # used now: the newest
    for i in range(8, 12):
        c.put(key(i), bytes([i]) * BLOCK)
    n, used = c.usage()
    assert used <= c.capacity and c.stats.evictions >= 2
    assert c.contains(key(0)) and c.contains(key(11))
    assert not c.contains(key(1)) and not c.contains(key(2))


def test_identity_mismatch_and_corrupt_identity_rebuild(tmp_path):
    c = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
    c.put(key(0), b"x" * 100)
    # the same directory named for another cluster (copied, or a hash collision): rebuilt
    ident = os.path.join(c.dir, "IDENTITY")
    d = json.load(open(ident))
    d["cluster"] = "other@b:2"
    open(ident, "w").write(json.dumps(d))
    c2 = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
    assert c2.get(key(0)) is None and c2.usage() == (0, 0)
    c2.put(key(0), b"y" * 100)
    open(ident, "wb").write(b"\0garbage")
    c3 = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
    assert c3.get(key(0)) is None
    c3.put(key(0), b"z")
    os.unlink(ident)  # entries but no identity
    assert NodeCache(str(tmp_path), "c1@a:1", 1 << 30).get(key(0)) is None
    # another format version
    d = json.load(open(ident))
    d["format"] = 99
    open(ident, "w").write(json.dumps(d))
    NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
    assert json.load(open(ident))["format"] == 1


def test_clusters_get_their_own_directories(tmp_path):
    a = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
    b = NodeCache(str(tmp_path), "c2@a:1", 1 << 30)
    a.put(key(0), b"from a")
    assert b.get(key(0)) is None and a.get(key(0)) == b"from a"


def test_parse_size():
    assert parse_size("4096") == 4096
    assert parse_size("512M") == 512 << 20
    assert parse_size("50GiB") == 50 << 30
    assert parse_size("1.5T") == int(1.5 * (1 << 40))
    for bad in ("", "x", "-1", "5Q"):
        with pytest.raises(err.InvalidArgument):
            parse_size(bad)


def _worker(root: str, start: int, rounds: int, q) -> None:
    c = NodeCache(root, "c1@a:1", 24 * (BLOCK + 64))
    bad = 0
    for r in range(rounds):
        for i in range(16):
            k = key((start + i + r) % 40)
            want = bytes([k.ino % 251]) * BLOCK
            got = c.get(k)
            if got is None:
                c.put(k, want)
            elif got != want:
                bad += 1
    q.put((bad, c.stats.corrupt))


def test_concurrent_processes_share_and_stay_bounded(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), 10 * i, 20, q)) for i in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert all(r == (0, 0) for r in results), results  # nothing wrong or torn was ever read
    c = NodeCache(str(tmp_path), "c1@a:1", 24 * (BLOCK + 64))
    # each process may pass the bound by what it writes between two scans (capacity / 32, at least 1 MiB)
    assert c.usage()[1] <= c.capacity + 4 * (1 << 20)
    assert not os.listdir(c.tmp)


class _FakeData:
    def __init__(self):
        self.reads = 0
        self.chunks = {(7, 0): os.urandom(300_000)}
        self.map = type("M", (), {"snapshots": {}})()

    async def read(self, ino, index, offset, length, layout, at=None):
        self.reads += 1
        c = self.chunks.get((ino, index), b"")
        return memoryview(c)[offset:offset + length]


def test_cached_chunks_reads_at_a_snapshot_once(tmp_path):
    async def go():
        inner = _FakeData()
        cc = CachedChunks(inner, NodeCache(str(tmp_path), "c1@a:1", 1 << 30), created=lambda at: 99)
        want = inner.chunks[(7, 0)]
        got = await asyncio.gather(*(cc.read(7, 0, 1000 * i, 5000, LAYOUT, at=3) for i in range(10)))
        assert [bytes(g) for g in got] == [want[1000 * i:1000 * i + 5000] for i in range(10)]
        assert inner.reads == 1  # concurrent misses share one fetch
        buf = bytearray(10)
        assert await cc.read_into(7, 0, 299_995, memoryview(buf), LAYOUT, at=3) == 5
        assert bytes(buf[:5]) == want[-5:]
        assert await cc.warm(7, 0, LAYOUT, 3) == 0  # already there
        assert inner.reads == 1
        await cc.read(7, 0, 0, 10, LAYOUT)  # a live read is never cached
        await cc.read(7, 0, 0, 10, LAYOUT)
        assert inner.reads == 3
        assert await cc.forget(7, 0, 3)
        assert await cc.warm(7, 0, LAYOUT, 3) == len(want)
        assert inner.reads == 4

    asyncio.run(go())


def test_store_failure_serves_the_read_but_fails_a_warmup(tmp_path):
    async def go():
        inner = _FakeData()
        nc = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)

        def full(key, data):
            nc.stats.store_errors += 1
            raise OSError(28, "No space left on device")

        nc.put = full
        cc = CachedChunks(inner, nc, created=lambda at: 99)
        assert bytes(await cc.read(7, 0, 0, 4, LAYOUT, at=3)) == inner.chunks[(7, 0)][:4]
        with pytest.raises(err.DfsError) as ei:
            await cc.warm(7, 0, LAYOUT, 3)
        assert ei.value.errno == 28

    asyncio.run(go())


def test_capacity_recorded_for_processes_that_give_none(tmp_path):
    with pytest.raises(err.InvalidArgument):
        NodeCache(str(tmp_path), "c1@a:1", None)  # no cache yet
    NodeCache(str(tmp_path), "c1@a:1", 5 << 20)
    assert NodeCache(str(tmp_path), "c1@a:1", None).capacity == 5 << 20
    NodeCache(str(tmp_path), "c1@a:1", 7 << 20)  # the last size given
    assert NodeCache(str(tmp_path), "c1@a:1", None).capacity == 7 << 20


@pytest.mark.parametrize("size", [0, 1000, BLOCK, 3 * BLOCK + 17])
def test_get_into_every_range(tmp_path, size):
    c = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
    data = os.urandom(size)
    c.put(key(0), data)
    for off in sorted({0, BLOCK, 2 * BLOCK, 5, BLOCK + 3, max(0, size - 1), size}):
        for n in (1, 100, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + 5, 1 << 20):
            buf = bytearray(n)
            got = c.get_into(key(0), off, memoryview(buf))
            want = data[off:off + n]
            assert got == len(want) and bytes(buf[:got]) == want, (off, n)


def test_get_into_never_serves_a_bad_block(tmp_path):
    c = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
    data = os.urandom(3 * BLOCK + 17)
    c.put(key(0), data)
    raw = bytearray(open(c.path(key(0)), "rb").read())
    raw[-3] ^= 1  # in the last, short block
    open(c.path(key(0)), "wb").write(raw)
    assert c.get_into(key(0), 0, memoryview(bytearray(2 * BLOCK))) == 2 * BLOCK  # good blocks only
    assert c.get_into(key(0), 2 * BLOCK, memoryview(bytearray(BLOCK + 1))) is None
    assert not c.contains(key(0)) and c.stats.corrupt == 1


def test_a_gone_snapshot_is_pruned_and_the_others_stay(tmp_path):
    from dfs.common.clustermap import ClusterMap, SnapshotInfo

    nc = NodeCache(str(tmp_path), "c@m", 1 << 30)
    for snap, created in ((1, 100), (2, 200), (3, 300), (9, 900)):
        nc.put(CacheKey(snap, created, 5, 0), b"x" * 1000)
    # snapshot 2 is live; 1 was deleted; 3 is live under another creation time (the cluster
    # was rebuilt: this 3 is another snapshot); 9 is newer than the data epoch (not known yet)
    cmap = ClusterMap(1, [], [], data_epoch=5, snapshots={
        2: SnapshotInfo(2, "a", 1, "/", "ready", created=200),
        3: SnapshotInfo(3, "b", 1, "/", "creating", created=301)})
    assert nc.prune(cmap.snapshot_gone) == 2
    assert [nc.contains(CacheKey(s, c, 5, 0)) for s, c in ((1, 100), (2, 200), (3, 300), (9, 900))] == \
        [False, True, False, True]
    assert nc.usage()[0] == 2 and nc.used == nc.usage()[1]
    assert nc.prune(cmap.snapshot_gone) == 0


def test_a_miss_seen_before_a_fetch_ended_looks_again_instead_of_fetching_twice(tmp_path):
    """Reader B looks in the cache and misses; reader A's fetch of the same chunk then
    ends (stored, and out of the in-flight table) before B asks for one. B must find the
    stored chunk, not fetch it again (the interleaving is forced: B's lookup is held)."""
    async def go():
        inner = _FakeData()
        nc = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
        cc = CachedChunks(inner, nc, created=lambda at: 99)
        real_get = nc.get
        held, release = threading.Event(), threading.Event()

        def get(key, offset=0, length=None):
            if not held.is_set():  # B's lookup: a miss, returned only after A is done
                held.set()
                release.wait(10)
                return None
            return real_get(key, offset, length)

        nc.get = get
        b = asyncio.ensure_future(cc.read(7, 0, 10, 20, LAYOUT, at=3))
        await asyncio.to_thread(held.wait, 10)
        a = await cc.read(7, 0, 0, 20, LAYOUT, at=3)  # misses, fetches, stores
        assert inner.reads == 1
        release.set()
        want = inner.chunks[(7, 0)]
        assert bytes(await b) == want[10:30] and bytes(a) == want[:20]
        assert inner.reads == 1

    asyncio.run(go())


def test_a_warmup_whose_miss_raced_a_read_counts_nothing_fetched(tmp_path):
    """As above for ``warm``: its look in the cache misses, a reader's fetch of the chunk
    ends, then the warm-up finds the chunk stored: 0 bytes fetched, one fetch in all."""
    async def main():
        inner = _FakeData()
        nc = NodeCache(str(tmp_path), "c1@a:1", 1 << 30)
        cc = CachedChunks(inner, nc, created=lambda at: 99)
        held, release = threading.Event(), threading.Event()

        def contains(key):
            held.set()
            release.wait(10)
            return False  # what it saw before the reader's fetch ended

        nc.contains = contains
        w = asyncio.ensure_future(cc.warm(7, 0, LAYOUT, 3))
        await asyncio.to_thread(held.wait, 10)
        await cc.read(7, 0, 0, 20, LAYOUT, at=3)
        release.set()
        assert await w == 0
        assert inner.reads == 1

    asyncio.run(main())
