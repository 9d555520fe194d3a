"""A power cut of every replica of a Raft group during a submit load
(dfs/testing/powercut.py: a file system that loses whatever was not fsynced).

Three replica processes (``dfs.testing.raft.ProcCluster``: CounterSM on RocksDB
and a RaftHost each) keep their data folders on the power-cut file system while a
client thread submits batches of ``add`` commands and records every acknowledgement.
Then the power goes: the replicas are killed (-9), then the file system, which
takes the unsynced data with it; it is mounted again over what reached the disk.
The replicas start again from their folders. With ``durability = "sync"`` the
group starts and every acknowledged command is there, exactly once, on every
replica; a small compaction threshold makes dumps and journal rewrites happen
under the load. With ``"async"`` (the control experiment: the cut does bite) the
same load loses acknowledged commands.
"""

from __future__ import annotations

import threading

import pytest

from dfs.consensus.testing import Control
from dfs.testing.powercut import PowerCut
from dfs.testing.raft import ProcCluster, check_exactly_once, until

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]


class Load:
    """Batches of ``add`` commands to the leader from a thread, each acknowledgement kept;
    a batch whose answer never came (the power went) counts as not acknowledged."""

    def __init__(self, port: int, batch: int = 16) -> None:
        self.ctl = Control(port)
        self.batch = batch
        self.acked: dict[str, str] = {}
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        k = 0
        while not self.stop.is_set():
            rids = [f"r{k}-{j}" for j in range(self.batch)]
            k += 1
            try:
                resp = self.ctl.call(op="add", rids=rids, concurrency=self.batch, timeout=5.0)
            except (OSError, ValueError):
                return  # the replica died mid-batch: none of it was acknowledged to us
            self.acked.update(resp["acks"])
            self.errors += len(resp["errors"])

    def join(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.ctl.close()


@pytest.fixture
def powercut(tmp_path):
    pc = PowerCut(str(tmp_path / "backing"), str(tmp_path / "mnt")).start()
    yield pc
    pc.stop()


def run_and_cut(tmp_path, powercut, durability: str, compact: int, acked_before_cut: int):
    """Start the group on the power-cut file system, load it, cut the power, start it again."""
    c = ProcCluster(tmp_path, compact=compact, durability=durability, data_root=tmp_path / "mnt")
    try:
        c.start_all()
        leader = c.leader(20)
        until(lambda: all(all(r.status()["raft"]["peers"].values()) for r in c.live()), 30, "replicas connected")
        load = Load(leader.port)
        until(lambda: len(load.acked) >= acked_before_cut or not load.thread.is_alive(), 60, "acknowledged commands")
        assert load.thread.is_alive(), "the load stopped before the cut"
        for i in range(len(c.replicas)):  # the power goes: every process writing under the mount first
            c.kill(i)
        load.join()
        powercut.cut()  # ...then the file system's memory of unsynced data
        c.start_all()
        c.leader(20)
        return c, load.acked
    except BaseException:
        c.close()
        raise


def test_sync_power_cut_of_every_replica_keeps_every_acknowledged_entry(tmp_path, powercut):
    c, acked = run_and_cut(tmp_path, powercut, "sync", compact=10, acked_before_cut=600)
    try:
        states = c.converged(30)
        assert len({str(s["digest"]) for s in states}) == 1
        for s in states:
            check_exactly_once(s, acked)
        taken = [r.status()["raft"] for r in c.live()]
        assert all(t["durability"] == "sync" for t in taken)
        # and the group goes on where it stopped
        leader = c.leader()
        nxt = max(int(v) for v in states[0]["results"].values()) + 1
        assert leader.call(op="add", rids=["after-the-cut"])["acks"] == {"after-the-cut": str(nxt)}
        for s in c.converged(30):
            check_exactly_once(s, {**acked, "after-the-cut": str(nxt)})
    finally:
        c.close()


def test_async_power_cut_loses_acknowledged_entries(tmp_path, powercut):
    # no compaction: nothing of the load is ever synced (no dump, no journal rewrite)
    c, acked = run_and_cut(tmp_path, powercut, "async", compact=100000, acked_before_cut=200)
    try:
        states = c.converged(30)  # the group starts (term and vote are synced whatever the setting)
        stored = states[0]["results"]
        lost = [rid for rid in acked if rid not in stored]
        assert lost, "an async group kept every acknowledged entry through a power cut"
    finally:
        c.close()
