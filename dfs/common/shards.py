"""The one way to call a metadata shard: ``ShardCalls``.

Everything that sends a metadata operation to the leader of a shard goes
through this interface: the client (``MetaClient`` over the gRPC transport,
dfs/route/shards.py, or the in-process engine, dfs/meta/local.py), a shard
calling its peers (dfs/meta/server.py), and the coordinator of cross-shard
operations (its view: its own shard directly, the others through the peers,
dfs/meta/service.py). An implementation finds the leader, follows "not
leader" hints, retries what is retryable with the same request id, and
raises the ``DfsError`` of an answer that is final.

Imports: dfs.common only.
"""

from __future__ import annotations

from typing import Any, Protocol

from dfs.common.ops import Op
from dfs.common.records import Caller


class ShardCalls(Protocol):
    """Delivers operations to the leaders of ``nshards`` shards."""

    nshards: int

    async def call(self, shard: int, op: Op, caller: Caller, args: list, rid: bytes = b"",
                   ts: int | None = None) -> Any:
        """Run ``op`` (its wire fields ``args``) on ``shard``'s leader as ``caller`` and return
        its wire reply. ``rid``: the request id its retries reuse (b"": a read); ``ts``: the
        time it runs at (the coordinator's, for the steps of one operation; None: the
        leader's clock). Raises the DfsError of a final answer."""

    async def call_many(self, shard: int, ops: list[tuple[Op, Caller, list, bytes]]) -> list[Any]:
        """Several operations to one shard in one request, applied in order: each item of
        the answer is a wire reply or the DfsError of that operation."""

    async def close(self) -> None:
        """Release connections."""
