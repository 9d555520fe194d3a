"""Where the time of a shuffle epoch goes: every process of the cluster and the readers
sampled together with py-spy while P readers read N small files in a random order.

    .venv/bin/python benchmarks/profile_shuffle.py [--files 5000] [--procs 4] [--kib 16-128]
        [--out /tmp/shuffle.txt]
    .venv/bin/python benchmarks/profile_summary.py /tmp/shuffle.txt --by-process

The cluster is the one `dfs bench ai` runs (1 metadata shard x 3 replicas, 3 data
servers, chains of 3, one mgmt replica); the files are written first, the page caches
dropped, then one py-spy per process of this tree (raw collapsed stacks, idle frames left
out) records exactly the read phase (one epoch); the stacks are merged into one file, each
line prefixed with its process (``process PID:"cmdline"``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import dfs
from dfs.bench.data_path import drop_cache
from dfs.testing.cluster import LocalCluster


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the cluster's servers, the readers)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()
        except OSError:
            kids = []
        for k in map(int, kids):
            out.append(k)
            todo.append(k)
    return out


def reader(cfg: str, paths: list[str], barrier) -> None:
    fs = dfs.connect(cfg, uid=0, gid=0, groups=())
    try:
        barrier.wait(600)
        for p in paths:
            with fs.open(p, "rb") as f:
                f.read()
    finally:
        fs.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--kib", default="16-128")
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--out", default="/tmp/shuffle.txt")
    a = ap.parse_args()
    lo, hi = (int(x) for x in a.kib.split("-"))
    root = tempfile.mkdtemp(prefix="dfs-prof-shuffle-")
    try:
        with LocalCluster(os.path.join(root, "c"), shards=1, replicas=3, mgmt_replicas=1, data_servers=3,
                          chain_replicas=3) as cl:
            rng = random.Random(1)
            blob = os.urandom(hi << 10)
            fs = dfs.connect(cl.config_path, uid=0, gid=0, groups=())
            fs.mkdir("/s")
            names = [f"/s/f{i:06d}" for i in range(a.files)]
            for n in names:
                fs.write_bytes(n, blob[:rng.randint(lo << 10, hi << 10)])
            fs.close()
            rng.shuffle(names)
            drop_cache([t.path for d in cl.cfg.data for t in d.targets])
            ctx = mp.get_context("spawn")
            barrier = ctx.Barrier(a.procs + 1)
            procs = [ctx.Process(target=reader, args=(cl.config_path, names[r::a.procs], barrier))
                     for r in range(a.procs)]
            for p in procs:
                p.start()
            spies = []
            for pid in descendants(os.getpid()):
                out = f"{a.out}.{pid}"
                spies.append((pid, out, subprocess.Popen(
                    [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "-p", str(pid),
                     "--format", "raw", "-r", str(a.rate), "-o", out],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
            time.sleep(2)  # py-spy attaches (not synchronisation of the work measured)
            t0 = time.perf_counter()
            barrier.wait(600)
            for p in procs:
                p.join()
            dt = time.perf_counter() - t0
            with open(a.out, "w") as merged:
                for pid, out, spy in spies:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(120)
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode().strip() \
                        if os.path.exists(f"/proc/{pid}/cmdline") else "reader (multiprocessing)"
                    if os.path.exists(out):
                        with open(out) as f:
                            for line in f:
                                merged.write(f'process {pid}:"{cmd}";{line}')
                        os.unlink(out)
            print(f"{a.files} files, {a.procs} readers: {a.files / dt:.0f} files/s under py-spy; profile in {a.out}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
