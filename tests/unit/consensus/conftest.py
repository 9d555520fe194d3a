"""In-process Raft groups for the consensus tests: the ``cluster_factory`` fixture makes
``Cluster``s of RaftHost replicas (real pysyncobj over loopback TCP) in a temporary folder."""

from __future__ import annotations

import functools
import os

import pytest

from dfs.consensus.raft import RaftHost
from dfs.consensus.testing import CounterSM
from dfs.testing.cluster import free_ports
from dfs.testing.wait import until_async

until = functools.partial(until_async, interval=0.01)  # hosts in this process: polls are cheap


class Cluster:
    def __init__(self, root, n: int = 3, memory: bool = False, **kw) -> None:
        self.root = str(root)
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
        self.kw = kw
        self.memory = memory
        self.sms: list[CounterSM | None] = [None] * n
        self.hosts: list[RaftHost | None] = [None] * n
        for i in range(n):
            self.start(i)

    def start(self, i: int) -> RaftHost:
        sm = CounterSM(None if self.memory else os.path.join(self.root, f"sm{i}"))
        self.sms[i] = sm
        self.hosts[i] = RaftHost(sm, self.addrs[i], self.addrs, os.path.join(self.root, f"raft{i}"), **self.kw)
        return self.hosts[i]

    def stop(self, i: int) -> None:
        h, sm = self.hosts[i], self.sms[i]
        self.hosts[i] = self.sms[i] = None
        if h is not None:
            h.close()
        if sm is not None:
            sm.close()

    def close(self) -> None:
        for i in range(len(self.hosts)):
            self.stop(i)

    def live(self) -> list[RaftHost]:
        return [h for h in self.hosts if h is not None]

    async def leader(self, timeout: float = 10.0) -> RaftHost:
        return await until(
            lambda: next((h for h in self.live() if h.is_leader), None), timeout, "a leader"
        )


@pytest.fixture
def cluster_factory(tmp_path):
    made: list[Cluster] = []

    def make(**kw) -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


