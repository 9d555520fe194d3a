"""What each metadata operation costs every process, on 1, 2, 4, 8 shards (issue 17).

    dfs bench shards [--shards 1,2,4,8] [--replicas 3] [--files 2000] [--dirs 64]
                     [--inflight 16] [--json out.json]

This machine has 2 cores shared by every process, so throughput measured here
cannot grow with shards; what can be measured, and does not depend on how
busy the machine is, is the CPU time each process spends per operation. For
each shard count a fresh ``LocalCluster`` (S shards x ``--replicas`` Raft
replicas, one mgmt replica, ``--data-servers`` data servers with chains of up
to 3) runs, one after the other:

* the **operation phases**, each of one kind of operation, ``--inflight`` at a
  time from one library client (``dfs.aconnect``, strict mode) made for the
  phase, whose directory paths are resolved before it (so every operation is
  its own requests, none answered from the client's cache): mkdir, create
  (empty), stat, readdir, rename in the same directory, rename to another
  directory (files), unlink, write and read of small files (``--small``
  bytes) and of ``--large`` bytes (both on the data servers by default),
  their unlink, rename of directories to another parent (the one kind that
  takes the ordering point on shard 0), rmdir;
* the **workloads** whose share of two-phase commits is asked for: an
  mdtest-style tree, an untar (``tarfile`` through the library: mkdir, write,
  chmod, utime, symlink), a shuffle (the untarred files read in random order),
  checkpoints (``dfs.checkpoint.CheckpointDir``, 4 ranks).

Around each phase it reads ``/proc/<pid>/stat`` (utime + stime) of every
process the launcher started, by PID, and of this process (the client),
and sums them by role: the shard leaders (and shard 0's alone), the
followers, mgmt, data servers, client. The processes' idle cost (Raft
heartbeats, map polling; measured for ``--idle`` seconds before) times the
phase's duration is subtracted ("net"); both figures are kept. It also counts
the client's requests per shard (its transport, wrapped), and scrapes each
leader's ``dfs_meta_commits_total`` (coordinated operations by protocol,
one_phase or two_phase) before and after.

Wall-clock figures (ops/s, latency) depend on what else runs on the machine;
CPU seconds per operation much less (cache and scheduler effects remain).

The same on a cluster in network namespaces (every process on a host of its own
network stack): benchmarks/shards_netns.py, which starts the cluster and runs this
module's phases inside the client's namespace (``--attach SPEC``, see ``Attached``).

May import dfs (the library), dfs.local (the launcher) and dfs.bench.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from dfs.bench.meta_service import _machine

TICK = os.sysconf("SC_CLK_TCK")
ROLES = ("client", "leaders", "leader0", "followers", "mgmt", "data")


# ---------------------------------------------------------------------- /proc

def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Procs:
    """The processes measured: the launcher's (by PID, with their role) and this one."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.leaders = {s: cluster.leader_of(s) for s in range(cluster.cfg.nshards)}
        if any(p is None for p in self.leaders.values()):
            raise RuntimeError(f"a shard without a leader: {self.leaders}")
        self.rows: list[tuple[str, int, str]] = [("client", os.getpid(), "client")]
        lead = {p.name for p in self.leaders.values()}
        for p in cluster.procs:
            if p.role == "meta":
                role = "leader" if p.name in lead else "follower"
            else:
                role = p.role
            self.rows.append((p.name, p.pid, role))

    def sample(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid, _ in self.rows}

    def by_role(self, d: dict[str, float]) -> dict[str, float]:
        out = dict.fromkeys(ROLES, 0.0)
        for name, _, role in self.rows:
            v = d[name]
            if role == "leader":
                out["leaders"] += v
                if name.startswith("meta.0."):
                    out["leader0"] += v
            elif role == "follower":
                out["followers"] += v
            else:
                out[role] += v
        out["max_leader"] = max(d[p.name] for p in self.leaders.values())
        out["total"] = sum(d[name] for name, _, _ in self.rows)
        return out

    def same_leaders(self) -> bool:
        return all(self.cluster.leader_of(s) is p for s, p in self.leaders.items())

    def commits(self) -> Counter:
        """dfs_meta_commits_total of every metadata replica, summed: (op, protocol) -> count
        (each operation is counted by the replica that coordinated it; all are asked, since
        a leader may change during a phase on a loaded machine)."""
        from prometheus_client.parser import text_string_to_metric_families

        out: Counter = Counter()
        for p in self.cluster.meta_procs():
            with urllib.request.urlopen(f"http://{p.metrics}/metrics", timeout=10) as r:
                text = r.read().decode()
            for fam in text_string_to_metric_families(text):
                if fam.name == "dfs_meta_commits":
                    for s in fam.samples:
                        if s.name.endswith("_total"):
                            out[(s.labels["op"], s.labels["protocol"])] += s.value
        return out


