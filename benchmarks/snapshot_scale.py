"""Snapshot create time against the size of the tree (docs/design/snapshots.md: creating a
snapshot writes nothing per file, so its time is the cut's steps, whatever the tree).

    .venv/bin/python benchmarks/snapshot_scale.py --files 1000000 [--shards 1] [--replicas 3]

Starts a LocalCluster (with one data server, so the data servers' hold and resume are part
of it), creates ``--files`` files in directories of 10,000 (batched creates), then takes
``--snapshots`` snapshots of the tree and prints their create times, the metadata history
entries (none until something changes), and what changing 1,000 files then adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time

from dfs.client.meta import MetaClient
from dfs.common.ids import ROOT_INO
from dfs.meta import schema as S
from dfs.route.shards import GrpcTransport
from dfs.testing.cluster import LocalCluster


def history_entries(c: LocalCluster) -> int:
    return sum(len(c.read_replica(p, S.P_HISTORY)) for p in c.meta_procs() if p.replica == 0)


async def main_async(c: LocalCluster, a) -> dict:
    meta = MetaClient(await GrpcTransport(c.mgmt_addresses, auth=c.credentials).connect())
    try:
        top = await meta.mkdir(ROOT_INO, "tree")
        t0 = time.monotonic()
        made = 0
        per_dir = 10_000
        for d in range((a.files + per_dir - 1) // per_dir):
            dino = (await meta.mkdir(top.ino, f"d{d}")).ino
            n = min(per_dir, a.files - made)
            for k in range(0, n, 1000):
                await meta.create_many(dino, [f"f{i}" for i in range(k, min(n, k + 1000))])
            made += n
            print(f"\r{made} files ({made / (time.monotonic() - t0):.0f}/s)", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        times = []
        for i in range(a.snapshots):
            s0 = time.monotonic()
            await meta.snapshot_create(top.ino, f"s{i}", "/tree")
            times.append(time.monotonic() - s0)
        first = (await meta.listdir(top.ino))[0]
        some = (await meta.listdir(first.ino))[:1000]
        for e in some:
            await meta.setattr(e.ino, mode=0o600)
        return {"files": made, "create_seconds": round(time.monotonic() - t0, 1),
                "snapshot_create_s": [round(t, 4) for t in times],
                "snapshot_create_median_s": round(statistics.median(times), 4), "changed": len(some)}
    finally:
        await meta.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--snapshots", type=int, default=5)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--root", default=None)
    a = ap.parse_args()
    root = a.root or tempfile.mkdtemp(prefix="snapscale-")
    c = LocalCluster(root, shards=a.shards, replicas=a.replicas, mgmt_replicas=1, data_servers=1, chain_replicas=1)
    c.start(timeout=120)
    try:
        out = asyncio.run(main_async(c, a))
        out["history_entries_after_changes"] = history_entries(c)
    finally:
        c.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
