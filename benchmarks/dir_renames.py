"""Concurrent directory moves on a real cluster: the ordering point on shard 0 (issue 17).

    .venv/bin/python benchmarks/dir_renames.py [--shards 2] [--dirs 64] [--inflight 1,4,16]

Starts a LocalCluster (shards x 3 replicas, 1 mgmt, no data servers), makes ``--dirs``
directories each holding one child, then moves every child to the next directory
(``rename a/x b/x_a``: a new parent, so it takes the ordering lock) with ``--inflight``
at once, and prints wall time, moves/s, latency p50/p99 and failures per setting.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import dfs
from dfs.local.cluster import LocalCluster


async def run(cluster_file: str, dirs: int, inflight: int, tag: str) -> dict:
    c = await dfs.aconnect(cluster_file, ttl=3600.0)
    try:
        top = f"/{tag}"
        await c.mkdir(top)
        for i in range(dirs):
            await c.makedirs(f"{top}/d{i}/x")
        sem = asyncio.Semaphore(inflight)
        lat: list[float] = []
        fails: list[str] = []

        async def one(i: int) -> None:
            async with sem:
                t0 = time.perf_counter()
                try:
                    await c.rename(f"{top}/d{i}/x", f"{top}/d{(i + 1) % dirs}/x{i}")
                except OSError as e:
                    fails.append(f"{e.errno}: {e}")
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(dirs)))
        wall = time.perf_counter() - t0
        lat.sort()
        return {"inflight": inflight, "wall_s": round(wall, 2), "moves_per_s": round(dirs / wall, 1),
                "p50_ms": round(statistics.median(lat) * 1e3, 1), "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 1),
                "failed": len(fails), "errors": sorted(set(fails))[:3]}
    finally:
        await c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--dirs", type=int, default=64)
    ap.add_argument("--inflight", default="1,4,16")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        with LocalCluster(root, shards=a.shards, replicas=3, mgmt_replicas=1) as cl:
            for k in (int(x) for x in a.inflight.split(",")):
                print(asyncio.run(run(cl.config_path, a.dirs, k, f"t{k}")), flush=True)


if __name__ == "__main__":
    main()
