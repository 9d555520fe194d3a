"""A 3-host deployment on one machine: every server host is its own network
namespace with its own address on a private switch (dfs.testing.netns), the
client another one. Each host runs one mgmt replica, one replica of each
metadata shard and one data server, all started from one cluster file that
names the hosts' addresses.

Synchronisation is by polling conditions with deadlines only (``until``).
Everything is torn down in ``finally``/fixture finalizers, also when a test
fails: the processes this test started (by PID), then the namespaces (their
veths and the bridge go with them).
"""

from __future__ import annotations

import functools
import json
import os
import queue
import subprocess
import threading
import time
from collections import Counter

import pytest

from dfs.common.ids import ROOT_INO, shard_of
from dfs.testing import wait
from dfs.testing.netns import Fabric, NetnsCluster

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.timeout(240)]

NSCLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nsclient.py")


until = functools.partial(wait.until, interval=0.1)  # each probe is a round trip through a host's agent


def run_client(c: NetnsCluster, *args: str, host=None, timeout: float = 120) -> str:
    argv = c.client_argv([NSCLIENT, "--mgmt", ",".join(c.mgmt_addresses), *args], host)
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"client {args[0]} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


class Workload:
    """``nsclient.py creates`` in the client namespace; its stdout lines are collected as they come."""

    def __init__(self, c: NetnsCluster, top: str, workers: int = 4) -> None:
        argv = c.client_argv([NSCLIENT, "--mgmt", ",".join(c.mgmt_addresses), "creates", top, str(workers)])
        self.err = os.path.join(c.root, "workload.err")
        with open(self.err, "wb") as errf:
            self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf,
                                      text=True, start_new_session=True)
        self.acked: list[str] = []
        self.failed: list[str] = []
        self.dirs: dict[str, int] | None = None
        self.done: str | None = None
        self._q: queue.Queue = queue.Queue()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.p.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "ACK":
                self.acked.append(rest)
            elif kind == "FAIL":
                self.failed.append(rest.split(" ")[0])
            elif kind == "READY":
                self.dirs = json.loads(rest)
            elif kind == "DONE":
                self.done = rest

    def alive_or_fail(self) -> None:
        if self.p.poll() is not None and self.done is None:
            with open(self.err) as f:
                raise AssertionError(f"workload exited {self.p.returncode}:\n{f.read()[-4000:]}")

    def wait_acks(self, n: int, timeout: float, what: str) -> None:
        target = len(self.acked) + n

        def ok():
            self.alive_or_fail()
            return len(self.acked) >= target

        until(ok, timeout, f"{n} more acknowledged creates ({what})")

    def finish(self, timeout: float = 90) -> None:
        if self.p.poll() is None:
            try:
                self.p.stdin.write("stop\n")
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._t.join(10)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


# ---------------------------------------------------------------- 1. forming and serving across hosts