# ---------------------------------------------------------------------- the client

def _mutating(op_name: str) -> bool:
    """Whether an op changes the namespace (not a read; a read-handle open counts as a read)."""
    from dfs.common.messages import REQUESTS, Kind
    from dfs.common.ops import Op

    cls = REQUESTS.get(Op[op_name])
    return cls is not None and cls.KIND not in (Kind.READ, Kind.READ_HANDLE)


def count_requests(client) -> Counter:
    """Wrap the client's metadata transport so that each request is counted by (shard, op name)."""
    t = client.meta.t
    counts: Counter = Counter()
    call, call_many = t.call, t.call_many

    async def counted_call(shard, op, *a, **kw):
        counts[(shard, op.name)] += 1
        return await call(shard, op, *a, **kw)

    async def counted_many(shard, ops):
        for o in ops:
            counts[(shard, o[0].name)] += 1
        return await call_many(shard, ops)

    t.call, t.call_many = counted_call, counted_many
    return counts


async def run_all(items: list, fn: Callable[[Any], Awaitable[Any]], inflight: int) -> list[float]:
    """``fn(item)`` for every item, ``inflight`` at a time; the latency of each."""
    lat: list[float] = []
    it = iter(items)

    async def worker() -> None:
        for x in it:
            t = time.perf_counter()
            await fn(x)
            lat.append(time.perf_counter() - t)

    await asyncio.gather(*(worker() for _ in range(max(1, inflight))))
    return lat


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))]


class Meter:
    """Phases measured on one cluster: CPU by role, requests by shard, coordinated commits."""

    def __init__(self, procs: Procs, idle: dict[str, float], log) -> None:
        self.procs = procs
        self.idle = idle  # CPU seconds per second of each process, idle
        self.log = log
        self.rows: list[dict] = []

    async def phase(self, name: str, body: Callable[[], Awaitable[tuple[int, list[float], Counter]]],
                    unit: str = "op") -> dict:
        """``body()`` -> (operations, latencies, request counts); measured around it."""
        c0 = self.procs.commits()
        cpu0 = self.procs.sample()
        t0 = time.monotonic()
        ops, lat, reqs = await body()
        wall = time.monotonic() - t0
        cpu1 = self.procs.sample()
        c1 = self.procs.commits()
        raw = {k: cpu1[k] - cpu0[k] for k in cpu0}
        net = {k: raw[k] - self.idle[k] * wall for k in raw}
        commits = {f"{op}/{proto}": c1[(op, proto)] - c0[(op, proto)] for (op, proto) in c1
                   if c1[(op, proto)] - c0[(op, proto)]}
        per_shard: Counter = Counter()
        by_op: Counter = Counter()
        for (shard, op), n in reqs.items():
            per_shard[shard] += n
            by_op[op] += n
        mutating = sum(n for op, n in by_op.items() if _mutating(op))
        row = {"phase": name, "unit": unit, "ops": ops, "seconds": wall,
               "ops_per_s": ops / wall if wall > 0 else float("nan"),
               "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
               "cpu_raw": self.procs.by_role(raw), "cpu_net": self.procs.by_role(net),
               "requests": sum(reqs.values()), "requests_by_shard": dict(sorted(per_shard.items())),
               "requests_by_op": dict(by_op), "commits": commits,
               "two_phase": sum(v for k, v in commits.items() if k.endswith("/two_phase")),
               "one_phase": sum(v for k, v in commits.items() if k.endswith("/one_phase")),
               "mutating_requests": mutating}
        # the share of the client's changes (requests that are not reads) that needed 2PC
        row["two_phase_share"] = row["two_phase"] / mutating if mutating else 0.0
        self.rows.append(row)
        per = row["cpu_net"]
        self.log(f"  {name:<22} {ops:>6} {unit}s {row['ops_per_s']:>8.0f}/s p50 {row['p50_ms']:6.2f} ms  "
                 f"CPU ms/{unit} (net): total {1e3 * per['total'] / max(ops, 1):6.2f} "
                 + " ".join(f"{r} {1e3 * per[r] / max(ops, 1):.2f}" for r in ROLES)
                 + f"  2PC {row['two_phase']:.0f} 1PC {row['one_phase']:.0f} of {mutating} changes, "
                 f"{row['requests_by_shard'].get(0, 0)} of {row['requests']} requests to shard 0")
        return row


