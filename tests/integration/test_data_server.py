"""Data servers as real processes: chain writes, replica reads, bad blocks, kill -9 and resync.

Each test runs its own LocalCluster (1 mgmt, 1 metadata shard, 3 data servers
with one target each: 3 chains of 3 targets) and talks to the data plane with
``DataClient``. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import errno as E
import os
import random
import signal

import pytest

from dfs.common import errors as err
from dfs.common.layout import Layout
from dfs.route.data import DataClient
from dfs.route.shards import GrpcTransport
from dfs.testing.cluster import LocalCluster
from dfs.testing.damage import chunk_file, flip_byte
from dfs.testing.wait import until_async
from dfs.testing.caps import trust
from dfs.wire import dataplane as dp

LAYOUT = Layout(chunk_size=1 << 20, stripe=3, replicas=3)


@pytest.fixture
def cluster(make_cluster):
    return make_cluster(shards=1, replicas=1, mgmt_replicas=1, data_servers=3, target_timeout=1.5)


async def _client(c: LocalCluster) -> tuple[GrpcTransport, DataClient]:
    tr = await GrpcTransport(c.mgmt_addresses, deadline=10.0).connect()
    dc = DataClient(tr.map, tr.refresh_map, deadline=30.0, attempt_timeout=5.0)
    trust(dc, c.cfg)  # chunks of inodes no metadata service knows
    return tr, dc


async def _replicas_agree(dc: DataClient, ino: int, index: int, want: bytes) -> bool:
    """Every serving target of the chunk's chain has it: same version, committed, CRCs and bytes."""
    ch = dc.chain_for(ino, index, LAYOUT)
    metas = set()
    for tid in ch.targets:
        st = await dc.stat_target(tid, ino, index)
        if st is None:
            return False
        v, committed, n, crcs = st
        if committed != v:
            return False
        ver, data = await dc.read_target(tid, ino, index)
        if data != want or ver != v:
            return False
        metas.add((v, n, bytes(crcs)))
    return len(metas) == 1


def test_chain_write_read_round_trip(cluster):
    async def main():
        tr, dc = await _client(cluster)
        try:
            assert len(dc.map.chains) == 3 and all(len(ch.targets) == 3 for ch in dc.map.chains)
            rnd = random.Random(1)
            want = {}
            for ino in (11, 12, 13):
                for index in range(3):  # stripe 3 over 3 chains: every chain gets chunks
                    data = bytearray(rnd.randbytes(300_000))
                    await dc.write(ino, index, 0, data, LAYOUT)
                    patch = rnd.randbytes(70_000)  # an unaligned overwrite that also extends the chunk
                    await dc.write(ino, index, 250_000, patch, LAYOUT)
                    data[250_000:] = patch
                    want[(ino, index)] = bytes(data)
            assert {dc.chain_for(i, k, LAYOUT).id for i, k in want} == {0, 1, 2}
            for (ino, index), data in want.items():
                assert await dc.read(ino, index, 0, 1 << 20, LAYOUT) == data
                assert await dc.read(ino, index, 1000, 5000, LAYOUT) == data[1000:6000]
                assert await dc.read(ino, index, 400_000, 10, LAYOUT) == b""  # past the end
                assert await _replicas_agree(dc, ino, index, data)
                ch = dc.chain_for(ino, index, LAYOUT)
                assert {(await dc.stat_target(t, ino, index))[0] for t in ch.targets} == {2}
            assert await dc.read(99, 0, 0, 100, LAYOUT) == b""  # no such chunk
            # truncate and remove go down the chain too
            await dc.truncate(11, 0, 1000, LAYOUT)
            assert await _replicas_agree(dc, 11, 0, want[(11, 0)][:1000])
            await dc.remove(11, 1, LAYOUT)
            for t in dc.chain_for(11, 1, LAYOUT).targets:
                assert await dc.stat_target(t, 11, 1) is None
            assert await dc.remove_inode(12, LAYOUT) == 3  # the first head held all three
            for k in range(3):
                assert await dc.read(12, k, 0, 100, LAYOUT) == b""
                for t in dc.map.targets:
                    assert await dc.stat_target(t, 12, k) is None
            assert await dc.read(13, 2, 0, 1 << 20, LAYOUT) == want[(13, 2)]
            with pytest.raises(err.InvalidArgument):
                await dc.write(11, 0, (1 << 20) - 10, b"x" * 11, LAYOUT)
        finally:
            await dc.close()
            await tr.close()

    asyncio.run(main())


def test_bad_block_on_one_replica(cluster):
    async def main():
        tr, dc = await _client(cluster)
        try:
            data = random.Random(2).randbytes(256 * 1024)
            ino, index = 21, 0
            await dc.write(ino, index, 0, data, LAYOUT)
            ch = dc.chain_for(ino, index, LAYOUT)
            bad = ch.targets[1]
            flip_byte(chunk_file(cluster, bad, ino, index), 70_000)  # in block 1
            with pytest.raises(err.ChecksumError):
                await dc.read_target(bad, ino, index)
            for _ in range(20):  # random replicas first: some land on the bad one
                assert await dc.read(ino, index, 0, 1 << 20, LAYOUT) == data
                assert await dc.read(ino, index, 65_000, 10_000, LAYOUT) == data[65_000:75_000]

            async def repaired():
                try:
                    return (await dc.read_target(bad, ino, index))[1] == data
                except err.ChecksumError:
                    return False

            await until_async(repaired, 10, "repair of the bad replica from a peer")
            assert await _replicas_agree(dc, ino, index, data)
        finally:
            await dc.close()
            await tr.close()

    asyncio.run(main())


