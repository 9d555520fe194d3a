"""benchmarks/des_model.py, the shard scaling model (issue 17), on a made-up measurement:
its cost extraction and a few properties of what it predicts (simulated time, seeded:
no wall clock involved)."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

pytest.importorskip("simpy")

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "des_model.py")
_spec = importlib.util.spec_from_file_location("des_model", _PATH)
des = importlib.util.module_from_spec(_spec)
sys.modules["des_model"] = des  # its dataclasses look their module up
_spec.loader.exec_module(des)

ROLES = ("client", "leaders", "leader0", "followers", "mgmt", "data", "max_leader", "total")


def phase(name: str, ops: int, ms: dict, two_phase: int = 0) -> dict:
    cpu = {r: ops * ms.get(r, 0.0) / 1e3 for r in ROLES}
    return {"phase": name, "ops": ops, "seconds": 1.0, "ops_per_s": ops, "p50_ms": 1.0, "p99_ms": 2.0,
            "cpu_net": cpu, "cpu_raw": cpu, "two_phase": two_phase}


def measurement() -> list[dict]:
    one = [phase("create", 1000, {"client": 1, "leaders": 2, "followers": 2}),
           phase("stat", 1000, {"client": 0.5, "leaders": 0.5}),
           phase("rename (cross dir)", 1000, {"client": 1, "leaders": 3, "followers": 2})]
    four = [phase("create", 1000, {"client": 1, "leaders": 2, "followers": 2}),
            phase("stat", 1000, {"client": 0.5, "leaders": 0.5}),
            phase("rename (cross dir)", 1000, {"client": 1, "leaders": 6, "followers": 5}, two_phase=750)]
    idle = {"mgmt": 0.02}
    return [{"shards": 1, "replicas": 3, "idle_cpu_per_s": idle, "phases": one},
            {"shards": 4, "replicas": 3, "idle_cpu_per_s": idle, "phases": four}]


def test_costs_one_phase_from_one_shard_and_two_phase_from_the_share():
    c = des.load_costs(measurement(), 3)
    assert c["create"].leader == pytest.approx(0.002) and c["create"].follower == pytest.approx(0.001)
    assert c["create"].share(64) == 0.0 and not c["stat"].logged
    r = c["rename (cross dir)"]
    assert r.share_at == (4, 0.75)
    assert r.leader2 == pytest.approx(0.003 + 0.003 / 0.75)
    assert r.share(2) == pytest.approx(0.5) and r.share(64) == pytest.approx(63 / 64)


def test_single_shard_operations_scale_with_shards_when_clients_are_many():
    c = des.load_costs(measurement(), 3)
    pts = [des.simulate(c, shards=s, clients=64, kinds=("create",), ttl=0, ops=3000) for s in (1, 4)]
    assert pts[1]["ops_per_s"] > 3 * pts[0]["ops_per_s"]
    assert pts[0]["ops_per_s"] == pytest.approx(1 / 0.002, rel=0.05)  # the one leader's core, saturated


def test_shared_cores_bound_throughput_by_total_cpu():
    c = des.load_costs(measurement(), 3)
    p = des.simulate(c, shards=2, clients=1, inflight=16, kinds=("create",), hardware="shared", cores=2.0,
                     ttl=0, ops=3000)
    assert p["ops_per_s"] <= 2 / 0.005 * 1.05  # 5 ms of CPU per create over 2 cores
