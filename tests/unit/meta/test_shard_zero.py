"""Shard 0 is not a central point: only a directory moving to another parent touches it.

Shard 0 holds the root directory and the ordering point of directory renames
(docs/design/metadata.md). Everything else must go only to the shards that
hold what the operation touches, or adding shards would not add throughput
(issue 17). In process (a ``LocalEngine`` of 4 shards, the library's
``AsyncClient`` over it), every request is counted by shard, the client's and
the ones the shards send each other (a shard's peers are the engine), with
every directory and file placed off shard 0. The operations run after their
paths are resolved (the root's lookups are shard 0's by definition).
"""

from __future__ import annotations

import asyncio
import collections

from dfs.client.file import MemoryChunks
from dfs.client.meta import MetaClient
from dfs.client.mode import StrictMode
from dfs.client.paths import AsyncClient
from dfs.common.ids import ROOT_INO, dir_home_shard, shard_of
from dfs.common.records import ROOT
from dfs.meta.local import LocalEngine

NSHARDS = 4


class Counted:
    """The engine's calls (the client's and the shards' to each other), counted by shard and op."""

    def __init__(self, eng: LocalEngine) -> None:
        self.counts: collections.Counter = collections.Counter()
        call, call_many = eng.call, eng.call_many

        async def counted_call(shard, op, *a, **kw):
            self.counts[(shard, op.name)] += 1
            return await call(shard, op, *a, **kw)

        async def counted_many(shard, ops):
            for o in ops:
                self.counts[(shard, o[0].name)] += 1
            return await call_many(shard, ops)

        eng.call, eng.call_many = counted_call, counted_many  # the shards' peers are the engine

    def take(self) -> collections.Counter:
        out = collections.Counter(self.counts)
        self.counts.clear()
        return out


def name_off_zero(parent: int, prefix: str, avoid: set[int] = frozenset()) -> tuple[str, int]:
    """A name whose new directory under ``parent`` is placed on a shard other than 0 (and ``avoid``)."""
    for i in range(1000):
        n = f"{prefix}{i}"
        s = dir_home_shard(parent, n.encode(), NSHARDS)
        if s != 0 and s not in avoid:
            return n, s
    raise AssertionError("no name placed off shard 0")


def run(fn):
    async def go():
        eng = LocalEngine(NSHARDS)
        counted = Counted(eng)
        c = AsyncClient(MetaClient(eng, ROOT), MemoryChunks(), mode=StrictMode(3600))
        try:
            a, sa = name_off_zero(ROOT_INO, "a")
            b, _ = name_off_zero(ROOT_INO, "b", {sa})
            await c.mkdir(f"/{a}")
            await c.mkdir(f"/{b}")
            ia, ib = (await c.stat(f"/{a}")).st_ino, (await c.stat(f"/{b}")).st_ino
            assert 0 not in {shard_of(ia), shard_of(ib)} and shard_of(ia) != shard_of(ib)
            await c.sync()
            counted.take()
            await fn(c, counted, f"/{a}", ia, f"/{b}", ib)
        finally:
            await c.close()

    asyncio.run(go())


def shards(counts: collections.Counter) -> set[int]:
    return {s for s, _ in counts}


async def step(c, counted, coro) -> collections.Counter:
    await coro
    await c.sync()  # the background closes, counted with their operation
    return counted.take()