# ---------------------------------------------------------------------- phases

WORKLOADS = ("workload: mdtest tree", "workload: untar", "workload: shuffle", "workload: checkpoint")


class _Stop(Exception):
    """No operation phase left that ``--phases`` wants."""


class Bench:
    def __init__(self, cluster_file: str, a, meter: Meter) -> None:
        self.cluster_file = cluster_file
        self.a = a
        self.m = meter
        self.measured: set[str] = set()

    def wanted(self, name: str) -> bool:
        return not self.a.phases or name in self.a.phases

    async def client(self, warm: list[str] = (), ttl: float = 3600.0):
        """A fresh library client with ``warm`` paths resolved (and cached for ``ttl``)."""
        import dfs

        c = await dfs.aconnect(self.cluster_file, ttl=ttl)
        for p in warm:
            await c.stat(p)
        return c

    async def ops_phase(self, name: str, items: list, fn, warm: list[str], unit: str = "op",
                        ttl: float = 3600.0, groups: bool = False, inflight: int | None = None) -> dict:
        """``fn(client, item)`` for each of ``items`` (``groups``: lists of items, one after the other).
        A phase not among ``--phases`` runs unmeasured when a later one needs what it makes."""
        if not self.wanted(name):
            c = await self.client(warm, ttl)  # later phases need what it makes
            try:
                for group in (items if groups else [items]):
                    await run_all(group, lambda x: fn(c, x), inflight or self.a.inflight)
            finally:
                await c.close()
            return {}
        c = await self.client(warm, ttl)
        reqs = count_requests(c)

        async def body():
            lat: list[float] = []
            try:
                for group in (items if groups else [items]):  # a group after the other
                    lat += await run_all(group, lambda x: fn(c, x), inflight or self.a.inflight)
            finally:
                await c.close()  # its background closes are this phase's work
            return len(lat), lat, reqs

        row = await self.m.phase(name, body, unit)
        self.measured.add(name)
        if self.a.phases and set(self.a.phases) <= self.measured | set(WORKLOADS):
            raise _Stop  # the rest of the operation phases is wanted by none
        return row

    async def operations(self) -> None:
        a = self.a
        base = "/ops"
        c = await self.client()
        await c.mkdir(base)
        await c.close()
        dirs = [f"{base}/d{j}" for j in range(a.dirs)]
        moving = [f"{base}/m{j}" for j in range(a.dirs)]
        files = [f"{dirs[i % a.dirs]}/f{i}" for i in range(a.files)]
        small = [f"{dirs[i % a.dirs]}/s{i}" for i in range(a.files)]
        large = [f"{dirs[i % a.dirs]}/l{i}" for i in range(a.large_files)]
        warm = [base, *dirs]
        await self.ops_phase("mkdir", dirs + moving, lambda c, p: c.mkdir(p), [base])
        await self.ops_phase("create", files, lambda c, p: c.write_bytes(p, b""), warm)
        await self.ops_phase("stat", files, lambda c, p: c.stat(p), warm)
        await self.ops_phase("readdir", dirs * a.readdir_rounds, lambda c, p: c.listdir(p), warm, "call")
        await self.ops_phase("rename (same dir)", files, lambda c, p: c.rename(p, p + ".r"), warm)
        nxt = {d: dirs[(j + 1) % len(dirs)] for j, d in enumerate(dirs)}
        moved = [f"{nxt[os.path.dirname(p)]}/x{os.path.basename(p)}" for p in files]
        await self.ops_phase("rename (cross dir)", list(zip(files, moved)),
                             lambda c, pq: c.rename(pq[0] + ".r", pq[1]), warm)
        await self.ops_phase("unlink", moved, lambda c, p: c.remove(p), warm)
        sdata = os.urandom(a.small)
        await self.ops_phase(f"write {a.small} B", small, lambda c, p: c.write_bytes(p, sdata), warm)
        await self.ops_phase(f"read {a.small} B", small, lambda c, p: c.read_bytes(p), warm)
        await self.ops_phase(f"unlink {a.small} B", small, lambda c, p: c.remove(p), warm)
        if a.data_servers and large:
            ldata = os.urandom(a.large)
            await self.ops_phase(f"write {a.large // 1024} KiB", large, lambda c, p: c.write_bytes(p, ldata), warm)
            await self.ops_phase(f"read {a.large // 1024} KiB", large, lambda c, p: c.read_bytes(p), warm)
            await self.ops_phase(f"unlink {a.large // 1024} KiB", large, lambda c, p: c.remove(p), warm)
        mdst = [f"{nxt[d]}/m{j}" for j, d in enumerate(dirs)]
        # one at a time: concurrent ones contend for the ordering lock on shard 0 (one holds it,
        # the others back off and retry), which measures the contention, not the cost
        # (benchmarks/dir_renames.py measures the contention)
        await self.ops_phase("rename dir (cross dir)", list(zip(moving, mdst)),
                             lambda c, pq: c.rename(pq[0], pq[1]), warm + moving, inflight=1)
        await self.ops_phase("rmdir", [mdst, dirs], lambda c, p: c.rmdir(p), warm, groups=True)
        c = await self.client()
        await c.rmdir(base)
        await c.close()

    # ------------------------------------------------------------------ workloads
    async def mdtest_tree(self) -> None:
        """mdtest -z DEPTH -b BRANCH -I FILES: a tree, files in every directory, stat, unlink, rmdir."""
        a = self.a
        levels: list[list[str]] = [["/mdtest"]]
        for _ in range(a.tree_depth):
            levels.append([f"{p}/t{b}" for p in levels[-1] for b in range(a.tree_branch)])
        tree = [p for lvl in levels for p in lvl]
        files = [f"{d}/f{i}" for d in tree for i in range(a.tree_files)]

        async def body():
            c = await self.client(ttl=1.0)
            reqs = count_requests(c)
            lat: list[float] = []
            try:
                await c.mkdir("/mdtest")
                for lvl in levels[1:]:  # parents first; a level at a time
                    lat += await run_all(lvl, c.mkdir, a.inflight)
                lat += await run_all(files, lambda p: c.write_bytes(p, b""), a.inflight)
                lat += await run_all(files, c.stat, a.inflight)
                lat += await run_all(files, c.remove, a.inflight)
                for lvl in levels[:0:-1]:
                    lat += await run_all(lvl, c.rmdir, a.inflight)
                await c.rmdir("/mdtest")
            finally:
                await c.close()
            return len(lat) + 2, lat, reqs

        await self.m.phase("workload: mdtest tree", body)

    async def untar_and_shuffle(self, tmp: str) -> None:
        from dfs.bench.lazy import make_tarball

        tarball = make_tarball(tmp, self.a.untar_files)
        with tarfile.open(tarball) as tf:
            members = tf.getmembers()
            contents = {m.name: tf.extractfile(m).read() for m in members if m.isfile()}
        dirs = [m for m in members if m.isdir()]
        rest = [m for m in members if not m.isdir()]

        async def extract(c, m) -> None:
            p = "/untar/" + m.name
            if m.isdir():
                await c.mkdir(p)
            elif m.issym():
                await c.symlink(m.linkname, p)
                return
            else:
                await c.write_bytes(p, contents[m.name])
            await c.chmod(p, m.mode)
            await c.utime(p, (m.mtime, m.mtime))

        async def untar():
            c = await self.client(ttl=1.0)
            reqs = count_requests(c)
            try:
                await c.mkdir("/untar")
                lat = []
                for d in dirs:  # tar's order: a directory before what is in it
                    lat += await run_all([d], lambda m: extract(c, m), 1)
                lat += await run_all(rest, lambda m: extract(c, m), self.a.inflight)
            finally:
                await c.close()
            return len(members), lat, reqs

        await self.m.phase("workload: untar", untar, "file")
        paths = ["/untar/" + m.name for m in members if m.isfile()]
        random.Random(17).shuffle(paths)

        async def shuffle():
            c = await self.client(ttl=1.0)
            reqs = count_requests(c)
            try:
                lat = await run_all(paths, c.read_bytes, self.a.inflight)
            finally:
                await c.close()
            return len(paths), lat, reqs

        await self.m.phase("workload: shuffle", shuffle, "file")

    async def checkpoints(self) -> None:
        import dfs
        from dfs.checkpoint import CheckpointDir

        a = self.a
        blob = os.urandom(a.ckpt_kib * 1024)

        def save_all(reqs: Counter) -> int:
            c = dfs.connect(self.cluster_file)
            reqs.update(_count_sync(c))
            n = 0
            try:
                ck = CheckpointDir(c, "/ckpt")
                for k in range(a.checkpoints):
                    staging = ck.stage(f"step{k}")
                    for r in range(a.ckpt_ranks):
                        with c.open(f"{staging}/rank{r}.pt", "wb") as f:
                            f.write(blob)
                            f.flush()
                            f.fsync()
                    ck.commit(staging, f"step{k}")
                    n += 1
            finally:
                reqs.update(_count_sync(c))
                c.close()
            return n

        async def body():
            reqs: Counter = Counter()
            t = time.perf_counter()
            n = await asyncio.to_thread(save_all, reqs)
            return n, [time.perf_counter() - t], reqs

        await self.m.phase("workload: checkpoint", body, "checkpoint")


