"""Metadata requests per file, and their time, for strict-mode reads of small files one at a time:
every ``MetaClient`` request is counted and timed by kind while ``--files`` files of 16 KiB are read
in a shuffled order with ``Client.read_bytes``.

    PYTHONPATH=. .venv/bin/python benchmarks/strict_requests.py [--files 500] [--inline]

Its own LocalCluster (1 shard x 3 replicas, 3 data servers, chains of 3). ``--inline``: the files in a
directory with the inline policy (their bytes in the metadata shard). A request's time is its round trip
as the client sees it; closes are sent in the background, so their time overlaps the next files'.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import tempfile
import time

import dfs
from dfs.client import meta as M
from dfs.local.cluster import LocalCluster


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--inline", action="store_true")
    a = ap.parse_args()
    stats: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    send = M.MetaClient._send

    async def timed(self, req, *args, **kw):
        t = time.perf_counter()
        try:
            return await send(self, req, *args, **kw)
        finally:
            s = stats[type(req).__name__]
            s[0] += 1
            s[1] += time.perf_counter() - t

    M.MetaClient._send = timed
    root = tempfile.mkdtemp(prefix="dfs-strict-req-")
    c = LocalCluster(os.path.join(root, "c"), shards=1, replicas=3, mgmt_replicas=1, data_servers=3,
                     chain_replicas=3)
    c.start(120.0)
    try:
        with dfs.connect(cluster=c.config_path, uid=0, gid=0, groups=()) as fs:
            fs.makedirs("/ds")
            # the MetaClient call rather than Client.set_layout: the script also measures commits before it
            fs.run(fs.meta.setlayout(fs.stat("/ds").st_ino, 0, inline=a.inline))
            blob = os.urandom(16 << 10)
            for i in range(a.files):
                fs.write_bytes(f"/ds/f{i}", blob)
            fs.sync()
            stats.clear()
            order = list(range(a.files))
            random.shuffle(order)
            t = time.perf_counter()
            for i in order:
                fs.read_bytes(f"/ds/f{i}")
            dt = time.perf_counter() - t
            fs.sync()
        print(f"{a.files / dt:,.0f} files/s, {dt / a.files * 1e3:.2f} ms per file")
        for kind, (n, s) in sorted(stats.items(), key=lambda x: -x[1][1]):
            print(f"  {kind:<14} {n:>6} requests  {s / n * 1e3:7.3f} ms each  {n / a.files:6.2f} per file")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
