"""The benchmark commands at a tiny scale: they run, and print well-formed, positive figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

DFS = [sys.executable, "-m", "dfs.cli"]


@pytest.mark.slow
def test_bench_data_tiny(tmp_path):
    out = tmp_path / "data.json"
    r = subprocess.run([*DFS, "bench", "data", "--size-mib", "8", "--request-mib", "1", "--parallel", "2",
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    phases = {f["phase"] for f in res["dfs"]}
    assert {"write", "read cold", "read warm", "write x2", "read x2 cold"} <= phases
    assert all(f["mb_s"] > 0 for f in res["local"] + res["dfs"])
    assert re.search(r"\| read cold \| [\d,]+ \| [\d,]+ \| [\d.]+x \|", r.stdout)


@pytest.mark.slow
def test_bench_service_tiny(tmp_path):
    out = tmp_path / "svc.json"
    r = subprocess.run([*DFS, "bench", "service", "--ops", "200", "--serial-ops", "50", "--batch-ops", "512",
                        "--batch-size", "128", "--client-procs", "1", "--failover-reps", "1",
                        "--group-commit", "on", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    rows = res["results"] if isinstance(res, dict) else res
    cases = {row["case"] for row in rows}
    assert {"create", "create_many", "getattr", "getattr_many", "failover"} <= cases
    assert all(row["ops_per_s"] > 0 for row in rows if row["case"] != "failover")
