"""Linearizability under network faults: the check of tests/fault/test_linearizable.py
on a 3-host deployment (dfs.testing.netns: each host one mgmt replica, one replica of
each shard and one data server), with a nemesis that partitions hosts (the host's
cable pulled) and cuts them off their peers only (blackhole routes to the other
server hosts: a leader its clients still reach that cannot reach its followers).
A host fault hits one member of every group at once, which the cluster tolerates;
the nemesis starts one only when every group is whole again.

The recorder runs in the client's namespace (``python -m dfs.stress.history``), its
operation count is the nemesis's clock (so the schedule does not depend on the
machine's speed); times are ``time.monotonic()``, one clock for all namespaces.
On failure the message holds the checker's explanation, the operations it got stuck
on and the fault schedule as it happened; the history is kept next to the cluster.
"""

from __future__ import annotations

import functools
import json
import random
import subprocess
import threading

import pytest

from dfs.stress.history import check, describe, load
from dfs.stress.nemesis import Nemesis, plan
from dfs.testing import wait
from dfs.testing.netns import HostFaults, NetnsCluster

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.timeout(900)]

SEED = 15
MIN_OPS = 400
KINDS = ("partition", "cut")
FAULTS = 8  # each kind once on the host of a metadata leader, a follower, an mgmt replica, a data server

until = functools.partial(wait.until, interval=0.1)


class RemoteRecorder:
    """``python -m dfs.stress.history`` in the client's namespace; ``ops`` follows its progress."""

    def __init__(self, c: NetnsCluster, root: str, out: str, seed: int) -> None:
        argv = c.client_argv(["-m", "dfs.stress.history", "--mgmt", ",".join(c.mgmt_addresses), "--root", root,
                              "--groups", "2", "--clients", "4", "--seed", str(seed), "--out", out])
        self.out = out
        self.err = open(out + ".stderr", "w")
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                                      text=True)
        self.ops = 0
        self.ready = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            word, *rest = line.split()
            if word == "READY":
                self.ready.set()
            elif word == "OPS":
                self.ops = int(rest[0])
            elif word == "DONE":
                self.done.set()

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def stop(self) -> dict:
        self.popen.stdin.write("stop\n")
        self.popen.stdin.flush()
        until(lambda: self.done.is_set() or self.exited(), 400, "the recorder writes its history")
        self.popen.wait(60)
        self.err.close()
        assert self.popen.returncode == 0, open(self.out + ".stderr").read()[-4000:]
        with open(self.out) as f:
            return json.load(f)

    def kill(self) -> None:
        if not self.exited():
            self.popen.kill()
            self.popen.wait(30)
        self.err.close()


def test_linearizable_under_partitions(fabric, cluster, tmp_path):
    rec = RemoteRecorder(cluster, f"/lin-{SEED}", str(tmp_path / "history.json"), SEED)
    nem = None
    try:
        until(lambda: rec.ready.is_set() or rec.exited(), 120, "the recorder set up its names")
        assert rec.ready.is_set(), open(rec.out + ".stderr").read()[-4000:]
        schedule = plan(random.Random(SEED), FAULTS, kinds=KINDS, first=20, every=MIN_OPS / (FAULTS + 1),
                        length=MIN_OPS / (FAULTS + 1) * 0.6)
        nem = Nemesis(cluster, schedule, clock=lambda: rec.ops, rng=random.Random(f"{SEED}/nemesis"),
                      net=HostFaults(fabric, cluster),
                      max_s=8.0, wait_s=None)
        nem.start()
        until(lambda: rec.exited() or nem.error or (nem.done.is_set() and rec.ops >= MIN_OPS), 700,
              "the schedule done and enough operations recorded")
        assert not rec.exited(), open(rec.out + ".stderr").read()[-4000:]
        nem.stop.set()
        nem.join(120)
        assert nem.error is None, repr(nem.error)
        hist = rec.stop()
    finally:
        if nem is not None:
            nem.stop.set()
            nem.join(120)
        rec.kill()
    assert hist["failure"] is None, hist["failure"]
    assert len(nem.injected) == FAULTS, nem.report()
    ops = load(hist["ops"])
    res = check(ops, timeout=300)
    print(f"\n{len(ops)} operations, {len(nem.injected)} faults; {res.explain()}\n{nem.report()}")
    assert res.ok, (f"{describe(res, ops)}\nfault schedule:\n{nem.report()}\n"
                    f"unknown outcomes: {hist['errors']}\nhistory: {rec.out}")
