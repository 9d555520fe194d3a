"""Metadata stress, mdtest-style: P processes x N files, phase by phase.

    dfs bench meta [--procs 4] [--files 1000] [--dirs 10] [--shared-dir] [--bytes 0]
                   [--library [--cluster FILE] | --path DIR] [--json out.json]

Each of ``--procs`` processes (multiprocessing, spawn; one library client or
plain ``os`` calls per process) runs the phases in order, all processes
starting each phase together (a barrier):

* ``tree create``: its directories (``--dirs`` of them, see below);
* ``file create``: its ``--files`` files (open O_CREAT, ``--bytes`` written, close);
* ``stat``: each of them;
* ``open+read``: open, read whole, close;
* ``rename``: each to a new name in the same directory;
* ``unlink``: the renamed files;
* ``tree remove``: its directories, deepest first.

Layout: by default every process works in its own directory ``p<rank>``,
its files spread over ``--dirs`` subdirectories of it (``--dirs 0``: all in
``p<rank>``); with ``--shared-dir`` every process's files are in one directory
``shared`` (its ``--dirs`` directories too).

Target: ``--library`` (the default) goes through ``dfs.connect()`` to a
LocalCluster of its own (``--shards``, ``--replicas``, one mgmt replica,
``--data-servers``: none by default, one with ``--bytes``), or to a running cluster with ``--cluster FILE`` (a cluster or client
file, or a data folder); ``--path DIR`` runs on any mounted path (a dfs mount, a
local directory...). The library client keeps its attribute/entry caches for
``--ttl`` seconds (its default, 1 s; 0: none), as a mount's kernel does.

For each phase: operations, ops/s (all operations of all processes over the
time from the first start to the last end) and the latency of one operation
(p50, p99, mean) in ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

PHASES = ("tree create", "file create", "stat", "open+read", "rename", "unlink", "tree remove")


# ---------------------------------------------------------------------- processes

def make_fs(spec: tuple):
    """An engine from its picklable spec: ("posix",) or ("library", cluster, ttl)."""
    from dfs.bench.client_paths import _Library, _Posix

    if spec[0] == "posix":
        return _Posix("/")
    import dfs

    return _Library(dfs.connect(spec[1], ttl=spec[2]))


@contextlib.contextmanager
def open_fs(spec: tuple):
    """``make_fs(spec)`` for the block; a library engine's client is closed after it."""
    fs = make_fs(spec)
    try:
        yield fs
    finally:
        c = getattr(fs, "c", None)
        if c is not None:
            c.close()


