"""Read handles: opens for reading kept in the shard leader's memory (no Raft round),
with the guarantees of durable handles. See dfs/meta/readhandles.py.

Most tests run on a LocalEngine whose clock the test drives, with a chunk remover
that records what it frees; the last ones run on a real cluster with data servers.
"""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from dfs.client.meta import MetaClient
from dfs.common.ids import ROOT_INO, shard_of
from dfs.common import messages
from dfs.common.ops import Op
from dfs.common.records import Caller
from dfs.consensus.api import DirectLog
from dfs.meta.local import LocalEngine
from dfs.meta.readhandles import MARK_AHEAD_NS, MARK_SKEW_NS
from dfs.meta.service import ShardService
from dfs.testing.wait import until, until_async

ALICE = Caller(1000, 1000, (1000,))
ROOT = Caller(0, 0, ())
S = 10**9


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * S

    def __call__(self) -> int:
        return self.now


def run(fn, nshards: int = 1):
    async def go():
        clock = Clock()
        freed: list[int] = []

        async def remover(ino: int, layout: int, size: int) -> None:
            freed.append(ino)

        eng = LocalEngine(nshards, clock=clock, chunk_remover=remover)
        c = MetaClient(eng)
        try:
            top = (await c.mkdir(ROOT_INO, "t")).ino
            await fn(eng, c, top, clock, freed)
        finally:
            await c.close()
    asyncio.run(go())


async def file_of(c, top, name="f", size=4096, mode=0o644):
    a, _ = await c.create(top, name, mode)
    return await c.extend(a.ino, size)


def svc_of(eng, ino) -> ShardService:
    return eng.services[shard_of(ino)]


def test_open_read_logs_nothing_after_the_first_mark():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top)
        b = await file_of(c, top, "g")
        store = svc_of(eng, a.ino).store
        attr, h, durable = await c.open_read(a.ino)
        assert not durable and attr.ino == a.ino and attr.size == 4096
        assert store.handles() == []  # nothing recorded by the replicas
        applied = store.applied_index()
        for _ in range(5):
            await c.open_read(b.ino)  # covered by the first open's READMARK
        await c.renew_read_handles([(a.ino, h)])
        await c.close_read_handles([(a.ino, h)])
        assert store.applied_index() == applied
        assert len(svc_of(eng, a.ino).reads) == 5
    run(t)


def test_the_mark_moves_ahead_once_per_mark_ahead():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top)
        store = svc_of(eng, a.ino).store
        await c.open_read(a.ino, 30)
        last, mine, _ = store.read_mark()
        assert last == 1 and mine == clock.now + 30 * S + MARK_AHEAD_NS
        applied = store.applied_index()
        clock.now += MARK_AHEAD_NS // 2
        await c.open_read(a.ino, 30)
        assert store.applied_index() == applied
        clock.now += MARK_AHEAD_NS
        await c.open_read(a.ino, 30)
        assert store.applied_index() == applied + 1
        assert store.read_mark()[1] == clock.now + 30 * S + MARK_AHEAD_NS
    run(t)


def test_an_empty_file_held_for_reading_keeps_its_attributes():
    async def t(eng, c, top, clock, freed):
        empty, _ = await c.create(top, "empty", 0o640)
        attr, h, durable = await c.open_read(empty.ino)
        assert not durable and svc_of(eng, empty.ino).store.handles() == []
        await c.unlink(top, "empty")
        got = await c.getattr(empty.ino)  # no orphan record: the attributes of the open
        assert (got.size, got.nlink, got.mode & 0o777) == (0, 0, 0o640)
        await c.close_read_handles([(empty.ino, h)])
        with pytest.raises(OSError) as ei:
            await c.getattr(empty.ino)
        assert ei.value.errno == errno.ENOENT
        assert freed == [] and svc_of(eng, empty.ino).reads.attrs == {}
    run(t)


def test_inline_files_get_durable_handles():
    async def t(eng, c, top, clock, freed):
        inl, _ = await c.create(top, "inl", inline=True)
        await c.write_inline(inl.ino, [(0, b"abc")], 3)
        _, h2, durable = await c.open_read(inl.ino)
        assert durable
        await c.unlink(top, "inl")
        assert (await c.read_inline(inl.ino))[0] == b"abc"  # kept by the durable handle
        assert await c.close_handle(inl.ino, h2) is True
    run(t)