def _count_sync(c) -> Counter:
    """Request counting on a sync Client: wrap once, return the counts so far and reset them."""
    t = c.meta.t
    counts = getattr(t, "_bench_counts", None)
    if counts is None:
        t._bench_counts = count_requests(c)
        return Counter()
    out = Counter(counts)
    counts.clear()
    return out


# ---------------------------------------------------------------------- one cluster

def measure(shards: int, a, root: str, log=print) -> dict:
    """One shard count on a fresh cluster of this machine's loopback."""
    from dfs.local.cluster import LocalCluster

    folder = os.path.join(root, f"s{shards}")
    cluster = LocalCluster(folder, shards=shards, replicas=a.replicas, mgmt_replicas=1,
                           data_servers=a.data_servers, chain_replicas=max(1, min(3, a.data_servers)))
    log(f"-- {shards} shard(s) x {a.replicas} replicas, 1 mgmt, {a.data_servers} data server(s): starting")
    with cluster:
        cluster.wait_all_converged(120.0)
        return measure_on(cluster, cluster.config_path, folder, a, log)


def measure_on(cluster, cluster_file: str, folder: str, a, log=print) -> dict:
    """The idle cost, then every wanted phase, on a running cluster (this process is the client)."""
    shards = cluster.cfg.nshards
    procs = Procs(cluster)
    s0 = procs.sample()
    t0 = time.monotonic()
    time.sleep(a.idle)  # the measurement window of the idle cost, not a synchronisation
    s1 = procs.sample()
    dt = time.monotonic() - t0
    idle = {k: (s1[k] - s0[k]) / dt for k in s0}
    idle["client"] = 0.0  # this process is idle by construction (it only sleeps)
    log(f"   idle CPU: {sum(idle.values()):.3f} s/s over all processes "
        f"({', '.join(f'{r} {v:.3f}' for r, v in procs.by_role(idle).items() if r in ROLES)})")
    meter = Meter(procs, idle, log)
    bench = Bench(cluster_file, a, meter)
    tmp = tempfile.mkdtemp(prefix="tar-", dir=folder)

    async def go():
        try:
            await bench.operations()
        except _Stop:
            pass
        if bench.wanted("workload: mdtest tree"):
            await bench.mdtest_tree()
        if bench.wanted("workload: untar"):
            await bench.untar_and_shuffle(tmp)
        if bench.wanted("workload: checkpoint"):
            await bench.checkpoints()

    asyncio.run(go())
    shutil.rmtree(tmp, ignore_errors=True)
    return {"shards": shards, "replicas": a.replicas, "idle_cpu_per_s": procs.by_role(idle),
            "idle_cpu_per_s_by_process": idle, "leaders_stable": procs.same_leaders(), "phases": meter.rows}


