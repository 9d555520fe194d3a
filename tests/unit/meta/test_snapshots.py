"""Snapshots of the metadata (docs/design/snapshots.md) on the in-process engine: three
shards, mgmt's registry in memory (dfs.testing.registry), no data servers.

A snapshot holds the tree as it was; every kind of change after it leaves what the
snapshot reads untouched; creating one writes nothing; deleting it prunes what only it
read; bad requests are refused and change nothing; a fence holds back 2PC prepares.
"""

from __future__ import annotations

import asyncio
import errno
import stat

import pytest

from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import ROOT_INO, dir_home_shard, shard_of
from dfs.common.ops import XATTR_CREATE
from dfs.common.records import Caller
from dfs.meta import schema as S
from dfs.meta.local import LocalEngine
from dfs.meta.ops import actions as A
from dfs.testing.registry import MemoryRegistry

USER = Caller(1000, 1000, ())


def run(test):
    async def main():
        eng = LocalEngine(3, registry=MemoryRegistry())
        c = MetaClient(eng)
        try:
            await test(eng, c)
        finally:
            await c.close()
    asyncio.run(main())


def history(eng: LocalEngine) -> int:
    return sum(len(list(svc.store.kv.scan_prefix(S.P_HISTORY))) for svc in eng.services)


async def tree(c: MetaClient, ino: int, snap: int = 0) -> dict:
    """path -> (type, size, mode, nlink, link target, xattrs, inline bytes) of everything under ``ino``."""
    out = {}

    async def walk(d: int, prefix: str) -> None:
        for e in await c.listdir(d, plus=True, snap=snap):
            a = await c.getattr(e.ino, snap=snap)
            p = prefix + e.name.decode()
            target = await c.readlink(e.ino, snap=snap) if stat.S_ISLNK(a.mode) else None
            names = sorted(await c.listxattr(e.ino, snap=snap))
            xattrs = {n: await c.getxattr(e.ino, n, snap=snap) for n in names}
            out[p] = (stat.S_IFMT(a.mode), a.size, stat.S_IMODE(a.mode), a.nlink, target, xattrs)
            if a.is_dir():
                await walk(e.ino, p + "/")
    await walk(ino, "")
    return out


async def populate(c: MetaClient) -> tuple[int, dict]:
    top = await c.mkdir(ROOT_INO, "top")
    files = {}
    for i in range(6):  # directories land on every shard
        d = await c.mkdir(top.ino, f"d{i}")
        for j in range(3):
            f, _ = await c.create(d.ino, f"f{j}")
            await c.setattr(f.ino, size=100 * j)
            files[(i, j)] = f.ino
    await c.symlink(top.ino, "link", "d0/f0")
    await c.setxattr(files[(0, 0)], "user.k", b"v1")
    await c.link(files[(1, 1)], top.ino, "hard")
    return top.ino, files


def test_a_snapshot_holds_the_tree_as_it_was():
    async def t(eng, c):
        top, files = await populate(c)
        before = await tree(c, top)
        s = await c.snapshot_create(top, "s1", "/top")
        assert s >= 1
        assert await tree(c, top, s) == before
        # every kind of change, across shards
        d0 = (await c.lookup(top, "d0")).ino
        d1 = (await c.lookup(top, "d1")).ino
        await c.create(d0, "new")
        await c.mkdir(top, "newdir")
        await c.unlink(d0, "f1")
        await c.rename(d0, "f2", d1, "moved")       # across directories (and shards)
        await c.rename(top, "d2", top, "d2-renamed")  # a directory
        await c.setattr(files[(0, 0)], mode=0o600, size=7)
        await c.setxattr(files[(0, 0)], "user.k", b"v2")
        await c.setxattr(files[(0, 0)], "user.new", b"x", XATTR_CREATE)
        await c.unlink(top, "link")
        await c.symlink(top, "link", "elsewhere")
        await c.unlink(top, "hard")
        for j in range(3):
            await c.unlink((await c.lookup(top, "d3")).ino, f"f{j}")
        await c.rmdir(top, "d3")
        after = await tree(c, top)
        assert after != before
        assert await tree(c, top, s) == before  # the snapshot never changes
        assert await tree(c, top) == after      # and the live tree is the live tree
        # a second snapshot holds the second state
        s2 = await c.snapshot_create(top, "s2", "/top")
        assert s2 > s
        await c.create(d0, "later")
        assert await tree(c, top, s2) == after
        assert await tree(c, top, s) == before
    run(t)


def test_creating_a_snapshot_writes_nothing_and_history_grows_with_changes():
    async def t(eng, c):
        top = await c.mkdir(ROOT_INO, "big")
        made = await c.create_many(top.ino, [f"f{i}" for i in range(300)])
        assert all(not isinstance(x, err.DfsError) for x in made)
        await c.snapshot_create(top.ino, "s", "/big")
        assert history(eng) == 0
        for i in range(10):
            await c.setattr((await c.lookup(top.ino, f"f{i}")).ino, mode=0o600)
        assert 10 <= history(eng) <= 12  # the 10 inodes (and nothing per untouched file)
    run(t)