class Ticker:
    """Progress counts to the driver, at most every ``every`` seconds."""

    def __init__(self, put: Callable, key, every: float = 0.2) -> None:
        self.put, self.key, self.every = put, key, every
        self.n = 0
        self.last = time.monotonic()

    def add(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.flush()
            self.last = now

    def flush(self) -> None:
        if self.n:
            self.put(("tick", self.key, self.n))
            self.n = 0


def _rank_main(fn: Callable, rank: int, barrier, q, args: tuple) -> None:
    try:
        q.put(("done", rank, fn(rank, barrier, q.put, *args)))
    except BaseException:  # noqa: BLE001 - report anything, and free the others from the barrier
        barrier.abort()
        q.put(("error", rank, traceback.format_exc()))


def spawn_ranks(fn: Callable, args: list[tuple], on_tick: Callable | None = None,
                timeout: float = 3600.0) -> list:
    """Run ``fn(rank, barrier, put, *args[rank])`` in one spawned process per rank; their
    return values by rank. ``put(("tick", key, n))`` reaches ``on_tick(key, n)``. Any
    failure (an exception, a process gone) raises here; the processes are ended."""
    ctx = mp.get_context("spawn")
    n = len(args)
    barrier = ctx.Barrier(n)
    q = ctx.Queue()
    ps = [ctx.Process(target=_rank_main, args=(fn, r, barrier, q, args[r]), daemon=True) for r in range(n)]
    results: dict[int, object] = {}
    end = time.monotonic() + timeout
    try:
        for p in ps:
            p.start()
        gone_since: float | None = None
        while len(results) < n:
            try:
                msg = q.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() > end:
                    raise TimeoutError(f"worker processes still running after {timeout}s") from None
                # a process that died without a word (killed): give its last messages a moment
                if any(p.exitcode is not None and r not in results for r, p in enumerate(ps)):
                    gone_since = gone_since or time.monotonic()
                    if time.monotonic() - gone_since > 5:
                        dead = [(r, p.exitcode) for r, p in enumerate(ps) if p.exitcode is not None]
                        raise RuntimeError(f"worker process(es) ended without a result: {dead}")
                continue
            if msg[0] == "tick":
                if on_tick is not None:
                    on_tick(msg[1], msg[2])
            elif msg[0] == "done":
                results[msg[1]] = msg[2]
            else:
                raise RuntimeError(f"worker {msg[1]} failed:\n{msg[2]}")
        for p in ps:
            p.join(30)
    finally:
        for p in ps:
            if p.is_alive():
                p.terminate()
        for p in ps:
            if p.pid is not None:
                p.join(10)
    return [results[r] for r in range(n)]


# ---------------------------------------------------------------------- the workload

def plan(rank: int, base: str, files: int, dirs: int, shared: bool) -> dict:
    """Paths of one process: directories (parents first) and files."""
    if shared:
        top = os.path.join(base, "shared")
        tree = [os.path.join(top, f"t{rank}.{j}") for j in range(dirs)]
        paths = [os.path.join(top, f"f{rank}.{i}") for i in range(files)]
    else:
        top = os.path.join(base, f"p{rank}")
        subs = [os.path.join(top, f"d{j}") for j in range(dirs)]
        tree = [top, *subs]
        where = subs or [top]
        paths = [os.path.join(where[i % len(where)], f"f{i}") for i in range(files)]
    return {"tree": tree, "files": paths}


def _meta_rank(rank: int, barrier, put, spec: tuple, p: dict, nbytes: int) -> dict:
    with open_fs(spec) as fs:
        data = os.urandom(nbytes) if nbytes else b""
        files = p["files"]
        moved = [f + ".r" for f in files]

        def create(path: str) -> None:
            if data:
                fs.write(path, data)
            else:
                fs.create(path)

        def read(path: str) -> None:
            n = fs.read(path)
            if n != nbytes:
                raise OSError(f"{path}: read {n} bytes, wrote {nbytes}")

        steps = [("tree create", p["tree"], fs.mkdir),
                 ("file create", files, create),
                 ("stat", files, fs.stat),
                 ("open+read", files, read),
                 ("rename", list(zip(files, moved)), lambda sd: fs.rename(*sd)),
                 ("unlink", moved, fs.unlink),
                 ("tree remove", p["tree"][::-1], fs.rmdir)]
        out = {}
        for i, (phase, items, op) in enumerate(steps):
            tick = Ticker(put, i)
            barrier.wait(600)
            lat = []
            t0 = time.monotonic()
            for x in items:
                s = time.perf_counter()
                op(x)
                lat.append(time.perf_counter() - s)
                tick.add()
            t1 = time.monotonic()
            tick.flush()
            out[phase] = {"t0": t0, "t1": t1, "lat": lat}
        return out


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of xs."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarize(parts: list[dict]) -> list[dict]:
    rows = []
    for phase in PHASES:
        per = [p[phase] for p in parts]
        lat = [x for r in per for x in r["lat"]]
        secs = max(r["t1"] for r in per) - min(r["t0"] for r in per)
        rows.append({"phase": phase, "ops": len(lat), "seconds": secs,
                     "ops_per_s": len(lat) / secs if secs > 0 else float("nan"),
                     "p50_ms": pct(lat, 0.50) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
                     "mean_ms": sum(lat) / len(lat) * 1e3 if lat else float("nan")})
    return rows


def run(spec: tuple, base: str, a, log=print) -> list[dict]:
    """The phases on ``base`` (a directory that exists, as ``spec`` sees it)."""
    from tqdm import tqdm

    if a.shared_dir:
        with open_fs(spec) as fs:
            fs.mkdir(os.path.join(base, "shared"))
    plans = [plan(r, base, a.files, a.dirs, a.shared_dir) for r in range(a.procs)]
    total = sum(2 * len(p["tree"]) + 5 * len(p["files"]) for p in plans)
    bar = tqdm(total=total, unit="op", desc="starting", file=sys.stderr, disable=a.no_progress,
               dynamic_ncols=True, mininterval=0.3)
    shown = [-1]  # the phase in the bar's description

    def on_tick(key: int, n: int) -> None:
        if key > shown[0]:
            shown[0] = key
            bar.set_description(PHASES[key], refresh=False)
        bar.update(n)

    try:
        parts = spawn_ranks(_meta_rank, [(spec, p, a.bytes) for p in plans], on_tick)
    finally:
        bar.close()
    if a.shared_dir:
        with open_fs(spec) as fs:
            fs.rmdir(os.path.join(base, "shared"))
    return summarize(parts)


def table(rows: list[dict]) -> str:
    out = ["| phase | ops | ops/s | p50 ms | p99 ms | mean ms |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['phase']} | {r['ops']:,} | {r['ops_per_s']:,.0f} | {r['p50_ms']:.3f} | "
                   f"{r['p99_ms']:.3f} | {r['mean_ms']:.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs bench meta", description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", "-P", type=int, default=4, help="client processes")
    ap.add_argument("--files", "-n", type=int, default=1000, help="files per process")
    ap.add_argument("--dirs", type=int, default=10, help="directories per process")
    ap.add_argument("--shared-dir", action="store_true", help="every process's files in one directory")
    ap.add_argument("--bytes", type=int, default=0, help="bytes written to each file at create (read back)")
    tgt = ap.add_mutually_exclusive_group()
    tgt.add_argument("--library", action="store_true", help="dfs.connect() in each process (the default)")
    tgt.add_argument("--path", default=None, help="a mounted path to run in (a dfs mount, a local directory)")
    ap.add_argument("--cluster", default=None, help="with --library: a running cluster (cluster/client file)")
    ap.add_argument("--ttl", type=float, default=1.0, help="the library client's cache ttl (0: no caches)")
    ap.add_argument("--shards", type=int, default=2, help="own cluster: metadata shards")
    ap.add_argument("--replicas", type=int, default=3, help="own cluster: Raft replicas per shard")
    ap.add_argument("--data-servers", type=int, default=None,
                    help="own cluster: data servers (default: none with --bytes 0, else 1)")
    ap.add_argument("--root", default=None, help="own cluster's folder (default: a temp dir, removed)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--json", default=None, help="write the figures here")
    a = ap.parse_args(argv)
    if a.cluster and a.path:
        ap.error("--cluster goes with --library, not --path")
    if a.procs < 1 or a.files < 0 or a.dirs < 0:
        ap.error("--procs >= 1, --files and --dirs >= 0")
    if a.data_servers is None:
        a.data_servers = 1 if a.bytes else 0
    # SIGTERM unwinds like Ctrl-C: the workers and the own cluster are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_dir = f"dfs-bench-meta-{os.getpid()}-{int(time.time())}"
    cluster = None
    tmp = None
    path_base = None
    target: str
    try:
        if a.path is not None:
            base = os.path.join(os.path.abspath(a.path), run_dir)
            os.mkdir(base)
            path_base = base
            spec: tuple = ("posix",)
            target = f"path {a.path}"
        else:
            cluster_file = a.cluster
            if cluster_file is None:
                from dfs.local.cluster import LocalCluster

                tmp = a.root or tempfile.mkdtemp(prefix="dfs-bench-meta-")
                cluster = LocalCluster(os.path.join(tmp, "cluster"), shards=a.shards, replicas=a.replicas,
                                       mgmt_replicas=1, data_servers=a.data_servers,
                                       chain_replicas=max(1, min(3, a.data_servers)))
                print(f"starting a cluster: {a.shards} shard(s) x {a.replicas} replica(s), "
                      f"{a.data_servers} data server(s) in {cluster.root}", file=sys.stderr)
                cluster.start(120.0)
                cluster_file = cluster.config_path
            spec = ("library", cluster_file, a.ttl)
            base = "/" + run_dir
            with open_fs(spec) as fs:
                fs.mkdir(base)
            target = "library" + (f" {a.cluster}" if a.cluster else " (own cluster)")
        print(f"dfs bench meta: {target}, {a.procs} process(es) x {a.files} files, "
              f"{'one shared directory' if a.shared_dir else 'a directory per process'}, "
              f"{a.dirs} dir(s) per process, {a.bytes} bytes per file", file=sys.stderr)
        rows = run(spec, base, a)
        with open_fs(spec) as fs:
            fs.rmdir(base)
        path_base = None
    finally:
        if path_base is not None:  # a failed run: what it left in the mounted path
            shutil.rmtree(path_base, ignore_errors=True)
        if cluster is not None:
            cluster.stop()
        if tmp is not None and a.root is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "target": target, "phases": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