def test_kill_data_server_during_writes_then_resync(cluster):
    c = cluster
    victim = c.data_procs()[1]
    vt = c.cfg.data[1].targets[0].id

    async def main():
        tr, dc = await _client(c)
        try:
            model: dict[tuple[int, int], bytearray] = {}
            acked = 0
            stop = asyncio.Event()

            async def writer(w: int):
                nonlocal acked
                r = random.Random(w)
                chunks = [(100 + w, k) for k in range(3)]
                while not stop.is_set():
                    ino, index = r.choice(chunks)
                    cur = model.setdefault((ino, index), bytearray())
                    off = r.randrange(0, len(cur) + 1) if cur else 0
                    off = min(off, LAYOUT.chunk_size - 1)
                    n = min(r.randrange(1, 200_000), LAYOUT.chunk_size - off)
                    data = r.randbytes(n)
                    await dc.write(ino, index, off, data, LAYOUT)  # retries until acknowledged (or raises)
                    if off > len(cur):
                        cur.extend(bytes(off - len(cur)))
                    cur[off:off + n] = data
                    acked += 1

            tasks = [asyncio.get_running_loop().create_task(writer(w)) for w in range(4)]
            await until_async(lambda: acked >= 40, 30, "writes before the kill")
            c.kill(victim)  # kill -9 in the middle of the stream
            killed_at = acked

            async def dropped():
                m = await tr.refresh_map()
                return all(vt not in ch.targets for ch in m.chains)

            await until_async(dropped, 15, "mgmt takes the dead target out of its chains")
            await until_async(lambda: acked >= killed_at + 60, 60, "writes with the target down")
            stop.set()
            await asyncio.gather(*tasks)
            dc.map = await tr.refresh_map()

            # every acknowledged write reads back with the server down
            for (ino, index), want in model.items():
                assert await dc.read(ino, index, 0, 1 << 20, LAYOUT) == bytes(want)
                assert await _replicas_agree(dc, ino, index, bytes(want))

            # restart: it comes back syncing, resyncs from the tails and becomes a full member again
            c.spawn(victim)
            more = [asyncio.get_running_loop().create_task(writer(w)) for w in range(2)]  # writes during resync
            stop.clear()

            async def back():
                m = await tr.refresh_map()
                return m.targets[vt].state == "serving" and all(len(ch.targets) == 3 for ch in m.chains)

            await until_async(back, 30, "the restarted target serving in all its chains again")
            stop.set()
            await asyncio.gather(*more)
            dc.map = await tr.refresh_map()
            for (ino, index), want in model.items():
                assert await dc.read(ino, index, 0, 1 << 20, LAYOUT) == bytes(want)
                assert await _replicas_agree(dc, ino, index, bytes(want)), (ino, index)
                _, data = await dc.read_target(vt, ino, index)
                assert data == bytes(want)
        finally:
            await dc.close()
            await tr.close()

    asyncio.run(main())


def test_chain_reads_need_word_from_mgmt(cluster):
    """With mgmt silent (frozen), data servers stop answering chain reads once their
    membership lease runs out (dfs/data/lease.py: mgmt could be taking them out of their
    chains by then), still answer reads of a given target (repair, verification), and
    serve again once mgmt answers their heartbeats. mgmt itself, thawed, does not take
    them out for the silence it did not witness."""
    c = cluster
    mgmt = c.mgmt_procs()[0]
    frozen = False

    def freeze(on: bool) -> None:
        nonlocal frozen
        os.kill(mgmt.pid, signal.SIGSTOP if on else signal.SIGCONT)
        frozen = on

    async def main():
        tr, dc = await _client(c)
        try:
            data = random.Random(5).randbytes(100_000)
            await dc.write(21, 0, 0, data, LAYOUT)
            ch = dc.chain_for(21, 0, LAYOUT)

            async def chain_read(tid: int) -> int:
                h = dp.Header(dp.READ, ino=21, index=0, offset=0, arg=len(data), chain_id=ch.id,
                              chain_version=ch.version, target=tid)
                rh, rp = await dc.call(dc.map.targets[tid].address, h, b"", 5.0)
                assert rh.status in (0, E.EAGAIN), (rh, bytes(rp))
                assert rh.status or bytes(rp) == data
                return rh.status

            for tid in ch.targets:  # each server's lease from an answered heartbeat
                await until_async(lambda: _is(chain_read(tid), 0), 30, f"target {tid} serves chain reads")
            freeze(True)
            try:
                for tid in ch.targets:
                    await until_async(lambda: _is(chain_read(tid), E.EAGAIN), 30,
                                      f"target {tid} refuses chain reads without word from mgmt")
                    _, got = await dc.read_target(tid, 21, 0)
                    assert got == data
            finally:
                freeze(False)
            for tid in ch.targets:
                await until_async(lambda: _is(chain_read(tid), 0), 30, f"target {tid} serves chain reads again")
            assert await dc.read(21, 0, 0, len(data), LAYOUT) == data
            m = await tr.refresh_map()
            assert m.chains[ch.id].version == ch.version, "mgmt took targets out for its own pause"
        finally:
            if frozen:
                freeze(False)
            await dc.close()
            await tr.close()

    asyncio.run(main())


async def _is(aw, want) -> bool:
    return await aw == want
