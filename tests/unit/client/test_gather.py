"""MetaClient sends the reads that concurrent tasks ask of one shard as one request
(``GATHERED`` in dfs/client/meta.py): one ExecuteBatch for what the loop's tasks asked
before it next ran its callbacks, with no timer, so a lone request still leaves at once.
Each caller gets its own answer or error; mutations are never gathered."""

from __future__ import annotations

import asyncio
import errno

import pytest

from dfs.client import meta as M
from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.ids import ROOT_INO
from dfs.common.records import ROOT, Caller
from dfs.meta.local import LocalEngine


class Recording:
    """``engine``'s calls as they were sent: ("call", op) or ("many", [op, ...])."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.nshards = engine.nshards
        self.sent: list = []
        self.held = asyncio.Event()  # call_many waits for it
        self.held.set()

    async def call(self, shard, op, caller, args, rid=b"", ts=None):
        self.sent.append(("call", op.name))
        return await self.engine.call(shard, op, caller, args, rid, ts)

    async def call_many(self, shard, ops):
        self.sent.append(("many", [o[0].name for o in ops]))
        await self.held.wait()
        return await self.engine.call_many(shard, ops)

    async def close(self) -> None:
        await self.engine.close()


def run(fn):
    async def go():
        t = Recording(LocalEngine(1))
        meta = MetaClient(t, ROOT)
        inos = [a.ino for a in await meta.create_many(ROOT_INO, [f"f{i}" for i in range(12)])]
        t.sent.clear()
        try:
            await fn(meta, t, inos)
        finally:
            await meta.close()
    asyncio.run(go())


def test_concurrent_reads_of_a_shard_leave_as_one_request():
    async def t(meta, t, inos):
        attrs = await asyncio.gather(*(meta.getattr(i) for i in inos))
        assert [a.ino for a in attrs] == inos
        assert t.sent == [("many", ["GETATTR"] * len(inos))]
        t.sent.clear()
        got = await asyncio.gather(meta.lookup(ROOT_INO, "f3"), meta.getattr(inos[4]),
                                   meta.lookup_open(ROOT_INO, "f5"))
        assert got[0].ino == inos[3] and got[1].ino == inos[4] and got[2][0].ino == inos[5]
        assert t.sent == [("many", ["LOOKUP", "GETATTR", "LOOKUPOPEN"])]
    run(t)


def test_a_lone_read_is_sent_as_it_always_was():
    async def t(meta, t, inos):
        for i in inos[:3]:
            assert (await meta.getattr(i)).ino == i
        assert t.sent == [("call", "GETATTR")] * 3
    run(t)


def test_each_caller_gets_its_own_answer_or_error():
    async def t(meta, t, inos):
        missing = inos[-1] + 1000
        got = await asyncio.gather(meta.getattr(inos[0]), meta.getattr(missing), meta.lookup(ROOT_INO, "nope"),
                                   meta.getattr(inos[1]), return_exceptions=True)
        assert got[0].ino == inos[0] and got[3].ino == inos[1]
        assert isinstance(got[1], err.NotFound) and isinstance(got[2], err.NotFound)
        assert got[1] is not got[2] and got[2].errno == errno.ENOENT
        assert len(t.sent) == 1
    run(t)


def test_a_cancelled_caller_leaves_the_others_their_answers():
    async def t(meta, t, inos):
        gone = asyncio.ensure_future(meta.getattr(inos[2]))
        await asyncio.sleep(0)  # asked; its request has not left yet
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert (await meta.getattr(inos[3])).ino == inos[3]
        assert t.sent == [("call", "GETATTR")]  # nothing was sent for the cancelled one
        t.sent.clear()
        lead = asyncio.ensure_future(meta.getattr(inos[4]))
        joined = asyncio.ensure_future(meta.getattr(inos[5]))
        await asyncio.sleep(0)  # both asked: the first leads, the second joined it
        lead.cancel()
        assert (await joined).ino == inos[5]  # the leader's cancel does not strand it
        with pytest.raises(asyncio.CancelledError):
            await lead
        assert t.sent == [("call", "GETATTR")]
        t.sent.clear()
        t.held.clear()
        first = asyncio.ensure_future(meta.getattr(inos[0]))
        second = asyncio.ensure_future(meta.getattr(inos[1]))
        while not t.sent:  # until the request is on its way (held there)
            await asyncio.sleep(0)
        first.cancel()
        t.held.set()
        assert (await second).ino == inos[1]
        with pytest.raises(asyncio.CancelledError):
            await first
        assert t.sent == [("many", ["GETATTR", "GETATTR"])]
    run(t)


def test_callers_and_mutations_are_not_mixed():
    async def t(meta, t, inos):
        other = Caller(1000, 1000)
        await asyncio.gather(meta.getattr(inos[0]), meta.getattr(inos[1], caller=other), meta.getattr(inos[2]))
        assert sorted(map(str, t.sent)) == sorted(map(str, [("many", ["GETATTR", "GETATTR"]), ("call", "GETATTR")]))
        t.sent.clear()
        await asyncio.gather(*(meta.create(ROOT_INO, f"new{i}") for i in range(3)))
        assert t.sent == [("call", "CREATE")] * 3  # mutations: one request each, as before
    run(t)


def test_a_large_gathering_is_cut_into_requests_of_GATHER_MAX(monkeypatch):
    monkeypatch.setattr(M, "GATHER_MAX", 5)

    async def t(meta, t, inos):
        await asyncio.gather(*(meta.getattr(i) for i in inos))
        assert [len(ops) for _, ops in t.sent] == [5, 5, 2]
    run(t)


def test_the_whole_request_failing_fails_each_caller_with_its_own_error():
    async def t(meta, t, inos):
        async def broken(shard, ops):
            raise err.Unavailable("no leader")
        t.call_many = broken
        got = await asyncio.gather(meta.getattr(inos[0]), meta.getattr(inos[1]), return_exceptions=True)
        assert all(isinstance(g, err.Unavailable) for g in got) and got[0] is not got[1]
    run(t)


def test_only_reads_are_gathered():
    from dfs.common.messages import REQUESTS, Kind

    assert all(REQUESTS[op].KIND in (Kind.READ, Kind.READ_HANDLE) for op in M.GATHERED)


def test_a_reply_of_nil_is_an_answer():
    """CLOSEREAD answers nil (Done has no fields): its callers get that answer, gathered or not."""
    async def t(meta, t, inos):
        opened = [await meta.open_read(i) for i in inos[:2]]
        t.sent.clear()
        await asyncio.gather(*(meta.close_read_handles([(i, h)]) for i, (_, h, _) in zip(inos, opened)))
        assert t.sent == [("many", ["CLOSEREAD", "CLOSEREAD"])]
    run(t)
