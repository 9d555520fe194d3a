"""A shuffled epoch of small files through a snapshot-mode client, in one process: files/s of
``DfsDataset.__getitems__`` (``Client.read_many`` per batch) and of ``Client.read_bytes``,
against ``open``+``read`` of the same files in a local directory of the same disk.

    PYTHONPATH=. .venv/bin/python benchmarks/snapshot_read_many.py [--files 5000] [--file-kib 16]
        [--batch 64] [--epochs 3] [--root DIR] [--profile]

Its own LocalCluster (1 shard x 3 replicas, 3 data servers, chains of 3); the dataset is
written, snapshotted, and read through ``DfsDataset("/", connect={..., "snapshot": ...,
"cache_dir": ...})``: epoch 1 fetches the pack chunks into the machine's cache, the later
epochs read from it. What it measures is the client's per-file path on the caller's thread
(docs/design/ai.md, "Files at hand are read on the caller's thread"). ``--profile``: the
cProfile of one more epoch (the work is on the caller's thread, where cProfile sees it).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import tempfile
import time

import dfs
from dfs.local.cluster import LocalCluster
from dfs.torch import DfsDataset, raw


def epoch(read_batch, n: int, batch: int, seed: int) -> float:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    t = time.monotonic()
    for b in range(0, n, batch):
        read_batch(order[b:b + batch])
    return n / (time.monotonic() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--file-kib", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--root", default=None)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="dfs-snap-read-", dir=a.root)
    cluster = LocalCluster(os.path.join(root, "cluster"), shards=1, replicas=3, mgmt_replicas=1, data_servers=3,
                           chain_replicas=3)
    cluster.start(120.0)
    conn = {"cluster": cluster.config_path, "uid": 0, "gid": 0, "groups": ()}
    try:
        blob = os.urandom(a.file_kib << 10)
        with dfs.connect(**conn) as fs:
            fs.makedirs("/ds")
            for i in range(a.files):
                fs.write_bytes(f"/ds/f{i:06d}", blob)
            fs.snapshot_create("/ds", "bench")
        local = os.path.join(root, "local")
        os.makedirs(local)
        files = []
        for i in range(a.files):
            p = os.path.join(local, f"f{i:06d}")
            with open(p, "wb") as f:
                f.write(blob)
            files.append(p)
        ds = DfsDataset("/", raw, connect=dict(conn, snapshot="/ds@bench", cache_dir=os.path.join(root, "cache"),
                                               cache_size="1G"))
        try:
            for e in range(a.epochs):
                rate = epoch(ds.__getitems__, len(ds), a.batch, e)
                print(f"dfs snapshot, read_many per batch, epoch {e + 1}: {rate:,.0f} files/s", flush=True)
            c = ds.client
            rate = epoch(lambda idx: [c.read_bytes(ds.files[i]) for i in idx], len(ds), a.batch, 100)
            print(f"dfs snapshot, read_bytes per file: {rate:,.0f} files/s", flush=True)

            def local_batch(idx):
                for i in idx:
                    with open(files[i], "rb") as f:
                        f.read()
            for e in range(2):
                rate = epoch(local_batch, a.files, a.batch, e)
                print(f"local, open+read per file, epoch {e + 1}: {rate:,.0f} files/s", flush=True)
            if a.profile:
                pr = cProfile.Profile()
                pr.enable()
                epoch(ds.__getitems__, len(ds), a.batch, 200)
                pr.disable()
                pstats.Stats(pr).sort_stats("tottime").print_stats(25)
        finally:
            ds.close()
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