def test_no_operation_but_a_directory_moving_to_another_parent_touches_shard_zero():
    async def body(c, counted, a, ia, b, ib):
        sub, _ = name_off_zero(ia, "s")
        sub2, _ = name_off_zero(ib, "t")
        ops = {
            "mkdir": lambda: c.mkdir(f"{a}/{sub}"),
            "mkdir (other dir)": lambda: c.mkdir(f"{b}/{sub2}"),
            "create": lambda: c.write_bytes(f"{a}/f", b""),
            "write small": lambda: c.write_bytes(f"{a}/g", b"x" * 4096),
            "read small": lambda: c.read_bytes(f"{a}/g"),
            "stat": lambda: c.stat(f"{a}/f"),
            "readdir": lambda: c.listdir(a),
            "chmod": lambda: c.chmod(f"{a}/f", 0o600),
            "utime": lambda: c.utime(f"{a}/f", (1, 2)),
            "truncate": lambda: c.truncate(f"{a}/g", 10),
            "setxattr": lambda: c.setxattr(f"{a}/f", "user.k", b"v"),
            "getxattr": lambda: c.getxattr(f"{a}/f", "user.k"),
            "symlink": lambda: c.symlink("f", f"{a}/l"),
            "readlink": lambda: c.readlink(f"{a}/l"),
            "link (same dir)": lambda: c.link(f"{a}/f", f"{a}/h"),
            "link (other dir)": lambda: c.link(f"{a}/f", f"{b}/h"),
            "rename file (same dir)": lambda: c.rename(f"{a}/g", f"{a}/g2"),
            "rename file (cross dir)": lambda: c.rename(f"{a}/g2", f"{b}/g3"),
            "rename file over a file (cross dir)": lambda: c.rename(f"{a}/h", f"{b}/g3"),
            "rename dir (same dir)": lambda: c.rename(f"{a}/{sub}", f"{a}/{sub}.r"),
            "unlink": lambda: c.remove(f"{b}/h"),
            "unlink (moved file)": lambda: c.remove(f"{b}/g3"),
            "rmdir": lambda: c.rmdir(f"{a}/{sub}.r"),
        }
        seen = {}
        for what, op in ops.items():
            got = await step(c, counted, op())
            seen[what] = got
            assert 0 not in shards(got), f"{what} touched shard 0: {sorted(got.items())}"
        # some are answered from the client's cache; those that are not went out
        assert all(seen[w] for w in ("mkdir", "create", "readdir", "link (other dir)", "rename file (cross dir)",
                                     "unlink", "rmdir")), seen
        # the one exception: a directory that moves to another parent takes the ordering point
        got = await step(c, counted, c.rename(f"{b}/{sub2}", f"{a}/{sub2}"))
        assert (0, "RENAMEEPOCH") in got, sorted(got.items())

    run(body)


def test_the_coordinator_counts_its_commits_by_protocol():
    """dfs_meta_commits_total (the share of two-phase commits in `dfs bench shards`)."""
    async def body(c, counted, a, ia, b, ib):
        eng_services = c.meta.t.services
        before = sum((s.coordinator.commits for s in eng_services), collections.Counter())
        await c.write_bytes(f"{a}/f", b"")
        await c.rename(f"{a}/f", f"{a}/f2")  # one shard: one phase
        await c.rename(f"{a}/f2", f"{b}/f3")  # two shards: two phases
        await c.remove(f"{b}/f3")  # the inode is on a's shard: two phases
        after = sum((s.coordinator.commits for s in eng_services), collections.Counter())
        assert after - before == collections.Counter({("RENAME", "one_phase"): 1, ("RENAME", "two_phase"): 1,
                                                      ("UNLINK", "two_phase"): 1})

    run(body)



def test_a_walk_after_the_ttl_asks_shard_zero_only_for_the_name_in_the_root():
    """Every TTL a strict client's walk revalidates the top-level name, on shard 0 (the root's
    entries are there). The root's attributes it does not: a walk needs only the root's number
    (the shard of each name checks search permission on its lookup). A path that is the root
    itself still gets fresh attributes."""
    async def go():
        eng = LocalEngine(NSHARDS)
        counted = Counted(eng)
        now = [1000.0]
        c = AsyncClient(MetaClient(eng, ROOT), MemoryChunks(), mode=StrictMode(1.0, clock=lambda: now[0]))
        try:
            a, _ = name_off_zero(ROOT_INO, "a")
            await c.mkdir(f"/{a}")
            await c.write_bytes(f"/{a}/f", b"x")
            await c.stat(f"/{a}/f")
            await c.sync()
            counted.take()
            for _ in range(3):
                now[0] += 10  # every entry and attribute the client keeps has expired
                assert (await c.stat(f"/{a}/f")).st_size == 1
                got = counted.take()
                assert got[(0, "LOOKUP")] == 1 and got[(0, "GETATTR")] == 0, sorted(got.items())
            await c.chmod("/", 0o711)
            now[0] += 10
            counted.take()
            assert (await c.stat("/")).st_mode & 0o777 == 0o711  # the root itself: fresh
            assert counted.take()[(0, "GETATTR")] == 1
            now[0] += 10
            assert (await c.stat("/.")).st_mode & 0o777 == 0o711
            assert (await c.stat(f"/{a}/..")).st_mode & 0o777 == 0o711
        finally:
            await c.close()

    asyncio.run(go())
