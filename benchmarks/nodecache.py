"""The node-local cache against the data plane and the local disk (issue 16; docs/benchmarks.md).

One LocalCluster (1 shard x 3 replicas, 3 data servers, chains of 3). A snapshot of
``--files`` files of ``--mib`` MiB each; the same bytes in files on the local disk. Rates:

* cold data-plane read: the snapshot's files read whole (``PATH/.snap/NAME``) by a client
  without the cache, the data servers' files dropped from the page cache first;
* warm-up: ``Client.warmup`` of the snapshot into an empty cache (the same cold data servers);
* cached read: a new client with the cache reads the files whole (every chunk a hit; the
  cache's files in the page cache, as on a node that warmed up);
* local page cache: the local files read whole with ``open().readinto``, after a first read.

    PYTHONPATH=. .venv/bin/python benchmarks/nodecache.py --files 8 --mib 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

MiB = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--root", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()

    import dfs
    from dfs.bench.data_path import drop_cache
    from dfs.local.cluster import LocalCluster

    root = tempfile.mkdtemp(prefix="dfs-nodecache-", dir=a.root)
    cluster = LocalCluster(os.path.join(root, "cluster"), shards=1, replicas=3, mgmt_replicas=1, data_servers=3,
                           chain_replicas=3)
    cluster.start(120.0)
    conn = {"cluster": cluster.config_path}
    cache = os.path.join(root, "cache")
    total = a.files * a.mib * MiB
    out = {"files": a.files, "mib": a.mib, "load_before": os.getloadavg()}

    def rate(name: str, t: float) -> None:
        out[name] = total / t / 1e6
        print(f"{name}: {out[name]:.0f} MB/s ({t:.2f} s)", flush=True)

    try:
        blob = os.urandom(a.mib * MiB)
        names = [f"f{i:03d}" for i in range(a.files)]
        with dfs.connect(**conn) as c:
            c.makedirs("/ds")
            for n in names:
                c.write_bytes(f"/ds/{n}", blob)
            c.snapshot_create("/ds", "s")
        os.makedirs(os.path.join(root, "local"))
        for n in names:
            with open(os.path.join(root, "local", n), "wb") as f:
                f.write(blob)
        buf = bytearray(a.mib * MiB)

        def read_all(c) -> float:
            t0 = time.perf_counter()
            for n in names:
                with c.open(f"/ds/.snap/s/{n}", "rb", buffering=0) as f:
                    assert f.readinto(buf) == len(buf)
            return time.perf_counter() - t0

        drop_cache([os.path.join(root, "cluster")])
        with dfs.connect(**conn) as c:
            rate("cold data-plane read", read_all(c))
        drop_cache([os.path.join(root, "cluster")])
        with dfs.connect(**conn, cache_dir=cache, cache_size=2 * total) as c:
            r = c.warmup("/ds", snapshot="s")
            assert r.ok and r.fetched == total, r
            rate("warm-up", r.seconds)
        with dfs.connect(**conn, cache_dir=cache, cache_size=2 * total) as c:
            read_all(c)  # the cache's files into the page cache, as after a warm-up on this node
            rate("cached read", read_all(c))
            assert c.cache_stats()["misses"] == 0
        t0 = time.perf_counter()
        for n in names:
            with open(os.path.join(root, "local", n), "rb", buffering=0) as f:
                f.readinto(buf)
        t0 = time.perf_counter()
        for n in names:
            with open(os.path.join(root, "local", n), "rb", buffering=0) as f:
                assert f.readinto(buf) == len(buf)
        rate("local page cache", time.perf_counter() - t0)
        out["load_after"] = os.getloadavg()
        print("load average before/after:", out["load_before"], out["load_after"])
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
