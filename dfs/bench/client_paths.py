"""The two ways into dfs, next to the local disk: the FUSE mount, the Python library.

    dfs bench client [--files 2000] [--threads 1,8] [--list-entries 100000]
                     [--small-files 10000] [--small-kib 16] [--seq-mib 1024] [--json out.json]

One LocalCluster (1 metadata shard x 3 Raft replicas, 1 mgmt replica, 3 data
servers, chains of 3) is mounted with `dfs mount` (defaults: 1 s entry/attr
timeouts, read_ahead_kb 4096) and reached with ``dfs.connect()``; "local" is a
directory on the same disk. The same workload runs on each, in the same run:

* ``create`` / ``stat`` / ``unlink``: ``--files`` empty files (open O_CREAT +
  close; stat; unlink) by each of ``--threads`` thread counts; ops/s;
* ``ls -l``: a directory of ``--list-entries`` files (made with batched creates),
  listed with every entry's attributes: ``ls -l`` on the mount (cold: the kernel
  has never seen the names; then warm), ``scandir`` + ``stat`` of each entry
  in the library (one readdirplus per page), ``ls -l`` on the local directory;
* ``random read``: ``--small-files`` files of ``--small-kib`` KiB, read whole in a
  shuffled order (open, read, close) by 1 and 8 threads; page caches dropped
  first (local directory, data server targets); files/s and MB/s;
* ``seq read``: one ``--seq-mib`` file read with 1 MiB requests, cold; MB/s;
* ``seq write``: the same file written with 1 MiB requests (+ fsync) through the
  mount, without and with ``--writeback-cache``, the library, the local disk.

Figures are printed as a table per phase with the ratios mount/local,
library/local and library/mount.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dfs.bench.data_path import drop_cache

MB = 1_000_000


def _dfs(*args: str, timeout: float = 120) -> None:
    r = subprocess.run([sys.executable, "-m", "dfs.cli", *args], capture_output=True, text=True, timeout=timeout,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"dfs {' '.join(args)}: {r.stdout}{r.stderr}")


class _Posix:
    """The local directory and the mount: plain os calls."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, *p: str) -> str:
        return os.path.join(self.root, *p)

    def mkdir(self, p: str) -> None:
        os.mkdir(p)

    def create(self, p: str) -> None:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))

    def stat(self, p: str) -> None:
        os.stat(p)

    def unlink(self, p: str) -> None:
        os.unlink(p)

    def rmdir(self, p: str) -> None:
        os.rmdir(p)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def listdir(self, p: str) -> list[str]:
        return os.listdir(p)

    def scan_stat(self, p: str) -> int:
        """``ls -l`` without ls: scandir, then lstat every entry; returns the count."""
        n = 0
        with os.scandir(p) as it:
            for e in it:
                e.stat(follow_symlinks=False)
                n += 1
        return n

    def write(self, p: str, data: bytes, req: int = 1 << 20, fsync: bool = False) -> None:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            mv = memoryview(data)
            for off in range(0, len(data), req):
                os.write(fd, mv[off:off + req])
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def write_n(self, p: str, block: bytes, n: int, fsync: bool = False) -> None:
        """``block`` written ``n`` times (one write each), then fsync if asked."""
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        try:
            mv = memoryview(block)
            for _ in range(n):
                off = 0
                while off < len(mv):
                    off += os.write(fd, mv[off:])
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, p: str, req: int = 1 << 20) -> int:
        buf = bytearray(req)
        n = 0
        with open(p, "rb", buffering=0) as f:
            while got := f.readinto(buf):
                n += got
        return n

    def ls_l(self, p: str) -> int:
        out = subprocess.run(["ls", "-l", p], check=True, capture_output=True).stdout
        return out.count(b"\n") - 1


class _Library(_Posix):
    """The same calls through dfs.connect()."""

    def __init__(self, client) -> None:
        super().__init__("/")
        self.c = client

    def mkdir(self, p: str) -> None:
        self.c.mkdir(p)

    def create(self, p: str) -> None:
        self.c.open(p, "wb").close()

    def stat(self, p: str) -> None:
        self.c.stat(p)

    def unlink(self, p: str) -> None:
        self.c.remove(p)

    def rmdir(self, p: str) -> None:
        self.c.rmdir(p)

    def rename(self, src: str, dst: str) -> None:
        self.c.replace(src, dst)

    def listdir(self, p: str) -> list[str]:
        return self.c.listdir(p)

    def write(self, p: str, data: bytes, req: int = 1 << 20, fsync: bool = False) -> None:
        with self.c.open(p, "wb", buffering=0) as f:
            mv = memoryview(data)
            for off in range(0, len(data), req):
                f.write(mv[off:off + req])
            if fsync:
                f.fsync()

    def write_n(self, p: str, block: bytes, n: int, fsync: bool = False) -> None:
        with self.c.open(p, "wb", buffering=0) as f:
            for _ in range(n):
                f.write(block)
            if fsync:
                f.fsync()

    def read(self, p: str, req: int = 1 << 20) -> int:
        buf = bytearray(req)
        n = 0
        with self.c.open(p, "rb", buffering=0) as f:
            while got := f.readinto(buf):
                n += got
        return n

    def scan_stat(self, p: str) -> int:
        return self.ls_l(p)

    def ls_l(self, p: str) -> int:
        n = 0
        for e in self.c.scandir(p):
            e.stat(follow_symlinks=False)
            n += 1
        return n


