"""Lazy mode (issue 13) next to strict mode and the local disk.

    dfs bench lazy [--files 10000] [--strict-files 10000] [--lib-files 20000]
                   [--strict-lib-files 2000] [--procs 1,2] [--visibility 200] [--json out.json]

One LocalCluster (1 metadata shard x 3 Raft replicas, 1 mgmt replica, 3 data
servers, chains of 3), as `dfs bench client` makes it. Every time is to the
barrier: what was written is durable on the service and visible to others.

* ``untar``: ``tar -xf`` of ``--files`` small files (7-350 bytes in 20 x 7
  directories, a symlink) into the local disk (then ``sync -f``), a strict
  mount (``--strict-files``, closes wait) and a ``dfs mount --lazy`` (then
  ``sync DIR``, the mount's barrier); files/s;
* ``library create``: create + write 4 KiB + close of ``--lib-files`` files by
  each of ``--procs`` process counts (one client and directory each), lazy
  (then ``Client.sync()``) and strict (``--strict-lib-files``); files/s over all;
* ``visibility``: a lazy client (default delay, 1 s) creates ``--visibility``
  files, one every 20 ms; a strict client (no cache) polls for each; the delay
  from the create's return to the first stat that finds it: median, p99, max.

May import dfs (the library, the CLI through subprocesses) and dfs.local.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

FOUR_KIB = b"x" * 4096


def _dfs(*args: str, timeout: float = 900) -> None:
    r = subprocess.run([sys.executable, "-m", "dfs.cli", *args], capture_output=True, text=True, timeout=timeout,
                       check=False)
    if r.returncode != 0:
        raise RuntimeError(f"dfs {' '.join(args)}: {r.stdout}{r.stderr}")


def make_tarball(root: str, n: int) -> str:
    """A tarball of the tree tests/posix use: ``n`` small files in 20 x 7 directories, a symlink."""
    src = os.path.join(root, "src", "tree")
    for i in range(n):
        d = os.path.join(src, f"d{i % 20:02d}", f"e{i % 7}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:05d}.txt"), "wb") as f:
            f.write(f"file {i}\n".encode() * (i % 50 + 1))
    os.symlink("d00", os.path.join(src, "link"))
    tarball = os.path.join(root, f"tree{n}.tar")
    subprocess.run(["tar", "-C", os.path.dirname(src), "-cf", tarball, "tree"], check=True)
    return tarball


def untar(tarball: str, dest: str, barrier: list[str]) -> float:
    os.makedirs(dest)
    t0 = time.perf_counter()
    subprocess.run(["tar", "-C", dest, "-xf", tarball], check=True)
    if barrier:
        subprocess.run(barrier, check=True)
    return time.perf_counter() - t0


def _creator(mgmt: str, consistency: str, d: str, n: int, ready, go, q) -> None:
    import dfs

    c = dfs.connect(mgmt, consistency=consistency)
    c.makedirs(d)
    c.sync()
    ready.put(True)
    go.wait()
    t0 = time.perf_counter()
    for i in range(n):
        with c.open(f"{d}/f{i:07d}", "wb") as f:
            f.write(FOUR_KIB)
    c.sync()
    q.put((t0, time.perf_counter()))
    c.close()


def library_creates(mgmt: str, consistency: str, top: str, n: int, procs: int) -> float:
    """files/s of ``procs`` processes creating ``n`` files each, from the first start to the last barrier."""
    ctx = mp.get_context("spawn")
    ready, go, q = ctx.Queue(), ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_creator, args=(mgmt, consistency, f"{top}/p{k}", n, ready, go, q))
          for k in range(procs)]
    for p in ps:
        p.start()
    got = 0
    while got < procs:  # the workers connect and make their directories (not measured)
        try:
            got += ready.get(timeout=1)
        except queue.Empty:
            if not all(p.is_alive() for p in ps):
                raise RuntimeError("a create worker died") from None
    go.set()
    spans = [q.get(timeout=3600) for _ in ps]
    for p in ps:
        p.join()
    return n * procs / (max(e for _, e in spans) - min(s for s, _ in spans))


def visibility(mgmt: str, top: str, n: int) -> list[float]:
    import dfs

    writer = dfs.connect(mgmt, consistency="lazy")
    reader = dfs.connect(mgmt, ttl=0)
    try:
        writer.mkdir(top)
        writer.sync()
        made: list[float] = [0.0] * n
        delays: list[float] = []

        def read() -> None:
            for i in range(n):
                p = f"{top}/v{i:05d}"
                while not reader.exists(p):
                    time.sleep(0.002)
                delays.append(time.perf_counter() - made[i])

        t = threading.Thread(target=read)
        t.start()
        for i in range(n):
            writer.write_bytes(f"{top}/v{i:05d}", b"v")
            made[i] = time.perf_counter()
            time.sleep(0.02)
        t.join()
        return delays
    finally:
        writer.close()
        reader.close()


def bench(root: str, a, log=print) -> list[dict]:
    from dfs.local.cluster import LocalCluster

    rows: list[dict] = []

    def row(phase: str, engine: str, value: float, unit: str, **kw) -> None:
        rows.append({"phase": phase, "engine": engine, "value": value, "unit": unit, **kw})
        log(f"{phase:<28} {engine:<12} {value:>12,.2f} {unit}" + "".join(f" {k}={v}" for k, v in kw.items()))

    cluster = LocalCluster(os.path.join(root, "cluster"), shards=1, replicas=3, mgmt_replicas=1, data_servers=3)
    cluster.start(120.0)
    mounted: list[str] = []
    try:
        mgmt = cluster.config_path  # the cluster file: addresses and the client token
        if a.files:
            tarball = make_tarball(root, a.files)
            local = os.path.join(root, "local")
            s = untar(tarball, local, ["sync", "-f", root])
            row(f"untar {a.files} files", "local", s, "s", rate=round(a.files / s))
            lz = os.path.join(root, "lazy")
            os.makedirs(lz)
            _dfs("mount", lz, "--cluster", cluster.config_path, "--log-file", os.path.join(root, "lazy.log"),
                 "--lazy")
            mounted.append(lz)
            s = untar(tarball, os.path.join(lz, "untar"), ["sync", os.path.join(lz, "untar")])
            row(f"untar {a.files} files", "lazy mount", s, "s", rate=round(a.files / s))
            if a.strict_files:
                tb = tarball if a.strict_files == a.files else make_tarball(os.path.join(root, "s"), a.strict_files)
                st = os.path.join(root, "strict")
                os.makedirs(st)
                _dfs("mount", st, "--cluster", cluster.config_path, "--log-file", os.path.join(root, "strict.log"))
                mounted.append(st)
                s = untar(tb, os.path.join(st, "untar-strict"), [])
                row(f"untar {a.strict_files} files", "strict mount", s, "s", rate=round(a.strict_files / s))
        for procs in a.procs:
            if a.lib_files:
                r = library_creates(mgmt, "lazy", f"/lib-lazy-{procs}", a.lib_files, procs)
                row(f"library create+4KiB, {procs} proc", "lazy", r, "files/s", files=a.lib_files * procs)
            if a.strict_lib_files:
                r = library_creates(mgmt, "strict", f"/lib-strict-{procs}", a.strict_lib_files, procs)
                row(f"library create+4KiB, {procs} proc", "strict", r, "files/s", files=a.strict_lib_files * procs)
        if a.visibility:
            d = sorted(visibility(mgmt, "/visibility", a.visibility))
            for name, v in (("median", statistics.median(d)), ("p99", d[min(len(d) - 1, int(len(d) * 0.99))]),
                            ("max", d[-1])):
                row(f"visibility delay {name}", "lazy->strict", v * 1000, "ms", samples=len(d))
    finally:
        for m in mounted:
            try:
                _dfs("umount", m)
            except Exception as e:  # noqa: BLE001 - stop the cluster anyway
                log(f"umount {m}: {e}")
        cluster.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dfs bench lazy", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--strict-files", type=int, default=10_000)
    p.add_argument("--lib-files", type=int, default=20_000)
    p.add_argument("--strict-lib-files", type=int, default=2_000)
    p.add_argument("--procs", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    p.add_argument("--visibility", type=int, default=200)
    p.add_argument("--root", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dfs-bench-lazy-", dir=a.root) as root:
        rows = bench(root, a)
        if a.json:  # before the work directory's (long) removal
            with open(a.json, "w") as f:
                json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
