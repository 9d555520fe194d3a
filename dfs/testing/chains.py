"""Three data servers' chain services in one event loop, for tests of chain replication,
resync and snapshots one interleaving at a time.

``ChainService``s with real chunk stores talk over an in-process data plane
(``Net``) that can cut a server off and hold a request before or after it is
handled; the cluster map is the real mgmt state machine's
(``dfs.mgmt.store.COMMANDS``), and each server has its own copy of it, so a
server can be made to lag. One chain, ``[1, 2, 3]``: head, tail, and a third
target tests take out and bring back.

    run_chain(tmp_path, test)   # await test(net, servers)
"""

from __future__ import annotations

import asyncio
import copy

from dfs.common.clustermap import ClusterMap
from dfs.data.chain import ChainIndex, ChainService, Target
from dfs.data.store import ChunkStore
from dfs.mgmt.server import map_to_pb
from dfs.mgmt.store import COMMANDS
from dfs.testing.wait import until_async
from dfs.wire import dataplane as dp

T1, T2, T3 = 1, 2, 3  # chain 0: head, tail, and the target that goes out and resyncs


class Net:
    """The data plane between in-process servers, and mgmt's map."""

    def __init__(self) -> None:
        self.servers: dict[str, Server] = {}
        self.down: set[str] = set()
        self.hooks: list = []  # async hook(stage, addr, header) for stage "before" / "after"
        self.m = {"epoch": 1, "cluster_id": "t", "mgmt": [], "shards": [],
                  "targets": {t: {"server": t, "address": f"s{t}", "state": "serving", "total": 0, "free": 0}
                              for t in (T1, T2, T3)},
                  "chains": [{"id": 0, "version": 1, "members": [T1, T2, T3], "serving": [T1, T2, T3],
                              "syncing": []}]}

    @property
    def map(self) -> ClusterMap:
        return ClusterMap.from_pb(map_to_pb(self.m))

    def command(self, cmd: str, *args) -> tuple:
        """Apply one of mgmt's commands to the map (as its Raft group would): (changed, bump, *answer)."""
        new = copy.deepcopy(self.m)
        changed, bump, *extra = COMMANDS[cmd](new, *args)
        if changed and bump:
            new["epoch"] += 1
        self.m = new
        return changed, bump, *extra

    def do(self, cmd: str, *args, publish=(T1, T2, T3)) -> None:
        """Apply a mgmt command and hand the new map to the servers in ``publish``."""
        self.command(cmd, *args)
        for t in publish:
            self.servers[f"s{t}"].install(self.map)

    def chain(self) -> dict:
        return self.m["chains"][0]

    async def call(self, addr: str, h: dp.Header, payload=b"", timeout: float = 10.0, into=None, crc=None):
        if addr in self.down:
            raise ConnectionError(f"{addr} is cut off")
        for hook in list(self.hooks):
            await hook("before", addr, h)
        rh, rp = await self.servers[addr].svc.handle(h, bytes(payload))
        for hook in list(self.hooks):
            await hook("after", addr, h)
        return rh, rp

    async def report_synced(self) -> None:
        """What a heartbeat does: mgmt hears each target's (chain, version) synced reports."""
        for s in self.servers.values():
            for cid, v in s.svc.synced_chains(s.tid):
                self.do("chain_synced", cid, s.tid, v)


class Server:
    def __init__(self, net: Net, tid: int, root) -> None:
        self.net, self.tid, self.addr = net, tid, f"s{tid}"
        path = str(root / f"t{tid}")
        self.target = Target(tid, ChunkStore(path, tid), ChainIndex(path + "/chains"), threads=2)
        self.map: ClusterMap | None = None
        self.svc = ChainService({tid: self.target}, net, get_map=lambda: self.map, refresh_map=self.refresh,
                                forward_timeout=5.0)
        net.servers[self.addr] = self

    def install(self, m: ClusterMap) -> None:
        if self.map is None or m.epoch > self.map.epoch:
            self.map = m
            self.svc.on_map(m)

    async def refresh(self) -> None:
        self.install(self.net.map)

    def chunks(self) -> dict[tuple[int, int], tuple[int, bytes]]:
        st = self.target.store
        return {(i, x): (m.version, st.read(i, x, 0, m.length)) for i, x, m in st.list_chunks()}

    async def close(self) -> None:
        await self.svc.stop()
        self.target.close()


def run_chain(root, test) -> None:
    """``await test(net, servers)`` with a fresh net of three servers whose targets live under
    ``root`` (a pathlib.Path), closed afterwards whatever happened."""
    async def main():
        net = Net()
        servers = {t: Server(net, t, root) for t in (T1, T2, T3)}
        for s in servers.values():
            s.install(net.map)
        try:
            await test(net, servers)
        finally:
            for s in servers.values():
                await s.close()
    asyncio.run(main())


async def write(net: Net, servers, ino: int, index: int, data: bytes, *, via: int | None = None) -> int:
    """A client's write of a whole chunk through the chain head (at the head's map)."""
    head = servers[via or net.chain()["serving"][0]]
    ch = head.map.chains[0]
    h = dp.Header(dp.WRITE, ino=ino, index=index, chain_id=0, chain_version=ch.version, target=head.tid,
                  length=len(data))
    rh, rp = await head.svc.handle(h, data)
    dp.raise_for(rh, rp)
    return rh.version


async def remove_inode(net: Net, servers, ino: int) -> None:
    head = servers[net.chain()["serving"][0]]
    h = dp.Header(dp.REMOVE_INODE, ino=ino, chain_id=0, chain_version=head.map.chains[0].version, target=head.tid)
    rh, rp = await head.svc.handle(h, b"")
    dp.raise_for(rh, rp)


async def until(cond, what: str, timeout: float = 20.0) -> None:
    await until_async(cond, timeout, what, interval=0.01)


async def promoted(net: Net, servers, tid: int = T3) -> None:
    """Report synced resyncs to mgmt until ``tid`` serves in the chain again."""
    async def serving():
        await net.report_synced()
        return tid in net.chain()["serving"]
    await until_async(serving, 20, f"target {tid} resynced", interval=0.01)


def assert_same(servers) -> None:
    want = servers[T2].chunks()
    for t in (T1, T3):
        assert servers[t].chunks() == want, f"target {t} differs from the tail"


async def remove(net: Net, servers, ino: int, index: int) -> None:
    """REMOVE of one chunk through the chain head."""
    head = servers[net.chain()["serving"][0]]
    h = dp.Header(dp.REMOVE, ino=ino, index=index, chain_id=0, chain_version=head.map.chains[0].version,
                  target=head.tid)
    rh, rp = await head.svc.handle(h, b"")
    dp.raise_for(rh, rp)
