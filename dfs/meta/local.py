"""The in-process engine: S shards, each a MetaStore behind a DirectLog, in
one process. Same state machine, same coordinator, same client as the real
cluster; only Raft and gRPC are absent. Used by unit tests and the
conformance suite (next to the real cluster)."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from dfs.common import errors as err
from dfs.common.ops import Op
from dfs.common.records import Caller
from dfs.consensus.api import DirectLog
from dfs.meta.service import ChunkRemover, ShardService
from dfs.meta.snapshots import Registry
from dfs.meta.store import MetaStore

RETRY_DEADLINE = 30.0


async def call_with_retry(fn, deadline: float = RETRY_DEADLINE):
    """Run ``fn()`` until it does not raise a Retryable error or the deadline passes."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    delay = 0.001
    while True:
        try:
            return await fn()
        except err.Retryable:
            if loop.time() >= end:
                raise
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.1)


class LocalEngine:
    """All shards in this process, as ShardCalls (dfs.common.shards): the client's
    transport and every shard's way to its peers."""

    def __init__(self, nshards: int = 2, path: str | None = None, *,
                 chunk_remover: ChunkRemover | None = None, clock=time.time_ns,
                 registry: Registry | None = None) -> None:
        """``registry``: where snapshots are registered (mgmt's part; e.g.
        dfs.testing.registry.MemoryRegistry); None: SNAPCREATE answers EOPNOTSUPP."""
        self.nshards = nshards
        self.registry = registry
        self.services: list[ShardService] = []
        for s in range(nshards):
            store = MetaStore(s, nshards, None if path is None else os.path.join(path, f"shard{s}"))
            self.services.append(ShardService(store, DirectLog(store), self, clock=clock,
                                              chunk_remover=chunk_remover, snapshot_registry=registry))

    async def call(self, shard: int, op: Op, caller: Caller, args: list, rid: bytes = b"",
                   ts: int | None = None) -> Any:
        if not 0 <= shard < self.nshards:
            raise err.WrongShard(f"no shard {shard}")
        svc = self.services[shard]
        return await call_with_retry(lambda: svc.execute(op, rid, caller, args, ts=ts))

    async def call_many(self, shard: int, ops: list[tuple[Op, Caller, list, bytes]]) -> list[Any]:
        async def one(op, caller, args, rid):
            try:
                return await self.call(shard, op, caller, args, rid)
            except err.DfsError as e:
                return e

        return list(await asyncio.gather(*(one(*o) for o in ops)))

    async def sweep(self) -> int:
        """Run recovery once on every shard (tests)."""
        return sum([await s.recovery.sweep(grace_ns=0) for s in self.services])

    async def orphan_sweep(self) -> int:
        """Free orphans once on every shard (tests); see ShardService.orphan_sweep."""
        return sum([await s.orphan_sweep() for s in self.services])

    async def expire_handles(self) -> int:
        """Expire lapsed open handles once on every shard (tests); see ShardService.expire_handles."""
        return sum([await s.expire_handles() for s in self.services])

    async def prune_history(self) -> int:
        """Prune snapshot history once on every shard (tests); see ShardService.prune_history."""
        return sum([await s.prune_history() for s in self.services])

    async def close(self) -> None:
        for s in self.services:
            await s.stop()
            s.store.close()
