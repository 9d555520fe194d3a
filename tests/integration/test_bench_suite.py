"""`dfs bench meta` and `dfs bench ai` at a tiny scale (seconds): they run as the
command line does, and write well-formed JSON with every phase, workload and
engine present and every figure positive (and PNG charts). No timing assertions."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

DFS = [sys.executable, "-m", "dfs.cli"]
META_PHASES = ["tree create", "file create", "stat", "open+read", "rename", "unlink", "tree remove"]


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    r = subprocess.run([*DFS, *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_meta(out, procs: int, files: int, dirs: int) -> dict:
    res = json.loads(out.read_text())
    rows = {r["phase"]: r for r in res["phases"]}
    assert list(rows) == META_PHASES
    for phase, r in rows.items():
        want = (dirs + (0 if res["args"]["shared_dir"] else 1)) * procs if "tree" in phase else files * procs
        assert r["ops"] == want, (phase, r)
        for k in ("seconds", "ops_per_s", "p50_ms", "p99_ms", "mean_ms"):
            assert _positive(r[k]), (phase, k, r)
        assert r["p50_ms"] <= r["p99_ms"]
    return res


@pytest.mark.slow
def test_bench_meta_library_own_cluster_shared_dir(tmp_path):
    out = tmp_path / "meta.json"
    r = _run(["bench", "meta", "--procs", "2", "--files", "40", "--dirs", "2", "--shared-dir", "--bytes", "64",
              "--shards", "2", "--replicas", "1", "--no-progress", "--json", str(out)])
    res = _check_meta(out, 2, 40, 2)
    assert res["target"].startswith("library")
    assert "| open+read | 80 |" in r.stdout


def test_bench_meta_path_dir_per_process(tmp_path):
    out = tmp_path / "meta.json"
    where = tmp_path / "mnt"
    where.mkdir()
    r = _run(["bench", "meta", "--path", str(where), "--procs", "2", "--files", "50", "--dirs", "3",
              "--json", str(out)])
    _check_meta(out, 2, 50, 3)
    assert "tree remove" in r.stderr  # the progress bar went through every phase
    assert list(where.iterdir()) == []  # nothing left behind
