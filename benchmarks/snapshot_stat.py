"""Snapshot mode's stat of random paths, in process: microseconds per ``AsyncClient.stat``.

    .venv/bin/python benchmarks/snapshot_stat.py [--dirs 16] [--files 200] [--stats 20000] [--profile]

A tree of ``--dirs`` directories of ``--files`` files on the in-process engine
(dfs/testing/snapfake.py), snapshotted, its manifest built, and a snapshot-mode
client over it; then ``--stats`` stats of random paths ``/dirNN/fNNNN`` (after 100
to warm up). What it measures is the client's own path: the walk, the manifest's
lookups and the Attr it builds, no I/O. ``--profile``: the cProfile of one more round.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import time

from dfs.client.core import Core
from dfs.client.manifest import Manifest, build
from dfs.client.paths import AsyncClient
from dfs.client.snapmode import SnapshotMode, SnapshotSource
from dfs.testing.snapfake import snapshot_client


async def main(a) -> None:
    c, _, meta, chunks, _ = snapshot_client(0)
    try:
        for d in range(a.dirs):
            await c.makedirs(f"/d/dir{d:02d}")
            for i in range(a.files):
                await c.write_bytes(f"/d/dir{d:02d}/f{i:04d}", b"x")
        await c.sync()
        info = await c.snapshot_create("/d", "s1")
        m = Manifest(await build(SnapshotSource(meta, chunks, info.epoch, info.root), snap=info.epoch))
        s = AsyncClient(core=Core(None, chunks, SnapshotMode(m, info.epoch, meta, chunks)))
        rnd = random.Random(0)
        paths = [f"/dir{rnd.randrange(a.dirs):02d}/f{rnd.randrange(a.files):04d}" for _ in range(a.stats)]
        for p in paths[:100]:
            await s.stat(p)
        t0 = time.perf_counter()
        for p in paths:
            await s.stat(p)
        print(f"stat of a random path: {(time.perf_counter() - t0) / len(paths) * 1e6:.1f} us")
        if a.profile:
            pr = cProfile.Profile()
            pr.enable()
            for p in paths:
                await s.stat(p)
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(15)
    finally:
        await c.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dirs", type=int, default=16)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--stats", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    asyncio.run(main(ap.parse_args()))
