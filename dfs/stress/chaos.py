"""The chaos driver of a stress run: kill -9 random server processes of a
cluster and restart them a little later.

``cluster`` is any launcher of dfs.local's kind (``dfs.local.cluster.LocalCluster``,
the tests' clusters): ``cfg``, ``meta_procs``/``mgmt_procs``/``data_procs``,
``leader_of``, ``cluster_map``, ``kill``, ``restart``. At most one replica per
shard is down at a time, one mgmt replica, and one data server (only while
every target serves); a metadata replica picked is often its shard's leader.
Everything killed is restarted before ``run`` returns.

May import the standard library only (the cluster is handed in).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable


class Chaos(threading.Thread):
    """kill -9 random server processes of a LocalCluster and restart them a little later."""

    def __init__(self, cluster, rng: random.Random, stop: threading.Event, every: float, down: float,
                 now: Callable[[], float]) -> None:
        super().__init__(name="stress-chaos", daemon=True)
        self.cluster = cluster
        self.rng = rng
        self.stop = stop
        self.every = every
        self.down_s = down
        self.down: list[tuple[float, object]] = []  # (restart at, proc)
        self.kills: Counter = Counter()
        self.events: list[dict] = []
        self.error: BaseException | None = None
        self.now = now
        self.first = threading.Event()  # set once the first kill is done (or failed)

    def _eligible(self) -> list:
        c = self.cluster
        down = {id(p) for _, p in self.down}
        out = []
        for s in range(c.cfg.nshards):
            ps = c.meta_procs(s)
            if all(p.alive and id(p) not in down for p in ps):
                out += [("meta", p) for p in ps]
        ms = c.mgmt_procs()
        if all(p.alive for p in ms):
            out += [("mgmt", p) for p in ms]
        ds = c.data_procs()
        if ds and all(p.alive for p in ds):
            m = c.cluster_map()
            if m is not None and all(t.state == "serving" for t in m.targets.values()):
                out += [("data", p) for p in ds]
        return out

    def _kill_one(self) -> None:
        eligible = self._eligible()
        if not eligible:
            return
        role = self.rng.choice(sorted({r for r, _ in eligible}))
        procs = [p for r, p in eligible if r == role]
        p = self.rng.choice(procs)
        if role == "meta" and self.rng.random() < 0.5:  # the leader, often: failover mid-operation
            leader = self.cluster.leader_of(p.shard)
            if leader is not None and leader in procs:
                p = leader
        self.cluster.kill(p)
        self.kills[role] += 1
        self.events.append({"t": self.now(), "kill": p.name})
        self.down.append((time.monotonic() + self.rng.uniform(0.5, 1.5) * self.down_s, p))

    def _restart_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        for item in list(self.down):
            t, p = item
            if everything or t <= now:
                self.down.remove(item)
                self.cluster.restart(p)
                self.events.append({"t": self.now(), "restart": p.name})

    def run(self) -> None:
        try:
            try:
                self._kill_one()  # the first one at once: every chaos run has at least one
            finally:
                self.first.set()
            next_kill = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.every
            while not self.stop.wait(0.1):  # pacing of the chaos, not synchronisation
                self._restart_due()
                if time.monotonic() >= next_kill:
                    self._kill_one()
                    next_kill = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.every
        except BaseException as e:  # noqa: BLE001 - reported in the results
            self.error = e
        finally:
            self._restart_due(everything=True)
