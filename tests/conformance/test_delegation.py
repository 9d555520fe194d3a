"""The shard side of lazy mode: delegated inode ids (DELEGATE, RENEWDELEGATION,
EXPIREDELEGATIONS), CREATE and MKDIR carrying one, BATCH (ordered logged ops in one
command) and SETLAZY. See docs/design/writeback.md.

The tests taking ``ns`` run on the in-memory engine and on a real cluster; expiry runs
on a LocalEngine whose clock the test drives."""

from __future__ import annotations

import asyncio
import errno
import os
import stat

import pytest

from dfs.client.meta import MetaClient, _rid
from dfs.common import messages as m
from dfs.common.ids import LOCAL_MASK, ROOT_INO, dir_home_shard, shard_of
from dfs.common.layout import Layout
from dfs.common.ops import DELEGATION_BLOCK, Op
from dfs.common.records import FLAG_LAZY, ROOT, Caller
from dfs.meta import schema as S
from dfs.meta.local import LocalEngine

ALICE = Caller(1000, 1000, (1000,))
NS = 10**9


def expect_errno(code: int, fn, *a, **kw):
    with pytest.raises(OSError) as ei:
        fn(*a, **kw)
    assert ei.value.errno == code, f"expected {errno.errorcode[code]}, got {ei.value!r}"
    return ei.value


def item(req: m.Request, *, after=(), caller: Caller = ROOT, rid: bytes | None = None) -> m.BatchItem:
    return m.BatchItem(int(req.OP), _rid() if rid is None else rid, caller.uid, caller.gid, list(caller.groups),
                       req.to_wire(), list(after))


def newfile(parent: int, name: bytes, ino: int = 0, session: bytes = b"", mode: int = 0o644) -> m.Create:
    return m.Create(parent, name, stat.S_IFREG | mode, 0, True, 0, None, ino=ino, session=session)


# ---------------------------------------------------------------- delegation
def test_delegate_gives_aligned_blocks_past_the_counter(ns):
    c = ns.c
    sess = os.urandom(16)
    s = shard_of(ns.top)
    g = c.delegate(s, sess, 10)
    assert shard_of(g.lo) == s and (g.lo & LOCAL_MASK) % DELEGATION_BLOCK == 0
    assert g.hi - g.lo == DELEGATION_BLOCK and g.expiry > 0
    g2 = c.delegate(s, sess, DELEGATION_BLOCK + 1)  # rounds up to whole blocks
    assert g2.lo >= g.hi and g2.hi - g2.lo == 2 * DELEGATION_BLOCK
    a, _ = c.create(ns.top, "plain")  # the shard's own ids go on past the grants
    assert a.ino >= g2.hi
    for bad in (0, -1, 10**9):
        expect_errno(errno.EINVAL, c.delegate, s, sess, bad)
    expect_errno(errno.EINVAL, c.delegate, s, b"short", 1)


def test_create_and_mkdir_take_a_delegated_id_once(ns):
    c = ns.c
    sess = os.urandom(16)
    s = shard_of(ns.top)
    g = c.delegate(s, sess, 1)
    a, created = c.create(ns.top, "f", ino=g.lo, session=sess)
    assert created and a.ino == g.lo
    assert c.lookup(ns.top, "f").ino == g.lo
    e = expect_errno(errno.ESTALE, c.create, ns.top, "g", ino=g.lo, session=sess)  # used once, ever
    assert "used" in str(e)
    c.unlink(ns.top, "f")
    expect_errno(errno.ESTALE, c.create, ns.top, "f", ino=g.lo, session=sess)  # not even after its unlink
    expect_errno(errno.ESTALE, c.create, ns.top, "h", ino=g.lo + 1, session=os.urandom(16))  # another session
    expect_errno(errno.ESTALE, c.create, ns.top, "h", ino=g.hi, session=sess)  # outside the grant
    expect_errno(errno.ENOENT, c.lookup, ns.top, "h")
    # a symlink, and a directory, whose id comes from the directory's home shard
    r = ns.run(c.aio._send(m.Create(ns.top, b"sym", stat.S_IFLNK | 0o777, 0, True, 0, b"target", ino=g.lo + 1,
                                    session=sess), None, True))
    assert r.ino == g.lo + 1 and c.readlink(g.lo + 1) == b"target"
    home = dir_home_shard(ns.top, b"sub", c.nshards)
    gd = c.delegate(home, sess, 1)
    d = c.mkdir(ns.top, "sub", ino=gd.lo + 5, session=sess)
    assert d.ino == gd.lo + 5 and d.is_dir()
    assert c.lookup(ns.top, "sub").ino == gd.lo + 5 and c.getattr(ns.top).nlink >= 3
    again = next(n for n in (f"sub{i}".encode() for i in range(2, 100))
                 if dir_home_shard(ns.top, n, c.nshards) == home)
    expect_errno(errno.ESTALE, c.mkdir, ns.top, again, ino=gd.lo + 5, session=sess)
    c.create(d.ino, "inside")  # an ordinary directory afterwards
    assert [e.name for e in c.listdir(d.ino)] == [b"inside"]


