"""The nemesis of a linearizability run: faults injected into a cluster's
server processes on a schedule, never more at once than the cluster tolerates.

A ``Fault`` is a kind and a role, and when it starts and how long it lasts on
the nemesis's clock (operations completed, for a test; seconds, for a bench):

* kinds: ``kill`` (kill -9, restarted when it ends), ``pause`` (SIGSTOP,
  SIGCONT when it ends), ``partition`` (the process's host cut off the
  network, healed when it ends) and ``cut`` (the process's host cut off from
  the other members of its group only: a leader its clients still reach);
  the last two only with ``net`` (a ``Net``: how a test's network namespaces
  do them);
* roles: ``meta-leader`` (the leader of a random shard), ``meta-follower``,
  ``mgmt`` (a random mgmt replica) and ``data`` (a random data server).

At most one process of a group (a shard's replicas, the mgmt replicas, the
data servers: chains of three) is faulty at a time, and a fault starts only
when every group it hits is whole again (a network fault hits every process
of the host: with one replica of each group per host, one of each group): every member running and unhurt, a shard
with a leader, every data target serving. A fault that cannot start within
``wait_s`` seconds is skipped (and says so; ``wait_s`` None: it waits as long as it
takes, for a test whose verdict must not depend on the machine's speed). A fault ends at its length or
after ``max_s`` seconds, whichever comes first. Everything is healed before
``run`` returns. ``events`` is the schedule as it happened (monotonic
times), for the failure report.

``cluster`` is a launcher of dfs.local's kind (``dfs.local.cluster.LocalCluster``,
the tests' ``NetnsCluster``): ``procs``, ``meta_procs``, ``mgmt_procs``,
``data_procs``, ``leader_of``, ``statuses``, ``cluster_map``, ``kill``,
``restart``, processes with a ``pid``.

May import the standard library only (the cluster is handed in).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

KINDS = ("kill", "pause", "partition", "cut")
ROLES = ("meta-leader", "meta-follower", "mgmt", "data")


class Net(Protocol):
    """Network faults of one process's host (tests/netns: dfs.testing.netns.HostFaults)."""

    def affected(self, proc: Any) -> list[Any]:
        """The processes a network fault of ``proc``'s host hits (its host's)."""

    def partition(self, proc: Any) -> None: ...

    def cut(self, proc: Any, peers: list[Any]) -> None: ...

    def heal(self, proc: Any) -> None: ...


@dataclass
class Fault:
    kind: str
    role: str
    at: float  # the nemesis clock's value it starts at
    length: float  # how long it lasts, on that clock
    target: str = ""  # filled in as it happens
    started: float | None = None  # time.monotonic()
    ended: float | None = None
    note: str = ""
    proc: Any = field(default=None, repr=False)
    started_clock: float = 0.0
    groups: frozenset[str] = frozenset()  # the groups of the processes it hits

    def describe(self) -> str:
        when = "not started" if self.started is None else (
            f"{self.started:.3f} .. {'?' if self.ended is None else f'{self.ended:.3f}'}")
        return f"{self.kind:<9} {self.role:<13} {self.target or '-':<12} {when}" + (
            f"  ({self.note})" if self.note else "")


def plan(rng: random.Random, n: int, *, kinds: tuple[str, ...], roles: tuple[str, ...] = ROLES,
         first: float, every: float, length: float) -> list[Fault]:
    """``n`` faults, the first at ``first``, then about every ``every``, each lasting about
    ``length`` (clock units). Every (kind, role) pair comes once, in random order, before
    any comes again: a short schedule hits every role with every kind it can."""
    pairs: list[tuple[str, str]] = []
    out, t = [], first
    for _ in range(n):
        if not pairs:
            pairs = [(k, r) for k in kinds for r in roles]
            rng.shuffle(pairs)
        kind, role = pairs.pop()
        out.append(Fault(kind, role, round(t, 3), round(length * rng.uniform(0.5, 1.5), 3)))
        t += every * rng.uniform(0.5, 1.5)
    return out


