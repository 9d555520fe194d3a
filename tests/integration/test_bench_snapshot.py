"""`dfs bench ai --snapshot` at a tiny scale: it runs as the command line does, writes
every figure for every engine (positive), leaves no mount behind. No timing assertions."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

DFS = [sys.executable, "-m", "dfs.cli"]
ENGINES = {"local", "mount", "library"}
READS = {"ls -l", "stat random", "stat again", "epoch cold", "epoch warm", "2 procs"}
ONCE = {"create", "manifest build", "manifest size", "manifest load (dfs)", "manifest load (cache)",
        "meta requests"}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_bench_ai_snapshot_tiny(tmp_path):
    out, root = tmp_path / "snap.json", tmp_path / "root"
    r = subprocess.run([*DFS, "bench", "ai", "--snapshot", "--snap-files", "64", "--snap-dirs", "4",
                        "--list-entries", "100", "--snap-stats", "50", "--procs", "2", "--snap-procs", "2",
                        "--replicas", "1", "--data-servers", "1", "--root", str(root), "--json", str(out)],
                       capture_output=True, text=True, timeout=400, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    got: dict[str, dict[str, dict]] = {}
    for row in json.loads(out.read_text())["rows"]:
        assert row["workload"] == "snapshot", row
        got.setdefault(row["figure"], {})[row["engine"]] = row
    assert set(got) == READS | ONCE
    for figure in READS:
        assert set(got[figure]) == ENGINES, figure
        assert all(_positive(row["value"]) for row in got[figure].values()), got[figure]
    for figure in ONCE - {"meta requests"}:
        assert set(got[figure]) == {"library"} and got[figure]["library"]["value"] >= 0, got[figure]
    assert got["manifest load (cache)"]["library"]["source"] == "cache"
    with open("/proc/mounts") as f:
        assert not [line for line in f if line.split()[1].startswith(str(root))]  # unmounted