def test_a_failed_create_leaves_its_id_unused(ns):
    c = ns.c
    sess = os.urandom(16)
    g = c.delegate(shard_of(ns.top), sess, 1)
    c.create(ns.top, "taken")
    expect_errno(errno.EEXIST, c.create, ns.top, "taken", ino=g.lo, session=sess)
    a, _ = c.create(ns.top, "free", ino=g.lo, session=sess)  # the id was not spent
    assert a.ino == g.lo


def test_renew_and_release(ns):
    c = ns.c
    sess = os.urandom(16)
    s = shard_of(ns.top)
    g = c.delegate(s, sess, 1, lease_s=5)
    e1 = c.renew_delegation(s, sess, 3600)
    assert e1 > g.expiry
    assert c.renew_delegation(s, sess, 1) == e1  # never shrinks
    assert c.renew_delegation(s, sess, release=True) == 0
    expect_errno(errno.ENOENT, c.renew_delegation, s, sess)
    expect_errno(errno.ESTALE, c.create, ns.top, "x", ino=g.lo, session=sess)


def test_grants_expire_by_the_leaders_clock():
    class Clock:
        now = 1_000 * NS

        def __call__(self):
            return self.now

    clock = Clock()

    async def go():
        eng = LocalEngine(2, clock=clock)
        c = MetaClient(eng, ROOT)
        try:
            top = (await c.mkdir(ROOT_INO, "t")).ino
            s = shard_of(top)
            svc = eng.services[s]
            live, dead = os.urandom(16), os.urandom(16)
            gl = await c.delegate(s, live, 1, lease_s=10)
            gd = await c.delegate(s, dead, 2 * DELEGATION_BLOCK, lease_s=10)
            assert await svc.expire_delegations() == 0
            clock.now += 6 * NS
            await c.renew_delegation(s, live, 10)
            clock.now += 6 * NS  # dead's lease ran out; live's not
            assert await svc.expire_delegations() == 1
            keys = [k for k, _ in svc.store.kv.scan_prefix(S.P_GRANT)]
            assert keys and all(k.startswith(S.P_GRANT + live) for k in keys)
            assert [k for k, _ in svc.store.kv.scan_prefix(S.P_GRANT_EXPIRY)] == [
                S.grant_expiry_key(S.from_u64(svc.store.kv.get(S.grant_key(live))), live)]
            with pytest.raises(OSError) as ei:
                await c.create(top, "late", ino=gd.lo, session=dead)
            assert ei.value.errno == errno.ESTALE
            a, _ = await c.create(top, "ok", ino=gl.lo, session=live)
            assert a.ino == gl.lo
            clock.now += 11 * NS  # past the expiry, before the task ran: refused all the same
            with pytest.raises(OSError) as ei:
                await c.create(top, "late2", ino=gl.lo + 1, session=live)
            assert ei.value.errno == errno.ESTALE
            assert await svc.expire_delegations() == 1
            assert list(svc.store.kv.scan_prefix(S.P_GRANT)) == []
            assert list(svc.store.kv.scan_prefix(S.P_GRANT_EXPIRY)) == []
        finally:
            await c.close()
    asyncio.run(go())