def _timed(threads: int, items: list, fn: Callable) -> float:
    t0 = time.perf_counter()
    if threads == 1:
        for x in items:
            fn(x)
    else:
        with ThreadPoolExecutor(threads) as ex:
            for _ in ex.map(fn, items, chunksize=max(1, len(items) // (threads * 8))):
                pass
    return time.perf_counter() - t0


def bench(root: str, a, log=print) -> list[dict]:
    import dfs
    from dfs.local.cluster import LocalCluster

    rows: list[dict] = []

    def row(phase: str, engine: str, value: float, unit: str, **kw) -> None:
        rows.append({"phase": phase, "engine": engine, "value": value, "unit": unit, **kw})
        log(f"{phase:<22} {engine:<16} {value:>12,.1f} {unit}")

    cluster = LocalCluster(os.path.join(root, "cluster"), shards=1, replicas=3, mgmt_replicas=1, data_servers=3)
    cluster.start(120.0)
    mnt = os.path.join(root, "mnt")
    mnt_wb = os.path.join(root, "mnt-wb")
    os.makedirs(mnt)
    os.makedirs(mnt_wb)
    mounted: list[str] = []
    client = None
    try:
        _dfs("mount", mnt, "--cluster", cluster.config_path, "--log-file", os.path.join(root, "mount.log"))
        mounted.append(mnt)
        client = dfs.connect(mgmt=cluster.mgmt_addresses)
        local_root = os.path.join(root, "local")
        os.makedirs(local_root)
        engines = {"local": _Posix(local_root), "mount": _Posix(mnt), "library": _Library(client)}
        # the library and the mount see the same tree: the library's paths are absolute in it
        base = {"local": local_root, "mount": mnt, "library": "/"}
        targets = [tc.path for ds in cluster.cfg.data for tc in ds.targets]

        # -------------------------------------------------------- create / stat / unlink
        for threads in a.threads:
            for name, fs in engines.items():
                d = os.path.join(base[name], f"meta-{name}-{threads}")
                fs.mkdir(d)
                paths = [os.path.join(d, f"f{i:06d}") for i in range(a.files)]
                for op in ("create", "stat", "unlink"):
                    dt = _timed(threads, paths, getattr(fs, op))
                    row(f"{op} x{threads}", name, a.files / dt, "ops/s")

        # -------------------------------------------------------- ls -l of a big directory
        if a.list_entries:
            big = "big"
            os.makedirs(os.path.join(local_root, big))
            for i in range(a.list_entries):
                os.close(os.open(os.path.join(local_root, big, f"f{i:07d}"), os.O_CREAT | os.O_WRONLY, 0o644))
            client.mkdir("/" + big)
            t0 = time.perf_counter()
            _batch_create(client, "/" + big, a.list_entries)
            log(f"  ({a.list_entries:,} entries created with batched creates in {time.perf_counter() - t0:.1f}s)")
            for name, label in (("mount", "cold"), ("mount", "warm"), ("library", ""), ("local", "")):
                fs = engines[name]
                t0 = time.perf_counter()
                n = fs.ls_l(os.path.join(base[name], big))
                dt = time.perf_counter() - t0
                assert n == a.list_entries, (name, n)
                row(f"ls -l {a.list_entries // 1000}k", f"{name} {label}".strip(), dt, "s")

        # -------------------------------------------------------- random reads of small files
        if a.small_files:
            size = a.small_kib << 10
            blob = os.urandom(size)
            for name in ("local", "library"):  # the mount reads what the library wrote
                fs = engines[name]
                d = os.path.join(base[name], "small")
                fs.mkdir(d)
                paths = [os.path.join(d, f"s{i:06d}") for i in range(a.small_files)]
                t0 = time.perf_counter()
                _timed(8, paths, lambda p, fs=fs: fs.write(p, blob))
                row(f"write {a.small_kib}K files x8", name, a.small_files / (time.perf_counter() - t0), "files/s")
            for threads in (1, 8):
                for name in ("local", "mount", "library"):
                    fs = engines[name]
                    paths = [os.path.join(base[name], "small", f"s{i:06d}") for i in range(a.small_files)]
                    random.Random(threads).shuffle(paths)
                    drop_cache([os.path.join(local_root, "small")] if name == "local" else targets)
                    dt = _timed(threads, paths, fs.read)
                    row(f"random read {a.small_kib}K x{threads}", name, a.small_files / dt, "files/s",
                        mb_s=a.small_files * size / dt / MB)

        # -------------------------------------------------------- sequential 1 GiB
        if a.seq_mib:
            data = (bytes(range(256)) * 4096) * (a.seq_mib // 1)  # 1 MiB * seq_mib
            _dfs("mount", mnt_wb, "--cluster", cluster.config_path, "--writeback-cache",
                 "--log-file", os.path.join(root, "mount-wb.log"))
            mounted.append(mnt_wb)
            writers = [("local", engines["local"], os.path.join(local_root, "seq")),
                       ("library", engines["library"], "/seq"),
                       ("mount", engines["mount"], os.path.join(mnt, "seq-mount")),
                       ("mount writeback", _Posix(mnt_wb), os.path.join(mnt_wb, "seq-wb"))]
            for name, fs, p in writers:
                t0 = time.perf_counter()
                fs.write(p, data, fsync=True)
                row(f"seq write {a.seq_mib} MiB", name, len(data) / (time.perf_counter() - t0) / MB, "MB/s")
            del data
            for name, fs, p in (("local", engines["local"], os.path.join(local_root, "seq")),
                                ("library", engines["library"], "/seq"),
                                ("mount", engines["mount"], os.path.join(mnt, "seq"))):
                drop_cache([local_root] if name == "local" else targets)
                t0 = time.perf_counter()
                n = fs.read(p)
                row(f"seq read {a.seq_mib} MiB cold", name, n / (time.perf_counter() - t0) / MB, "MB/s")
    finally:
        if client is not None:
            client.close()
        for m in mounted:
            try:
                _dfs("umount", m)
            except Exception as e:  # noqa: BLE001 - stop the cluster anyway
                log(f"umount {m}: {e}")
        cluster.stop()
    return rows


def _batch_create(client, path: str, n: int, batch: int = 1000) -> None:
    """n empty files in ``path`` with the metadata service's batch call (the setup, not measured)."""
    ino = client.stat(path).st_ino
    meta = client.meta
    for start in range(0, n, batch):
        names = [f"f{i:07d}" for i in range(start, min(n, start + batch))]
        for r in client.run(meta.create_many(ino, names)):
            if isinstance(r, Exception):
                raise r


def table(rows: list[dict]) -> str:
    """Markdown: one line per phase, the engines side by side, and the ratios."""
    phases: dict[str, dict[str, dict]] = {}
    for r in rows:
        phases.setdefault(r["phase"], {})[r["engine"]] = r
    out = ["| phase | local | mount | library | mount/local | library/mount |", "|---|---|---|---|---|---|"]

    def fmt(r: dict | None) -> str:
        if r is None:
            return "-"
        v = f"{r['value']:,.2f} s" if r["unit"] == "s" else f"{r['value']:,.0f} {r['unit']}"
        return v + (f" ({r['mb_s']:,.0f} MB/s)" if "mb_s" in r else "")

    for phase, by in phases.items():
        mount = by.get("mount") or by.get("mount cold")
        lib, loc = by.get("library"), by.get("local")
        lower_better = (mount or lib or loc or {}).get("unit") == "s"

        def ratio(x, y, lower_better=lower_better):
            if not x or not y or not x["value"] or not y["value"]:
                return "-"
            return f"{(y['value'] / x['value']) if lower_better else (x['value'] / y['value']):.2f}x"

        extra = [f"{k}: {fmt(v)}" for k, v in by.items() if k not in ("local", "mount", "library", "mount cold")]
        m = fmt(mount) + (f"; {'; '.join(extra)}" if extra else "")
        out.append(f"| {phase} | {fmt(loc)} | {m} | {fmt(lib)} | {ratio(mount, loc)} | {ratio(lib, mount)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs bench client", description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=2000, help="files per create/stat/unlink pass")
    ap.add_argument("--threads", default="1,8", help="thread counts for create/stat/unlink")
    ap.add_argument("--list-entries", type=int, default=100_000)
    ap.add_argument("--small-files", type=int, default=10_000)
    ap.add_argument("--small-kib", type=int, default=16)
    ap.add_argument("--seq-mib", type=int, default=1024)
    ap.add_argument("--root", default=None, help="folder on the disk to measure (default: a temp dir)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    a.threads = [int(x) for x in a.threads.split(",") if x]
    root = a.root or tempfile.mkdtemp(prefix="dfs-bench-client-")
    os.makedirs(root, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C: the mounts and the cluster are cleaned up
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        rows = bench(root, a)
    finally:
        if a.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items()}, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
