"""Sequential write and cold read MB/s through a dfs mount, with the mount's read-ahead
left at the kernel's 128 KiB (``--read-ahead-kb 0``) and raised (4096), against the
local disk, and the size of the read requests the mount got (docs/benchmarks.md).

    PYTHONPATH=. .venv/bin/python scripts/fuse_seq_bench.py [--mib 512] [--rounds 2] [--root /tmp/dfs-seq]

A fresh one-host cluster (1 shard x 3 replicas, 3 data servers, chains of 3); dd with
1 MiB blocks, the write ended by fsync, the read after dropping the file's pages
(``iflag=nocache``). Needs root (FUSE, the bdi's read_ahead_kb).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dfs.testing.cluster import LocalCluster  # noqa: E402
from dfs.fuse.mount import mount_device  # noqa: E402
from dfs.testing.fusecount import CountingMount  # noqa: E402
from dfs.testing.wait import until  # noqa: E402


def dd(*args: str) -> float:
    """MB/s of one dd run."""
    r = subprocess.run(["dd", *args], capture_output=True, text=True, check=True)
    b, s = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", r.stderr).groups()
    return int(b) / float(s) / 1e6


def seq(folder: str, tag: str, mib: int, counts=None) -> dict:
    f = os.path.join(folder, f"seq-{tag}")
    w = dd("if=/dev/zero", f"of={f}", "bs=1M", f"count={mib}", "conv=fsync")
    subprocess.run(["dd", f"if={f}", "iflag=nocache", "count=0"], capture_output=True, check=True)
    before = counts() if counts else None
    r = dd(f"if={f}", "of=/dev/null", "bs=1M")
    out = {"write_MBps": round(w, 1), "read_MBps": round(r, 1)}
    if counts:
        out["read_requests"] = {k.split(":")[1]: v for k, v in (counts() - before).items() if k.startswith("read_")}
    os.unlink(f)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--root", default="/tmp/dfs-seq")
    a = ap.parse_args()
    shutil.rmtree(a.root, ignore_errors=True)
    c = LocalCluster(os.path.join(a.root, "cluster"), shards=1, replicas=3, mgmt_replicas=1, data_servers=3,
                     chain_replicas=3)
    c.start(timeout=180)
    mp, local = os.path.join(a.root, "mnt"), os.path.join(a.root, "local")
    os.makedirs(mp)
    os.makedirs(local)
    try:
        for rnd in range(a.rounds):
            print("local disk", seq(local, f"l{rnd}", a.mib), flush=True)
            for ra in ("0", "4096"):
                with CountingMount(mp, c.config_path, "--read-ahead-kb", ra,
                                   log_file=os.path.join(a.root, "mount.log")) as m:
                    ra_file = f"/sys/class/bdi/{mount_device(mp)}/read_ahead_kb"
                    until(lambda: open(ra_file).read().strip() == (ra if ra != "0" else "128"), 30, "read-ahead")
                    print(f"dfs, read_ahead_kb {'128 (kernel)' if ra == '0' else ra}",
                          seq(mp, f"d{rnd}{ra}", a.mib, m.counts), flush=True)
    finally:
        c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