# ---------------------------------------------------------------- batches
def test_batch_applies_in_order_and_skips_what_depends_on_a_failure(ns):
    c = ns.c
    sess = os.urandom(16)
    s = shard_of(ns.top)
    g = c.delegate(s, sess, 4)
    c.create(ns.top, "taken")
    items = [
        item(newfile(ns.top, b"a", g.lo, sess)),
        item(m.Extend(g.lo, 5), after=[0]),
        item(m.Setattr(g.lo, 1, 0o600, 0, 0, 0, 0, 0), after=[0, 1]),
        item(newfile(ns.top, b"taken", g.lo + 1, sess)),  # EEXIST: another client's name
        item(m.Setattr(g.lo + 1, 1, 0o600, 0, 0, 0, 0, 0), after=[3]),  # must never run
        item(newfile(ns.top, b"b", g.lo + 2, sess)),  # independent
    ]
    res = c.batch(s, items)
    assert [r.status if r else None for r in res] == [0, 0, 0, errno.EEXIST, None, 0]
    a = c.lookup(ns.top, "a")
    assert (a.size, stat.S_IMODE(a.mode)) == (5, 0o600)
    assert c.lookup(ns.top, "b").ino == g.lo + 2
    # a resend is answered from the records: nothing applies twice
    again = c.batch(s, items)
    assert [r.status if r else None for r in again] == [0, 0, 0, errno.EEXIST, None, 0]
    assert again[0].payload == res[0].payload


def test_batch_refuses_what_cannot_be_an_item(ns):
    c = ns.c
    s = shard_of(ns.top)
    res = c.batch(s, [item(m.Lookup(ns.top, b"x")), item(m.Batch([])), item(m.OrphanDone(5)),
                      item(m.Mkdir(ns.top, b"d", 0o755, 0)), item(m.Setlayout(ns.top, 0))])
    assert [r.status for r in res] == [errno.EINVAL] * 5


def test_batch_stops_at_a_lock_and_goes_on_when_resent():
    async def go():
        eng = LocalEngine(1)
        c = MetaClient(eng, ROOT)
        try:
            top = (await c.mkdir(ROOT_INO, "t")).ino
            svc = eng.services[0]
            # another client's cross-shard operation holds the entry "a" (prepared, undecided)
            from dfs.meta.ops import actions as A
            op = b"op-1"
            await svc.request(m.Prepare(op, 0, A.encode([A.PutEntry(top, b"a", 99, stat.S_IFREG, 0)]), [0]))
            items = [item(newfile(top, b"z")), item(newfile(top, b"a")), item(newfile(top, b"b"))]
            res = await c.batch(0, items)
            assert res[0].status == 0 and res[1] is None and res[2] is None
            with pytest.raises(OSError):
                await c.lookup(top, "b")  # stopped: later items did not run
            await svc.request(m.Abort(op))
            res = await c.batch(0, items)
            assert [r.status for r in res] == [0, 0, 0]
            assert sorted(e.name for e in await c.listdir(top)) == [b"a", b"b", b"z"]
        finally:
            await c.close()
    asyncio.run(go())


def test_batch_items_run_as_their_own_callers(ns):
    c = ns.c
    s = shard_of(ns.top)
    c.setattr(ns.top, mode=0o755)
    res = c.batch(s, [item(newfile(ns.top, b"alice"), caller=ALICE), item(newfile(ns.top, b"root"))])
    assert [r.status for r in res] == [errno.EACCES, 0]


# ---------------------------------------------------------------- layouts and the lazy policy
def test_create_takes_the_layout_the_client_placed_data_by(ns):
    c = ns.c
    lay = Layout(1 << 20, 1, 1).pack()
    a, _ = c.create(ns.top, "laid", layout=lay)
    assert a.layout == lay
    expect_errno(errno.EINVAL, c.create, ns.top, "bad", layout=0xFFFFFFFF)


def test_setlazy_is_inherited_by_new_subdirectories(ns):
    c = ns.c
    d = c.mkdir(ns.top, "out")
    assert not d.flags & FLAG_LAZY
    assert c.setlazy(d.ino).flags & FLAG_LAZY
    sub = c.mkdir(d.ino, "sub")
    assert sub.flags & FLAG_LAZY and c.getattr(sub.ino).flags & FLAG_LAZY
    f, _ = c.create(d.ino, "f")
    assert not f.flags & FLAG_LAZY  # a policy of directories
    expect_errno(errno.ENOTDIR, c.setlazy, f.ino)
    c.setattr(d.ino, uid=1000)
    expect_errno(errno.EPERM, c.setlazy, sub.ino, False, caller=ALICE)
    assert not c.setlazy(d.ino, False, caller=ALICE).flags & FLAG_LAZY
    assert c.getattr(sub.ino).flags & FLAG_LAZY  # existing subdirectories keep theirs


def test_internal_expiry_is_refused_from_clients(ns):
    if ns.engine != "cluster":
        pytest.skip("the server refuses internal ops; the in-process engine has no edge")
    expect_errno(errno.EPERM, ns.run, ns.c.aio._send(m.ExpireDelegations(), None, True, shard=0))
    assert Op.EXPIREDELEGATIONS
