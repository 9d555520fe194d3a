"""AI-workload benchmarks: the dfs library, a dfs mount and the local disk, side by side.

    dfs bench ai [--workloads list,shuffle,ckpt,load] [--procs 4]
                 [--list-entries 100000] [--files 5000] [--file-kib 16-128] [--epochs 2]
                 [--ckpt-mib 256] [--load-mib 1024] [--json out.json] [--plot DIR]

One LocalCluster (``--shards`` x ``--replicas`` metadata, one mgmt replica,
``--data-servers`` data servers, chains of up to 3) is mounted by this command
with ``dfs mount`` (unmounted at the end, on failure and on SIGTERM too) and
reached with ``dfs.connect()``; "local" is a directory on the same disk (under
``--root``). Every workload runs on the three in the same invocation, local
first; each figure is printed with its ratio to the local one.

* ``list``: a directory of ``--list-entries`` empty files (made beforehand, with
  batched creates on dfs), ``ls -l``-style (scandir, then lstat of every entry;
  the library's scandir brings the attributes with the names) and
  ``os.listdir``; entries/s.
* ``shuffle``: ``--files`` files of random sizes in ``--file-kib`` (written
  beforehand; the mount reads what the library wrote), read whole by
  ``--procs`` reader processes in a random order, a new order each of
  ``--epochs`` epochs; page caches (local directory, data server targets) are
  dropped before the first epoch only; files/s and MB/s per epoch.
* ``ckpt``: ``--procs`` ranks (processes) each write one ``--ckpt-mib`` MiB
  shard at once with 4 MiB writes + fsync; then rank 0 commits (a manifest
  written to a temporary name, fsynced, renamed into place); "save" is the
  bytes over the time from the first write to the commit. Caches dropped,
  every rank restores the shard of the next rank (4 MiB reads); "restore" MB/s.
* ``load``: one process reads one ``--load-mib`` MiB file sequentially with
  4 MiB reads, cold (caches dropped: the local file, the data server
  targets, the mount's page cache) then warm; MB/s.

* ``snapshot`` (``--snapshot``): a dataset of ``--snap-files`` files of
  ``--snap-kib`` KiB in ``--snap-dirs`` directories, and a directory of
  ``--list-entries`` empty files, written on both sides; dfs snapshots it
  (``snapshot create``), builds its manifest (time, size), loads it (from dfs
  into an empty cache, then from the machine's cache), mounts it with ``dfs
  mount --snapshot`` and opens it with ``dfs.connect(snapshot=...)``. Then,
  side by side with the local directory: ``ls -l`` of the big directory, stat
  of ``--snap-stats`` random paths (twice: names first seen, then known), a shuffled epoch by ``--procs`` processes
  cold (page caches dropped on both sides) and warm, and the same epoch by
  ``--snap-procs`` processes at once; with the metadata requests the cluster
  answered during the reads (the Prometheus counters: zero after the loads).

Processes are spawned (multiprocessing), one library client per process.
``--plot DIR`` writes ``ai-<workload>.png`` per workload (matplotlib, Agg):
the engines' figures side by side and their ratios to local.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from dfs.bench.client_paths import _batch_create, _dfs, _Library, _Posix
from dfs.bench.data_path import drop_cache
from dfs.bench.meta_bench import open_fs, spawn_ranks

MB = 1_000_000
MiB = 1 << 20
REQ = 4 * MiB
WORKLOADS = ("list", "shuffle", "ckpt", "load", "snapshot")
ENGINES = ("local", "mount", "library")


# ---------------------------------------------------------------------- workers (spawned)

def _read_epochs(fs, barrier, epochs: list[list[str]]) -> list[dict]:
    """Each epoch's files read whole through ``fs``, once every rank reached ``barrier``: its
    start and end times, files and bytes."""
    out = []
    for paths in epochs:
        barrier.wait(600)
        n = 0
        t0 = time.monotonic()
        for p in paths:
            n += fs.read(p)
        out.append({"t0": t0, "t1": time.monotonic(), "files": len(paths), "bytes": n})
    return out


def _shuffle_rank(rank: int, barrier, put, spec: tuple, epochs: list[list[str]]) -> list[dict]:
    with open_fs(spec) as fs:
        return _read_epochs(fs, barrier, epochs)


def _ckpt_rank(rank: int, barrier, put, spec: tuple, base: str, ranks: int, mib: int,
               drop: list[str]) -> dict:
    with open_fs(spec) as fs:
        block = os.urandom(REQ)
        nblocks = max(1, mib * MiB // REQ)
        mine = os.path.join(base, f"rank{rank:04d}.pt")
        barrier.wait(600)
        t0 = time.monotonic()
        fs.write_n(mine, block, nblocks, fsync=True)
        t1 = time.monotonic()
        barrier.wait(600)
        tc0 = tc1 = time.monotonic()
        if rank == 0:  # the commit: the manifest appears whole, by a rename
            manifest = json.dumps({"shards": [f"rank{r:04d}.pt" for r in range(ranks)],
                                   "bytes": nblocks * REQ}).encode()
            tmp = os.path.join(base, ".manifest.json.tmp")
            fs.write(tmp, manifest, fsync=True)
            fs.rename(tmp, os.path.join(base, "manifest.json"))
            tc1 = time.monotonic()
            drop_cache(drop)
        barrier.wait(600)
        t2 = time.monotonic()
        fs.read(os.path.join(base, "manifest.json"))
        n = fs.read(os.path.join(base, f"rank{(rank + 1) % ranks:04d}.pt"), REQ)
        t3 = time.monotonic()
        if n != nblocks * REQ:
            raise OSError(f"restore read {n} bytes of {nblocks * REQ}")
        return {"t0": t0, "t1": t1, "tc0": tc0, "tc1": tc1, "t2": t2, "t3": t3,
                "written": nblocks * REQ, "read": n}


def _snap_fs(spec: tuple):
    """A worker's engine: ("posix",) or ("snapshot", cluster file, PATH@NAME, cache dir)."""
    from dfs.bench.client_paths import _Library, _Posix

    if spec[0] == "posix":
        return _Posix("/")
    import dfs

    return _Library(dfs.connect(spec[1], snapshot=spec[2], cache_dir=spec[3]))