def test_cluster_across_namespaces(cluster: NetnsCluster):
    c = cluster
    addrs = {h.addr for h in c.hosts}
    # every server listens on its host's fabric address only, nowhere else
    for h in c.hosts:
        listening = h.listening()
        want = {p.address for p in c.on_host(h)}
        assert want <= set(listening), f"{h.label}: {listening}, want {want}"
        assert all(a.rpartition(":")[0] == h.addr for a in listening), f"{h.label}: {listening}"
    assert c.client_host.listening() == []
    m = c.cluster_map()
    assert {a.rpartition(":")[0] for s in m["shards"] for a in s} == addrs
    assert {a.rpartition(":")[0] for a in m["mgmt"]} == addrs
    assert set(m["targets"].values()) == {"serving"}

    # the client in its own namespace writes and reads back; another host's client reads the same bytes
    files = json.loads(run_client(c, "write", "/data", "8", "7"))
    assert len(files) == 8
    assert run_client(c, "verify", json.dumps(files), host=c.hosts[2]).strip() == "OK 8"

    # file data went through the chains: every chunk of the large files is on each host's target
    for path, f in files.items():
        if f["size"] <= 32 * 1024:
            continue  # inline in the metadata shard
        nchunks = -(-f["size"] // (4 << 20))
        prefix = f"{f['ino']:016x}."
        for d in c.cfg.data:
            tdir = os.path.join(d.targets[0].path, "chunks")
            found = [n for sub in os.listdir(tdir) for n in os.listdir(os.path.join(tdir, sub))
                     if n.startswith(prefix)]
            assert len(found) == nchunks, f"{path}: target {d.targets[0].id} holds {found}, want {nchunks} chunks"


# ---------------------------------------------------------------- 2. partition of a shard leader's host

def test_partition_of_a_leader_host(cluster: NetnsCluster, fabric: Fabric):
    c = cluster
    wl = Workload(c, "/w", workers=4)
    probes: list[dict] = []
    try:
        wl.wait_acks(60, 60, "before the partition")
        old = until(lambda: c.leader_of(0), 20, "a shard-0 leader")
        isolated = old.host
        majority = tuple(h for h in c.hosts if h is not isolated)
        fabric.partition(isolated)
        t_cut = time.monotonic()
        acked_at_cut = len(wl.acked)

        # right after the cut the old leader may still believe it leads: a create sent to it from
        # its own host must not be acknowledged (asked from a thread while the majority elects)
        early = threading.Thread(target=lambda: probes.append(c.probe_create(old, ROOT_INO, "probe-early", 4.0)),
                                 daemon=True)
        early.start()
        # the majority side elects new leaders (for every shard that lost its leader)
        for s in range(c.cfg.nshards):
            new = until(lambda s=s: c.leader_of(s, exclude=(isolated,)), 20, f"a shard-{s} leader on the majority")
            assert new.host in majority
        t_elected = time.monotonic() - t_cut
        early.join(60)
        assert len(probes) == 1, "the early probe did not answer"
        # clients keep being served by the majority, on every shard
        at_elected = len(wl.acked)
        wl.wait_acks(60, 60, "during the partition")
        served = {shard_of(wl.dirs[a.split("/")[0]]) for a in wl.acked[at_elected:]}
        assert served == set(range(c.cfg.nshards)), f"creates acknowledged during the partition on shards {served}"
        # the isolated old leader steps down and keeps refusing writes
        until(lambda: (c.statuses(0)[old.replica] or {}).get("role") not in (None, "leader"), 20,
              "the isolated old leader stepping down")
        probes.append(c.probe_create(old, ROOT_INO, "probe-late", deadline=3.0))
        for pr in probes:
            assert not pr["ok"], f"the isolated replica acknowledged a create: {pr}"
            assert pr["exception"] in ("NotLeader", "Unavailable"), pr
        assert len(wl.acked) > acked_at_cut
        # mgmt on the majority side takes the unreachable data server's target out of the chains
        lost = {str(t.id) for d in c.cfg.data if c.hosts[d.id % len(c.hosts)] is isolated for t in d.targets}
        until(lambda: all((c.cluster_map() or {"targets": {}})["targets"].get(t) == "offline" for t in lost), 30,
              f"targets {sorted(lost)} of the isolated host offline in the map")
        t_partitioned = time.monotonic() - t_cut

        fabric.heal(isolated)
        t_heal = time.monotonic()
        c.wait_healthy(60)  # every target serving again (the isolated data server is back), every shard led
        t_healthy = time.monotonic() - t_heal
        wl.wait_acks(60, 60, "after healing")
    except BaseException:
        wl.kill()
        raise
    wl.finish()
    assert wl.done is not None, "workload did not finish"
    print(f"\nisolated {isolated.label} (old shard-0 leader {old.name}); new leaders after {t_elected:.1f}s, "
          f"partition {t_partitioned:.1f}s; healthy {t_healthy:.1f}s after healing; workload: "
          f"{len(wl.acked)} acknowledged, {len(wl.failed)} failed; probes {[p['exception'] for p in probes]}")
    c.wait_all_converged(90)

    # every acknowledged create is there exactly once; nothing is there that was never asked for
    listing = json.loads(run_client(c, "list", "/w"))
    assert set(listing) == set(wl.dirs)
    seen = Counter(f"{d}/{n}" for d, names in listing.items() for n in names)
    dups = [k for k, v in seen.items() if v > 1]
    assert not dups, f"listed twice: {dups[:10]}"
    missing = [a for a in wl.acked if a not in seen]
    assert not missing, f"{len(missing)} acknowledged creates lost: {missing[:10]}"
    unknown = set(seen) - set(wl.acked) - set(wl.failed)
    assert not unknown, f"entries nobody created: {sorted(unknown)[:10]}"
    root = run_client(c, "list", "/")
    assert "probe-" not in root, f"an unacknowledged probe create survived: {root}"

    # the replicas of every shard converge to the same contents, with no 2PC leftovers
    until(lambda: not c.pending_records(), 60, "no pending cross-shard records or locks")
    for s in range(c.cfg.nshards):
        c.wait_converged(s, 60)
    c.stop()
    c.assert_replicas_identical()