# ---------------------------------------------------------------------- attached

class Attached:
    """A cluster another process started (benchmarks/shards_netns.py), as this client sees it:
    the processes by PID and role (from the spec), leaders from the replicas' Status answers.

    The spec (JSON): ``config`` (the cluster file), ``folder`` (scratch space), ``out`` (where
    the result goes), ``args`` (this module's parsed arguments), ``procs`` (``name``, ``pid``,
    ``role``, ``shard``, ``address``, ``metrics`` of each server process)."""

    def __init__(self, spec: dict) -> None:
        from types import SimpleNamespace

        from dfs.common.config import ClusterConfig
        from dfs.wire import auth as wire_auth

        self.cfg = ClusterConfig.load(spec["config"])
        self.credentials = wire_auth.remember_config(self.cfg)
        self.procs = [SimpleNamespace(**p) for p in spec["procs"]]

    def meta_procs(self, shard: int | None = None) -> list:
        return [p for p in self.procs if p.role == "meta" and (shard is None or p.shard == shard)]

    def leader_of(self, shard: int):
        from dfs.local import probe

        procs = self.meta_procs(shard)
        sts = asyncio.run(probe.replica_statuses(self.credentials, [p.address for p in procs]))
        return next((p for p, st in zip(procs, sts) if st is not None and st.role == "leader"), None)


