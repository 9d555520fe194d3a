"""The directory-rename ordering point (dfs/meta/ops/rename.py, RenameLock): a directory
rename that completed between another one's ancestry walk and its lock refuses the lock
only if it moved a directory on the walked path (in-process, deterministic: the other
rename runs at exactly that point).

Before, any directory rename completing in that window refused it, and the refused one
read the epoch and walked again: N concurrent moves of unrelated directories did O(N^2)
walks and could run past a client's deadline (16 at once did, in `dfs bench shards`)."""

from __future__ import annotations

import asyncio

import pytest

from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.ids import ROOT_INO, shard_of
from dfs.common.ops import Op
from dfs.meta.local import LocalEngine

from .test_name_races import NSHARDS, Interpose, mkdir_on


class Counting(Interpose):
    def __init__(self, *a) -> None:
        super().__init__(*a)
        self.ops: list[tuple[int, Op]] = []

    async def call(self, shard, op, caller, args, rid=b"", ts=None):
        self.ops.append((shard, Op(op)))
        return await super().call(shard, op, caller, args, rid=rid, ts=ts)


def at_the_plan(shard: int, op: Op, args: list) -> bool:
    """The rename's plan going out (after its epoch read and its walk, before it holds
    anything: the other rename must not wait for it)."""
    return op in (Op.PREPARE, Op.ONEPHASE)


async def tree(c: MetaClient):
    """/a/x (the directory A moves, a on shard 1), /p/q (its new parent), /u/v and /w
    (what B moves, u on shard 2: another coordinator)."""
    a = await mkdir_on(c, ROOT_INO, 1, "a")
    x = await c.mkdir(a.ino, "x")
    p = await c.mkdir(ROOT_INO, "p")
    q = await c.mkdir(p.ino, "q")
    u = await mkdir_on(c, ROOT_INO, 2, "u")
    await c.mkdir(u.ino, "v")
    w = await c.mkdir(ROOT_INO, "w")
    return a, x, p, q, u, w


def test_an_unrelated_directory_move_in_the_window_does_not_refuse_the_lock():
    async def go():
        engine = LocalEngine(NSHARDS)
        c = MetaClient(engine)
        a, x, p, q, u, w = await tree(c)
        coord = engine.services[shard_of(a.ino)].coordinator
        t = coord.shards = Counting(coord.shards, at_the_plan, lambda: c.rename(u.ino, "v", w.ino, "v"))
        await c.rename(a.ino, "x", q.ino, "x")
        assert t.fired
        # one epoch read and one walk: the lock was taken at the first try
        assert [op for _, op in t.ops].count(Op.RENAMEEPOCH) == 1
        assert (await c.lookup(q.ino, "x")).ino == x.ino
        assert (await c.lookup(w.ino, "v")).ino
        await engine.close()

    asyncio.run(go())


def test_a_move_of_a_directory_on_the_walked_path_refuses_it_and_no_cycle_is_made():
    async def go():
        engine = LocalEngine(NSHARDS)
        c = MetaClient(engine)
        a, x, p, q, u, w = await tree(c)
        coord = engine.services[shard_of(a.ino)].coordinator
        # A: x into /p/q; meanwhile B: /p into x. Both walks passed; together, a cycle
        t = coord.shards = Counting(coord.shards, at_the_plan, lambda: c.rename(ROOT_INO, "p", x.ino, "p"))
        with pytest.raises(err.InvalidArgument):
            await c.rename(a.ino, "x", q.ino, "x")  # refused at the lock, walked again: EINVAL
        assert t.fired and [op for _, op in t.ops].count(Op.RENAMEEPOCH) >= 2
        assert (await c.lookup(a.ino, "x")).ino == x.ino
        assert (await c.lookup(x.ino, "p")).ino == p.ino
        assert (await c.lookup(p.ino, "q")).ino == q.ino
        await engine.close()

    asyncio.run(go())