def _snap_epoch_rank(rank: int, barrier, put, spec: tuple, epochs: list[list[str]]) -> list[dict]:
    fs = _snap_fs(spec)
    try:
        return _read_epochs(fs, barrier, epochs)
    finally:
        c = getattr(fs, "c", None)
        if c is not None:
            c.close()


def meta_requests(cluster) -> float:
    """Requests the metadata service answered so far (every replica's counter, summed)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    n = 0.0
    for p in cluster.procs:
        if p.role != "meta" or not p.metrics:
            continue
        text = urllib.request.urlopen(f"http://{p.metrics}/metrics", timeout=5).read().decode()
        for fam in text_string_to_metric_families(text):
            n += sum(s.value for s in fam.samples if s.name == "dfs_meta_requests_total")
    return n


# ---------------------------------------------------------------------- the driver

class Bench:
    def __init__(self, a, root: str, log=print) -> None:
        self.a, self.root, self.log = a, root, log
        self.rows: list[dict] = []
        self.cluster = None

    def row(self, workload: str, figure: str, engine: str, value: float, unit: str, **kw) -> dict:
        r = {"workload": workload, "figure": figure, "engine": engine, "value": value, "unit": unit, **kw}
        loc = next((x for x in self.rows if x["workload"] == workload and x["figure"] == figure
                    and x["engine"] == "local"), None)
        if loc is not None and loc["value"] > 0:
            r["ratio"] = value / loc["value"]
        self.rows.append(r)
        extra = f" ({kw['mb_s']:,.1f} MB/s)" if "mb_s" in kw else ""
        ratio = f"  {_x(r['ratio'])} local" if "ratio" in r else ""
        self.log(f"{workload:<8} {figure:<14} {engine:<8} {value:>12,.1f} {unit}{extra}{ratio}")
        return r

    def run(self) -> list[dict]:
        import dfs
        from dfs.local.cluster import LocalCluster

        a, root = self.a, self.root
        from dfs.common.config import SecurityConfig

        cluster = LocalCluster(os.path.join(root, "cluster"), shards=a.shards, replicas=a.replicas,
                               mgmt_replicas=1, data_servers=a.data_servers,
                               chain_replicas=max(1, min(3, a.data_servers)),
                               security=SecurityConfig(data_capabilities=not a.no_capabilities))
        self.log(f"starting a cluster: {a.shards} shard(s) x {a.replicas} replica(s), "
                 f"{a.data_servers} data server(s) in {cluster.root}")
        cluster.start(120.0)
        self.cluster = cluster
        mnt = os.path.join(root, "mnt")
        os.makedirs(mnt, exist_ok=True)
        mounted = False
        client = None
        try:
            mounted = True  # from before the call: a SIGTERM may come once the kernel has the mount
            _dfs("mount", mnt, "--cluster", cluster.config_path, "--log-file", os.path.join(root, "mount.log"))
            client = dfs.connect(cluster.config_path)
            self.local = os.path.join(root, "local")
            os.makedirs(self.local, exist_ok=True)
            self.mnt, self.client, self.lib = mnt, client, _Library(client)
            self.targets = [tc.path for ds in cluster.cfg.data for tc in ds.targets]
            lib_spec = ("library", cluster.config_path, 1.0)
            # engine -> (spec of a worker's fs, its base directory, what a cold start drops)
            self.engines = {
                "local": (("posix",), self.local, lambda d: [os.path.join(self.local, d)]),
                "mount": (("posix",), mnt, lambda d: [*self.targets, os.path.join(mnt, d)]),
                "library": (lib_spec, "/", lambda d: list(self.targets)),
            }
            for w in a.workloads:
                t0 = time.perf_counter()
                getattr(self, f"w_{w}")()
                self.log(f"  ({w}: {time.perf_counter() - t0:.1f}s)")
        finally:
            if client is not None:
                client.close()
            if mounted:
                try:
                    _dfs("umount", mnt)
                except Exception as e:  # noqa: BLE001 - stop the cluster anyway
                    self.log(f"umount {mnt}: {e}")
            cluster.stop()
        return self.rows

    def fs(self, engine: str):
        return self.lib if engine == "library" else _Posix("/")

    # ------------------------------------------------------------------ list
    def w_list(self) -> None:
        n = self.a.list_entries
        d = os.path.join(self.local, "list")
        os.makedirs(d)
        for i in range(n):
            os.close(os.open(os.path.join(d, f"f{i:07d}"), os.O_CREAT | os.O_WRONLY, 0o644))
        self.client.mkdir("/list")
        _batch_create(self.client, "/list", n)
        for engine in ENGINES:
            fs, p = self.fs(engine), os.path.join(self.engines[engine][1], "list")
            t0 = time.perf_counter()
            got = fs.scan_stat(p)
            dt = time.perf_counter() - t0
            self._expect(got, n, f"ls -l {engine}")
            self.row("list", "ls -l", engine, n / dt, "entries/s", seconds=dt)
            t0 = time.perf_counter()
            got = len(fs.listdir(p))
            dt = time.perf_counter() - t0
            self._expect(got, n, f"listdir {engine}")
            self.row("list", "listdir", engine, n / dt, "entries/s", seconds=dt)

    @staticmethod
    def _expect(got: int, want: int, what: str) -> None:
        if got != want:
            raise RuntimeError(f"{what}: {got}, expected {want}")

    # ------------------------------------------------------------------ shuffle
    def w_shuffle(self) -> None:
        a = self.a
        rng = random.Random(1)
        sizes = [rng.randint(a.file_kib[0] << 10, a.file_kib[1] << 10) for _ in range(a.files)]
        blob = os.urandom(max(sizes, default=0))
        names = [f"s{i:06d}" for i in range(a.files)]
        os.makedirs(os.path.join(self.local, "shuffle"))
        self.client.mkdir("/shuffle")
        with ThreadPoolExecutor(8) as ex:
            for fs, base in ((_Posix("/"), self.local), (self.lib, "/")):
                list(ex.map(lambda i, fs=fs, base=base: fs.write(os.path.join(base, "shuffle", names[i]),
                                                                 blob[:sizes[i]]), range(a.files)))
        total = sum(sizes)
        orders = []
        for e in range(a.epochs):
            order = list(range(a.files))
            random.Random(100 + e).shuffle(order)
            orders.append(order)
        for engine in ENGINES:
            spec, base, drops = self.engines[engine]
            drop_cache(drops("shuffle") if engine != "mount" else list(self.targets))
            args = [(spec, [[os.path.join(base, "shuffle", names[i]) for i in order[r::a.procs]]
                            for order in orders]) for r in range(a.procs)]
            parts = spawn_ranks(_shuffle_rank, args)
            for e in range(a.epochs):
                per = [p[e] for p in parts]
                dt = max(x["t1"] for x in per) - min(x["t0"] for x in per)
                n = sum(x["bytes"] for x in per)
                self._expect(n, total, f"shuffle {engine} epoch {e + 1} bytes")
                self.row("shuffle", f"epoch {e + 1}", engine, a.files / dt, "files/s", mb_s=n / dt / MB, seconds=dt)

    # ------------------------------------------------------------------ snapshot
    def w_snapshot(self) -> None:
        from dfs.client.connect import find_snapshot
        from dfs.client.snapmode import build_and_store, load_manifest

        a, c = self.a, self.client
        nf, nd, size = a.snap_files, a.snap_dirs, a.snap_kib << 10
        blob = os.urandom(size)
        names = [f"data/d{i % nd:03d}/f{i:07d}" for i in range(nf)]
        local = os.path.join(self.local, "snapset")
        for d in range(nd):
            os.makedirs(os.path.join(local, "data", f"d{d:03d}"))
        os.makedirs(os.path.join(local, "ls"))
        for i in range(a.list_entries):
            os.close(os.open(os.path.join(local, "ls", f"f{i:07d}"), os.O_CREAT | os.O_WRONLY, 0o644))
        c.makedirs("/snapset/ls")
        for d in range(nd):
            c.makedirs(f"/snapset/data/d{d:03d}")
        _batch_create(c, "/snapset/ls", a.list_entries)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as ex:
            for fs, base in ((_Posix("/"), local), (self.lib, "/snapset")):
                list(ex.map(lambda n, fs=fs, base=base: fs.write(os.path.join(base, n), blob), names))
        self.log(f"  (dataset written on both sides in {time.perf_counter() - t0:.0f}s)")
        t0 = time.perf_counter()
        info = c.snapshot_create("/snapset", "bench")
        self.row("snapshot", "create", "library", time.perf_counter() - t0, "s")
        meta, data = c.meta.inner, c.core.data.inner
        t0 = time.perf_counter()
        raw = c.run(build_and_store(meta, data, info))
        dt = time.perf_counter() - t0
        entries = nf + nd + a.list_entries + 2
        self.row("snapshot", "manifest build", "library", dt, "s", entries=entries, per_s=entries / dt)
        self.row("snapshot", "manifest size", "library", len(raw) / MB, "MB", bytes_per_entry=len(raw) / entries)
        cache = os.path.join(self.root, "snapcache")
        for figure in ("manifest load (dfs)", "manifest load (cache)"):
            st: dict = {}
            t0 = time.perf_counter()
            m = c.run(load_manifest(meta, data, info, cache_dir=cache, stats=st))
            dt = time.perf_counter() - t0
            self.row("snapshot", figure, "library", dt, "s", source=st.get("source"),
                     s_per_million=dt / len(m) * 1e6)
        spec = "/snapset@bench"
        assert c.run(find_snapshot(meta, data, spec)).epoch == info.epoch
        smnt = os.path.join(self.root, "snapmnt")
        os.makedirs(smnt, exist_ok=True)
        _dfs("mount", smnt, "--cluster", self.cluster.config_path, "--snapshot", spec, "--cache-dir", cache,
             "--log-file", os.path.join(self.root, "snapmount.log"))
        import dfs

        sc = dfs.connect(self.cluster.config_path, snapshot=spec, cache_dir=cache)
        try:
            self._snapshot_reads(local, smnt, sc, names, ("snapshot", self.cluster.config_path, spec, cache))
        finally:
            sc.close()
            _dfs("umount", smnt)

    def _snapshot_reads(self, local: str, smnt: str, sc, names: list[str], lib_spec: tuple) -> None:
        from dfs.bench.client_paths import _Library

        a = self.a
        lib = _Library(sc)
        where = {"local": (_Posix("/"), local, ("posix",)), "mount": (_Posix("/"), smnt, ("posix",)),
                 "library": (lib, "/", lib_spec)}
        rng = random.Random(7)
        picks = [rng.choice(names) for _ in range(a.snap_stats)]
        before = meta_requests(self.cluster)
        for engine in ENGINES:
            fs, base, _ = where[engine]
            t0 = time.perf_counter()
            got = fs.scan_stat(os.path.join(base, "ls"))
            dt = time.perf_counter() - t0
            self._expect(got, a.list_entries, f"ls -l {engine}")
            self.row("snapshot", "ls -l", engine, a.list_entries / dt, "entries/s", seconds=dt)
            for figure in ("stat random", "stat again"):  # names first seen, then known (the kernel's dcache)
                t0 = time.perf_counter()
                for p in picks:
                    fs.stat(os.path.join(base, p))
                dt = time.perf_counter() - t0
                self.row("snapshot", figure, engine, len(picks) / dt, "stats/s", seconds=dt)
        order = list(range(len(names)))
        random.Random(11).shuffle(order)
        total = len(names) * (a.snap_kib << 10)
        for procs, figures in ((a.procs, ("epoch cold", "epoch warm")), (a.snap_procs, (f"{a.snap_procs} procs",))):
            for engine in ENGINES:
                _, base, spec = where[engine]
                if "epoch cold" in figures:
                    drop_cache([os.path.join(local)] if engine == "local" else
                               [*self.targets, smnt] if engine == "mount" else list(self.targets))
                paths = [os.path.join(base, names[i]) for i in order]
                args = [(spec, [paths[r::procs]] * len(figures)) for r in range(procs)]
                parts = spawn_ranks(_snap_epoch_rank, args)
                for e, figure in enumerate(figures):
                    per = [p[e] for p in parts]
                    dt = max(x["t1"] for x in per) - min(x["t0"] for x in per)
                    n = sum(x["bytes"] for x in per)
                    self._expect(n, total, f"snapshot {figure} {engine} bytes")
                    self.row("snapshot", figure, engine, len(names) / dt, "files/s", mb_s=n / dt / MB,
                             seconds=dt)
        after = meta_requests(self.cluster)
        # the library workers' own loads (one lookup walk of PATH each, from the cache) are in it
        self.row("snapshot", "meta requests", "library", after - before, "requests",
                 note="answered by the metadata service during every read above (all engines)")

    # ------------------------------------------------------------------ ckpt
    def w_ckpt(self) -> None:
        a = self.a
        for engine in ENGINES:
            spec, base, drops = self.engines[engine]
            d = f"ckpt-{engine}"
            self.fs(engine).mkdir(os.path.join(base, d))
            args = [(spec, os.path.join(base, d), a.procs, a.ckpt_mib, drops(d)) for _ in range(a.procs)]
            parts = spawn_ranks(_ckpt_rank, args)
            written = sum(p["written"] for p in parts)
            save = max(p["tc1"] for p in parts) - min(p["t0"] for p in parts)
            commit = parts[0]["tc1"] - parts[0]["tc0"]
            restore = max(p["t3"] for p in parts) - min(p["t2"] for p in parts)
            self.row("ckpt", "save", engine, written / save / MB, "MB/s", seconds=save, commit_ms=commit * 1e3)
            self.row("ckpt", "restore", engine, sum(p["read"] for p in parts) / restore / MB, "MB/s",
                     seconds=restore)

    # ------------------------------------------------------------------ load
    def w_load(self) -> None:
        a = self.a
        block = os.urandom(REQ)
        nblocks = max(1, a.load_mib * MiB // REQ)
        os.makedirs(os.path.join(self.local, "load"))
        self.client.mkdir("/load")
        _Posix("/").write_n(os.path.join(self.local, "load", "model.bin"), block, nblocks, fsync=True)
        self.lib.write_n("/load/model.bin", block, nblocks, fsync=True)
        for engine in ENGINES:
            fs = self.fs(engine)
            _, base, drops = self.engines[engine]
            p = os.path.join(base, "load", "model.bin")
            drop_cache(drops("load"))
            for figure in ("cold", "warm"):
                t0 = time.perf_counter()
                n = fs.read(p, REQ)
                dt = time.perf_counter() - t0
                self._expect(n, nblocks * REQ, f"load {engine}")
                self.row("load", figure, engine, n / dt / MB, "MB/s", seconds=dt)


# ---------------------------------------------------------------------- output

def _x(ratio: float) -> str:
    """A ratio, with the digits that matter when it is far below 1."""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def table(rows: list[dict]) -> str:
    out = ["| workload | figure | local | mount | library | mount/local | library/local |",
           "|---|---|---|---|---|---|---|"]
    figs: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        figs.setdefault((r["workload"], r["figure"]), {})[r["engine"]] = r

    def fmt(r: dict | None) -> str:
        if r is None:
            return "-"
        return f"{r['value']:,.1f} {r['unit']}" + (f" ({r['mb_s']:,.1f} MB/s)" if "mb_s" in r else "")

    def ratio(r: dict | None) -> str:
        return _x(r["ratio"]) if r is not None and "ratio" in r else "-"

    for (w, f), by in figs.items():
        out.append(f"| {w} | {f} | {fmt(by.get('local'))} | {fmt(by.get('mount'))} | {fmt(by.get('library'))} | "
                   f"{ratio(by.get('mount'))} | {ratio(by.get('library'))} |")
    return "\n".join(out)


def plot(rows: list[dict], out_dir: str) -> list[str]:
    """One PNG per workload: the figures by engine, and the ratios to local."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written = []
    colors = {"local": "#7f7f7f", "mount": "#1f77b4", "library": "#ff7f0e"}
    for w in dict.fromkeys(r["workload"] for r in rows):
        mine = [r for r in rows if r["workload"] == w]
        figures = list(dict.fromkeys(r["figure"] for r in mine))
        val = {(r["figure"], r["engine"]): r for r in mine}
        fig, (ax, axr) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
        width = 0.8 / len(ENGINES)
        for k, engine in enumerate(ENGINES):
            xs = [i + (k - (len(ENGINES) - 1) / 2) * width for i in range(len(figures))]
            ys = [val[(f, engine)]["value"] if (f, engine) in val else 0 for f in figures]
            bars = ax.bar(xs, ys, width, label=engine, color=colors[engine])
            ax.bar_label(bars, labels=[f"{y:,.0f}" if y >= 10 else f"{y:,.2f}" for y in ys], fontsize=7)
        pos = [r["value"] for r in mine if r["value"] > 0]
        if pos and max(pos) / min(pos) > 50:  # orders of magnitude apart: a log scale shows them all
            ax.set_yscale("log")
        ax.set_xticks(range(len(figures)), figures)
        ax.set_ylabel(mine[0]["unit"])
        ax.set_title(f"{w}: local, mount, library")
        ax.legend()
        others = [e for e in ENGINES if e != "local"]
        width = 0.8 / len(others)
        for k, engine in enumerate(others):
            xs = [i + (k - (len(others) - 1) / 2) * width for i in range(len(figures))]
            ys = [val.get((f, engine), {}).get("ratio", 0) for f in figures]
            bars = axr.bar(xs, ys, width, label=f"{engine}/local", color=colors[engine])
            axr.bar_label(bars, labels=[_x(y) for y in ys], fontsize=7)
        axr.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        axr.set_xticks(range(len(figures)), figures)
        axr.set_ylabel("ratio to local")
        axr.set_title(f"{w}: ratio to the local disk")
        axr.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, f"ai-{w}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _kib_range(s: str) -> tuple[int, int]:
    lo, _, hi = s.partition("-")
    lo_i, hi_i = int(lo), int(hi or lo)
    if not 0 < lo_i <= hi_i:
        raise argparse.ArgumentTypeError(f"--file-kib: MIN-MAX with 0 < MIN <= MAX, not {s!r}")
    return lo_i, hi_i


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs bench ai", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS[:4]), help=f"a subset of {','.join(WORKLOADS)}")
    ap.add_argument("--procs", "-P", type=int, default=4, help="reader processes (shuffle), ranks (ckpt)")
    ap.add_argument("--list-entries", type=int, default=100_000, help="list: entries of the directory")
    ap.add_argument("--files", type=int, default=5000, help="shuffle: files")
    ap.add_argument("--file-kib", type=_kib_range, default=(16, 128), help="shuffle: file sizes, KiB MIN-MAX")
    ap.add_argument("--epochs", type=int, default=2, help="shuffle: epochs")
    ap.add_argument("--ckpt-mib", type=int, default=256, help="ckpt: MiB per rank (a multiple of 4)")
    ap.add_argument("--load-mib", type=int, default=1024, help="load: MiB of the file (a multiple of 4)")
    ap.add_argument("--snapshot", action="store_true", help="the snapshot workload only (same as --workloads snapshot)")
    ap.add_argument("--snap-files", type=int, default=100_000, help="snapshot: files of the dataset")
    ap.add_argument("--snap-dirs", type=int, default=64, help="snapshot: directories of the dataset")
    ap.add_argument("--snap-kib", type=int, default=16, help="snapshot: KiB per file")
    ap.add_argument("--snap-stats", type=int, default=10_000, help="snapshot: stats of random paths")
    ap.add_argument("--snap-procs", type=int, default=8, help="snapshot: processes of the parallel epoch")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--data-servers", type=int, default=3)
    ap.add_argument("--no-capabilities", action="store_true",
                    help="a cluster whose data servers check no capabilities (to measure what they cost)")
    ap.add_argument("--root", default=None, help="folder on the disk to measure: a new folder in it is kept (default: a temp dir, removed)")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--plot", default=None, metavar="DIR", help="write PNG charts here")
    a = ap.parse_args(argv)
    a.workloads = ["snapshot"] if a.snapshot else [w for w in a.workloads.split(",") if w]
    bad = [w for w in a.workloads if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload(s) {bad}; choose from {','.join(WORKLOADS)}")
    if a.procs < 1 or a.epochs < 1 or a.data_servers < 1 or min(a.list_entries, a.files) < 1:
        ap.error("--procs, --epochs, --data-servers, --list-entries and --files must be >= 1")
    if a.ckpt_mib < 4 or a.load_mib < 4:
        ap.error("--ckpt-mib and --load-mib: at least 4")
    if a.root:
        os.makedirs(a.root, exist_ok=True)
    root = tempfile.mkdtemp(prefix="dfs-bench-ai-", dir=a.root)  # a fresh cluster and local folder
    # SIGTERM unwinds like Ctrl-C: the workers are ended, the mount unmounted, the cluster stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        rows = Bench(a, root).run()
    finally:
        if a.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    if a.plot:
        for p in plot(rows, a.plot):
            print(f"chart: {p}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "engines": list(ENGINES), "workloads": a.workloads, "rows": rows},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
