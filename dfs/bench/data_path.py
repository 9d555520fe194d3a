"""Data path benchmark: sequential write and read through the file I/O core,
next to the same workload on a local directory of the same disk.

    python -m dfs.bench.data_path --size-mib 1024 --request-mib 4 --parallel 4

Phases, each for the local directory first and then for dfs:

* ``write``      one stream writes the file with ``--request-mib`` writes, then fsync;
* ``read cold``  the page cache of the written files is dropped (posix_fadvise
                 DONTNEED on every file of the local directory, or of every
                 data server's target), then one stream reads it back;
* ``read warm``  the same read again;
* ``parallel``   ``--parallel`` streams each write, then read, their own file of
                 ``size / parallel``.

Figures are MB/s (10^6 bytes) and the ratio dfs / local.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

MB = 1_000_000


@dataclass
class Figure:
    phase: str
    engine: str
    bytes: int
    seconds: float

    @property
    def mb_s(self) -> float:
        return self.bytes / self.seconds / MB if self.seconds > 0 else float("nan")


def drop_cache(paths: list[str]) -> None:
    """Evict the files under ``paths`` from the page cache (they are synced first)."""
    for root in paths:
        for d, _, files in os.walk(root):
            for f in files:
                p = os.path.join(d, f)
                try:
                    fd = os.open(p, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass
                finally:
                    os.close(fd)


def _pattern(n: int) -> bytes:
    return (bytes(range(256)) * (n // 256 + 1))[:n]


# ------------------------------------------------------------------ local reference

def local_write(path: str, size: int, req: int) -> None:
    buf = _pattern(req)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < size:
            done += os.write(fd, buf[:min(req, size - done)])
        os.fsync(fd)
    finally:
        os.close(fd)


def local_read(path: str, req: int) -> int:
    buf = bytearray(req)
    n = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(buf)
            if not got:
                return n
            n += got


def run_local(folder: str, size: int, req: int, parallel: int, log) -> list[Figure]:
    out = []
    p = os.path.join(folder, "one")
    t = time.perf_counter()
    local_write(p, size, req)
    out.append(Figure("write", "local", size, time.perf_counter() - t))
    drop_cache([folder])
    t = time.perf_counter()
    n = local_read(p, req)
    out.append(Figure("read cold", "local", n, time.perf_counter() - t))
    t = time.perf_counter()
    n = local_read(p, req)
    out.append(Figure("read warm", "local", n, time.perf_counter() - t))
    os.unlink(p)
    each = size // parallel
    paths = [os.path.join(folder, f"p{i}") for i in range(parallel)]
    with ThreadPoolExecutor(parallel) as ex:
        t = time.perf_counter()
        list(ex.map(lambda q: local_write(q, each, req), paths))
        out.append(Figure(f"write x{parallel}", "local", each * parallel, time.perf_counter() - t))
        drop_cache([folder])
        t = time.perf_counter()
        n = sum(ex.map(lambda q: local_read(q, req), paths))
        out.append(Figure(f"read x{parallel} cold", "local", n, time.perf_counter() - t))
    for q in paths:
        os.unlink(q)
    for f in out:
        log(f"{f.engine:<6} {f.phase:<16} {f.mb_s:>9.0f} MB/s")
    return out


# ------------------------------------------------------------------ dfs

async def run_dfs(open_file: Callable[[str], Awaitable], cache_dirs: list[str], size: int, req: int,
                  parallel: int, log) -> list[Figure]:
    """``open_file(name)`` -> an object with async pwrite/pread/fsync/close (a FileHandle)."""
    out = []
    buf = _pattern(req)

    async def write(name: str, n: int) -> None:
        fh = await open_file(name)
        off = 0
        while off < n:
            k = min(req, n - off)
            await fh.pwrite(off, buf[:k])
            off += k
        await fh.fsync()
        await fh.close()

    async def read(name: str) -> int:
        fh = await open_file(name)
        off = 0
        while True:
            got = await fh.pread(off, req)
            if not got:
                break
            off += len(got)
        await fh.close()
        return off

    t = time.perf_counter()
    await write("one", size)
    out.append(Figure("write", "dfs", size, time.perf_counter() - t))
    drop_cache(cache_dirs)
    t = time.perf_counter()
    n = await read("one")
    out.append(Figure("read cold", "dfs", n, time.perf_counter() - t))
    t = time.perf_counter()
    n = await read("one")
    out.append(Figure("read warm", "dfs", n, time.perf_counter() - t))
    each = size // parallel
    t = time.perf_counter()
    await asyncio.gather(*(write(f"p{i}", each) for i in range(parallel)))
    out.append(Figure(f"write x{parallel}", "dfs", each * parallel, time.perf_counter() - t))
    drop_cache(cache_dirs)
    t = time.perf_counter()
    n = sum(await asyncio.gather(*(read(f"p{i}") for i in range(parallel))))
    out.append(Figure(f"read x{parallel} cold", "dfs", n, time.perf_counter() - t))
    for f in out:
        log(f"{f.engine:<6} {f.phase:<16} {f.mb_s:>9.0f} MB/s")
    return out


def table(local: list[Figure], dfs: list[Figure]) -> str:
    rows = ["| phase | local MB/s | dfs MB/s | ratio |", "|---|---|---|---|"]
    by = {f.phase: f for f in dfs}
    for f in local:
        d = by.get(f.phase)
        rows.append(f"| {f.phase} | {f.mb_s:,.0f} | {d.mb_s:,.0f} | {d.mb_s / f.mb_s:.2f}x |" if d else
                    f"| {f.phase} | {f.mb_s:,.0f} | - | - |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs bench data", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--request-mib", type=int, default=4)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--root", default=None, help="folder on the disk to measure (default: a temp dir)")
    ap.add_argument("--local-only", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    size, req = a.size_mib << 20, a.request_mib << 20
    root = a.root or tempfile.mkdtemp(prefix="dfs-bench-data-")
    os.makedirs(root, exist_ok=True)
    try:
        loc = os.path.join(root, "local")
        os.makedirs(loc, exist_ok=True)
        local = run_local(loc, size, req, a.parallel, print)
        dfs: list[Figure] = []
        if not a.local_only:
            from dfs.bench.data_cluster import run_on_cluster

            dfs = asyncio.run(run_on_cluster(os.path.join(root, "cluster"), size, req, a.parallel, print))
        print(table(local, dfs))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"local": [asdict(x) | {"mb_s": x.mb_s} for x in local],
                           "dfs": [asdict(x) | {"mb_s": x.mb_s} for x in dfs]}, f, indent=1)
    finally:
        if a.root is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
