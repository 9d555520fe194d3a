"""A name changed by another operation between the reads of an operation and what it
does with them (in-process, deterministic): found by the linearizability check
(tests/fault/test_linearizable.py), each reproduced here by running the other
operation at exactly that point.

* A name whose inode lives on another shard is read in two requests (the entry,
  then the inode). A rename that replaces the name in between deletes the inode
  the entry named: the second read says ENOENT although the name never went
  missing. The client's lookup and lookup-open, and the coordinator's lookup
  (unlink, rename), read the name again.
* A rename that read its target as absent, when the target is created before
  its plan executes: the plan's "must be absent" fails with EEXIST, but rename
  replaces its target: it reads again and replaces it (RENAME_NOREPLACE still
  answers EEXIST).
* A rename whose lookups of its source and its target were split by another
  rename moving the source onto the target: both names then read as one inode,
  which is POSIX's "do nothing, successfully", although at no moment did both
  names map to it (the other rename made the source vanish). Found by the netns
  linearizability check: two renames of one name both succeeded. The same-inode
  case is now a plan that checks both entries where they live, under locks.
* A rename across shards, between the commit on its coordinator (the source
  name is gone there) and the commit on the target's shard: a readdir of the
  target directory showed the old state (no new name) while a lookup of the
  source already answered ENOENT. The readdir waits (Locked) like a lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.ids import ROOT_INO, dir_home_shard, shard_of
from dfs.common.ops import RENAME_NOREPLACE, Op
from dfs.common.records import ROOT
from dfs.meta.local import LocalEngine

NSHARDS = 3


class Interpose:
    """A shard caller that runs ``meanwhile()`` once, just before the first call that
    ``when(shard, op, args)`` selects, then makes that call."""

    def __init__(self, inner, when: Callable[[int, Op, list], bool], meanwhile: Callable[[], Awaitable[None]]):
        self.inner = inner
        self.nshards = inner.nshards
        self.when = when
        self.meanwhile = meanwhile
        self.fired = False

    async def pending(self, shard: int) -> list:
        return await self.inner.pending(shard)

    async def call(self, shard: int, op, caller, args: list, rid: bytes = b"", ts: int | None = None) -> Any:
        if not self.fired and self.when(shard, Op(op), args):
            self.fired = True
            await self.meanwhile()
        return await self.inner.call(shard, op, caller, args, rid=rid, ts=ts)

    async def close(self) -> None:
        pass


def run(coro):
    return asyncio.run(coro)


async def mkdir_on(c: MetaClient, parent: int, shard: int, prefix: str):
    for i in range(10000):
        n = f"{prefix}{i}"
        if dir_home_shard(parent, n.encode(), NSHARDS) == shard:
            return await c.mkdir(parent, n)
    raise AssertionError("no name found")


async def remote_name(c: MetaClient):
    """Directories a (shard 1) and b (shard 2); a/n names a file whose inode lives on
    shard 2 (created in b, renamed into a); b/y another file. -> (a, b, ino of a/n)."""
    a = await mkdir_on(c, ROOT_INO, 1, "a")
    b = await mkdir_on(c, ROOT_INO, 2, "b")
    await c.create(b.ino, "x")
    await c.rename(b.ino, "x", a.ino, "n")
    await c.create(b.ino, "y")
    x = await c.lookup(a.ino, "n")
    assert shard_of(x.ino) == 2 != shard_of(a.ino)
    return a, b, x.ino


def getattr_of(ino: int) -> Callable[[int, Op, list], bool]:
    return lambda shard, op, args: op == Op.GETATTR and args[0] == ino


@pytest.mark.parametrize("how", ["lookup", "lookup_open"])
def test_client_reads_a_name_again_when_its_remote_inode_went(how):
    async def go():
        engine = LocalEngine(NSHARDS)
        c = MetaClient(engine)
        a, b, x = await remote_name(c)
        y = (await c.lookup(b.ino, "y")).ino
        t = Interpose(engine, getattr_of(x), lambda: c.rename(b.ino, "y", a.ino, "n"))
        racer = MetaClient(t)
        if how == "lookup":
            attr = await racer.lookup(a.ino, "n")
        else:
            attr, _, _ = await racer.lookup_open(a.ino, "n")
        assert t.fired
        assert attr.ino == y  # never ENOENT: a/n always named a file
        await engine.close()

    run(go())


def test_unlink_reads_the_name_again_when_its_remote_inode_went():
    async def go():
        engine = LocalEngine(NSHARDS)
        c = MetaClient(engine)
        a, b, x = await remote_name(c)
        coord = engine.services[shard_of(a.ino)].coordinator
        t = Interpose(coord.shards, getattr_of(x), lambda: c.rename(b.ino, "y", a.ino, "n"))
        coord.shards = t
        await c.unlink(a.ino, "n")  # removes the file renamed over it meanwhile
        assert t.fired
        with pytest.raises(err.NotFound):
            await c.lookup(a.ino, "n")
        entries, _ = await c.readdir(a.ino)
        assert [e.name for e in entries if e.name not in (b".", b"..")] == []
        await engine.close()

    run(go())


def test_rename_over_a_name_whose_remote_inode_went():
    async def go():
        engine = LocalEngine(NSHARDS)
        c = MetaClient(engine)
        a, b, x = await remote_name(c)
        s, _ = await c.create(a.ino, "s")
        coord = engine.services[shard_of(a.ino)].coordinator
        t = Interpose(coord.shards, getattr_of(x), lambda: c.rename(b.ino, "y", a.ino, "n"))
        coord.shards = t
        await c.rename(a.ino, "s", a.ino, "n")  # the target read again: y's file, replaced
        assert t.fired
        assert (await c.lookup(a.ino, "n")).ino == s.ino
        with pytest.raises(err.NotFound):
            await c.lookup(a.ino, "s")
        await engine.close()

    run(go())


@pytest.mark.parametrize("cross", [False, True], ids=["one-shard", "two-shards"])
@pytest.mark.parametrize("flags", [0, RENAME_NOREPLACE], ids=["replace", "noreplace"])
def test_rename_target_created_after_it_was_read_absent(cross, flags):
    async def go():
        engine = LocalEngine(NSHARDS)
        c = MetaClient(engine)
        a = await mkdir_on(c, ROOT_INO, 1, "a")
        d = await mkdir_on(c, ROOT_INO, 2, "d") if cross else a
        s, _ = await c.create(a.ino, "s")
        coord = engine.services[shard_of(a.ino)].coordinator
        created = []

        async def create_target():
            created.append((await c.create(d.ino, "t"))[0].ino)

        t = Interpose(coord.shards, lambda shard, op, args: op in (Op.ONEPHASE, Op.PREPARE), create_target)
        coord.shards = t
        if flags & RENAME_NOREPLACE:
            with pytest.raises(err.Exists):
                await c.rename(a.ino, "s", d.ino, "t", flags)
            assert (await c.lookup(a.ino, "s")).ino == s.ino  # nothing changed
            assert (await c.lookup(d.ino, "t")).ino == created[0]
        else:
            await c.rename(a.ino, "s", d.ino, "t", flags)  # replaces what appeared meanwhile
            assert (await c.lookup(d.ino, "t")).ino == s.ino
            with pytest.raises(err.NotFound):
                await c.lookup(a.ino, "s")
        assert t.fired and created
        await engine.close()

    run(go())


def test_readdir_waits_for_a_rename_half_committed():
    async def go():
        engine = LocalEngine(NSHARDS)
        c = MetaClient(engine)
        a = await mkdir_on(c, ROOT_INO, 1, "a")
        b = await mkdir_on(c, ROOT_INO, 2, "b")
        f, _ = await c.create(a.ino, "f")
        seen = {}

        async def between():  # the decision is taken, the target's shard has not committed
            with pytest.raises(err.NotFound):
                await c.lookup(a.ino, "f")
            svc = engine.services[shard_of(b.ino)]
            with pytest.raises(err.Locked):
                await svc.execute(Op.READDIR, b"", ROOT, [b.ino, 0, 100, False])
            seen["between"] = True

        coord = engine.services[shard_of(a.ino)].coordinator
        coord.shards = Interpose(coord.shards, lambda shard, op, args: op == Op.COMMIT and shard == shard_of(b.ino),
                                 between)
        await c.rename(a.ino, "f", b.ino, "g")
        assert seen == {"between": True}
        entries, _ = await c.readdir(b.ino)
        assert [(e.name, e.ino) for e in entries if e.name not in (b".", b"..")] == [(b"g", f.ino)]
        await engine.close()

    run(go())


@pytest.mark.parametrize("cross", [False, True], ids=["one-shard", "two-shards"])
def test_rename_whose_source_moved_onto_its_target_between_its_lookups_fails(cross):
    async def go():
        engine = LocalEngine(NSHARDS)
        c = MetaClient(engine)
        a = await mkdir_on(c, ROOT_INO, 1, "a")
        d = await mkdir_on(c, ROOT_INO, 2, "d") if cross else a
        f, _ = await c.create(a.ino, "n")
        coord = engine.services[shard_of(a.ino)].coordinator
        # the other rename runs after this one looked its source up, before its target
        t = Interpose(coord.shards, lambda shard, op, args: op == Op.LOOKUP and args[1] == b"t",
                      lambda: c.rename(a.ino, "n", d.ino, "t"))
        coord.shards = t
        with pytest.raises(err.NotFound):  # its source is gone: it cannot have moved it too
            await c.rename(a.ino, "n", d.ino, "t")
        assert t.fired
        assert (await c.lookup(d.ino, "t")).ino == f.ino
        with pytest.raises(err.NotFound):
            await c.lookup(a.ino, "n")
        await engine.close()

    run(go())


def test_rename_between_two_names_of_one_inode_still_does_nothing():
    async def go():
        engine = LocalEngine(NSHARDS)
        c = MetaClient(engine)
        a = await mkdir_on(c, ROOT_INO, 1, "a")
        d = await mkdir_on(c, ROOT_INO, 2, "d")
        f, _ = await c.create(a.ino, "n")
        await c.link(f.ino, d.ino, "t")
        await c.rename(a.ino, "n", d.ino, "t")  # POSIX: both names stay
        assert (await c.lookup(a.ino, "n")).ino == (await c.lookup(d.ino, "t")).ino == f.ino
        assert (await c.getattr(f.ino)).nlink == 2
        await engine.close()

    run(go())
