"""PyTorch on dfs against the local disk, in one run (issue 16): DataLoader epochs, a safetensors
load, a torch.distributed.checkpoint save and load from several processes.

    PYTHONPATH=. .venv/bin/python benchmarks/torch_ai.py [--files 5000] [--file-kib 16]
        [--workers 4] [--st-mib 256] [--dcp-mib 256] [--ranks 4] [--root DIR] [--json out.json]

One LocalCluster (1 shard x 3 replicas, 3 data servers, chains of 3, as ``dfs bench ai``);
"local" is a directory on the same disk. Caches are dropped (the local files, the data
servers' targets) before every "cold" figure.

* ``loader``: ``--files`` files of ``--file-kib`` KiB; a DataLoader (``--workers`` fork
  workers, batches of 64, shuffled, persistent workers) over ``dfs.torch.DfsDataset`` (a
  batch's files fetched together by read_many), over the same dataset with one read per
  file (``__getitems__`` off: what prefetch buys), over the same dataset with the node-local
  cache (strict mode: files revalidated by their data version at open, epoch 2 reads the
  bytes from the cache), over a snapshot of it in snapshot mode
  (``DfsDataset`` with ``snapshot=``, the manifest and the node-local cache in the run's
  folder: epoch 2 reads from that cache), and over a local map-style dataset; epoch 1
  (cold, worker start and the manifest's load included) and epoch 2; files/s.
* ``safetensors``: one ``--st-mib`` MiB file of 64 MiB tensors; ``dfs.torch.load_safetensors``
  against ``safetensors.torch.load_file`` on the local copy, cold and warm, every tensor
  summed after the load on both (load_file maps the file, so its bytes are read then); then
  ``Client.warmup`` of the file into the node-local cache and a load after it; MB/s.
* ``dcp``: ``--ranks`` processes (gloo) each hold ``--dcp-mib``/ranks MiB; ``dcp.save``
  through ``DfsStorageWriter`` (atomic commit) and torch's ``FileSystemWriter`` (local),
  then ``dcp.load`` of it, caches dropped between; MB/s over the whole state.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

MB = 1_000_000
MiB = 1 << 20


def drop(paths):
    from dfs.bench.data_path import drop_cache

    drop_cache(paths)


def raw_len(path, data):
    return len(data)


class LocalFiles(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            return len(f.read())


def touch(tensors):
    for t in tensors.values():
        float(t.sum())


def collate_sum(batch):
    return sum(batch)


def epochs(ds, workers, n=2):
    dl = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers,
                                     multiprocessing_context="fork", persistent_workers=True,
                                     collate_fn=collate_sum, generator=torch.Generator().manual_seed(0))
    out = []
    for _ in range(n):
        t = time.monotonic()
        total = sum(dl)
        out.append((time.monotonic() - t, total))
    return out


def dcp_rank(rank, ranks, port, mode, conn, where, mib, out):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    n = mib * MiB // ranks // 4
    state = {f"r{rank}": torch.randn(n)}
    if mode == "dfs":
        import dfs
        from dfs.torch import DfsStorageReader, DfsStorageWriter

        fs = dfs.connect(**{k: v for k, v in conn.items() if not k.startswith("_")})
        writer = DfsStorageWriter(where, "ckpt", client=fs, thread_count=2)
    else:
        writer = FileSystemWriter(os.path.join(where, "ckpt"), thread_count=2)
    dist.barrier()
    t0 = time.monotonic()
    dcp.save(state, storage_writer=writer)
    dist.barrier()
    t1 = time.monotonic()
    if rank == 0:
        drop([where] + ([conn["_targets"]] if mode == "dfs" else []))
    dist.barrier()
    got = {f"r{rank}": torch.empty(n)}
    t2 = time.monotonic()
    reader = DfsStorageReader(where, client=fs) if mode == "dfs" else FileSystemReader(os.path.join(where, "ckpt"))
    dcp.load(got, storage_reader=reader)
    dist.barrier()
    t3 = time.monotonic()
    assert torch.equal(got[f"r{rank}"], state[f"r{rank}"])
    if rank == 0:
        out.put({"save": t1 - t0, "load": t3 - t2, "bytes": n * 4 * ranks})
    if mode == "dfs":
        fs.close()
    dist.destroy_process_group()


def run_dcp(mode, conn, where, mib, ranks):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=dcp_rank, args=(r, ranks, port, mode, conn, where, mib, q)) for r in range(ranks)]
    for p in ps:
        p.start()
    res = q.get(timeout=1800)
    for p in ps:
        p.join()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--file-kib", type=int, default=16)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--st-mib", type=int, default=256)
    ap.add_argument("--dcp-mib", type=int, default=256)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--only", default="loader,safetensors,dcp")
    ap.add_argument("--root", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    only = set(a.only.split(","))

    import dfs
    from dfs.local.cluster import LocalCluster
    from dfs.torch import DfsDataset, load_safetensors

    root = tempfile.mkdtemp(prefix="dfs-torch-", dir=a.root)
    rows = []

    def row(*r):
        rows.append(r)
        print(*r, flush=True)

    cluster = LocalCluster(os.path.join(root, "cluster"), shards=1, replicas=3, mgmt_replicas=1, data_servers=3,
                           chain_replicas=3)
    cluster.start(120.0)
    targets = os.path.join(root, "cluster")
    conn = {"cluster": cluster.config_path, "uid": 0, "gid": 0, "groups": ()}
    local = os.path.join(root, "local")
    os.makedirs(local)
    try:
        if "loader" in only:
            blob = os.urandom(a.file_kib * 1024)
            with dfs.connect(**conn) as fs:
                fs.makedirs("/ds")
                for i in range(a.files):
                    fs.write_bytes(f"/ds/f{i:06d}", blob)
            os.makedirs(os.path.join(local, "ds"))
            lf = []
            for i in range(a.files):
                p = os.path.join(local, "ds", f"f{i:06d}")
                with open(p, "wb") as f:
                    f.write(blob)
                lf.append(p)
            want = a.files * len(blob)
            with dfs.connect(**conn) as fs:
                fs.snapshot_create("/ds", "bench")
            snap = dict(conn, snapshot="/ds@bench", cache_dir=os.path.join(root, "cache"),
                        cache_size=f"{max(1, 2 * a.files * a.file_kib // (1 << 20))}G")
            cached = dict(conn, cache_dir=os.path.join(root, "cache"), cache_size=snap["cache_size"])
            for name, ds in (("local", LocalFiles(lf)),
                             ("dfs read_many", DfsDataset("/ds", raw_len, connect=conn)),
                             ("dfs read_many, node cache", DfsDataset("/ds", raw_len, connect=cached)),
                             ("dfs per file", DfsDataset("/ds", raw_len, connect=conn)),
                             ("dfs snapshot", DfsDataset("/", raw_len, connect=snap))):
                if name == "dfs per file":
                    ds.__getitems__ = None  # the DataLoader then asks file by file
                drop([local, targets])
                for k, (t, total) in enumerate(epochs(ds, a.workers)):
                    assert total == want, (name, total, want)
                    row("loader", f"epoch {k + 1}", name, round(a.files / t), "files/s")
        if "safetensors" in only:
            from safetensors.torch import load_file, save_file

            tensors = {f"t{i}": torch.randn(16 * MiB) for i in range(a.st_mib // 64)}
            lp = os.path.join(local, "m.safetensors")
            save_file(tensors, lp)
            size = os.path.getsize(lp)
            with dfs.connect(**conn) as fs:
                with open(lp, "rb") as src, fs.open("/m.safetensors", "wb") as dst:
                    shutil.copyfileobj(src, dst, 4 * MiB)
                for temp in ("cold", "warm"):
                    if temp == "cold":
                        drop([local, targets])
                    t = time.monotonic()
                    got = load_file(lp)
                    touch(got)  # load_file may map the file lazily: read every byte, as a model load does
                    row("safetensors", temp, "local", round(size / (time.monotonic() - t) / MB), "MB/s")
                    del got
                    t = time.monotonic()
                    got = load_safetensors("/m.safetensors", client=fs)
                    touch(got)
                    row("safetensors", temp, "dfs", round(size / (time.monotonic() - t) / MB), "MB/s")
                    assert torch.equal(got["t0"], tensors["t0"])
                    del got
            # a strict-mode file warmed up into the node-local cache (by its data version)
            with dfs.connect(**conn, cache_dir=os.path.join(root, "cache"), cache_size=f"{2 * size // MiB + 64}M") as fc:
                t = time.monotonic()
                r = fc.warmup("/m.safetensors")
                assert r.ok, r.errors
                row("safetensors", "warmup", "dfs", round(size / (time.monotonic() - t) / MB), "MB/s")
                t = time.monotonic()
                got = load_safetensors("/m.safetensors", client=fc)
                touch(got)
                row("safetensors", "after warmup", "dfs", round(size / (time.monotonic() - t) / MB), "MB/s")
                del got
        if "dcp" in only:
            for mode, where in (("local", os.path.join(local, "dcp")), ("dfs", "/dcp")):
                r = run_dcp(mode, dict(conn, _targets=targets) if mode == "dfs" else conn, where, a.dcp_mib,
                            a.ranks)
                row("dcp", "save", mode, round(r["bytes"] / r["save"] / MB), "MB/s")
                row("dcp", "load", mode, round(r["bytes"] / r["load"] / MB), "MB/s")
    finally:
        cluster.stop()
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"args": vars(a), "rows": rows}, f, indent=1)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
