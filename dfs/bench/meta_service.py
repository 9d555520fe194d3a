"""Metadata service benchmark: one shard of a real cluster, end to end over gRPC.

    python -m dfs.bench.meta_service --ops 20000 --batch-ops 100000 --client-procs 1,2 --json out.json

Starts a :class:`~dfs.local.cluster.LocalCluster` (mgmt x3 + S shards x R
replicas, separate processes on loopback) in a temporary folder, once per
group-commit setting, and measures against shard 0 (every file is created in a
directory whose inode lives on shard 0, so every operation goes to one Raft
group):

* ``create``        single-operation CREATE RPCs, 1 and 16 concurrent callers
                    (asyncio tasks on one client; 16 callers also split over
                    several client *processes*, ``--client-procs``);
* ``create_many``   batch RPCs of ``--batch-size`` CREATEs, 1 and 4 in flight;
* ``getattr``       single GETATTR RPCs, 1 and 16 callers (leader reads, no Raft);
* ``getattr_many``  GETATTRS batches, 1 and 4 in flight;
* ``failover``      kill -9 of the shard leader while a client loops on creates:
                    wall time from the kill to the first create acknowledged
                    after the old leader was reaped (so committed by the new
                    leader), ``--failover-reps`` times.

``cmds/entry`` is operations divided by the growth of the leader's Raft
commit index over the case (the Status RPC exposes the commit index but not
RaftHost.stats); it includes the few entries Raft adds itself, so it is a
slight underestimate of the commands per entry.

Throughput over several client processes is total operations divided by the
span from the earliest start to the latest end (CLOCK_MONOTONIC is one clock
for all processes). Latencies are per RPC (per batch for batch cases).

``run(...)`` is the async entry point; ``main(argv)`` the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.config import RaftOptions
from dfs.common.ids import ROOT_INO, dir_home_shard, shard_of
from dfs.wire import auth as wire_auth
from dfs.route.shards import GrpcTransport
from dfs.local.cluster import LocalCluster

CASES = ("create", "create_many", "getattr", "getattr_many", "failover")


@dataclass
class Result:
    case: str
    group_commit: bool
    procs: int
    callers: int
    ops: int
    errors: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    cmds_per_entry: float | None = None
    unit: str = "op"  # what a latency sample is: "op" or "batch"
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- load

def _chunks(xs: list, n: int) -> list[list]:
    return [xs[i:i + n] for i in range(0, len(xs), n)]


async def _load(client: MetaClient, kind: str, parent: int, items: list, callers: int) -> dict:
    """Run ``items`` (names, inos, or batches of them) through ``callers`` concurrent tasks."""
    lat: list[float] = []
    counts = {"ok": 0, "err": 0}

    async def one(mine: list) -> None:
        for it in mine:
            t = time.perf_counter()
            try:
                if kind == "create":
                    await client.create(parent, it)
                    counts["ok"] += 1
                elif kind == "getattr":
                    await client.getattr(it)
                    counts["ok"] += 1
                elif kind == "create_many":
                    res = await client.create_many(parent, it)
                    bad = sum(isinstance(r, err.DfsError) for r in res)
                    counts["ok"] += len(res) - bad
                    counts["err"] += bad
                elif kind == "getattr_many":
                    res = await client.getattr_many(it)
                    bad = sum(isinstance(r, err.DfsError) for r in res)
                    counts["ok"] += len(res) - bad
                    counts["err"] += bad
                else:
                    raise ValueError(kind)
            except err.DfsError:
                counts["err"] += len(it) if isinstance(it, list) else 1
            lat.append(time.perf_counter() - t)

    t0 = time.monotonic()
    await asyncio.gather(*(one(items[k::callers]) for k in range(callers)))
    t1 = time.monotonic()
    return {"t0": t0, "t1": t1, "ok": counts["ok"], "err": counts["err"], "lat": lat}


async def _connect(mgmt: list[str]) -> MetaClient:
    return MetaClient(await GrpcTransport(mgmt).connect())


def _worker(mgmt: list[str], kind: str, parent: int, items: list, callers: int, barrier, out, creds=None) -> None:
    """A client process: connect, warm up, wait for the others, run its share."""

    async def go() -> dict:
        if creds is not None:  # the cluster's token (a spawned process starts with nothing remembered)
            wire_auth.remember(mgmt, creds)
        c = await _connect(mgmt)
        try:
            await c.getattr(ROOT_INO)
            if parent:
                await c.getattr(parent)
            await asyncio.to_thread(barrier.wait)
            return await _load(c, kind, parent, items, callers)
        finally:
            await c.close()

    try:
        out.put(asyncio.run(go()))
    except Exception as e:  # noqa: BLE001 - report any failure instead of hanging the driver
        out.put({"error": repr(e)})


async def _run_load(mgmt: list[str], client: MetaClient, kind: str, parent: int, items: list,
                    callers: int, procs: int) -> dict:
    if procs <= 1:
        return await _load(client, kind, parent, items, callers)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    out = ctx.Queue()
    per = max(1, callers // procs)
    creds = wire_auth.known(mgmt)
    ps = [ctx.Process(target=_worker, args=(mgmt, kind, parent, items[i::procs], per, barrier, out, creds),
                      daemon=True)
          for i in range(procs)]
    for p in ps:
        p.start()
    parts = [await asyncio.to_thread(out.get, True, 600) for _ in ps]
    for p in ps:
        await asyncio.to_thread(p.join, 30)
    bad = [r["error"] for r in parts if "error" in r]
    if bad:
        raise RuntimeError(f"client process failed: {bad}")
    return {"t0": min(r["t0"] for r in parts), "t1": max(r["t1"] for r in parts),
            "ok": sum(r["ok"] for r in parts), "err": sum(r["err"] for r in parts),
            "lat": [x for r in parts for x in r["lat"]]}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000.0


# ---------------------------------------------------------------------- cluster helpers

async def _leader_status(cluster: LocalCluster, shard: int = 0):
    sts = await asyncio.to_thread(cluster.statuses, shard)
    for st in sts:
        if st is not None and st.role == "leader":
            return st
    return None


async def _mkdir_on(client: MetaClient, shard: int, base: str) -> int:
    """A fresh directory (under root) whose inode and entries live on ``shard``."""
    n = 0
    while True:
        name = f"{base}-{n}".encode()
        if dir_home_shard(ROOT_INO, name, client.nshards) == shard:
            try:
                a = await client.mkdir(ROOT_INO, name)
            except err.Exists:
                n += 1
                continue
            assert shard_of(a.ino) == shard, (a.ino, shard)
            return a.ino
        n += 1


class _PySpy:
    """``py-spy record`` of one process for the span of one case (optional)."""

    def __init__(self, pid: int, out: str, rate: int = 200) -> None:
        exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        fmt = "raw" if out.endswith(".txt") else "speedscope"  # raw = collapsed stacks, one per line
        self.p = subprocess.Popen([exe, "record", "-p", str(pid), "-o", out, "--format", fmt, "--threads",
                                   "-r", str(rate), "--nonblocking"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)

    def stop(self) -> None:
        self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


# ---------------------------------------------------------------------- cases

async def _measure(cluster: LocalCluster, client: MetaClient, case: str, gc: bool, kind: str, parent: int,
                   items: list, callers: int, procs: int, *, write: bool, unit: str,
                   profile: tuple[str, str, str] | None, log) -> Result:
    before = await _leader_status(cluster) if write else None
    spy = None
    label = f"{case}/c{callers}/p{procs}"
    if profile and profile[0] == label:
        pid = os.getpid() if profile[1] == "client" else (await asyncio.to_thread(cluster.leader_of, 0)).pid
        spy = await asyncio.to_thread(_PySpy, pid, profile[2])
    try:
        r = await _run_load(cluster.mgmt_addresses, client, kind, parent, items, callers, procs)
    finally:
        if spy is not None:
            await asyncio.to_thread(spy.stop)
    after = await _leader_status(cluster) if write else None
    secs = r["t1"] - r["t0"]
    ok = r["ok"]
    ratio = None
    if before is not None and after is not None and after.term == before.term:
        d = after.commit_index - before.commit_index
        ratio = ok / d if d > 0 else None
    res = Result(case, gc, procs, callers, ok, r["err"], secs, ok / secs if secs > 0 else 0.0,
                 _pct(r["lat"], 0.5), _pct(r["lat"], 0.99), ratio, unit)
    log(_fmt_row(res))
    return res


async def _failover(cluster: LocalCluster, client: MetaClient, gc: bool, reps: int, log) -> Result:
    parent = await _mkdir_on(client, 0, f"bench-failover-gc{int(gc)}")
    times: list[float] = []
    errors = 0
    for rep in range(reps):
        old = await asyncio.to_thread(cluster.leader_of, 0)
        assert old is not None
        acks: list[float] = []
        stop = asyncio.Event()
        nerr = 0

        async def loop(rep: int = rep, stop: asyncio.Event = stop, acks: list[float] = acks) -> None:
            nonlocal nerr
            i = 0
            while not stop.is_set():
                try:
                    await client.create(parent, f"r{rep}-{i}")
                    acks.append(time.monotonic())
                except err.DfsError:
                    nerr += 1
                i += 1

        task = asyncio.create_task(loop())
        await asyncio.sleep(0.5)
        t_kill = time.monotonic()
        await asyncio.to_thread(cluster.kill, old)  # SIGKILL + reap
        t_reaped = time.monotonic()
        end = t_reaped + 30.0
        first = None
        while time.monotonic() < end:
            after = [a for a in acks if a > t_reaped]
            if after:
                first = after[0]
                break
            await asyncio.sleep(0.002)
        stop.set()
        await task
        new = await asyncio.to_thread(cluster.leader_of, 0)
        errors += nerr
        if first is None:
            log(f"  failover rep {rep}: no write within 30 s of the kill")
            times.append(float("inf"))
        else:
            times.append(first - t_kill)
            log(f"  failover rep {rep}: {1000 * (first - t_kill):.0f} ms to first write "
                f"({old.name} -> {new.name if new else '?'}, {nerr} errors)")
        await asyncio.to_thread(cluster.restart, old)
        await asyncio.to_thread(cluster.wait_healthy, 60.0)
        await asyncio.to_thread(cluster.wait_converged, 0, 60.0)
    fin = [t for t in times if t != float("inf")]
    med = statistics.median(times) if times else float("nan")
    res = Result("failover", gc, 1, 1, len(fin), errors + len(times) - len(fin), med,
                 0.0, med * 1000, max(times) * 1000, None, "rep",
                 {"times_ms": [round(t * 1000, 1) for t in times]})
    log(_fmt_row(res))
    return res


async def _bench_one(gc: bool, *, shards: int, replicas: int, ops: int, serial_ops: int, batch_ops: int,
                     batch_size: int, client_procs: list[int], failover_reps: int, cases: list[str],
                     root: str | None, profile, log) -> list[Result]:
    top = root or tempfile.mkdtemp(prefix="dfs-bench-")
    folder = os.path.join(top, f"gc-{'on' if gc else 'off'}")
    if os.path.exists(folder):
        shutil.rmtree(folder)
    cluster = LocalCluster(folder, shards=shards, replicas=replicas, raft=RaftOptions(group_commit=gc))
    await asyncio.to_thread(cluster.start, 90.0)
    results: list[Result] = []
    multi = [p for p in client_procs if p > 1]
    client = await _connect(cluster.mgmt_addresses)
    try:
        log(f"-- cluster up ({shards} shard(s) x {replicas}), group_commit={'on' if gc else 'off'}, data in {folder}")
        # warm up: connections, leader hint, caches
        warm = await _mkdir_on(client, 0, "bench-warm")
        for i in range(200):
            await client.create(warm, f"w{i}")
        await client.create_many(warm, [f"wb{i}" for i in range(batch_size)])

        async def m(case, kind, parent, items, callers, procs, write, unit="op"):
            results.append(await _measure(cluster, client, case, gc, kind, parent, items, callers, procs,
                                          write=write, unit=unit, profile=profile, log=log))

        if "create" in cases:
            d = await _mkdir_on(client, 0, "bench-create-c1")
            await m("create", "create", d, [f"f{i}" for i in range(serial_ops)], 1, 1, True)
            for procs in [1] + multi:
                d = await _mkdir_on(client, 0, f"bench-create-c16-p{procs}")
                await m("create", "create", d, [f"f{i}" for i in range(ops)], 16, procs, True)
        batch_dir = None
        if "create_many" in cases or "getattr" in cases or "getattr_many" in cases:
            for conc in (1, 4):
                for procs in ([1] + (multi if conc > 1 else [])):
                    if "create_many" not in cases and batch_dir is not None:
                        break
                    d = await _mkdir_on(client, 0, f"bench-batch-c{conc}-p{procs}")
                    names = [f"f{i}" for i in range(batch_ops)]
                    if "create_many" in cases:
                        await m("create_many", "create_many", d, _chunks(names, batch_size), conc, procs, True,
                                "batch")
                    else:  # only to have files to stat
                        for ch in _chunks(names, batch_size):
                            await client.create_many(d, ch)
                    batch_dir = batch_dir or d
        if "getattr" in cases or "getattr_many" in cases:
            inos = [e.ino for e in await client.listdir(batch_dir)]
            if "getattr" in cases:
                await m("getattr", "getattr", 0, inos[:serial_ops], 1, 1, False)
                for procs in [1] + multi:
                    await m("getattr", "getattr", 0, inos[:ops], 16, procs, False)
            if "getattr_many" in cases:
                for conc in (1, 4):
                    for procs in ([1] + (multi if conc > 1 else [])):
                        await m("getattr_many", "getattr_many", 0, _chunks(inos[:batch_ops], batch_size), conc,
                                procs, False, "batch")
        if "failover" in cases and failover_reps > 0:
            results.append(await _failover(cluster, client, gc, failover_reps, log))
    finally:
        await client.close()
        await asyncio.to_thread(cluster.stop)
        if root is None:
            shutil.rmtree(top, ignore_errors=True)
    return results


def _local_baseline(folder: str, ops: int, log) -> list[Result]:
    """The physical reference: the same create / stat workload on a local
    directory of the same disk (the kernel's own file system), 1 and 16 threads."""
    from concurrent.futures import ThreadPoolExecutor

    out = []
    for callers in (1, 16):
        d = tempfile.mkdtemp(prefix=f"local-c{callers}-", dir=folder)
        names = [os.path.join(d, f"f{i}") for i in range(ops)]
        for kind in ("create", "stat"):
            lat: list[float] = []

            def work(chunk: list[str], kind: str = kind) -> list[float]:
                mine = []
                for n in chunk:
                    t = time.perf_counter()
                    if kind == "create":
                        os.close(os.open(n, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                    else:
                        os.stat(n)
                    mine.append(time.perf_counter() - t)
                return mine

            t0 = time.perf_counter()
            with ThreadPoolExecutor(callers) as ex:
                for part in ex.map(work, [names[i::callers] for i in range(callers)]):
                    lat += part
            dt = time.perf_counter() - t0
            lat.sort()
            r = Result(f"local {kind}", False, 1, callers, ops, 0, dt, ops / dt, _pct(lat, 0.5),
                       _pct(lat, 0.99), None, "op", {"dir": folder})
            log(_fmt_row(r))
            out.append(r)
        shutil.rmtree(d, ignore_errors=True)
    return out


async def run(*, shards: int = 1, replicas: int = 3, group_commit: tuple[bool, ...] = (True, False),
              ops: int = 20000, serial_ops: int = 2000, batch_ops: int = 100000, batch_size: int = 256,
              client_procs: tuple[int, ...] = (1, 2), failover_reps: int = 5, cases: tuple[str, ...] = CASES,
              root: str | None = None, profile: tuple[str, str, str] | None = None,
              log=print) -> list[Result]:
    """Every case for each group-commit setting (a fresh cluster per setting)."""
    out: list[Result] = []
    log(_HEADER)
    base = root or tempfile.mkdtemp(prefix="dfs-bench-local-")
    os.makedirs(base, exist_ok=True)
    out += _local_baseline(base, ops, log)
    if root is None:
        shutil.rmtree(base, ignore_errors=True)
    for gc in group_commit:
        out += await _bench_one(gc, shards=shards, replicas=replicas, ops=ops, serial_ops=serial_ops,
                                batch_ops=batch_ops, batch_size=batch_size, client_procs=list(client_procs),
                                failover_reps=failover_reps, cases=list(cases), root=root, profile=profile,
                                log=log)
    return out


# ---------------------------------------------------------------------- output

_HEADER = (f"{'case':<13} {'gc':<3} {'procs':>5} {'callers':>7} {'ops':>7} {'err':>4} {'secs':>7} "
           f"{'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cmds/entry':>10}")


def _fmt_row(r: Result) -> str:
    ratio = f"{r.cmds_per_entry:.1f}" if r.cmds_per_entry else "-"
    if r.case == "failover":
        return (f"{'failover':<13} {'on' if r.group_commit else 'off':<3} {r.procs:>5} {r.callers:>7} "
                f"{r.ops:>7} {r.errors:>4} {'':>7} {'':>9} {r.p50_ms:>8.0f} {r.p99_ms:>8.0f} {'-':>10}"
                f"   (median / max ms from kill -9 to first write; reps {r.extra.get('times_ms')})")
    return (f"{r.case:<13} {'on' if r.group_commit else 'off':<3} {r.procs:>5} {r.callers:>7} {r.ops:>7} "
            f"{r.errors:>4} {r.seconds:>7.2f} {r.ops_per_s:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {ratio:>10}"
            + ("   (latency per batch)" if r.unit == "batch" else ""))


def markdown_table(results: list[Result]) -> str:
    rows = [("| case | group commit | client procs | callers (in flight) | ops | errors | ops/s | p50 ms | p99 ms "
             "| cmds/entry |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        gc = "on" if r.group_commit else "off"
        ratio = f"{r.cmds_per_entry:.1f}" if r.cmds_per_entry else "-"
        if r.case == "failover":
            rows.append(f"| failover: kill -9 leader -> first write (median / max of "
                        f"{len(r.extra.get('times_ms', []))}) | {gc} | 1 | 1 | - | {r.errors} | - "
                        f"| {r.p50_ms:.0f} ms | {r.p99_ms:.0f} ms (max) | - |")
            continue
        per = " (per batch)" if r.unit == "batch" else ""
        if r.case.startswith("local"):
            gc = "-"
        rows.append(f"| {r.case} | {gc} | {r.procs} | {r.callers} | {r.ops} | {r.errors} | {r.ops_per_s:,.0f} "
                    f"| {r.p50_ms:.2f}{per} | {r.p99_ms:.2f}{per} | {ratio} |")
    return "\n".join(rows)


def _machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs bench service", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=1, help="shards in the cluster (load goes to shard 0)")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--group-commit", choices=("on", "off", "both"), default="both")
    ap.add_argument("--ops", type=int, default=20000, help="operations for the 16-caller single-RPC cases")
    ap.add_argument("--serial-ops", type=int, default=2000, help="operations for the 1-caller single-RPC cases")
    ap.add_argument("--batch-ops", type=int, default=100000, help="operations for each batch case")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--client-procs", default="1,2",
                    help="client process counts for the concurrent cases, e.g. 1,2 (1 = in the driver)")
    ap.add_argument("--failover-reps", type=int, default=5)
    ap.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    ap.add_argument("--root", default=None, help="keep cluster folders here (default: a temp dir, removed)")
    ap.add_argument("--py-spy", default=None, metavar="CASE/cN/pN",
                    help="record this case with py-spy, e.g. create/c16/p1 (needs py-spy)")
    ap.add_argument("--py-spy-target", choices=("leader", "client"), default="leader")
    ap.add_argument("--py-spy-out", default="/tmp/dfs-bench-profile.json",
                    help="speedscope JSON, or collapsed stacks if the name ends in .txt")
    ap.add_argument("--json", default=None, help="write results and machine facts to this file")
    a = ap.parse_args(argv)
    gcs = {"on": (True,), "off": (False,), "both": (True, False)}[a.group_commit]
    cases = tuple(c.strip() for c in a.cases.split(",") if c.strip())
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"unknown cases {sorted(unknown)}")
    profile = (a.py_spy, a.py_spy_target, a.py_spy_out) if a.py_spy else None
    results = asyncio.run(run(shards=a.shards, replicas=a.replicas, group_commit=gcs, ops=a.ops,
                              serial_ops=a.serial_ops, batch_ops=a.batch_ops, batch_size=a.batch_size,
                              client_procs=tuple(int(x) for x in a.client_procs.split(",")),
                              failover_reps=a.failover_reps, cases=cases, root=a.root, profile=profile))
    print()
    print(markdown_table(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": _machine(), "argv": sys.argv[1:] if argv is None else argv,
                       "results": [asdict(r) for r in results]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