def test_inline_files_opened_with_their_bytes_take_no_handle():
    async def t(eng, c, top, clock, freed):
        inl, _ = await c.create(top, "inl", 0o640, inline=True)
        await c.write_inline(inl.ino, [(0, b"abc")], 5)  # 3 bytes, then zeros up to the size
        svc = svc_of(eng, inl.ino)
        before = svc.store.applied_index()
        attr, h, durable, data = await c.open_read(inl.ino, access=os.R_OK, inline=True)
        assert (h, durable, data, attr.size) == (None, False, b"abc", 5)
        assert svc.store.handles() == [] and len(svc.reads) == 0  # nothing to renew or close
        assert svc.store.applied_index() == before  # no Raft round
        attr, h, durable, data = await c.lookup_open(top, "inl", inline=True)
        assert (attr.ino, h, data) == (inl.ino, None, b"abc")
        # an empty inline file: no bytes stored, an empty answer
        e, _ = await c.create(top, "e", inline=True)
        assert (await c.open_read(e.ino, inline=True))[3] == b""
        # a file on the data servers: a read handle as before, no bytes
        f = await file_of(c, top, "g")
        _, h, durable, data = await c.open_read(f.ino, inline=True)
        assert h is not None and data is None and not durable
        # without ``inline`` the answer is the handle, as for older clients
        assert (await c.open_read(inl.ino))[2] is True
    run(t)


def test_an_inline_open_refused_by_the_read_rule_gets_a_handle():
    """READINLINE's rule (owner, root, or the mode's read bit) decides whether the bytes come
    with the open; where it refuses, the open (which the kernel checked: access 0) gets its
    durable handle and the refusal comes at the read, as before."""
    async def t(eng, c, top, clock, freed):
        await c.setattr(top, mode=0o755)
        inl, _ = await c.create(top, "secret", 0o600, inline=True)
        await c.write_inline(inl.ino, [(0, b"key")], 3)
        _, h, durable, data = await c.open_read(inl.ino, inline=True, caller=ALICE)
        assert data is None and durable and h is not None
        with pytest.raises(OSError) as ei:
            await c.read_inline(inl.ino, caller=ALICE)
        assert ei.value.errno == errno.EACCES
        with pytest.raises(OSError) as ei:
            await c.open_read(inl.ino, access=os.R_OK, inline=True, caller=ALICE)
        assert ei.value.errno == errno.EACCES
    run(t)


def test_unlinked_while_read_keeps_chunks_and_attributes():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top, size=5000)
        _, h, _ = await c.open_read(a.ino)
        await c.unlink(top, "f")
        with pytest.raises(OSError) as ei:
            await c.lookup(top, "f")
        assert ei.value.errno == errno.ENOENT
        assert await eng.orphan_sweep() == 0 and freed == []  # held by the reader
        got = await c.getattr(a.ino)  # fstat of the open, unlinked file
        assert got.size == 5000 and got.nlink == 0
        await c.close_read_handles([(a.ino, h)])
        assert await eng.orphan_sweep() == 1 and freed == [a.ino]
        with pytest.raises(OSError) as ei:
            await c.getattr(a.ino)
        assert ei.value.errno == errno.ENOENT
    run(t)


def test_an_unrenewed_read_handle_expires():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top)
        _, h, _ = await c.open_read(a.ino, 10)
        await c.unlink(top, "f")
        clock.now += 9 * S
        assert await c.renew_read_handles([(a.ino, h)], 10) == []  # now until +19 s
        clock.now += 9 * S
        assert await eng.orphan_sweep() == 0
        clock.now += 2 * S  # the reader crashed
        assert await eng.orphan_sweep() == 1 and freed == [a.ino]
        assert await c.renew_read_handles([(a.ino, h)]) == [(a.ino, h)]  # gone for good
    run(t)


def test_held_orphans_do_not_hide_the_others():
    async def t(eng, c, top, clock, freed):
        held = []
        for k in range(5):
            a = await file_of(c, top, f"h{k}")
            await c.open_read(a.ino)
            await c.unlink(top, f"h{k}")
            held.append(a.ino)
        b = await file_of(c, top, "free")
        await c.unlink(top, "free")
        svc = svc_of(eng, b.ino)
        assert await svc.orphan_sweep(limit=2) == 1 and freed == [b.ino]
    run(t)


class TermLog(DirectLog):
    """A log of one whose term the test sets: a later leader of the same state."""

    def __init__(self, sm, term: int) -> None:
        super().__init__(sm)
        self._term = term

    @property
    def term(self) -> int:
        return self._term


