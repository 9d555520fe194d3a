"""The life of chunks on real data servers: freeing on unlink, the orphan
scan, scrub repair, ENOSPC and recovery from it.

Each cluster is a LocalCluster (1 mgmt, metadata shards, 3 data servers with
one target each: 3 chains of 3 targets); files go through the file I/O core
(FileHandle + MetaClient + DataClient), single chunks through DataClient.
Every wait polls a condition with a deadline; clusters stop in fixtures.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import re
import subprocess
import time
from typing import Self

import pytest

from dfs.client.connect import pair
from dfs.testing.caps import trust
from dfs.client.file import FileHandle
from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.ids import ROOT_INO, make_ino, shard_of
from dfs.common.layout import Layout
from dfs.common.ops import Op
from dfs.common.records import Caller
from dfs.wire.auth import INTERNAL_HEADER
from dfs.route.shards import GrpcTransport
from dfs.testing.cluster import LocalCluster
from dfs.testing.damage import chunk_file, flip_byte, target_path
from dfs.testing.wait import until_async

CS = 64 * 1024
LAYOUT = Layout(chunk_size=CS, stripe=3, replicas=3)
ROOT = Caller(0, 0, ())


# ---------------------------------------------------------------------- helpers
class Clients:
    def __init__(self, c: LocalCluster) -> None:
        self.c = c

    async def __aenter__(self) -> Self:
        self.t = await GrpcTransport(self.c.mgmt_addresses).connect()
        self.meta, self.data = pair(self.t, deadline=30.0, attempt_timeout=5.0)
        # internal ops (ORPHANS) need the cluster-internal token, as shard servers show each other
        self.internal = GrpcTransport(self.c.mgmt_addresses, deadline=10.0,
                                      metadata=((INTERNAL_HEADER, self.c.cfg.internal_token),))
        await self.internal.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.data.close()
        await self.meta.close()
        await self.internal.close()

    async def dir(self, name: str) -> int:
        d = await self.meta.mkdir(ROOT_INO, name)
        await self.meta.setlayout(d.ino, LAYOUT.pack())
        return d.ino

    async def write_file(self, parent: int, name: str, data: bytes) -> int:
        attr, _ = await self.meta.create(parent, name)
        assert Layout.unpack(attr.layout) == LAYOUT
        fh = FileHandle(self.meta, self.data, attr)
        try:
            for off in range(0, len(data), 100_000):  # unaligned pieces through write-behind
                await fh.pwrite(off, data[off:off + 100_000])
        finally:
            await fh.close()
        return attr.ino

    async def read_file(self, ino: int) -> bytes:
        attr = await self.meta.getattr(ino)
        fh = FileHandle(self.meta, self.data, attr, writable=False)
        try:
            return await fh.pread(0, attr.size + 1)
        finally:
            await fh.close()

    async def holders(self, ino: int, nchunks: int) -> dict[int, set[int]]:
        """target -> chunk indexes of ``ino`` it holds (STAT on every target)."""
        out: dict[int, set[int]] = {}
        for tid in self.data.map.targets:
            for k in range(nchunks):
                if await self.data.stat_target(tid, ino, k) is not None:
                    out.setdefault(tid, set()).add(k)
        return out

    async def assert_replicated(self, ino: int, data: bytes) -> None:
        """Every chunk of ``data`` is on every target of its chain, committed, with the right bytes."""
        for k in range(-(-len(data) // CS)):
            want = data[k * CS:(k + 1) * CS]
            ch = self.data.chain_for(ino, k, LAYOUT)
            assert len(ch.targets) == 3
            for tid in ch.targets:
                st = await self.data.stat_target(tid, ino, k)
                assert st is not None, (tid, k)
                v, committed, length, _ = st
                assert committed == v and length == len(want), (tid, k, st)
                assert (await self.data.read_target(tid, ino, k))[1] == want

    async def orphans(self, shard: int) -> list[int]:
        return [o[0] for o in await self.internal.call(shard, Op.ORPHANS, ROOT, [10000])]


def data_log(c: LocalCluster, tid: int) -> str:
    sid = next(d.id for d in c.cfg.data for t in d.targets if t.id == tid)
    p = next(p for p in c.data_procs() if p.replica == sid)
    with open(p.log, errors="replace") as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


BASE = {"mgmt_replicas": 1, "data_servers": 3}


# ---------------------------------------------------------------------- fixtures
@pytest.fixture
def plain_cluster(make_cluster):
    """Default orphan scan (every 10 min, 1 h grace): only the metadata side frees chunks here."""
    return make_cluster(shards=2, replicas=1, **BASE)


@pytest.fixture(scope="module")
def busy_cluster(module_clusters):
    """Scrub and orphan scan every ~0.5 s, no orphan grace."""
    return module_clusters.make(shards=1, replicas=1, scrub_interval=0.5, orphan_scan_interval=0.5,
                                orphan_grace=0.0, **BASE)


# ---------------------------------------------------------------------- tests
def test_unlink_frees_chunks_on_every_replica(plain_cluster):
    c = plain_cluster
    assert c.cfg.orphan_scan_interval == 600.0 and c.cfg.orphan_grace == 3600.0

    async def main():
        async with Clients(c) as cl:
            d = await cl.dir("a")
            data = random.Random(1).randbytes(5 * CS + 1000)  # 6 chunks over 3 chains
            keep_data = random.Random(2).randbytes(2 * CS)
            ino = await cl.write_file(d, "f", data)
            keep = await cl.write_file(d, "keep", keep_data)
            assert await cl.read_file(ino) == data
            await cl.assert_replicated(ino, data)
            held = await cl.holders(ino, 6)
            assert set(held) == set(cl.data.map.targets) and all(v == set(range(6)) for v in held.values())

            await cl.meta.unlink(d, "f")
            with pytest.raises(err.NotFound):
                await cl.meta.getattr(ino)

            async def freed():
                return not await cl.holders(ino, 6) and ino not in await cl.orphans(shard_of(ino))

            await until_async(freed, 30, "the shard leader's orphan task frees every chunk and drops the record")
            assert await cl.read_file(keep) == keep_data  # the other file is untouched
            await cl.assert_replicated(keep, keep_data)

    asyncio.run(main())


_SCAN = re.compile(r"orphan scan of target (\d+): pass \d+, (\d+) inodes, (\d+) live, (\d+) unknown, "
                   r"(\d+) young, (\d+) removed")


def test_orphan_scan_frees_unreferenced_chunks(busy_cluster):
    c = busy_cluster

    async def main():
        async with Clients(c) as cl:
            d = await cl.dir("b")
            live_data = random.Random(3).randbytes(4 * CS)
            live = await cl.write_file(d, "live", live_data)
            ghost = make_ino(0, 1 << 40)  # shard 0's id space, never allocated
            nowhere = make_ino(7, 5)  # a shard this cluster does not have: unknown, kept
            ghost_data = {}
            trust(cl.data, c.cfg)  # chunks of inodes no shard has: only a server could write them
            for k in range(3):
                ghost_data[k] = random.Random(10 + k).randbytes(CS - k)
                await cl.data.write(ghost, k, 0, ghost_data[k], LAYOUT)
                await cl.data.write(nowhere, k, 0, b"n" * 1000, LAYOUT)
            # Every target had the ghost's chunks (each write was acknowledged by its chain's
            # tail); with scans every 0.5 s and no grace, one may already be gone here.

            async def ghost_gone():
                return not await cl.holders(ghost, 3)

            await until_async(ghost_gone, 30, "every target's orphan scan removes the ghost inode's chunks")

            # a full pass after that on every target, which saw the inode of no shard and skipped it
            async def passes_seen():
                for tid in cl.data.map.targets:
                    if not any(int(m[1]) == tid and int(m[4]) >= 1 for m in _SCAN.finditer(data_log(c, tid))):
                        return False
                return True

            await until_async(passes_seen, 30, "an orphan scan pass with an unknown inode on every target")
            assert await cl.holders(nowhere, 3) == {t: {0, 1, 2} for t in cl.data.map.targets}
            assert await cl.read_file(live) == live_data
            await cl.assert_replicated(live, live_data)
            for tid in cl.data.map.targets:
                assert re.search(rf"orphan scan: inode {ghost:#x} does not exist: removed its \d+ chunks "
                                 rf"on target {tid}\b", data_log(c, tid))

    asyncio.run(main())


def test_scrubber_repairs_a_bad_copy(busy_cluster):
    c = busy_cluster

    async def main():
        async with Clients(c) as cl:
            d = await cl.dir("c")
            data = random.Random(4).randbytes(3 * CS)
            ino = await cl.write_file(d, "f", data)
            await cl.assert_replicated(ino, data)
            index = 1
            want = data[index * CS:(index + 1) * CS]
            ch = cl.data.chain_for(ino, index, LAYOUT)
            bad, good = ch.targets[1], ch.targets[0]
            path = chunk_file(c, bad, ino, index)
            flip_byte(path, 40_000)  # on disk, behind the server's back

            # no read goes through the data plane until the file on disk is whole again:
            # only the scrubber can have repaired it
            async def whole_on_disk():
                try:
                    return read_bytes(chunk_file(c, bad, ino, index)) == want
                except (FileNotFoundError, AssertionError):
                    return False

            await until_async(whole_on_disk, 30, "the scrubber repairs the bad copy from a good replica")
            assert (await cl.data.read_target(bad, ino, index))[1] == want
            assert (await cl.data.read_target(good, ino, index))[1] == want
            st_bad = await cl.data.stat_target(bad, ino, index)
            st_good = await cl.data.stat_target(good, ino, index)
            assert st_bad == st_good
            log = data_log(c, bad)
            assert re.search(rf"chunk {ino:016x}\.{index:08x} has bad blocks \[0\]: repairing", log)
            assert re.search(rf"repaired chunk {ino:x}\.{index} on target {bad} from target \d+", log)
            assert re.search(rf"scrub of target {bad}: pass \d+, \d+ chunks, [1-9]\d* bad, [1-9]\d* repaired", log)

    asyncio.run(main())


# ---------------------------------------------------------------------- ENOSPC
@pytest.fixture
def tiny_cluster(make_cluster):
    """Every target on its own 8 MiB tmpfs."""
    c = make_cluster(shards=1, replicas=1, start=False, **BASE)
    mounted: list[str] = []
    try:
        for d in c.cfg.data:
            for t in d.targets:
                os.makedirs(t.path, exist_ok=True)
                r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", t.path],
                                   check=False, capture_output=True, text=True)
                if r.returncode != 0:
                    pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
                mounted.append(t.path)
        c.start()
        yield c
    finally:
        c.stop()
        for p in mounted:
            subprocess.run(["umount", "-l", p], check=False, capture_output=True)


def test_enospc_through_the_cluster(tiny_cluster):
    c = tiny_cluster
    fsize = 8 * CS

    def free(tid: int) -> int:
        st = os.statvfs(target_path(c, tid))
        return st.f_bavail * st.f_frsize

    async def main():
        async with Clients(c) as cl:
            d = await cl.dir("d")
            files: dict[str, tuple[int, bytes]] = {}
            failure = None
            for i in range(40):  # 40 x 512 KiB on every target is far more than 8 MiB
                data = random.Random(100 + i).randbytes(fsize)
                try:
                    files[f"f{i}"] = (await cl.write_file(d, f"f{i}", data), data)
                except OSError as e:
                    failure = e
                    break
            assert failure is not None, "the targets never filled up"
            assert failure.errno == errno.ENOSPC, failure
            assert len(files) >= 3
            for ino, data in files.values():  # everything written completely reads back
                assert await cl.read_file(ino) == data
            trust(cl.data, c.cfg)  # a chunk of a new inode, straight to the data plane
            with pytest.raises(OSError) as e:  # still full
                await cl.data.write(make_ino(0, 1 << 41), 0, 0, bytes(CS), LAYOUT)
            assert e.value.errno == errno.ENOSPC

            before = {tid: free(tid) for tid in cl.data.map.targets}
            gone = [files.pop("f0"), files.pop("f1")]
            await cl.meta.unlink(d, "f0")
            await cl.meta.unlink(d, "f1")

            async def freed():
                for ino, _ in gone:
                    if await cl.holders(ino, 8):
                        return False
                return all(free(t) >= before[t] + fsize for t in before)

            await until_async(freed, 30, "the unlinked files' chunks are freed on every target")
            data = random.Random(999).randbytes(2 * CS + 7)
            ino = await cl.write_file(d, "after", data)
            assert await cl.read_file(ino) == data
            await cl.assert_replicated(ino, data)
            for ino, data in files.values():
                assert await cl.read_file(ino) == data

    asyncio.run(main())


# ---------------------------------------------------------------------- the scanner alone
def test_orphan_scanner_paging_grace_and_unknowns(tmp_path, monkeypatch):
    """OrphanScanner on one ChunkStore, without a cluster: pages of inodes, big inodes stepped over,
    the grace by mtime, unknown answers and failed checks left alone."""
    from dfs.data import orphans
    from dfs.data.store import ChunkStore

    monkeypatch.setattr(orphans, "_RESEEK", 3)
    store = ChunkStore(str(tmp_path / "t"), 1)
    try:
        for ino in range(1, 30):
            for k in range(ino % 9):  # 0..8 chunks each (some inodes have none)
                store.write(ino, k, 0, b"x" * 100, 1, chunk_size=CS)
        held = {i for i, _, _ in store.list_chunks()}
        asked: list[list[int]] = []

        async def exists(inos):
            asked.append(list(inos))
            return {i: None if i == 5 else i % 2 == 0 for i in inos}

        async def main():
            now = time.time()
            sc = orphans.OrphanScanner(store, exists, 100.0, page=4, clock=lambda: now)
            # every chunk is fresh: nothing goes
            st = await sc.run_once()
            assert sorted(i for page in asked for i in page) == sorted(held)
            assert all(len(p) <= 4 for p in asked)
            odd = {i for i in held if i % 2 and i != 5}
            assert (st.inodes, st.unknown, st.young, st.removed_inodes) == (len(held), 1, len(odd), 0)
            # an hour later: the odd ones go, the unknown and the live stay
            sc.clock = lambda: now + 3600
            st = await sc.run_once()
            assert st.removed_inodes == len(odd) and st.removed_chunks == sum(i % 9 for i in odd)
            assert {i for i, _, _ in store.list_chunks()} == held - odd

            async def broken(inos):
                raise err.Unavailable("no shard")

            sc.exists = broken
            st = await sc.run_once()
            assert st.removed_inodes == 0 and st.unknown == len(held - odd)
            assert {i for i, _, _ in store.list_chunks()} == held - odd

        asyncio.run(main())
    finally:
        store.close()


def test_layout_replicas_must_match_the_chain_table(make_cluster):
    """One chain table: a layout that asks for another replica count is refused (EINVAL), not silently ignored."""
    c = make_cluster(shards=1, replicas=1, chain_replicas=3, **BASE)
    async def go():
        meta = MetaClient(await GrpcTransport(c.mgmt_addresses).connect())
        try:
            d = await meta.mkdir(ROOT_INO, "d")
            await meta.setlayout(d.ino, Layout(chunk_size=1 << 20, stripe=2, replicas=3).pack())
            with pytest.raises(OSError) as ei:
                await meta.setlayout(d.ino, Layout(chunk_size=1 << 20, stripe=2, replicas=2).pack())
            assert ei.value.errno == errno.EINVAL
            assert Layout.unpack((await meta.getattr(d.ino)).layout).replicas == 3
        finally:
            await meta.close()

    asyncio.run(go())
