"""The `dfs` command as a user runs it: the demo, and a local cluster's life cycle."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DFS = [sys.executable, "-m", "dfs.cli"]


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*DFS, *args], capture_output=True, text=True, timeout=timeout)


def _runs_dfs(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"dfs." in f.read()
    except OSError:
        return False


@pytest.mark.slow
def test_demo_runs_and_reports(tmp_path):
    r = run("demo", "--data", str(tmp_path / "demo"), "--files", "200")
    assert r.returncode == 0, r.stdout + r.stderr
    for expected in ("healthy after", "created 200 files", "rename shard", "NotEmpty errno 39",
                     "committed by the new leader", "all processes stopped"):
        assert expected in r.stdout, r.stdout


@pytest.mark.slow
def test_cluster_up_status_down_up_again(tmp_path):
    data = str(tmp_path / "c")
    try:
        r = run("cluster", "up", "--data", data, "--shards", "2")
        assert r.returncode == 0, r.stdout + r.stderr
        assert run("cluster", "up", "--data", data).returncode != 0, "a second up on a running cluster is refused"
        out = json.loads(run("cluster", "status", "--data", data, "--json").stdout)
        st = out["processes"]
        assert {p["role"] for p in st} == {"mgmt", "meta", "data"} and all(p["alive"] for p in st)
        assert sum(p["raft_role"] == "leader" for p in st) == 2
        assert len(out["targets"]) == 3 and all(t["state"] == "serving" for t in out["targets"])
        assert len(out["chains"]) == 3 and not any(ch["degraded"] for ch in out["chains"])
        r = run("cluster", "down", "--data", data)
        assert r.returncode == 0 and "stopped 12 processes" in r.stdout
        assert not [p for p in st if _runs_dfs(p["pid"])], "down stopped every process up started"
        r = run("cluster", "up", "--data", data)  # the same cluster again
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        run("cluster", "down", "--data", data)


_HOLDER = """
import sys, time
from dfs.local.cluster import LocalCluster
with LocalCluster(sys.argv[1], shards=1, replicas=1, mgmt_replicas=1) as c:
    print(" ".join(str(p.popen.pid) for p in c.procs), flush=True)
    while True:
        time.sleep(3600)
"""


def test_a_sigterm_to_a_program_running_a_cluster_stops_its_servers(tmp_path):
    """A benchmark script (or ``dfs bench``) stopped with SIGTERM leaves no server running:
    the group started with ``with`` turns the signal into SystemExit and stops its servers."""
    import os
    import signal

    from dfs.testing.wait import until

    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "c")],
                              stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        pids = [int(x) for x in holder.stdout.readline().split()]
        assert pids and all(_runs_dfs(p) for p in pids)
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(60) == 128 + signal.SIGTERM
        until(lambda: not any(_runs_dfs(p) for p in pids), timeout=30, what="servers stopped")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for p in pids:
            if _runs_dfs(p):
                os.kill(p, signal.SIGKILL)