def test_a_new_leader_frees_nothing_its_predecessor_may_have_lent():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top)
        _, h, _ = await c.open_read(a.ino, 30)
        await c.unlink(top, "f")
        old = svc_of(eng, a.ino)
        # failover: a new leader (term 2) over the same state, without the old one's memory
        new = ShardService(old.store, TermLog(old.store, 2), eng, clock=clock, chunk_remover=old.chunk_remover)
        eng.services[shard_of(a.ino)] = new
        until = old.store.read_mark()[1]
        assert until >= clock.now + 30 * S
        assert await eng.orphan_sweep() == 0 and freed == []
        clock.now = until + MARK_SKEW_NS - 1
        assert await eng.orphan_sweep() == 0  # still within the old term's mark
        # the reader renews with the new leader, which adopts the handle of the orphan
        assert await c.renew_read_handles([(a.ino, h)], 30) == []
        assert (await c.getattr(a.ino)).nlink == 0
        clock.now += 2
        assert await eng.orphan_sweep() == 0 and freed == []  # the mark passed, the handle did not
        await c.close_read_handles([(a.ino, h)])
        assert await eng.orphan_sweep() == 1 and freed == [a.ino]
    run(t)


def test_a_new_leader_without_earlier_marks_frees_at_once():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top)
        await c.unlink(top, "f")
        old = svc_of(eng, a.ino)
        new = ShardService(old.store, TermLog(old.store, 2), eng, clock=clock, chunk_remover=old.chunk_remover)
        eng.services[shard_of(a.ino)] = new
        assert await eng.orphan_sweep() == 1
    run(t)


def test_read_open_errors_change_nothing():
    async def t(eng, c, top, clock, freed):
        secret = await file_of(c, top, "secret", mode=0o600)
        link = await c.symlink(top, "l", "secret")
        store = svc_of(eng, secret.ino).store
        applied = store.applied_index()
        with pytest.raises(OSError) as ei:
            await c.open_read(secret.ino, access=os.R_OK, caller=ALICE)
        assert ei.value.errno == errno.EACCES
        with pytest.raises(OSError) as ei:
            await c.open_read(top, access=os.R_OK)
        assert ei.value.errno == errno.EISDIR
        with pytest.raises(OSError) as ei:
            await c.open_read(link.ino)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(OSError) as ei:
            await c.open_read(secret.ino, access=os.W_OK)  # read handles are for reading
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(OSError) as ei:
            await c.open_read(secret.ino, handle=b"")
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(OSError) as ei:
            await c.open_read(secret.ino, lease_s=0)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(OSError) as ei:
            await c.open_read(top + 999)
        assert ei.value.errno == errno.ENOENT
        svc = svc_of(eng, secret.ino)
        for bad in ([], [secret.ino], ["x", b"h", 30.0], [[1, 2]]):
            with pytest.raises(OSError) as ei:
                await svc.execute(Op.OPENREAD, b"", ROOT, bad)
            assert ei.value.errno == errno.EINVAL
        for op, bad in ((Op.RENEWREAD, [[[secret.ino]], 30.0]), (Op.RENEWREAD, ["x", 30.0]),
                        (Op.CLOSEREAD, [[["x", b"h"]]]), (Op.CLOSEREAD, [[[secret.ino, b""]]])):
            with pytest.raises(OSError) as ei:
                await svc.execute(op, b"", ROOT, bad)
            assert ei.value.errno == errno.EINVAL
        assert store.applied_index() == applied and len(svc.reads) == 0
    run(t)


def test_getattrs_scan_answers_ebusy_for_orphans():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top)
        await c.open_read(a.ino)
        await c.unlink(top, "f")
        svc = svc_of(eng, a.ino)
        assert await svc.execute(Op.GETATTRS, b"", ROOT, [[a.ino]]) == [errno.ENOENT]
        assert await svc.execute(Op.GETATTRS, b"", ROOT, [[a.ino], True]) == [errno.EBUSY]
        assert await svc.execute(Op.GETATTRS, b"", ROOT, [[a.ino + 1000], True]) == [errno.ENOENT]
    run(t)


def test_read_handle_ops_in_a_batch():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top)
        svc = svc_of(eng, a.ino)
        out = await svc.execute_batch([(Op.OPENREAD, b"", ROOT, [a.ino, b"h1", 30.0]),
                                       (Op.OPENREAD, b"", ROOT, [a.ino, b"h2", 30.0]),
                                       (Op.CLOSEREAD, b"", ROOT, [[[a.ino, b"h1"]]])])
        assert out[0][1] is False and out[1][1] is False and out[2] is None
        assert len(svc.reads) == 1
    run(t)


