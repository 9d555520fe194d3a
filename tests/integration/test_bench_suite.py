"""`dfs bench meta` and `dfs bench ai` at a tiny scale (seconds): they run as the
command line does, and write well-formed JSON with every phase, workload and
engine present and every figure positive (and PNG charts). No timing assertions."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
from dfs.testing.wait import until

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


AI_FIGURES = {"list": {"ls -l", "listdir"}, "shuffle": {"epoch 1", "epoch 2"}, "ckpt": {"save", "restore"},
              "load": {"cold", "warm"}}
ENGINES = {"local", "mount", "library"}


def _mounts_under(path) -> list[str]:
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(path))]


def _procs_mentioning(path) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmd:
            found.append(f"{pid}: {cmd}")
    return found


@pytest.mark.slow
def test_bench_ai_every_workload_and_engine_with_plots(tmp_path):
    out, charts, root = tmp_path / "ai.json", tmp_path / "charts", tmp_path / "root"
    r = _run(["bench", "ai", "--procs", "2", "--list-entries", "200", "--files", "24", "--file-kib", "16-64",
              "--ckpt-mib", "4", "--load-mib", "8", "--replicas", "1", "--data-servers", "1",
              "--root", str(root), "--json", str(out), "--plot", str(charts)])
    res = json.loads(out.read_text())
    assert set(res["engines"]) == ENGINES
    got: dict[tuple[str, str], dict[str, dict]] = {}
    for row in res["rows"]:
        got.setdefault((row["workload"], row["figure"]), {})[row["engine"]] = row
    assert set(got) == {(w, f) for w, fs in AI_FIGURES.items() for f in fs}
    for key, by in got.items():
        assert set(by) == ENGINES, key
        for engine, row in by.items():
            assert _positive(row["value"]) and _positive(row["seconds"]), (key, row)
            if engine != "local":
                assert _positive(row["ratio"]), (key, row)
            if key[0] == "shuffle":
                assert _positive(row["mb_s"]), row
            if key == ("ckpt", "save"):
                assert _positive(row["commit_ms"]), row
    assert "| load | cold |" in r.stdout
    for w in AI_FIGURES:
        png = charts / f"ai-{w}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert _mounts_under(root) == []  # the tool unmounted what it mounted


@pytest.mark.slow
def test_bench_ai_sigterm_unmounts(tmp_path):
    root = tmp_path / "root"
    p = subprocess.Popen([*DFS, "bench", "ai", "--workloads", "list", "--list-entries", "5000000",
                          "--replicas", "1", "--data-servers", "1", "--root", str(root)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def mounted():
            assert p.poll() is None, p.stdout.read()
            return _mounts_under(root)
        until(mounted, 120, "the benchmark's mount")
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 143, out
    assert _mounts_under(root) == [], out
    assert _procs_mentioning(root) == [], out  # the cluster's servers and the mount process are gone
