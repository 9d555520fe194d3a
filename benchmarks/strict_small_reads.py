"""Shuffled epochs of small files through a strict-mode library client, in one process:
files/s of ``Client.read_bytes`` per file and of ``Client.read_many`` per batch, against
``open``+``read`` of the same files in a local directory of the same disk.

    PYTHONPATH=. .venv/bin/python benchmarks/strict_small_reads.py [--files 3000]
        [--sizes-kib 16,128] [--batch 64] [--epochs 2] [--cache-size 1G] [--root DIR]

Its own LocalCluster (1 shard x 3 replicas, 3 data servers, chains of 3). Each size is read
from a directory whose files are on the data servers and, up to ``INLINE_MAX`` (32 KiB),
from one with the inline policy (``set_layout(inline=True)``: the bytes in the metadata
shard). Strict mode revalidates every open (close-to-open), so each file costs at
least one metadata request; what the figures show is what else it costs: the open's Raft
rounds, the handle's close and the bytes' trip (docs/benchmarks.md, "Small files in strict
mode"). The read_many epochs come after the read_bytes ones: with the cache on, every one
of them finds the files cached.
``--cache-size``: the node-local cache (0: off), which strict mode uses for files whose data
version has not changed since the bytes were cached.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import dfs
from dfs.common.limits import INLINE_MAX
from dfs.local.cluster import LocalCluster


def epoch(read_batch, n: int, batch: int, seed: int) -> float:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    t = time.monotonic()
    for b in range(0, n, batch):
        read_batch(order[b:b + batch])
    return n / (time.monotonic() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--sizes-kib", default="16,128")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--cache-size", default="1G")
    ap.add_argument("--root", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes_kib.split(",")]
    root = tempfile.mkdtemp(prefix="dfs-strict-read-", dir=a.root)
    cluster = LocalCluster(os.path.join(root, "cluster"), shards=1, replicas=3, mgmt_replicas=1, data_servers=3,
                           chain_replicas=3)
    cluster.start(120.0)
    conn = {"cluster": cluster.config_path, "uid": 0, "gid": 0, "groups": ()}
    if a.cache_size not in ("0", ""):
        conn.update(cache_dir=os.path.join(root, "cache"), cache_size=a.cache_size)
    out: dict = {"files": a.files, "batch": a.batch, "cache_size": a.cache_size, "rows": []}

    def row(kib: int, where: str, what: str, rate: float) -> None:
        print(f"{kib:>4} KiB {where:<7} {what:<36} {rate:>10,.0f} files/s", flush=True)
        out["rows"].append({"kib": kib, "where": where, "what": what, "files_per_s": round(rate, 1)})

    try:
        with dfs.connect(**conn) as fs:
            for kib, inline in [(k, i) for k in sizes for i in ((False, True) if k << 10 <= INLINE_MAX else (False,))]:
                blob = os.urandom(kib << 10)
                d = f"/ds{kib}{'-inline' if inline else ''}"
                fs.makedirs(d)
                fs.set_layout(d, inline=inline)
                for i in range(a.files):
                    fs.write_bytes(f"{d}/f{i:06d}", blob)
                paths = [f"{d}/f{i:06d}" for i in range(a.files)]
                where = "inline" if inline else "chunks"
                local = os.path.join(root, f"local{kib}{where}")
                os.makedirs(local)
                lpaths = []
                for i in range(a.files):
                    p = os.path.join(local, f"f{i:06d}")
                    with open(p, "wb") as f:
                        f.write(blob)
                    lpaths.append(p)
                for e in range(a.epochs):
                    row(kib, where, f"read_bytes per file, epoch {e + 1}",
                        epoch(lambda idx: [fs.read_bytes(paths[i]) for i in idx], a.files, a.batch, e))
                for e in range(a.epochs):
                    row(kib, where, f"read_many per batch, epoch {e + 1}",
                        epoch(lambda idx: list(fs.read_many([paths[i] for i in idx])), a.files, a.batch, 10 + e))

                def local_batch(idx):
                    for i in idx:
                        with open(lpaths[i], "rb") as f:
                            f.read()
                row(kib, where, "local open+read (page cache)", epoch(local_batch, a.files, a.batch, 20))
    finally:
        cluster.stop()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
