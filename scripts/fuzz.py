"""Run the fuzz tests (tests/fuzz) longer than the suite does.

    python scripts/fuzz.py                      # 2000 examples per test, the suite's (derandomized) ones first
    python scripts/fuzz.py --examples 20000 --random   # fresh random examples each run
    python scripts/fuzz.py -k dataplane         # one target (pytest -k)

The suite runs each fuzz test with a few dozen derandomized examples
(dfs.testing.fuzz.fuzz_settings); this sets DFS_FUZZ_EXAMPLES (and
DFS_FUZZ_RANDOM) for the same tests. A failure prints the smallest example
hypothesis found and a blob to reproduce it (@reproduce_failure).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=2000, help="examples per test")
    ap.add_argument("--random", action="store_true", help="fresh random examples (not the derandomized ones)")
    ap.add_argument("-k", default=None, help="pytest -k expression")
    a = ap.parse_args()
    env = {**os.environ, "DFS_FUZZ_EXAMPLES": str(a.examples), "PYTHONPATH": str(ROOT)}
    if a.random:
        env["DFS_FUZZ_RANDOM"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=0", str(ROOT / "tests" / "fuzz")]
    if a.k:
        cmd += ["-k", a.k]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