def attached_main(path: str) -> int:
    """``--attach SPEC``: measure the cluster a spec describes (the client part of a run whose
    cluster another process started, e.g. in network namespaces)."""
    with open(path) as f:
        spec = json.load(f)
    a = argparse.Namespace(**spec["args"])
    res = measure_on(Attached(spec), spec["config"], spec["folder"], a)
    with open(spec["out"], "w") as f:
        json.dump(res, f)
    return 0


# ---------------------------------------------------------------------- output

def table(results: list[dict]) -> str:
    """CPU milliseconds per operation (net of idle), by role, per shard count."""
    out = ["| phase | shards | ops | ops/s | p50 ms | p99 ms | client | leaders (shard 0's) | followers | "
           "mgmt | data | total CPU ms/op | 2PC share of changes |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    names = [r["phase"] for r in results[0]["phases"]]
    for name in names:
        for res in results:
            r = next((x for x in res["phases"] if x["phase"] == name), None)
            if r is None:
                continue
            n = max(r["ops"], 1)
            c = r["cpu_net"]
            share = r["two_phase_share"]
            out.append(f"| {name} | {res['shards']} | {r['ops']:,} | {r['ops_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                       f"{r['p99_ms']:.2f} | {1e3 * c['client'] / n:.2f} | {1e3 * c['leaders'] / n:.2f} "
                       f"({1e3 * c['leader0'] / n:.2f}) | {1e3 * c['followers'] / n:.2f} | {1e3 * c['mgmt'] / n:.3f} | "
                       f"{1e3 * c['data'] / n:.2f} | {1e3 * c['total'] / n:.2f} | {100 * share:.0f}% |")
    return "\n".join(out)


def compact(results: list[dict]) -> str:
    """Total CPU ms per operation (net of idle) by shard count, the leaders' part, the
    busiest leader's, shard 0's, and the share of two-phase commits among the changes."""
    counts = [r["shards"] for r in results]
    head = ("| phase | " + " | ".join(f"{s} shard{'s' if s > 1 else ''}" for s in counts)
            + f" | leaders at {counts[-1]} (busiest, shard 0's) | 2PC share of changes at "
            + ", ".join(map(str, counts)) + " |")
    out = [head, "|---|" + "---|" * (len(counts) + 2)]
    for name in [r["phase"] for r in results[0]["phases"]]:
        rows = [next((x for x in res["phases"] if x["phase"] == name), None) for res in results]
        if any(r is None or not r["ops"] for r in rows):
            continue
        tot = " | ".join(f"{1e3 * r['cpu_net']['total'] / r['ops']:.2f}" for r in rows)
        last = rows[-1]
        n = last["ops"]
        lead = (f"{1e3 * last['cpu_net']['leaders'] / n:.2f} ({1e3 * last['cpu_net']['max_leader'] / n:.2f}, "
                f"{1e3 * last['cpu_net']['leader0'] / n:.2f})")
        share = ", ".join(f"{100 * r['two_phase_share']:.0f}%" for r in rows)
        out.append(f"| {name} (per {last['unit']}) | {tot} | {lead} | {share} |")
    return "\n".join(out)


def machine() -> dict:
    """meta_service's machine facts, with the load average and a UTC date."""
    return {**_machine(), "loadavg": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.gmtime())}


