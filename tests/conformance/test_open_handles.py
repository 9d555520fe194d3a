"""Open handles: a file unlinked while open stays alive until its last close, and a
client that crashes with files open does not keep them alive forever (leases).
See docs/design/metadata.md "Open files".

The tests taking ``ns`` run on the in-memory engine and on a real cluster (separate
processes); the ones about orphan records and expiry run on a LocalEngine whose
clock the test drives.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat

import pytest

from dfs.client.meta import MetaClient
from dfs.common.ids import ROOT_INO, shard_of
from dfs.common.ops import Op, inline_digest
from dfs.common.records import ROOT, Caller
from dfs.meta.local import LocalEngine
from dfs.testing.wait import until_async

ALICE = Caller(1000, 1000, (1000,))
S = 10**9


def expect_errno(code: int, fn, *a, **kw):
    with pytest.raises(OSError) as ei:
        fn(*a, **kw)
    assert ei.value.errno == code, f"expected {errno.errorcode[code]}, got {ei.value!r}"
    return ei.value


def second_client(ns, request):
    """Another client of the same file system: a separate client (another process's view)
    on the cluster; in memory a second MetaClient over the same engine, on the same loop."""
    if ns.engine == "cluster":
        return request.getfixturevalue("shared_cluster").client()
    engine = ns.c.aio.t

    class Shared:  # closing the second client must not close the shared engine
        def __init__(self) -> None:
            self.nshards = engine.nshards
            self.call = engine.call
            self.call_many = engine.call_many

        async def close(self) -> None:
            pass

    aio = MetaClient(Shared())

    class Facade:
        def __getattr__(self, name: str):
            fn = getattr(aio, name)
            return lambda *a, **kw: ns.run(fn(*a, **kw))

        def close(self) -> None:
            pass

    return Facade()


def other_shard_dir(c, base: int, name: str) -> int:
    """A new directory under ``base`` whose home is another shard than ``base``'s."""
    for k in range(100):
        d = c.mkdir(base, f"{name}{k}")
        if shard_of(d.ino) != shard_of(base):
            return d.ino
    raise AssertionError("no directory landed on another shard")


# ---------------------------------------------------------------- unlink while open

def test_unlink_while_open_keeps_the_file(ns):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f", 0o644)
    c.extend(a.ino, 100)
    h = c.open_handle(a.ino)
    assert isinstance(h, bytes) and len(h) == 16
    c.unlink(top, "f")
    expect_errno(errno.ENOENT, c.lookup, top, "f")
    assert "f" not in [e.name for e in c.listdir(top)]
    g = c.getattr(a.ino)
    assert g.nlink == 0 and g.size == 100 and stat.S_ISREG(g.mode)
    assert c.extend(a.ino, 300).size == 300  # a writer keeps writing
    assert c.setattr(a.ino, size=50).size == 50  # ftruncate
    assert c.setattr(a.ino, mode=0o600).nlink == 0  # fchmod
    c.setxattr(a.ino, "user.k", b"v")
    assert c.getxattr(a.ino, "user.k") == b"v"
    # the name is free again; a new file there is another inode
    b, created = c.create(top, "f")
    assert created and b.ino != a.ino
    assert c.close_handle(a.ino, h) is True
    expect_errno(errno.ENOENT, c.getattr, a.ino)
    assert c.lookup(top, "f").ino == b.ino
    assert c.close_handle(a.ino, h) is False  # closing again is harmless


def test_create_open_is_create_and_open_in_one(ns):
    c, top = ns.c, ns.top
    before = c.getattr(top)
    a, created, h, parent = c.create_open(top, "f", 0o644)
    assert created and stat.S_ISREG(a.mode) and isinstance(h, bytes)
    assert parent.ino == top and parent.mtime_ns >= before.mtime_ns and parent == c.getattr(top)
    c.unlink(top, "f")
    assert c.getattr(a.ino).nlink == 0  # the handle from CREATE keeps it
    assert c.close_handle(a.ino, h) is True
    expect_errno(errno.ENOENT, c.getattr, a.ino)
    # an existing file (excl=False) is opened too; O_EXCL still refuses it
    b, _ = c.create(top, "g")
    b2, created, h2, _ = c.create_open(top, "g", excl=False)
    assert not created and b2.ino == b.ino
    expect_errno(errno.EEXIST, c.create_open, top, "g")
    c.unlink(top, "g")
    assert c.getattr(b.ino).nlink == 0
    c.close_handles([(b.ino, h2)])
    expect_errno(errno.ENOENT, c.getattr, b.ino)


def test_create_open_of_a_hard_link_on_another_shard(ns):
    c, top = ns.c, ns.top
    if c.nshards < 2:
        pytest.skip("one shard")
    d = other_shard_dir(c, top, "far")
    a, _ = c.create(d, "f")
    c.link(a.ino, top, "near")  # the name on top's shard, the inode on d's
    b, created, h, _ = c.create_open(top, "near", excl=False)
    assert not created and b.ino == a.ino
    c.unlink(top, "near")
    c.unlink(d, "f")
    assert c.getattr(a.ino).nlink == 0
    assert c.close_handle(a.ino, h) is True


def test_open_checks_access_on_the_service(ns):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f", 0o640)
    attr, h = c.open_file(a.ino, access=4 | 2)  # the owner
    assert attr.ino == a.ino and attr.mode & 0o777 == 0o640
    c.close_handle(a.ino, h)
    expect_errno(errno.EACCES, c.open_file, a.ino, access=4, caller=ALICE)
    c.unlink(top, "f")
    expect_errno(errno.ENOENT, c.getattr, a.ino)  # the refused open left no handle behind
    b, _ = c.create(top, "g", 0o644)
    c.close_handle(b.ino, c.open_file(b.ino, access=4, caller=ALICE)[1])  # others may read
    expect_errno(errno.EACCES, c.open_file, b.ino, access=2, caller=ALICE)
    expect_errno(errno.EINVAL, c.open_file, b.ino, access=1)


def test_open_unlinked_file_across_clients(ns, request):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f", 0o666)
    h = c.open_handle(a.ino)
    other = second_client(ns, request)
    try:
        other.unlink(top, "f")  # another client (process, on the cluster) removes the name
        assert other.getattr(a.ino).nlink == 0
        assert other.extend(a.ino, 7).size == 7
        assert c.getattr(a.ino).size == 7
        h2 = other.open_handle(a.ino)  # an open of the inode itself still works
        assert c.close_handle(a.ino, h) is False
        assert c.getattr(a.ino).nlink == 0
        assert other.close_handle(a.ino, h2) is True
        expect_errno(errno.ENOENT, other.getattr, a.ino)
    finally:
        other.close()


def test_two_handles_deleted_after_both_close(ns):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f")
    h1 = c.open_handle(a.ino)
    h2 = c.open_handle(a.ino)
    assert h1 != h2
    c.unlink(top, "f")
    assert c.close_handle(a.ino, h1) is False
    assert c.getattr(a.ino).nlink == 0
    assert c.close_handle(a.ino, h2) is True
    expect_errno(errno.ENOENT, c.getattr, a.ino)


def test_close_without_unlink_keeps_the_file(ns):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f")
    h = c.open_handle(a.ino)
    assert c.close_handle(a.ino, h) is False
    assert c.lookup(top, "f").ino == a.ino and c.getattr(a.ino).nlink == 1


def test_rename_over_open_file(ns):
    c, top = ns.c, ns.top
    old, _ = c.create(top, "dst")
    c.extend(old.ino, 11)
    new, _ = c.create(top, "src")
    h = c.open_handle(old.ino)
    c.rename(top, "src", top, "dst")
    assert c.lookup(top, "dst").ino == new.ino
    g = c.getattr(old.ino)
    assert g.nlink == 0 and g.size == 11
    assert c.close_handle(old.ino, h) is True
    expect_errno(errno.ENOENT, c.getattr, old.ino)
    assert c.getattr(new.ino).nlink == 1


def test_rename_over_open_file_across_shards(ns):
    """The replaced file's inode and the renamed file's directory on different shards: 2PC."""
    c, top = ns.c, ns.top
    a = c.mkdir(top, "a").ino
    b = other_shard_dir(c, top, "b")
    old, _ = c.create(a, "x")
    new, _ = c.create(b, "y")
    h = c.open_handle(old.ino)
    c.rename(b, "y", a, "x")
    assert c.lookup(a, "x").ino == new.ino
    assert c.getattr(old.ino).nlink == 0
    assert c.close_handle(old.ino, h) is True
    expect_errno(errno.ENOENT, c.getattr, old.ino)


def test_unlink_across_shards_while_open(ns):
    """The last name lives on another shard than the inode (hard link, then both unlinks)."""
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f")
    d = other_shard_dir(c, top, "d")
    c.link(a.ino, d, "g")
    h = c.open_handle(a.ino)
    c.unlink(top, "f")
    assert c.getattr(a.ino).nlink == 1
    c.unlink(d, "g")  # the inode loses its last link through a cross-shard operation
    assert c.getattr(a.ino).nlink == 0
    expect_errno(errno.ENOENT, c.link, a.ino, top, "again")  # no resurrection, as Linux linkat
    assert c.close_handle(a.ino, h) is True
    expect_errno(errno.ENOENT, c.getattr, a.ino)


def test_hard_link_and_unlink_of_one_name(ns):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f")
    c.link(a.ino, top, "g")
    c.unlink(top, "f")
    assert c.lookup(top, "g").nlink == 1
    h = c.open_handle(a.ino)
    c.link(a.ino, top, "h")
    c.unlink(top, "g")
    assert c.close_handle(a.ino, h) is False
    assert c.lookup(top, "h").ino == a.ino and c.getattr(a.ino).nlink == 1


# ---------------------------------------------------------------- the OPEN op itself

def test_open_errors(ns):
    c, top = ns.c, ns.top
    expect_errno(errno.EISDIR, c.open_handle, top)
    missing = (shard_of(top) << 48) | 0xFFFFFFF0
    expect_errno(errno.ENOENT, c.open_handle, missing)
    s = c.symlink(top, "s", "target")
    expect_errno(errno.EINVAL, c.open_handle, s.ino)
    a, _ = c.create(top, "f")
    expect_errno(errno.EINVAL, c.open_handle, a.ino, 0)
    expect_errno(errno.EINVAL, c.open_handle, a.ino, 10**7)
    expect_errno(errno.EINVAL, c.open_handle, a.ino, handle=b"")
    c.unlink(top, "f")
    expect_errno(errno.ENOENT, c.open_handle, a.ino)  # unlinked with no handle: gone


def test_open_retry_is_idempotent(ns):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f")
    h = c.open_handle(a.ino)
    assert c.open_handle(a.ino, handle=h) == h  # a retry (new request id, same handle id)
    rid = os.urandom(16)  # unique: the cluster is shared by the whole session
    for _ in range(2):  # the same request twice
        ns.run(c.aio.t.call(shard_of(a.ino), Op.OPEN, ROOT, [a.ino, h, 30.0], rid))
    c.unlink(top, "f")
    assert c.close_handle(a.ino, h) is True  # one handle, not three
    expect_errno(errno.ENOENT, c.getattr, a.ino)


def test_renew(ns):
    c, top = ns.c, ns.top
    a, _ = c.create(top, "f")
    b, _ = c.create(top, "g")
    ha = c.open_handle(a.ino)
    hb = c.open_handle(b.ino)
    assert c.renew_handles([(a.ino, ha), (b.ino, hb)], 30) == []
    c.close_handle(b.ino, hb)
    assert c.renew_handles([(a.ino, ha), (b.ino, hb)], 30) == [(b.ino, hb)]
    # a file that still has a name can be opened again with its old handle id
    assert c.open_handle(b.ino, handle=hb) == hb
    assert c.renew_handles([(b.ino, hb)]) == []
    assert c.renew_handles([]) == []


def test_open_as_other_user(ns):
    """OPEN is a liveness record, not an access check (the open itself checked)."""
    c, top = ns.c, ns.top
    c.setattr(top, mode=0o777)
    a, _ = c.create(top, "f", 0o600)
    h = c.open_handle(a.ino, caller=ALICE)
    c.unlink(top, "f")
    assert c.close_handle(a.ino, h, caller=ALICE) is True


# ---------------------------------------------------------------- orphans and expiry (in memory)

class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * S

    def __call__(self) -> int:
        return self.now


def run(fn):
    async def go():
        clock = Clock()
        eng = LocalEngine(2, clock=clock)
        c = MetaClient(eng)
        try:
            top = (await c.mkdir(ROOT_INO, "t")).ino
            await fn(eng, c, top, clock)
        finally:
            await c.close()
    asyncio.run(go())


def orphans(eng) -> list:
    return sorted(o for s in eng.services for o in s.store.orphans())


def handles(eng) -> list:
    return sorted(h for s in eng.services for h in s.store.handles())


def test_close_writes_the_orphan_record():
    async def t(eng, c, top, clock):
        a, _ = await c.create(top, "f")
        await c.extend(a.ino, 4096)
        h = await c.open_handle(a.ino)
        await c.unlink(top, "f")
        assert orphans(eng) == []  # still open: no orphan yet
        assert await c.close_handle(a.ino, h)
        assert orphans(eng) == [(a.ino, a.layout, 4096)]
        assert handles(eng) == []
    run(t)


def test_handle_that_is_never_renewed_expires():
    async def t(eng, c, top, clock):
        a, _ = await c.create(top, "f")
        await c.extend(a.ino, 5)
        h = await c.open_handle(a.ino, 30)
        assert handles(eng) == [(a.ino, h, clock.now + 30 * S)]
        await c.unlink(top, "f")
        clock.now += 29 * S
        assert await eng.expire_handles() == 0
        assert (await c.getattr(a.ino)).nlink == 0
        assert await c.renew_handles([(a.ino, h)], 30) == []  # now lives until +59 s
        clock.now += 30 * S
        assert await eng.expire_handles() == 0
        clock.now += 1 * S  # the client crashed: no more renewals
        assert await eng.expire_handles() == 1
        with pytest.raises(OSError) as ei:
            await c.getattr(a.ino)
        assert ei.value.errno == errno.ENOENT
        assert orphans(eng) == [(a.ino, a.layout, 5)]
        assert handles(eng) == []
        assert await c.renew_handles([(a.ino, h)]) == [(a.ino, h)]
        assert await c.close_handle(a.ino, h) is False
    run(t)


def test_expired_handle_of_a_linked_file_frees_nothing():
    async def t(eng, c, top, clock):
        a, _ = await c.create(top, "f")
        h = await c.open_handle(a.ino, 1)
        clock.now += 2 * S
        assert await eng.expire_handles() == 1
        assert (await c.lookup(top, "f")).ino == a.ino
        assert orphans(eng) == []
        assert await c.renew_handles([(a.ino, h)]) == [(a.ino, h)]
        await c.open_handle(a.ino, handle=h)  # the client opens it again
        assert len(handles(eng)) == 1
    run(t)


def test_expire_command_uses_its_own_timestamp():
    """The decision is the command's ts (stamped by the leader), not a replica's clock."""
    async def t(eng, c, top, clock):
        a, _ = await c.create(top, "f")
        await c.setattr(a.ino, size=1)  # chunks to free: an orphan record
        h1 = await c.open_handle(a.ino, 10)
        h2 = await c.open_handle(a.ino, 20)
        await c.unlink(top, "f")
        svc = eng.services[shard_of(a.ino)]
        root = Caller(0, 0, ())
        assert await svc.execute(Op.EXPIREHANDLES, b"", root, [], ts=clock.now + 10 * S) == [0, 0]  # not <
        assert await svc.execute(Op.EXPIREHANDLES, b"", root, [], ts=clock.now + 15 * S) == [1, 0]
        assert [x[1] for x in handles(eng)] == [h2]
        assert await svc.execute(Op.EXPIREHANDLES, b"", root, [], ts=clock.now + 25 * S) == [1, 1]
        assert orphans(eng) == [(a.ino, a.layout, 1)]
        assert await c.close_handle(a.ino, h1) is False
    run(t)


def test_expiry_in_batches():
    async def t(eng, c, top, clock):
        inos = []
        for k in range(7):
            a, _ = await c.create(top, f"f{k}")
            await c.setattr(a.ino, size=1)
            await c.open_handle(a.ino, 1)
            await c.unlink(top, f"f{k}")
            inos.append(a.ino)
        clock.now += 2 * S
        svc = eng.services[shard_of(top)]
        assert await svc.expire_handles(limit=3) == 7  # three commands
        assert sorted(o[0] for o in orphans(eng)) == sorted(inos)
    run(t)


def test_renewal_moves_the_expiry_index():
    async def t(eng, c, top, clock):
        a, _ = await c.create(top, "f")
        h = await c.open_handle(a.ino, 5)
        await c.renew_handles([(a.ino, h)], 60)
        await c.open_handle(a.ino, 1, handle=h)  # a shorter lease never shortens
        store = eng.services[shard_of(a.ino)].store
        assert store.handles() == [(a.ino, h, clock.now + 60 * S)]
        assert store.next_handle_expiry() == clock.now + 60 * S
        await c.close_handle(a.ino, h)
        assert store.next_handle_expiry() is None
    run(t)


def test_background_task_expires_after_grace():
    async def t(eng, c, top, clock):
        a, _ = await c.create(top, "f")
        await c.setattr(a.ino, size=1)  # chunks to free: an orphan record
        await c.open_handle(a.ino, 1)
        await c.unlink(top, "f")
        for svc in eng.services:
            svc.handle_grace = 0
            svc.start_handles(interval=0.01)
        await until_async(lambda: all(svc.stats.get("handle_passes", 0) >= 3 for svc in eng.services), 10,
                          "three expiry passes", interval=0.01)
        assert (await c.getattr(a.ino)).nlink == 0  # not yet expired
        clock.now += 2 * S
        await until_async(lambda: orphans(eng), 10, "the handle expired", interval=0.01)
        assert orphans(eng) == [(a.ino, a.layout, 1)]
    run(t)


def test_hard_link_unlink_leaves_no_orphan():
    async def t(eng, c, top, clock):
        a, _ = await c.create(top, "f")
        await c.setattr(a.ino, size=1)  # chunks to free: an orphan record
        await c.link(a.ino, top, "g")
        await c.unlink(top, "f")
        assert orphans(eng) == [] and handles(eng) == []
        assert (await c.getattr(a.ino)).nlink == 1
        await c.unlink(top, "g")  # no handle: deleted at once, as before
        assert orphans(eng) == [(a.ino, a.layout, 1)]
    run(t)


# ---------------------------------------------------------------- the data version (Attr.dver)
def test_the_data_version_moves_whenever_the_bytes_may(ns):
    """What a reader may cache under (ino, dver): every command that may change a file's bytes
    gives it a new data version (a write open, a published write, a size change, inline
    writes and migration); reads, read opens and metadata changes keep it."""
    c, top = ns.c, ns.top
    a, created, h, _ = c.create_open(top, "f", 0o644)  # the creator's open may write
    v = a.dver
    assert created and v > 0

    def moved(attr) -> bool:
        nonlocal v
        was, v = v, attr.dver
        return v > was

    assert moved(c.extend(a.ino, 100))  # a writer publishes
    assert not moved(c.getattr(a.ino))
    assert not moved(c.open_read(a.ino, access=os.R_OK)[0])  # a read open
    assert not moved(c.setattr(a.ino, mode=0o600))  # chmod: the bytes are the same
    c.rename(top, "f", top, "g")
    assert not moved(c.getattr(a.ino))
    assert moved(c.open_file(a.ino, access=os.W_OK)[0])  # a write open: bytes may change from now
    assert not moved(c.open_file(a.ino, access=os.R_OK)[0])
    assert moved(c.setattr(a.ino, size=10))  # truncate
    b, _ = c.create(top, "inl", inline=True)
    v = b.dver
    assert moved(c.write_inline(b.ino, [(0, b"abc")], 3))
    assert moved(c.migrate_inline(b.ino, inline_digest(b"abc")))
    d = c.mkdir(top, "d")
    assert d.dver == 0  # directories have none
    c.close_handle(a.ino, h)


def test_a_write_handle_that_expires_moves_the_data_version():
    """A writer that vanished may have sent bytes it never published: readers must not keep
    what they cached under the version its open made."""
    async def t(eng, c, top, clock):
        a, _ = await c.create(top, "f")
        r, _ = await c.open_file(a.ino, 30, access=os.R_OK)
        w, _ = await c.open_file(a.ino, 30, access=os.W_OK)
        assert w.dver > r.dver
        clock.now += 31 * S
        assert await eng.expire_handles() == 2
        assert (await c.getattr(a.ino)).dver == w.dver + 1
        r2, h = await c.open_file(a.ino, 30, access=os.R_OK)
        clock.now += 31 * S
        assert await eng.expire_handles() == 1
        assert (await c.getattr(a.ino)).dver == r2.dver  # a reader's expiry changes nothing
    run(t)
