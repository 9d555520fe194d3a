"""Orphan records: a deleted regular file leaves one, the leader's task frees it."""

from __future__ import annotations

import asyncio

from dfs.client.meta import MetaClient
from dfs.common.ids import ROOT_INO, shard_of
from dfs.common.layout import Layout
from dfs.common.ops import Op
from dfs.common.records import ROOT
from dfs.meta.local import LocalEngine
from dfs.testing.wait import until_async


def orphans(eng: LocalEngine) -> list[tuple[int, int, int]]:
    return sorted(o for s in eng.services for o in s.store.orphans())


async def _unlink_leaves_record():
    eng = LocalEngine(3)  # no chunk remover: records stay
    c = MetaClient(eng)
    try:
        top = (await c.mkdir(ROOT_INO, "t")).ino
        lay = Layout(chunk_size=1 << 20, stripe=2, replicas=2).pack()
        await c.setlayout(top, lay)
        a, _ = await c.create(top, "f")
        await c.setattr(a.ino, size=12345)
        b, _ = await c.create(top, "kept")
        await c.link(b.ino, top, "kept2")  # two names
        await c.symlink(top, "s", "f")
        await c.mkdir(top, "d")
        assert orphans(eng) == []
        await c.unlink(top, "f")
        await c.unlink(top, "kept")  # a hard link remains: no orphan
        await c.unlink(top, "s")  # not a regular file
        await c.rmdir(top, "d")
        assert orphans(eng) == [(a.ino, lay, 12345)]
        # the read op lists them too (an internal op of the file's shard)
        assert await eng.call(shard_of(a.ino), Op.ORPHANS, ROOT, [100]) == [[a.ino, lay, 12345]]
        # a rename over a file orphans the replaced one
        await c.create(top, "x")
        y, _ = await c.create(top, "y")
        await c.setattr(y.ino, size=7)
        await c.rename(top, "x", top, "y")
        assert orphans(eng) == sorted([(a.ino, lay, 12345), (y.ino, lay, 7)])
        # a file of size 0 has no chunks to free: no record
        z, _ = await c.create(top, "z")
        await c.unlink(top, "z")
        assert len(orphans(eng)) == 2
        # without a remover nothing frees them
        assert await eng.orphan_sweep() == 0
        assert len(orphans(eng)) == 2
    finally:
        await c.close()


def test_unlink_of_last_link_leaves_an_orphan_record():
    asyncio.run(_unlink_leaves_record())


async def _remover_clears():
    removed: list[tuple[int, int, int]] = []
    fail_once = {"on": True}

    async def remover(ino: int, layout: int, size: int) -> None:
        if fail_once["on"]:
            fail_once["on"] = False
            raise ConnectionError("data server unreachable")
        removed.append((ino, layout, size))

    eng = LocalEngine(2, chunk_remover=remover)
    c = MetaClient(eng)
    try:
        for svc in eng.services:
            svc.start_recovery(interval=0.01)
        top = (await c.mkdir(ROOT_INO, "t")).ino
        a, _ = await c.create(top, "a")
        await c.setattr(a.ino, size=1)
        b, _ = await c.create(top, "b")
        await c.setattr(b.ino, size=7)
        await c.unlink(top, "a")
        await c.unlink(top, "b")
        await until_async(lambda: not orphans(eng), 10, "the orphans freed", interval=0.01)
        lay = a.layout
        assert sorted(removed) == sorted([(a.ino, lay, 1), (b.ino, lay, 7)])  # once each, after a failed try
        c2, _ = await c.create(top, "c")
        await c.link(c2.ino, top, "c2")
        await c.unlink(top, "c")
        assert orphans(eng) == []  # a file with a name left is no orphan
        assert c2.ino not in [r[0] for r in removed]
    finally:
        await c.close()


def test_orphan_task_frees_chunks_and_clears_records():
    asyncio.run(_remover_clears())