def main(argv: list[str] | None = None, measure=measure, extra_args=()) -> int:
    """``measure(shards, args, root)`` runs one shard count (another cluster launcher's, e.g.
    benchmarks/shards_netns.py's); ``extra_args``: functions adding its options to the parser."""
    ap = argparse.ArgumentParser(prog="dfs bench shards", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", default="1,2,4,8", help="shard counts, one cluster each")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--data-servers", type=int, default=3)
    ap.add_argument("--files", type=int, default=2000, help="files of each file phase")
    ap.add_argument("--dirs", type=int, default=64, help="directories the files are spread over")
    ap.add_argument("--readdir-rounds", type=int, default=8, help="listdir calls per directory")
    ap.add_argument("--small", type=int, default=4096, help="bytes of the small files")
    ap.add_argument("--large", type=int, default=256 * 1024, help="bytes of the data-server files")
    ap.add_argument("--large-files", type=int, default=300)
    ap.add_argument("--inflight", type=int, default=16, help="operations in flight from the client")
    ap.add_argument("--tree-depth", type=int, default=3)
    ap.add_argument("--tree-branch", type=int, default=4)
    ap.add_argument("--tree-files", type=int, default=8, help="files per directory of the mdtest tree")
    ap.add_argument("--untar-files", type=int, default=1000)
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--ckpt-ranks", type=int, default=4)
    ap.add_argument("--ckpt-kib", type=int, default=1024, help="KiB per rank file")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds the idle cost is measured over")
    ap.add_argument("--root", default=None, help="keep the clusters' folders here (default: temp, removed)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--phases", default="", help="only these phases (comma-separated names), e.g. create,stat")
    ap.add_argument("--report", default=None, metavar="JSON", help="print the tables of an earlier run's JSON")
    ap.add_argument("--attach", default=None, metavar="SPEC", help=argparse.SUPPRESS)  # see Attached
    for add in extra_args:
        add(ap)
    a = ap.parse_args(argv)
    if a.attach:
        return attached_main(a.attach)
    if a.report:
        with open(a.report) as f:
            results = json.load(f)["results"]
        print(table(results))
        print()
        print(compact(results))
        return 0
    a.phases = [x.strip() for x in a.phases.split(",") if x.strip()]
    counts = [int(x) for x in a.shards.split(",") if x.strip()]
    if not counts or min(counts) < 1 or a.files < 1 or a.dirs < 2 or a.inflight < 1:
        ap.error("--shards >= 1 each, --files >= 1, --dirs >= 2, --inflight >= 1")
    root = a.root or tempfile.mkdtemp(prefix="dfs-bench-shards-")
    before = machine()
    results = []
    try:
        for s in counts:
            results.append(measure(s, a, root))
            if a.json:  # what is measured so far survives a later failure
                _save(a, before, results)
    finally:
        if a.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(results))
    print()
    print(compact(results))
    if a.json:
        _save(a, before, results)
    loads = [before["loadavg"][0], os.getloadavg()[0]]
    print(f"\nload average (1 min) at start / end: {loads[0]:.2f} / {loads[1]:.2f}; "
          f"mean of the phases' wall time: {statistics.mean(r['seconds'] for x in results for r in x['phases']):.1f} s")
    return 0


def _save(a, before: dict, results: list[dict]) -> None:
    with open(a.json, "w") as f:
        json.dump({"args": vars(a), "machine_start": before, "machine_end": machine(), "results": results},
                  f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
