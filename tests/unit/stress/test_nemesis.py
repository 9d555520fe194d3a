"""The nemesis's schedule and its rule: never more than one faulty member of a group
(a shard's replicas, the mgmt replicas, the data servers), a host's network fault
counted against every group of the host. On a fake cluster, stepping the nemesis's
own decisions (no thread, no processes)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from dfs.stress.nemesis import ROLES, Fault, Nemesis, plan


def test_plan_deals_every_kind_and_role_before_repeating():
    faults = plan(random.Random(1), 16, kinds=("kill", "pause"), first=10, every=5, length=3)
    first, second = faults[:8], faults[8:]
    want = {(k, r) for k in ("kill", "pause") for r in ROLES}
    assert {(f.kind, f.role) for f in first} == want
    assert {(f.kind, f.role) for f in second} == want
    assert [f.at for f in faults] == sorted(f.at for f in faults) and faults[0].at == 10


@dataclass(eq=False)
class P:
    role: str
    shard: int
    id: int
    host: int
    alive: bool = True

    @property
    def name(self) -> str:
        return f"{self.role}.{self.shard}.{self.id}" if self.role == "meta" else f"{self.role}.{self.id}"


class FakeCluster:
    """3 hosts, each one mgmt replica, one replica of each of 2 shards, one data server."""

    def __init__(self) -> None:
        self.procs = [P("mgmt", -1, i, i) for i in range(3)] + [P("meta", s, r, r) for s in range(2) for r in range(3)] \
            + [P("data", -1, i, i) for i in range(3)]
        self.cut_off: set[int] = set()

    def meta_procs(self, shard=None):
        return [p for p in self.procs if p.role == "meta" and shard in (None, p.shard)]

    def mgmt_procs(self):
        return [p for p in self.procs if p.role == "mgmt"]

    def data_procs(self):
        return [p for p in self.procs if p.role == "data"]

    def leader_of(self, shard):
        return next((p for p in self.meta_procs(shard) if p.alive and p.host not in self.cut_off), None)

    def statuses(self, shard):
        lead = self.leader_of(shard)
        return [{"role": "leader" if p is lead else "follower"} if p.alive else None for p in self.meta_procs(shard)]

    @staticmethod
    def status_field(st, name):
        return st[name]

    def cluster_map(self):
        return {"targets": {str(p.id): "serving" if p.alive and p.host not in self.cut_off else "offline"
                            for p in self.data_procs()}}

    def kill(self, p):
        p.alive = False

    def restart(self, p):
        p.alive = True


class FakeNet:
    def __init__(self, c: FakeCluster) -> None:
        self.c = c

    def affected(self, p):
        return [q for q in self.c.procs if q.host == p.host]

    def partition(self, p):
        self.c.cut_off.add(p.host)

    def cut(self, p, peers):
        assert all(q.host != p.host for q in peers)
        self.c.cut_off.add(p.host)

    def heal(self, p):
        self.c.cut_off.discard(p.host)


def faulty_per_group(c: FakeCluster, nem: Nemesis) -> Counter:
    n: Counter = Counter()
    for f in nem.active:
        for g in f.groups:
            n[g] += 1
    return n


def test_one_member_of_a_group_at_a_time_and_host_faults_count_for_every_group():
    c = FakeCluster()
    nem = Nemesis(c, [], clock=lambda: 0, rng=random.Random(3), net=FakeNet(c))
    kill_data = Fault("kill", "data", 0, 1)
    p = nem._pick(kill_data)
    nem._inject(kill_data, p)
    assert kill_data.groups == {"data"}
    assert nem._pick(Fault("pause", "data", 0, 1)) is None  # its group is not whole
    mgmt = Fault("kill", "mgmt", 0, 1)
    nem._inject(mgmt, nem._pick(mgmt))  # another group: fine
    assert faulty_per_group(c, nem) == {"data": 1, "mgmt": 1}
    # a host fault hits one member of every group: it waits for all of them
    for role in ROLES:
        assert nem._pick(Fault("partition", role, 0, 1)) is None
    nem._heal(kill_data)
    assert nem._pick(Fault("partition", "meta-leader", 0, 1)) is None  # mgmt still down
    nem._heal(mgmt)
    part = Fault("partition", "meta-leader", 0, 1)
    q = nem._pick(part)
    assert q is not None and q.role == "meta"
    nem._inject(part, q)
    assert part.groups == {"mgmt", "data", "shard 0", "shard 1"}
    assert "its host:" in part.note
    assert max(faulty_per_group(c, nem).values()) == 1
    for role in ROLES:  # everything waits while the host is off
        assert nem._pick(Fault("kill", role, 0, 1)) is None
    nem._heal(part)
    assert not nem.active and not c.cut_off
    assert nem._pick(Fault("kill", "meta-follower", 0, 1)) is not None