def test_losing_leadership_forgets_read_handles():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top)
        await c.open_read(a.ino)
        svc = svc_of(eng, a.ino)

        class Follower(DirectLog):
            is_leader = False

        svc.log = Follower(svc.store)
        svc.handle_grace = 0
        svc.start_handles(interval=0.01)
        await until_async(lambda: not len(svc.reads), 10, "the read handles dropped", interval=0.01)
        await svc.stop()
    run(t)


# ---------------------------------------------------------------- a real cluster

@pytest.fixture(scope="module")
def two_clients(data_cluster):
    import dfs

    a = dfs.connect(mgmt=data_cluster.mgmt_addresses, uid=0, gid=0, groups=())
    b = dfs.connect(mgmt=data_cluster.mgmt_addresses, uid=0, gid=0, groups=())
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _orphan_state(client, ino: int) -> int:
    """GETATTRS scan of ``ino`` on its shard: EBUSY while its orphan record lasts, ENOENT after."""
    meta = client.aio.meta
    return client.run(meta._send(messages.Getattrs([ino], scan=True), None)).attrs[0]


def test_reader_keeps_an_unlinked_file_on_a_cluster(two_clients):
    """Client A reads a file client B unlinks: A reads every byte, even after the leader's
    orphan task freed a later orphan of the same shard (so it passed over A's); after A
    closes, the file's chunks are freed."""
    a, b = two_clients
    top = "/readhandles"
    b.mkdir(top)
    data = os.urandom(3 * (1 << 20) + 7)
    b.write_bytes(f"{top}/held", data)
    b.write_bytes(f"{top}/free", b"x" * 10000)
    ino_held = a.stat(f"{top}/held").st_ino
    ino_free = b.stat(f"{top}/free").st_ino
    assert shard_of(ino_held) == shard_of(ino_free) and ino_held < ino_free  # swept in this order
    f = a.open(f"{top}/held", "rb")
    try:
        b.remove(f"{top}/held")
        b.remove(f"{top}/free")
        until(lambda: _orphan_state(b, ino_free) == errno.ENOENT, 60,  # the orphan task freed the later one
              "the unheld orphan freed")
        assert _orphan_state(b, ino_held) == errno.EBUSY  # passed over: a reader holds it
        assert f.read() == data
    finally:
        f.close()
    a.sync()  # the close of its open handle goes out in the background
    until(lambda: _orphan_state(b, ino_held) == errno.ENOENT, 60, "the orphan freed after the close")


def test_lookup_open_is_lookup_and_open_in_one():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top, "f", mode=0o600)
        await c.symlink(top, "l", "f")
        await c.mkdir(top, "d")
        store = svc_of(eng, a.ino).store
        applied = store.applied_index()
        attr, h, durable = await c.lookup_open(top, "f", access=os.R_OK)
        assert attr.ino == a.ino and h is not None and not durable
        assert svc_of(eng, a.ino).reads.live_handle(a.ino, h, clock.now)
        for name in ("l", "d"):  # nothing to open for reading: the caller decides
            attr, h, _ = await c.lookup_open(top, name)
            assert h is None and not attr.is_reg()
        with pytest.raises(OSError) as ei:
            await c.lookup_open(top, "missing")
        assert ei.value.errno == errno.ENOENT
        with pytest.raises(OSError) as ei:
            await c.lookup_open(top, "f", access=os.R_OK, caller=ALICE)
        assert ei.value.errno == errno.EACCES
        assert len(svc_of(eng, a.ino).reads) == 1
        assert store.applied_index() == applied + 1  # the READMARK of the first open only
    run(t)


def test_lookup_open_of_a_hard_link_on_another_shard():
    async def t(eng, c, top, clock, freed):
        a = await file_of(c, top)
        for k in range(100):
            d = await c.mkdir(top, f"d{k}")
            if shard_of(d.ino) != shard_of(a.ino):
                break
        else:
            raise AssertionError("no directory landed on another shard")
        await c.link(a.ino, d.ino, "g")
        attr, h, _ = await c.lookup_open(d.ino, "g")
        assert attr.ino == a.ino and h is None  # the client opens it on its own shard
    run(t, nshards=2)
