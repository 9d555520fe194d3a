"""Three RaftHost replicas as separate OS processes (``python -m dfs.consensus.testing serve``,
run by ``dfs.testing.raft.ProcCluster``).

Each replica runs CounterSM on RocksDB in its own data dir and a JSON-lines
control port; the test drives them through it. Synchronisation is by polling
conditions with deadlines only.
"""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from dfs.consensus.testing import Control
from dfs.testing.raft import ProcCluster, check_exactly_once, until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(tmp_path):
    clusters: list[ProcCluster] = []

    def make(**kw) -> ProcCluster:
        c = ProcCluster(tmp_path / f"c{len(clusters)}", **kw)
        c.root.mkdir()
        clusters.append(c)
        c.start_all()
        return c

    yield make
    for c in clusters:
        c.close()


def test_group_commit_batches_concurrent_submits(cluster):
    c = cluster()
    leader = c.leader()
    before = leader.status()["sm"]
    rids = [f"g{i}" for i in range(1000)]
    resp = leader.call(op="add", rids=rids, concurrency=64)
    assert not resp["errors"] and len(resp["acks"]) == len(rids)
    after = leader.status()["sm"]
    entries = after["entries"] - before["entries"]
    commands = after["commands"] - before["commands"]
    assert commands == len(rids)
    assert entries < commands / 4, (entries, commands)
    states = c.converged()
    for s in states:
        check_exactly_once(s, resp["acks"])
    assert len({str(s["digest"]) for s in states}) == 1


def test_kill_leader_failover_and_restart_all(cluster):
    c = cluster()
    leader = c.leader()
    acked: dict[str, str] = {}
    resp = leader.call(op="add", rids=[f"a{i}" for i in range(200)], concurrency=16)
    assert not resp["errors"]
    acked.update(resp["acks"])

    # kill -9 the leader while a stream of submits is in flight
    inflight_ctl = Control(leader.port)
    box: dict = {}

    def stream():
        try:
            box["resp"] = inflight_ctl.call(op="add", rids=[f"b{i}" for i in range(3000)], concurrency=8)
        except (OSError, ConnectionError, ValueError) as e:
            box["error"] = e

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    until(lambda: leader.status()["sm"]["seq"] > 300, 10, "writes in flight")
    c.kill(leader.idx)
    t0 = time.monotonic()
    t.join(10)
    inflight_ctl.close()
    assert "resp" not in box  # the connection died with the process: those are unacknowledged

    new_leader = c.leader(10)
    failover = time.monotonic() - t0
    assert new_leader is not leader
    resp = new_leader.call(op="add", rids=[f"c{i}" for i in range(200)], concurrency=16)
    assert not resp["errors"], resp["errors"]
    acked.update(resp["acks"])
    survivors = c.converged()
    for s in survivors:
        check_exactly_once(s, acked)
    assert len({str(s["digest"]) for s in survivors}) == 1
    print(f"failover (kill -9 to new leader seen): {failover:.2f}s")

    # the old leader comes back from its data dir and catches up
    c.start(leader.idx)
    all3 = c.converged(15)
    assert len({str(s["digest"]) for s in all3}) == 1
    for s in all3:
        check_exactly_once(s, acked)

    # restart ALL replicas (kill -9) from their data dirs: state and applied index unchanged
    before = {r.idx: r.call(op="results") for r in c.live()}
    c.close()
    c.start_all()
    c.leader(10)
    after = {r.idx: r.call(op="results") for r in c.live()}
    for i in before:
        assert after[i]["sm"] == before[i]["sm"]  # applied, entries, commands, seq, dups, restores
        assert after[i]["digest"] == before[i]["digest"]
    nl = c.leader()
    seq = before[0]["sm"]["seq"]
    resp = nl.call(op="add", rids=["after-restart"])
    assert resp["acks"] == {"after-restart": str(seq + 1)}
    acked.update(resp["acks"])
    for s in c.converged():
        check_exactly_once(s, acked)
        assert s["sm"]["restores"] == 0


def test_wiped_replica_catches_up_by_snapshot(cluster):
    c = cluster(compact=20)
    leader = c.leader()
    acked: dict[str, str] = {}
    acked.update(leader.call(op="add", rids=[f"x{i}" for i in range(50)], concurrency=1)["acks"])
    c.converged()
    victim = next(r for r in c.replicas if r is not leader)
    c.kill(victim.idx)
    shutil.rmtree(victim.data)
    resp = leader.call(op="add", rids=[f"y{i}" for i in range(150)], concurrency=1)  # ~150 entries
    assert not resp["errors"]
    acked.update(resp["acks"])
    until(lambda: leader.status()["raft"]["log_len"] < 60 and leader.status()["raft"]["snapshots_taken"] > 0,
          10, "leader log compaction")
    c.start(victim.idx)
    states = c.converged(20)
    st = victim.status()
    assert st["sm"]["restores"] == 1 and st["raft"]["snapshots_restored"] == 1
    assert len({str(s["digest"]) for s in states}) == 1
    for s in states:
        check_exactly_once(s, acked)
    # the restored replica keeps following
    acked.update(leader.call(op="add", rids=["z"])["acks"])
    for s in c.converged():
        check_exactly_once(s, acked)
