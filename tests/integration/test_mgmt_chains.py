"""Failure detection and chain membership in a real 3-replica mgmt group.

The cluster file names three data servers with one target each, but no data
server runs: the test sends their heartbeats itself (to the mgmt leader,
following NOT_LEADER hints), and decides which targets heartbeat and which
report their resync finished. Synchronisation is by polling the cluster map
with deadlines only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.common import errors as err
from dfs.common.clustermap import ClusterMap
from dfs.testing.cluster import LocalCluster
from dfs.testing.wait import until_async
from dfs.wire.auth import INTERNAL_HEADER

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TIMEOUT = 1.0  # target_timeout of the cluster


class FakeDataServers:
    """Heartbeats for the targets in ``alive``; a syncing target in ``auto_sync`` reports
    every chain it is syncing into as synced (as a data server does after its resync)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.cfg = cluster.cfg
        self.alive = {t.id for d in self.cfg.data for t in d.targets}
        self.auto_sync = set(self.alive)
        self.leader = self.cfg.mgmt[0].address
        self.epochs: list[int] = []
        self.map: ClusterMap | None = None

    async def get_map(self) -> ClusterMap:
        for m in [self.leader] + [x.address for x in self.cfg.mgmt]:
            async with self.cluster.credentials.channel(m) as ch:
                try:
                    rep = await pbg.MgmtServiceStub(ch).GetClusterMap(pb.GetClusterMapRequest(), timeout=2.0)
                except grpc.aio.AioRpcError:
                    continue
                if rep.status == 0:
                    return ClusterMap.from_pb(rep.map)
        raise err.Unavailable("no mgmt replica answers")

    async def beat(self, d) -> None:
        m = self.map
        targets = []
        for t in d.targets:
            if t.id not in self.alive:
                continue
            synced = []
            if m is not None and t.id in self.auto_sync:
                synced = [pb.SyncedChain(chain=c.id, version=c.version) for c in m.chains if t.id in c.syncing]
            targets.append(pb.TargetState(id=t.id, state="serving", total=1 << 30, free=1 << 29, synced=synced))
        if not targets:
            return
        req = pb.HeartbeatRequest(role="data", server=d.id, address=d.address, targets=targets)
        for addr in [self.leader] + [x.address for x in self.cfg.mgmt]:
            async with self.cluster.credentials.channel(addr) as ch:
                try:
                    rep = await pbg.MgmtServiceStub(ch).Heartbeat(
                        req, timeout=3.0, metadata=((INTERNAL_HEADER, self.cfg.internal_token),))  # a server's call
                except grpc.aio.AioRpcError:
                    continue
            if rep.status == err.NOT_LEADER:
                if rep.leader:
                    self.leader = rep.leader
                continue
            if rep.status == 0:
                self.leader = addr
                self.epochs.append(rep.epoch)
                return

    async def run(self) -> None:
        while True:
            try:
                self.map = await self.get_map()
            except err.DfsError:
                pass
            await asyncio.gather(*(self.beat(d) for d in self.cfg.data))
            await asyncio.sleep(0.1)


async def wait_for(fds: FakeDataServers, pred, what: str, timeout: float = 20.0) -> ClusterMap:
    """The first cluster map that satisfies ``pred``; on timeout the message shows the last one."""
    last: list[ClusterMap] = []

    async def probe() -> bool:
        last[:] = [await fds.get_map()]
        return pred(last[0])

    try:
        await until_async(probe, timeout, what)
    except AssertionError as e:
        raise AssertionError(f"{e}; map: targets={last[0].targets} chains={last[0].chains}") from None
    return last[0]


@contextlib.asynccontextmanager
async def heartbeats(cluster: LocalCluster):
    """FakeDataServers for ``cluster``, heartbeating in the background while the block runs."""
    fds = FakeDataServers(cluster)
    hb = asyncio.get_running_loop().create_task(fds.run())
    try:
        yield fds
    finally:
        hb.cancel()


