"""Small files inline (Data-on-MDT) against small files on data servers.

    python -m dfs.bench.inline [--files 400] [--parallel 16] [--sizes-kib 1,4,16,64] [--json out.json]

On a real LocalCluster (1 metadata shard x 3 Raft replicas, 1 mgmt replica, 3
data servers, chains of 3) it creates two directories: one whose policy keeps
new files inline (``setlayout(..., inline=True)``) and one whose files go to the
data servers (``inline=False``). For each file size and each directory:

* ``write``: ``--files`` files, each create + one pwrite + close
  (inline: CREATE + WRITEINLINE; chunks: CREATE + chunk write on a chain of
  3 + EXTEND), by ``--parallel`` workers;
* ``read``: the same files in shuffled order, each open (GETATTR) + read of the
  whole file + close (inline: GETATTR + READINLINE; chunks: GETATTR + a chunk
  read from one replica);
* the same two with one worker (latency without queueing).

Reported: files/s, p50 and p99 latency per file, and for the inline writes the
metadata mutations/s and MB/s the shard's Raft log and RocksDB absorbed; a
``meta only`` row (CREATE + EXTEND of an empty file) gives the shard's
ceiling without data.

Sizes above ``INLINE_MAX`` have chunk rows only; the figures in docs/benchmarks.md
above 32 KiB were taken with ``INLINE_MAX`` set to 64 KiB in dfs/common/limits.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time

from dfs.client.connect import pair
from dfs.client.file import FileHandle
from dfs.common.ids import ROOT_INO
from dfs.common.limits import INLINE_MAX


def _blob(n: int, seed: int) -> bytes:
    return (bytes(range(seed & 0xFF, 256)) + bytes(range(256)) * (n // 256 + 2))[:n]


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


async def _run(workers: int, jobs: list, fn) -> tuple[float, list[float]]:
    """Run ``fn(job)`` for every job with ``workers`` concurrent workers: (seconds, latencies)."""
    q = list(jobs)
    lat: list[float] = []

    async def worker():
        while q:
            job = q.pop()
            t0 = time.perf_counter()
            await fn(job)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - t0, lat


async def bench(folder: str, files: int, parallel: int, sizes_kib: list[int], log=print) -> list[dict]:
    from dfs.route.shards import GrpcTransport
    from dfs.local.cluster import LocalCluster

    cluster = LocalCluster(folder, shards=1, replicas=3, mgmt_replicas=1, data_servers=3)
    await asyncio.to_thread(cluster.start, 120.0)
    rows: list[dict] = []
    try:
        t = await GrpcTransport(cluster.mgmt_addresses).connect()
        meta, data = pair(t)
        root = await meta.getattr(ROOT_INO)
        dirs = {}
        for mode in ("inline", "chunks"):
            d = await meta.mkdir(ROOT_INO, mode)
            await meta.setlayout(d.ino, root.layout, inline=mode == "inline")
            dirs[mode] = d.ino
        seq = iter(range(10**9))

        def row(kind: str, mode: str, size: int, workers: int, n: int, secs: float, lat: list[float],
                muts_per_file: int = 0) -> None:
            r = {"phase": kind, "mode": mode, "size": size, "workers": workers, "files": n,
                 "files_s": n / secs, "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * _pct(lat, 0.99)}
            if muts_per_file:
                r["meta_mut_s"] = muts_per_file * n / secs
                r["meta_mb_s"] = size * n / secs / 1e6
            rows.append(r)
            log(f"{kind:6} {mode:7} {size // 1024:4} KiB  w={workers:2}  {r['files_s']:8.0f} files/s  "
                f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms"
                + (f"  meta {r['meta_mut_s']:6.0f} mut/s {r['meta_mb_s']:5.1f} MB/s" if muts_per_file else ""))

        # warm up both paths (connections, chains)
        for mode in ("inline", "chunks"):
            for i in range(20):
                a, _ = await meta.create(dirs[mode], f"warm{i}")
                fh = FileHandle(meta, data, a)
                await fh.pwrite(0, b"w" * 1000)
                await fh.close()

        # the shard's ceiling without data: CREATE + EXTEND of an empty file
        for workers, n in ((parallel, files), (1, max(50, files // 4))):
            async def meta_only(name: str) -> None:
                a, _ = await meta.create(dirs["chunks"], name)
                await meta.extend(a.ino, 0)
            secs, lat = await _run(workers, [f"m{next(seq)}" for _ in range(n)], meta_only)
            row("meta", "only", 0, workers, n, secs, lat, 2)

        for kib in sizes_kib:
            size = kib * 1024
            for workers, n in ((parallel, files), (1, max(50, files // 4))):
                for mode in ("inline", "chunks"):
                    if mode == "inline" and size > INLINE_MAX:
                        continue
                    names = [f"f{next(seq)}" for _ in range(n)]
                    inos: dict[str, int] = {}

                    async def write(name: str, mode=mode, size=size, inos=inos) -> None:
                        a, _ = await meta.create(dirs[mode], name)
                        fh = FileHandle(meta, data, a)
                        await fh.pwrite(0, _blob(size, len(name)))
                        await fh.close()
                        inos[name] = a.ino

                    secs, lat = await _run(workers, names, write)
                    row("write", mode, size, workers, n, secs, lat, 2 if mode == "inline" else 0)
                    order = list(names)
                    random.shuffle(order)

                    async def read(name: str, size=size, inos=inos) -> None:
                        a = await meta.getattr(inos[name])
                        fh = FileHandle(meta, data, a)
                        got = await fh.pread(0, size)
                        await fh.close()
                        if len(got) != size:
                            raise AssertionError(f"short read {len(got)} of {size}")

                    secs, lat = await _run(workers, order, read)
                    row("read", mode, size, workers, n, secs, lat)
        # listing the directories (readdir plus): unaffected by where the bytes are
        for mode in ("inline", "chunks"):
            t0 = time.perf_counter()
            entries = await meta.listdir(dirs[mode], plus=True)
            secs = time.perf_counter() - t0
            rows.append({"phase": "list", "mode": mode, "entries": len(entries), "entries_s": len(entries) / secs})
            log(f"list   {mode:7} {len(entries)} entries  {len(entries) / secs:8.0f} entries/s")
        await data.close()
        await meta.close()
    finally:
        await asyncio.to_thread(cluster.stop)
    return rows


def table(rows: list[dict]) -> str:
    """The markdown table of docs/benchmarks.md."""
    out = [("| size | workers | write inline files/s (p50 ms) | write chunks files/s (p50 ms) | "
            "read inline files/s (p50 ms) | read chunks files/s (p50 ms) | inline meta mut/s (MB/s) |"),
           "|---|---|---|---|---|---|---|"]
    by = {(r["phase"], r["mode"], r["size"], r["workers"]): r for r in rows if "size" in r}
    keys = sorted({(r["size"], r["workers"]) for r in rows if r.get("phase") in ("write", "read")},
                  key=lambda k: (-k[1], k[0]))

    def cell(r):
        return "-" if r is None else f"{r['files_s']:.0f} ({r['p50_ms']:.2f})"

    for size, w in keys:
        wi = by.get(("write", "inline", size, w))
        out.append(f"| {size // 1024} KiB | {w} | {cell(wi)} | {cell(by.get(('write', 'chunks', size, w)))} | "
                   f"{cell(by.get(('read', 'inline', size, w)))} | {cell(by.get(('read', 'chunks', size, w)))} | "
                   + ("-" if wi is None else f"{wi['meta_mut_s']:.0f} ({wi['meta_mb_s']:.1f})") + " |")
    for r in rows:
        if r.get("phase") == "meta":
            out.append(f"| meta only (create + extend, no data) | {r['workers']} | {r['files_s']:.0f} "
                       f"({r['p50_ms']:.2f}) | | | | {r['meta_mut_s']:.0f} (0) |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--sizes-kib", default="1,4,16,64")
    ap.add_argument("--json", default="")
    ap.add_argument("--dir", default="")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes_kib.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="dfs-inline-", dir=a.dir or None) as folder:
        rows = asyncio.run(bench(folder, a.files, a.parallel, sizes))
    print()
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
