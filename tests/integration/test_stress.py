"""`dfs bench stress` at a small scale, on its own LocalCluster (2 shards x 3 replicas,
3 mgmt replicas, 3 data servers, chains of 3): concurrent clients end with a namespace
and contents equal to the tool's model, without and with kill -9 of servers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

DFS = [sys.executable, "-m", "dfs.cli"]


def stress(tmp_path, *args: str) -> dict:
    out = tmp_path / "stress.json"
    r = subprocess.run([*DFS, "bench", "stress", "--clients", "3", "--seed", "11", "--no-progress",
                        "--dir", str(tmp_path), "--json", str(out), *args],
                       check=False, capture_output=True, text=True, timeout=500)
    assert out.exists(), r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["differences"] == [] and res["differences_count"] == 0, r.stdout
    assert r.returncode == 0, r.stdout + r.stderr
    assert res["config"]["clients"] == 3 and res["config"]["shards"] == 2
    for kind in ("create", "write", "read", "rename", "link", "unlink", "mkdir"):
        assert res["ops"].get(kind, 0) > 0, (kind, res["ops"])
    assert res["ops_total"] == sum(res["ops"].values()) > 0
    assert res["ops_per_s"] > 0
    v = res["verified"]
    assert v["dirs"] >= 3 * 5 + 5 and v["files"] > 0 and v["bytes"] > 0
    assert "verified:" in r.stdout and "differences: 0" in r.stdout
    return res


def test_stress(tmp_path):
    res = stress(tmp_path, "--duration", "6")
    assert "chaos" not in res


def test_stress_chaos(tmp_path):
    res = stress(tmp_path, "--duration", "8", "--chaos", "--chaos-every", "1.5", "--chaos-down", "1.5")
    ch = res["chaos"]
    assert ch["error"] is None
    assert sum(ch["kills"].values()) >= 1
    kills = [e["kill"] for e in ch["events"] if "kill" in e]
    restarts = [e["restart"] for e in ch["events"] if "restart" in e]
    assert sorted(kills) == sorted(restarts)  # everything killed came back before the check


def test_stress_linearizable_chaos(tmp_path):
    """The linearizability mode's command: a history recorded under kills and pauses, checked."""
    out = tmp_path / "lin.json"
    r = subprocess.run([*DFS, "bench", "stress", "--linearizable", "--chaos", "--clients", "3", "--seed", "11",
                        "--duration", "8", "--chaos-every", "2", "--chaos-down", "1", "--no-progress",
                        "--dir", str(tmp_path), "--json", str(out), "--history", str(tmp_path / "h.json")],
                       check=False, capture_output=True, text=True, timeout=500)
    assert out.exists(), r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["verdict"] == "linearizable", r.stdout
    assert r.returncode == 0, r.stdout + r.stderr
    assert res["nemesis_error"] is None
    assert res["ops_total"] == sum(res["ops"].values())
    assert res["faults"] and "verdict: linearizable" in r.stdout
