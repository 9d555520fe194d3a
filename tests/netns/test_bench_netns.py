"""benchmarks/shards_netns.py, small: `dfs bench shards` with the servers on three namespace
hosts and the client on a fourth. Its client part, in the client's namespace, must reach every
replica over the fabric (requests, Status, /metrics) and read every server's CPU time by PID."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_shards_runs_across_namespaces(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "shards_netns.py"), "--shards", "2",
                        "--files", "40", "--dirs", "4", "--readdir-rounds", "1", "--idle", "0.5",
                        "--phases", "create,rename (cross dir)", "--root", str(tmp_path / "run"),
                        "--json", str(out)], capture_output=True, text=True, timeout=280)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (res,) = json.loads(out.read_text())["results"]
    assert res["shards"] == 2 and res["netns"]["hosts"] == 3
    phases = {p["phase"]: p for p in res["phases"]}
    assert phases["create"]["ops"] == 40 and phases["rename (cross dir)"]["ops"] == 40
    # every replica of both shards and the other servers were measured by PID
    assert len(res["idle_cpu_per_s_by_process"]) == 1 + 2 * 3 + 1 + 3
    assert phases["create"]["cpu_raw"]["leaders"] > 0 and phases["create"]["cpu_raw"]["followers"] > 0
    # (the coordinators' commit counters were scraped from every replica's /metrics over the
    # fabric: an endpoint that does not answer fails the run)