class Nemesis(threading.Thread):
    poll = 0.1  # pacing of the schedule (not synchronisation)

    def __init__(self, cluster, schedule: list[Fault], clock: Callable[[], float], rng: random.Random, *,
                 net: Net | None = None, max_s: float = 10.0, wait_s: float | None = 60.0) -> None:
        super().__init__(name="nemesis", daemon=True)
        self.cluster = cluster
        self.schedule = schedule
        self.clock = clock
        self.rng = rng
        self.net = net
        self.max_s = max_s
        self.wait_s = wait_s
        self.active: list[Fault] = []
        self.stop = threading.Event()
        self.done = threading.Event()  # set once every fault of the schedule ended (or was skipped)
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ the groups
    def _group_of(self, p) -> str:
        return f"shard {p.shard}" if p.role == "meta" else p.role

    def _members(self, group: str) -> list:
        c = self.cluster
        if group.startswith("shard "):
            return c.meta_procs(int(group.split()[1]))
        return c.mgmt_procs() if group == "mgmt" else c.data_procs()

    def _whole(self, group: str) -> bool:
        """Every member running and unhurt, and the group serving."""
        if any(group in f.groups for f in self.active):
            return False
        ps = self._members(group)
        if not ps or not all(p.alive for p in ps):
            return False
        c = self.cluster
        if group.startswith("shard "):
            s = int(group.split()[1])
            sts = c.statuses(s)
            return all(st is not None for st in sts) and any(
                c.status_field(st, "role") == "leader" for st in sts)
        m = c.cluster_map()
        if m is None:
            return False
        if group == "data":
            targets = m["targets"] if isinstance(m, dict) else {k: t.state for k, t in m.targets.items()}
            return bool(targets) and all(st == "serving" for st in targets.values())
        return True

    def _pick(self, f: Fault):
        """The process ``f`` hits now (None: one of the groups it would hit is not whole yet)."""
        c = self.cluster
        if f.role.startswith("meta"):
            shards = sorted({p.shard for p in c.meta_procs()})
            s = self.rng.choice(shards)
            if not self._whole(f"shard {s}"):
                return None
            leader = c.leader_of(s)
            if leader is None:
                return None
            p = leader if f.role == "meta-leader" else self.rng.choice(
                [q for q in c.meta_procs(s) if q is not leader])
        else:
            group = "mgmt" if f.role == "mgmt" else "data"
            if not self._whole(group):
                return None
            p = self.rng.choice(self._members(group))
        others = {self._group_of(q) for q in self._hits(f, p)} - {self._group_of(p)}
        if not all(self._whole(g) for g in others):
            return None
        return p

    def _hits(self, f: Fault, p) -> list:
        """The processes fault ``f`` on ``p`` hits: ``p``, or its host's for a network fault."""
        return self.net.affected(p) if f.kind in ("partition", "cut") else [p]

    # ------------------------------------------------------------------ faults
    def _inject(self, f: Fault, p) -> None:
        hits = self._hits(f, p)
        f.proc, f.target, f.groups = p, p.name, frozenset(self._group_of(q) for q in hits)
        if len(hits) > 1:
            f.note = "its host: " + " ".join(q.name for q in hits if q is not p)
        if f.kind == "kill":
            self.cluster.kill(p)
        elif f.kind == "pause":
            os.kill(p.pid, signal.SIGSTOP)
        elif f.kind == "partition":
            self.net.partition(p)
        elif f.kind == "cut":
            self.net.cut(p, [q for g in f.groups for q in self._members(g) if q not in hits])
        else:
            raise ValueError(f"unknown fault kind {f.kind!r}")
        f.started, f.started_clock = time.monotonic(), self.clock()
        self.active.append(f)

    def _heal(self, f: Fault) -> None:
        p = f.proc
        try:
            if f.kind == "kill":
                self.cluster.restart(p)
            elif f.kind == "pause":
                if p.alive:
                    os.kill(p.pid, signal.SIGCONT)
            else:
                self.net.heal(p)
        finally:
            f.ended = time.monotonic()
            self.active.remove(f)

    def run(self) -> None:
        pending = list(self.schedule)
        waiting_since: float | None = None
        try:
            while (pending or self.active) and not self.stop.is_set():
                now = time.monotonic()
                for f in list(self.active):
                    if self.clock() >= f.started_clock + f.length or now - f.started >= self.max_s:
                        self._heal(f)
                if pending and self.clock() >= pending[0].at:
                    f = pending[0]
                    if f.kind in ("partition", "cut") and self.net is None:
                        f.note = "skipped: no network faults here"
                        pending.pop(0)
                        continue
                    waiting_since = waiting_since or now
                    p = self._pick(f)
                    if p is not None:
                        self._inject(f, p)
                        pending.pop(0)
                        waiting_since = None
                    elif self.wait_s is not None and now - waiting_since > self.wait_s:
                        f.note = f"skipped: its group not whole for {self.wait_s:.0f} s"
                        pending.pop(0)
                        waiting_since = None
                self.stop.wait(self.poll)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            self.error = e
        finally:
            for f in list(self.active):
                try:
                    self._heal(f)
                except BaseException as e:  # noqa: BLE001 - the first error is reported
                    self.error = self.error or e
            self.done.set()

    @property
    def injected(self) -> list[Fault]:
        return [f for f in self.schedule if f.started is not None]

    def report(self) -> str:
        return "\n".join(f.describe() for f in self.schedule)
