"""Linearizability under a nemesis, on loopback: library clients record a history of
puts, gets, creates, unlinks, renames, stats and listings on a few names
(dfs/stress/history.py) while the nemesis (dfs/stress/nemesis.py) kills (-9, then
restarts) and pauses (SIGSTOP, then SIGCONT) metadata leaders and followers, mgmt
replicas and data servers, one per group at a time; the checker
(dfs/stress/linearizable.py, the ``Files`` model) must find the history linearizable.

The schedule is fixed by the seed and counted in completed operations, and the run
ends once every fault of it was injected and healed and enough operations were
recorded: what is checked does not depend on the machine's speed. On failure the
message holds the checker's explanation, the operations it got stuck on and the fault
schedule as it happened. The variant with network partitions is tests/netns.
"""

from __future__ import annotations

import json
import random

import pytest

from dfs.stress.history import Recorder, check, describe, dump
from dfs.stress.nemesis import Nemesis, plan
from dfs.testing.wait import until

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.timeout(600)]

SEED = 15
MIN_OPS = 480
FAULTS = 8  # kill and pause, each of a metadata leader, a follower, an mgmt replica, a data server


def run(cluster, seed: int, kinds: tuple[str, ...], faults: int, net=None) -> tuple[list, Nemesis, Recorder]:
    rec = Recorder({"mgmt": cluster.mgmt_addresses}, f"/lin-{seed}", groups=2, clients=4, seed=seed)
    rec.setup()
    schedule = plan(random.Random(seed), faults, kinds=kinds, first=20, every=MIN_OPS / (faults + 1),
                    length=MIN_OPS / (faults + 1) * 0.6)
    # wait_s None: a fault waits for its group to be whole however long that takes (the
    # deadline below bounds it), so that every fault of the schedule happens on any machine
    nem = Nemesis(cluster, schedule, clock=lambda: rec.ops_done, rng=random.Random(f"{seed}/nemesis"), net=net,
                  max_s=8.0, wait_s=None)
    rec.start()
    nem.start()
    try:
        until(lambda: rec.failure or nem.error or (nem.done.is_set() and rec.ops_done >= MIN_OPS), 400,
              "the schedule done and enough operations recorded")
    finally:
        nem.stop.set()
        nem.join(120)
        rec.join(180)
    assert rec.failure is None, repr(rec.failure)
    assert nem.error is None, repr(nem.error)
    return rec.ops, nem, rec


def verdict(ops, nem: Nemesis, rec: Recorder, keep=None) -> None:
    res = check(ops, timeout=300)
    if not res.ok and keep is not None:  # the history, for a second look (dfs.stress.history.load)
        keep.write_text(json.dumps({"ops": dump(ops), "schedule": nem.report()}))
    report = (f"{describe(res, ops)}\nfault schedule:\n{nem.report()}\n"
              f"unknown outcomes: {dict(rec.errors)}")
    print(f"\n{len(ops)} operations, {len(nem.injected)} faults; {res.explain()}\n{nem.report()}")
    assert res.ok, report


def test_linearizable_under_kills_and_pauses(make_cluster, tmp_path):
    c = make_cluster(shards=2, replicas=3, mgmt_replicas=3, data_servers=3, chain_replicas=3, metrics=False)
    ops, nem, rec = run(c, SEED, ("kill", "pause"), FAULTS)
    assert len(nem.injected) == FAULTS, nem.report()
    verdict(ops, nem, rec, tmp_path / "history.json")