@pytest.fixture
def cluster(make_cluster):
    """3 mgmt replicas, 1 metadata replica; the 3 data servers of the cluster file are not started."""
    return make_cluster(shards=1, replicas=1, mgmt_replicas=3, data_servers=3, target_timeout=TIMEOUT,
                        spawn_data=False)


def all_serving(m: ClusterMap) -> bool:
    return bool(m.targets) and all(t.state == "serving" for t in m.targets.values()) and all(
        not c.syncing and len(c.targets) == len(c.members) for c in m.chains)


def test_target_leaves_and_rejoins_its_chains(cluster):
    async def main():
        async with heartbeats(cluster) as fds:
            # targets may have timed out before the first heartbeat: wait until all serve
            m0 = await wait_for(fds, all_serving, "every target serving")
            assert len(m0.chains) == 3 and all(len(c.members) == 3 for c in m0.chains)
            victim = 2
            mine = [c.id for c in m0.chains if victim in c.members]
            assert len(mine) == 3

            # it stops heartbeating: out of its chains within the timeout (plus detection slack)
            fds.alive.discard(victim)
            fds.auto_sync.discard(victim)
            t0 = time.monotonic()
            m1 = await wait_for(fds, lambda m: m.targets[victim].state == "offline"
                                and all(victim not in c.targets for c in m.chains), "the target down")
            assert time.monotonic() - t0 < TIMEOUT + 2.0
            assert m1.epoch > m0.epoch
            for cid in mine:
                assert m1.chains[cid].version > m0.chains[cid].version
                assert m1.chains[cid].targets == tuple(t for t in m0.chains[cid].targets if t != victim)
            others = [t for tid, t in m1.targets.items() if tid != victim]
            assert all(t.state == "serving" for t in others)

            # it heartbeats again: back as syncing, at the end of every chain it belongs to
            fds.alive.add(victim)
            m2 = await wait_for(fds, lambda m: m.targets[victim].state == "syncing", "the target syncing")
            assert m2.epoch > m1.epoch
            for cid in mine:
                c = m2.chains[cid]
                assert c.syncing == (victim,) and victim not in c.targets
                assert c.version > m1.chains[cid].version
            # it stays syncing while it does not report (the monitor does not take it out)
            await asyncio.sleep(TIMEOUT * 1.5)
            m2b = await fds.get_map()
            assert m2b.targets[victim].state == "syncing" and m2b.epoch == m2.epoch

            # it reports its chains synced: serving, at the tail
            fds.auto_sync.add(victim)
            m3 = await wait_for(fds, lambda m: m.targets[victim].state == "serving", "the target serving")
            assert m3.epoch > m2.epoch
            for cid in mine:
                c = m3.chains[cid]
                assert c.targets[-1] == victim and not c.syncing
            assert all_serving(m3)
            assert fds.epochs and fds.epochs[-1] >= m2.epoch  # heartbeat replies carry the epoch
            return m3

    m3 = asyncio.run(main())
    m = cluster.cluster_map()
    assert m.epoch >= m3.epoch and set(m.targets) == {1, 2, 3}


def test_new_mgmt_leader_does_not_take_live_targets_down(cluster):
    async def main():
        async with heartbeats(cluster) as fds:
            m0 = await wait_for(fds, all_serving, "every target serving")
            await fds.get_map()
            old = next(p for p in cluster.mgmt_procs() if p.address == fds.leader)
            cluster.kill(old)
            # a new leader takes over; heartbeats follow it; nobody is taken out
            await until_async(lambda: fds.leader != old.address, 20, "a new mgmt leader")
            await asyncio.sleep(TIMEOUT * 2)
            m1 = await fds.get_map()
            assert all_serving(m1), m1.targets
            assert [c.version for c in m1.chains] == [c.version for c in m0.chains]

    asyncio.run(main())
