"""The stress run's model, its table of client calls, and its chaos driver, without a cluster."""

from __future__ import annotations

import random
import threading
from collections import Counter

from dfs.stress import worker
from dfs.stress.chaos import Chaos
from dfs.stress.model import MAX_DIFFS, Differences, Dir, Model, Node, area_of, blob, describe


def test_node_write_and_truncate_follow_posix():
    n = Node(b"abc")
    n.write(5, b"xy")  # past the end: a hole of zeros
    assert bytes(n.data) == b"abc\0\0xy"
    n.write(9, b"")  # nothing written past the end changes nothing
    assert len(n.data) == 7
    n.truncate(2)
    assert bytes(n.data) == b"ab"
    n.truncate(4)
    assert bytes(n.data) == b"ab\0\0"


def test_model_counts_names_per_area():
    m = Model()
    for d in ("c0", "c0/d0", "shared", "shared/s0"):
        m.add(d, Dir())
    n = Node(b"x")
    m.add("c0/d0/f", n)
    m.add("shared/s0/l", n)
    assert n.nlink == 2 and dict(n.areas) == {"c0": 1, "shared": 1}
    assert m.get("c0/d0/f") is n and m.get("c0/d0/f/x") is None and m.get("nothing") is None
    assert sorted(p for p, _ in m.files("c0")) == ["c0/d0/f"]
    assert m.remove("shared/s0/l") is n
    assert dict(n.areas) == {"c0": 1} and area_of("shared/s0/l") == "shared"
    assert m.get("c0").subdirs() == 1


def test_blob_is_rederivable_and_describe_finds_the_first_difference():
    assert blob("1/2/3", 100) == blob("1/2/3", 100) != blob("1/2/4", 100)
    d = describe(b"abcdef", b"abXdefg")
    assert d["first_difference"] == 2 and d["expected_size"] == 6 and d["actual_size"] == 7
    assert describe(b"ab", b"abc")["first_difference"] == 2


def test_differences_keep_the_first_ones_and_count_all():
    d = Differences()
    for i in range(MAX_DIFFS + 5):
        d.add(kind="op", n=i)
    assert d.count == MAX_DIFFS + 5 and len(d.items) == MAX_DIFFS and d.items[0]["n"] == 0


def test_every_kind_of_the_mix_has_an_operation_and_every_call_a_row():
    assert all(callable(getattr(worker.Worker, f"op_{k}", None)) for k in worker.MIX)
    assert {"create", "write", "truncate", "read", "rename", "rename_same", "link", "unlink", "mkdir",
            "rmdir"} == set(worker.CALLS)
    # the idempotent calls are repeated, the namespace calls read back
    assert {k for k, c in worker.CALLS.items() if c.done is None} == {"create", "write", "truncate", "read"}


class _FakeWorker:
    """What ``Worker.perform`` and ``attempt`` use of a worker, over a dict namespace."""

    def __init__(self, fail_first: int) -> None:
        self.stats = worker.Stats()
        self.names: set[str] = set()
        self.fail_first = fail_first
        self.calls: list[str] = []
        self.diffs: list[tuple] = []
        self.notes: list[str] = []
        self.c = self

    # the client calls the table makes
    def abs(self, p: str) -> str:
        return p

    def mkdir(self, p: str) -> None:
        self.calls.append(p)
        if p in self.names:
            raise FileExistsError(17, "exists")
        self.names.add(p)
        if self.fail_first:  # done, but the answer was lost
            self.fail_first -= 1
            raise TimeoutError("lost answer")

    def exists(self, p: str) -> bool:
        return p in self.names

    def diff(self, what: str, path: str = "", **kw) -> None:
        self.diffs.append((what, path))

    def note(self, node, what: str) -> None:
        self.notes.append(what)

    attempt = worker.Worker.attempt
    ok = worker.Worker.ok
    perform = worker.Worker.perform


def test_perform_settles_an_unknown_outcome_by_reading_back(monkeypatch):
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)  # the back-off, not synchronisation
    w = _FakeWorker(fail_first=1)
    changed = []
    assert w.perform("mkdir", "mkdir", "c0/s", path="c0/s", then=lambda: changed.append(1))
    assert w.calls == ["c0/s"] and changed == [1]  # read back as done: not made again
    assert w.stats.retries["mkdir"] == 1 and w.stats.resolved["mkdir"] == 1 and w.stats.ops["mkdir"] == 1
    # an operation that must fail is counted, changes nothing, and is never "read back"
    assert not w.perform("expect_error", "mkdir", "c0/s", path="c0/s", expect=(17,), label="mkdir existing",
                         then=lambda: changed.append(2))
    assert changed == [1] and w.stats.expected["mkdir existing EEXIST"] == 1 and w.diffs == []
    # an errno the model did not predict is a difference
    assert not w.perform("mkdir", "mkdir", "c0/s", path="c0/s")
    assert w.diffs == [("mkdir failed unexpectedly", "c0/s")]


class _Proc:
    def __init__(self, role: str, shard: int, i: int) -> None:
        self.role, self.shard, self.name, self.alive = role, shard, f"{role}.{shard}.{i}", True


class _Cluster:
    """The launcher surface the chaos driver uses, with processes that only flip ``alive``."""

    def __init__(self) -> None:
        self.procs = [_Proc("meta", s, i) for s in range(2) for i in range(3)] + \
            [_Proc("mgmt", -1, i) for i in range(3)] + [_Proc("data", -1, i) for i in range(3)]
        self.cfg = type("Cfg", (), {"nshards": 2})()
        self.log: list[str] = []

    def meta_procs(self, shard=None):
        return [p for p in self.procs if p.role == "meta" and (shard is None or p.shard == shard)]

    def mgmt_procs(self):
        return [p for p in self.procs if p.role == "mgmt"]

    def data_procs(self):
        return [p for p in self.procs if p.role == "data"]

    def leader_of(self, shard):
        return self.meta_procs(shard)[0]

    def cluster_map(self):
        return type("Map", (), {"targets": {1: type("T", (), {"state": "serving"})()}})()

    def kill(self, p):
        p.alive = False
        self.log.append(f"kill {p.name}")

    def restart(self, p):
        p.alive = True
        self.log.append(f"restart {p.name}")


def test_chaos_keeps_a_majority_and_restarts_everything_it_killed():
    c = _Cluster()
    ch = Chaos(c, random.Random(7), threading.Event(), every=1.0, down=1e9, now=lambda: 0.0)
    for _ in range(20):
        ch._kill_one()
        down = [p for p in c.procs if not p.alive]
        per_role = Counter((p.role, p.shard) for p in down)
        assert all(n == 1 for n in per_role.values()), down  # one per shard, one mgmt, one data server
    assert sum(ch.kills.values()) == len(ch.events) >= 3
    ch._restart_due(everything=True)
    assert all(p.alive for p in c.procs)
    kills = sorted(e["kill"] for e in ch.events if "kill" in e)
    restarts = sorted(e["restart"] for e in ch.events if "restart" in e)
    assert kills == restarts
