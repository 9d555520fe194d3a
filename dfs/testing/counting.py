"""A metadata transport that counts requests, for the tests that hold the hot paths to their
round trips: a change that adds a request to an open, a close or a lookup fails on a count.

    t = CountingTransport(LocalEngine(2))
    meta = MetaClient(t, ROOT)
    ...
    assert t.take() == {"CREATE": 1}     # requests by op name since the last take()

It stands where ``dfs.common.shards.ShardCalls`` stands (between a MetaClient and an engine);
a request inside a ``call_many`` counts once, as in ``call``. While ``gate`` is clear,
mutations sent by ``call`` wait (a test then sees what completes without the service).

Test support: may import any production package; nothing in production imports it.
"""

from __future__ import annotations

import asyncio
import collections

from dfs.common.shards import ShardCalls

# the ops a clear gate holds back (the reads go through)
MUTATIONS = frozenset({"BATCH", "MKDIR", "RMDIR", "UNLINK", "RENAME", "LINK", "CREATE", "SETATTR", "EXTEND",
                       "WRITEINLINE"})


class CountingTransport:
    """``engine``'s calls, counted by op name. ``close_engine=False``: ``close`` leaves the
    engine open (a test that shares one engine between clients closes it itself)."""

    def __init__(self, engine: ShardCalls, *, close_engine: bool = True) -> None:
        self.engine = engine
        self.nshards = engine.nshards
        self.close_engine = close_engine
        self.counts: collections.Counter = collections.Counter()
        self.batch_sizes: list[int] = []  # the number of mutations in each BATCH, in order
        self.gate = asyncio.Event()
        self.gate.set()

    async def call(self, shard, op, caller, args, rid=b"", ts=None):
        if op.name in MUTATIONS:
            await self.gate.wait()
        self.counts[op.name] += 1
        if op.name == "BATCH":
            self.batch_sizes.append(len(args[0]))
        return await self.engine.call(shard, op, caller, args, rid, ts)

    async def call_many(self, shard, ops):
        for o in ops:
            self.counts[o[0].name] += 1
        return await self.engine.call_many(shard, ops)

    async def close(self) -> None:
        if self.close_engine:
            await self.engine.close()

    def take(self) -> dict:
        """The counts since the last take (by op name), and start counting afresh."""
        out = dict(self.counts)
        self.counts.clear()
        return out
