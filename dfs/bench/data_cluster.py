"""The dfs half of the data path benchmark: a local cluster with data servers,
files opened through the metadata client and the file I/O core."""

from __future__ import annotations

from dfs.client.connect import pair
from dfs.bench.data_path import Figure, run_dfs
from dfs.client.file import FileHandle
from dfs.common.ids import ROOT_INO
from dfs.route.shards import GrpcTransport
from dfs.local.cluster import LocalCluster


async def run_on_cluster(folder: str, size: int, req: int, parallel: int, log, *, data_servers: int = 3,
                         replicas: int = 3) -> list[Figure]:
    import asyncio

    cluster = LocalCluster(folder, shards=1, replicas=3, mgmt_replicas=1, data_servers=data_servers,
                           chain_replicas=replicas)
    await asyncio.to_thread(cluster.start, 120.0)
    try:
        t = await GrpcTransport(cluster.mgmt_addresses).connect()
        meta, data = pair(t)
        d = await meta.mkdir(ROOT_INO, "bench")
        names: dict[str, int] = {}

        async def open_file(name: str) -> FileHandle:
            if name not in names:
                attr, _ = await meta.create(d.ino, name)
                names[name] = attr.ino
            attr = await meta.getattr(names[name])
            return FileHandle(meta, data, attr)

        cache_dirs = [tc.path for ds in cluster.cfg.data for tc in ds.targets]
        try:
            return await run_dfs(open_file, cache_dirs, size, req, parallel, log)
        finally:
            await data.close()
            await meta.close()
    finally:
        await asyncio.to_thread(cluster.stop)
