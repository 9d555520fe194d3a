"""Snapshots survive kill -9 of metadata replicas and data servers, and a whole-cluster
restart: a snapshot reads the same names, attributes and bytes before and after.
"""

from __future__ import annotations

import pytest

import dfs
from dfs.common.layout import Layout
from dfs.testing.wait import until

pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]


def snapshot_view(fs, top: int, snap: int) -> dict:
    """name -> (size, mode, bytes) of every file under ``top`` at ``snap`` (one level of dirs)."""
    meta, dc = fs.aio.core.meta.inner, fs.aio.core.data.inner  # the raw clients under .snap's addressing

    async def go():
        out = {}
        for d in await meta.listdir(top, plus=True, snap=snap):
            for e in await meta.listdir(d.ino, plus=True, snap=snap):
                a = await meta.getattr(e.ino, snap=snap)
                if a.is_inline():
                    data, _ = await meta.read_inline(e.ino, snap=snap)
                    data = (bytes(data) + bytes(a.size))[:a.size]
                else:
                    lay = Layout.unpack(a.layout)
                    data = b"".join([bytes(await dc.read(e.ino, k, 0, lay.chunk_size, lay, at=snap))
                                     for k in range((a.size + lay.chunk_size - 1) // lay.chunk_size)])[:a.size]
                out[(d.name, e.name)] = (a.size, a.mode, data)
        return out

    return fs.run(go())


def test_snapshots_survive_kills_and_a_whole_cluster_restart(make_cluster):
    c = make_cluster(shards=2, replicas=3, mgmt_replicas=3, data_servers=3)
    with dfs.connect(c.config_path, uid=0, gid=0, ttl=0) as fs:
        for d in range(4):
            fs.makedirs(f"/s/d{d}")
            for f in range(3):
                fs.write_bytes(f"/s/d{d}/f{f}", bytes([d * 16 + f]) * (100_000 * (f + 1)))
        top = fs.stat("/s").st_ino
        snap = fs.run(fs.aio.core.meta.snapshot_create(top, "keep", "/s"))
        want = snapshot_view(fs, top, snap)
        assert len(want) == 12
        # the live tree moves on: overwrites, truncations, unlinks, renames
        for d in range(4):
            fs.write_bytes(f"/s/d{d}/f0", b"new" * 50_000)
            fs.truncate(f"/s/d{d}/f1", 10)
            fs.remove(f"/s/d{d}/f2")
            fs.rename(f"/s/d{d}", f"/s/e{d}")
        assert snapshot_view(fs, top, snap) == want
    # kill -9 a shard leader and a data server, then restart them
    leader = c.leader_of(0)
    c.kill(leader)
    victim = c.data_procs()[1]
    c.kill(victim)
    c.restart(leader)
    c.restart(victim)
    c.wait_healthy(120)
    with dfs.connect(c.config_path, uid=0, gid=0, ttl=0) as fs:
        assert until(lambda: snapshot_view(fs, top, snap) == want, 60, "the snapshot after kills")
    # the whole cluster down and up
    c.stop()
    c.start(timeout=120)
    with dfs.connect(c.config_path, uid=0, gid=0, ttl=0) as fs:
        assert until(lambda: snapshot_view(fs, top, snap) == want, 60, "the snapshot after a restart")
        m = c.cluster_map()
        assert m.snapshots[snap].state == "ready"
        fs.run(fs.aio.core.meta.snapshot_delete(top, "keep"))
        assert snap not in c.cluster_map().snapshots
