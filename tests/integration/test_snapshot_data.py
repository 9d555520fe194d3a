"""Snapshots on real data servers: epochs from mgmt's registry, holds and resumes sent as
the snapshot coordinator sends them, copy-on-write on every replica, kill -9, a wiped
target resynced, and the space a deleted snapshot frees, counted before.

One LocalCluster (1 mgmt, 1 metadata shard, 3 data servers of one target: 3 chains of
3 targets); chunk I/O through ``DataClient``; mgmt commands through ``Admin`` with the
internal token (what a metadata server that coordinates a snapshot shows). Every wait
polls with a deadline.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import time

import msgpack
import pytest

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.common import errors as err
from dfs.common.layout import Layout
from dfs.wire.auth import INTERNAL_HEADER
from dfs.wire import auth as wire_auth
from dfs.route.data import DataClient
from dfs.route.shards import GrpcTransport
from dfs.testing.cluster import LocalCluster
from dfs.testing.damage import target_path
from dfs.testing.metrics import scrape, total
from dfs.testing.wait import until_async

LAYOUT = Layout(chunk_size=1 << 20, stripe=3, replicas=3)


@pytest.fixture
def cluster(make_cluster):
    return make_cluster(shards=1, replicas=1, mgmt_replicas=1, data_servers=3, target_timeout=1.5)


async def mgmt(c: LocalCluster, *cmd) -> list:
    """One registry command on the mgmt leader, as the coordinator sends it."""
    md = ((INTERNAL_HEADER, c.cfg.internal_token),)
    end = time.monotonic() + 20
    while True:
        for m in c.cfg.mgmt:
            async with wire_auth.channel(m.address) as ch:
                rep = await pbg.MgmtServiceStub(ch).Admin(pb.AdminRequest(command=msgpack.packb(list(cmd))),
                                                          metadata=md, timeout=5.0)
            if rep.status == 0:
                return msgpack.unpackb(rep.result, raw=False)
            if rep.status not in (err.NOT_LEADER, err.UNAVAILABLE) or time.monotonic() > end:
                raise err.error_for(rep.status, rep.message)
        await asyncio.sleep(0.1)


async def take_snapshot(c: LocalCluster, dc: DataClient, name: str) -> int:
    """The coordinator's steps that concern mgmt and the data servers (the shards' are not
    in this test): begin, hold every data server, ready, resume every data server."""
    (s,) = await mgmt(c, "snap_begin", name, 1, "/", time.time_ns())
    await dc.snap_hold(s, 10.0)
    epoch, live = await mgmt(c, "snap_ready", s)
    await dc.snap_resume(s, epoch, live)
    return s


def preserved_files(c: LocalCluster, tid: int) -> list[str]:
    return glob.glob(os.path.join(target_path(c, tid), "chunks", "*", "*@*"))


async def answers(dc: DataClient, tid: int) -> bool:
    try:
        await dc.stat_target(tid, 1, 0)
        return True
    except (ConnectionError, TimeoutError, err.DfsError):
        return False


async def every_replica_reads(dc: DataClient, ino: int, index: int, at: int, want: bytes) -> bool:
    ch = dc.chain_for(ino, index, LAYOUT)
    for tid in ch.targets:
        try:
            _, got = await dc.read_target(tid, ino, index, at=at)
        except (ConnectionError, err.Retryable):  # a restarted server not listening yet, a write in flight
            return False
        if got != want:
            return False
    return len(ch.targets) == 3 and bytes(await dc.read(ino, index, 0, 1 << 20, LAYOUT, at=at)) == want


def test_snapshot_versions_on_real_data_servers(cluster):
    c = cluster

    async def main():
        tr = await GrpcTransport(c.mgmt_addresses, deadline=10.0).connect()
        dc = DataClient(tr.map, tr.refresh_map, deadline=30.0, attempt_timeout=5.0, auth=c.server_credentials)
        try:
            old = {(1001, k): os.urandom(300_000 + k) for k in range(3)}
            old[(1002, 0)] = b"removed later" * 1000
            old.update({(1003, k): bytes([k + 7]) * 70_000 for k in range(3)})
            for (ino, index), data in old.items():
                await dc.write(ino, index, 0, data, LAYOUT)
            await dc.write(1004, 0, 0, b"untouched", LAYOUT)

            s = await take_snapshot(c, dc, "first")
            m = await tr.refresh_map()
            assert m.data_epoch == s + 1 and m.live_snapshots == (s,) and m.snapshots[s].name == "first"

            # after the snapshot: overwrite, truncate, remove, remove a whole inode
            await dc.write(1001, 0, 1000, b"NEW" * 100, LAYOUT)
            await dc.truncate(1001, 1, 10, LAYOUT)
            await dc.write(1001, 2, 0, b"whole" * 60_000, LAYOUT)
            await dc.remove(1002, 0, LAYOUT)
            await dc.remove_inode(1003, LAYOUT)
            await dc.write(1005, 0, 0, b"born after", LAYOUT)
            now = dict(old)
            now[(1001, 0)] = old[(1001, 0)][:1000] + b"NEW" * 100 + old[(1001, 0)][1300:]
            now[(1001, 1)] = old[(1001, 1)][:10]
            now[(1001, 2)] = b"whole" * 60_000 + old[(1001, 2)][300_000:]
            for k in [(1002, 0), (1003, 0), (1003, 1), (1003, 2)]:
                now[k] = b""

            async def all_consistent() -> bool:
                for (ino, index), data in old.items():
                    if not await every_replica_reads(dc, ino, index, s, data):
                        return False
                    if bytes(await dc.read(ino, index, 0, 1 << 20, LAYOUT)) != now[(ino, index)]:
                        return False
                return (await every_replica_reads(dc, 1004, 0, s, b"untouched")
                        and await every_replica_reads(dc, 1005, 0, s, b""))

            assert await all_consistent()
            first_write = await dc.write(1001, 0, 0, b"x", LAYOUT)  # same epoch: in place, nothing more kept
            now[(1001, 0)] = b"x" + now[(1001, 0)][1:]
            assert first_write >= 3
            for t in c.cfg.data:
                assert len(preserved_files(c, t.targets[0].id)) == 7  # 1001.0-2, 1002.0, 1003.0-2

            # kill -9 and restart a data server: its versions are still there
            victim = c.data_procs()[0]
            c.kill(victim)
            c.spawn(victim)
            await until_async(lambda: answers(dc, c.cfg.data[0].targets[0].id), 60, "the restarted server answering")

            async def healthy() -> bool:
                dc.map = await tr.refresh_map()
                return all(len(ch.targets) == 3 and not ch.syncing for ch in dc.map.chains) and all(
                    t.state == "serving" for t in dc.map.targets.values())
            await until_async(healthy, 90, "every target serving again")
            await until_async(all_consistent, 60, "every replica reading the snapshot after kill -9")

            # a target wiped while its server was down comes back by resync, versions included
            victim = c.data_procs()[1]
            vt = c.cfg.data[1].targets[0].id
            c.kill(victim)

            async def out() -> bool:
                dc.map = await tr.refresh_map()
                return all(vt not in ch.targets for ch in dc.map.chains)
            await until_async(out, 15, "the dead target out of its chains")
            shutil.rmtree(target_path(c, vt))
            c.spawn(victim)
            await until_async(lambda: answers(dc, vt), 60, "the restarted server answering")
            await until_async(healthy, 90, "the wiped target resynced")
            assert len(preserved_files(c, vt)) == 7
            await until_async(all_consistent, 60, "every replica reading the snapshot after the resync")

            # what the snapshot keeps is counted: in the map (from heartbeats) and in the metrics
            kept = sum(len(old[k]) for k in old)  # on each of 3 replicas, read by this snapshot only

            async def counted() -> bool:
                m = await tr.refresh_map()
                return (m.snapshots[s].exclusive, m.snapshots[s].shared) == (3 * kept, 0)
            await until_async(counted, 30, "the snapshot's bytes in the map")
            scrapes = [scrape(p) for p in c.data_procs()]
            assert total(scrapes, "dfs_data_snapshot_bytes", snapshot=str(s), kind="exclusive") == 3 * kept
            assert total(scrapes, "dfs_data_preserved_versions") == 21

            # deleting it frees the space: every data server drops its versions
            await mgmt(c, "snap_delete", s)

            async def freed() -> bool:
                return not any(preserved_files(c, t.targets[0].id) for t in c.cfg.data)
            await until_async(freed, 30, "the versions dropped on every target")
            with pytest.raises(err.Stale):
                await dc.read(1001, 0, 0, 100, LAYOUT, at=s)
            await mgmt(c, "snap_forget", s)
            m = await tr.refresh_map()
            assert s not in m.snapshots and m.data_epoch == s + 1
            for (ino, index), data in now.items():  # the live data never changed
                assert bytes(await dc.read(ino, index, 0, 1 << 20, LAYOUT)) == data

            # a later snapshot works the same
            s2 = await take_snapshot(c, dc, "second")
            assert s2 == s + 1
            await dc.write(1004, 0, 0, b"UNTOUCHED", LAYOUT)
            await until_async(lambda: every_replica_reads(dc, 1004, 0, s2, b"untouched"), 10, "the second snapshot")
        finally:
            await dc.close()
            await tr.close()

    asyncio.run(main())


def test_a_hold_holds_client_writes_until_the_resume(cluster):
    c = cluster

    async def main():
        tr = await GrpcTransport(c.mgmt_addresses, deadline=10.0).connect()
        dc = DataClient(tr.map, tr.refresh_map, deadline=30.0, attempt_timeout=10.0, auth=c.server_credentials)
        try:
            await dc.write(2001, 0, 0, b"before", LAYOUT)
            (s,) = await mgmt(c, "snap_begin", "held", 1, "/", time.time_ns())
            await dc.snap_hold(s, 20.0)
            w = asyncio.ensure_future(dc.write(2001, 0, 0, b"during", LAYOUT))

            async def waiting() -> bool:
                ms = [scrape(p) for p in c.data_procs()]
                return total(ms, "dfs_data_held") == 3 and total(ms, "dfs_data_held_mutations") == 1
            await until_async(waiting, 10, "the write waiting at its head")
            assert not w.done()
            epoch, live = await mgmt(c, "snap_ready", s)
            await dc.snap_resume(s, epoch, live)
            await w
            assert await every_replica_reads(dc, 2001, 0, s, b"before")
            assert bytes(await dc.read(2001, 0, 0, 100, LAYOUT)) == b"during"

            # a hold whose coordinator never comes back: the lease runs out, the data servers
            # ask mgmt, which aborts the snapshot, and writes go on at the old epoch
            (s2,) = await mgmt(c, "snap_begin", "lost", 1, "/", time.time_ns())
            await dc.snap_hold(s2, 1.0)
            await dc.write(2001, 0, 0, b"after the lease", LAYOUT)
            m = await tr.refresh_map()
            assert s2 not in m.snapshots and m.data_epoch == s + 1
        finally:
            await dc.close()
            await tr.close()

    asyncio.run(main())