def test_deleting_a_snapshot_prunes_what_only_it_read():
    async def t(eng, c):
        top, files = await populate(c)
        s1 = await c.snapshot_create(top, "s1")
        for (i, j), ino in files.items():
            await c.setattr(ino, mode=0o640)
        s2 = await c.snapshot_create(top, "s2")
        for (i, j), ino in files.items():
            await c.setattr(ino, mode=0o600)
        held = history(eng)
        assert held >= 2 * len(files)
        await c.snapshot_delete(top, "s1")
        with pytest.raises(err.Stale):
            await c.getattr(top, snap=s1)
        await eng.prune_history()
        assert len(files) <= history(eng) < held  # what s2 reads stays
        assert stat.S_IMODE((await c.getattr(files[(0, 0)], snap=s2)).mode) == 0o640
        await c.snapshot_delete(top, "s2")
        await eng.prune_history()
        assert history(eng) == 0
        assert all(not svc.store.epochs.unpruned for svc in eng.services)
    run(t)


def test_bad_requests_change_nothing():
    async def t(eng, c):
        top, files = await populate(c)
        await c.snapshot_create(top, "s", "/top")
        reg = eng.registry
        before = dict(reg.m["snapshots"])
        for name, code in ((b"s", errno.EEXIST), (b"", errno.EINVAL), (b"a/b", errno.EINVAL),
                           (b".", errno.EINVAL), (b"x" * 256, errno.ENAMETOOLONG), (b"a\0b", errno.EINVAL)):
            with pytest.raises(OSError) as ei:
                await c.snapshot_create(top, name)
            assert ei.value.errno == code, name
        with pytest.raises(NotADirectoryError):
            await c.snapshot_create(files[(0, 0)], "f")
        with pytest.raises(PermissionError):  # not the directory's owner
            await c.snapshot_create(top, "mine", caller=USER)
        with pytest.raises(FileNotFoundError):
            await c.snapshot_delete(top, "nope")
        with pytest.raises(PermissionError):
            await c.snapshot_delete(top, "s", caller=USER)
        with pytest.raises(err.Stale):
            await c.getattr(top, snap=999)
        assert reg.m["snapshots"] == before
        # the owner of a directory may snapshot it
        home = await c.mkdir(ROOT_INO, "home")
        await c.setattr(home.ino, uid=USER.uid, gid=USER.gid)
        assert await c.snapshot_create(home.ino, "mine", caller=USER) > 0
    run(t)


def test_snapshot_reads_check_permissions_as_they_were():
    async def t(eng, c):
        d = await c.mkdir(ROOT_INO, "private", mode=0o700)
        await c.create(d.ino, "f")
        s = await c.snapshot_create(d.ino, "s")
        await c.setattr(d.ino, mode=0o755)
        assert [e.name for e in await c.listdir(d.ino, caller=USER)] == [b"f"]
        with pytest.raises(PermissionError):
            await c.listdir(d.ino, caller=USER, snap=s)  # 0700 then
    run(t)


def test_a_fence_holds_back_prepares_until_the_snapshot_begins():
    async def t(eng, c):
        # a directory whose home is another shard than its parent's: mkdir is two-phase
        name = next(b"x%d" % i for i in range(100) if dir_home_shard(ROOT_INO, b"x%d" % i, 3) != shard_of(ROOT_INO))
        svc = eng.services[shard_of(ROOT_INO)]
        now = svc.clock()
        await svc.request(m.SnapFence(77, now + 60 * 10**9))
        with pytest.raises(err.Conflict):
            await svc.coordinator.execute(b"r" * 16, Caller(0, 0, ()), now, {
                shard_of(ROOT_INO): [], dir_home_shard(ROOT_INO, name, 3): []})  # empty plan: nothing to lock
        st = await svc.request(m.SnapStatus())
        assert st.fence == 77
        await svc.request(m.SnapBegin(77))
        assert (await svc.request(m.SnapStatus())).fence == 0
        await c.mkdir(ROOT_INO, name)  # goes through now
    run(t)


def test_a_fenced_participant_is_answered_at_once_and_the_coordinator_lets_go():
    """A coordinator whose own PREPARE took its locks meets a fence on a participant: the
    participant answers CONFLICT at once (not LOCKED, which the transport would retry while
    the coordinator holds its prepare and the cut waits for that prepare to end), and the
    coordinator aborts, so no shard keeps anything prepared while the fence is up."""
    async def t(eng, c):
        fenced = eng.services[shard_of(ROOT_INO)]
        name = next(b"y%d" % i for i in range(100) if dir_home_shard(ROOT_INO, b"y%d" % i, 3) != fenced.shard)
        d = await c.mkdir(ROOT_INO, name)
        coord = eng.services[shard_of(d.ino)]
        now = coord.clock()
        await fenced.request(m.SnapFence(78, now + 60 * 10**9))
        plan = {coord.shard: [A.DirUsable(d.ino, 0)], fenced.shard: [A.DirUsable(ROOT_INO, 0)]}
        with pytest.raises(err.Conflict):
            await coord.coordinator.execute(b"s" * 16, Caller(0, 0, ()), now, plan)
        for svc in eng.services:
            assert (await svc.request(m.SnapStatus())).prepared == 0
        await fenced.request(m.SnapEnd(78))
        await coord.coordinator.execute(b"t" * 16, Caller(0, 0, ()), now, plan)
    run(t)
