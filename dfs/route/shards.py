"""gRPC transport to the metadata shards (a ``dfs.common.shards.ShardCalls``): the cluster
map, leader following, retries.

Used by clients (through MetaClient) and by shard servers to reach their
peers. It fetches the cluster map from any mgmt replica, sends each operation
to the shard leader it believes in, follows NOT_LEADER hints, moves on to the
next replica when one does not answer, and retries retryable answers
(LOCKED, UNAVAILABLE) with the *same* request id until a deadline. A retried
mutation is answered from the server's idempotency record, so it never
applies twice.

Every reply carries the epoch of the cluster map its server knows; a newer
one than ours starts a map refresh in the background (that is how clients
learn of replicas and shards added to a running cluster), and an inode of a
shard our map does not have yet makes us fetch the map before giving up.

Every call carries the client token of its ``Credentials`` (``dfs.wire.auth``;
default: those remembered for the mgmt addresses) as metadata, over TLS when
they have a CA. UNAUTHENTICATED is not retried: it raises ``Unauthenticated``.

Imports: dfs.common, dfs.wire and the generated stubs only.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import grpc
import msgpack

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.common import errors as err
from dfs.common.clustermap import ClusterMap
from dfs.common.ops import Op
from dfs.common.records import Caller
from dfs.wire import auth as _auth

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 10000),
]

_RETRYABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                   grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED}


def _unpack(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False, use_list=True, strict_map_key=False)


class GrpcTransport:
    """A MetaClient transport (and a shard server's peer router) over gRPC."""

    def __init__(self, mgmt: list[str], *, deadline: float = 30.0, attempt_timeout: float = 6.0,
                 cmap: ClusterMap | None = None, metadata: tuple[tuple[str, str], ...] = (),
                 auth: _auth.Credentials | None = None) -> None:
        """``metadata``: sent with every call besides the token (a server's internal token).
        ``auth``: the token and TLS CA (default: those remembered for ``mgmt``, else none)."""
        self.mgmt_addrs = list(mgmt)
        self.auth = auth if auth is not None else _auth.known(
            self.mgmt_addrs or [a for s in (cmap.shards if cmap else []) for a in s])
        self.metadata = (self.auth.metadata() + tuple(metadata)) or None
        if cmap is not None and cmap.auth is None:
            cmap.auth = self.auth
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self.map: ClusterMap | None = cmap
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pbg.MetaServiceStub] = {}
        self._leader: dict[int, str] = {}
        self._map_refreshed = 0.0
        self._bg_refresh: asyncio.Task | None = None
        # where capabilities granted with a reply go (a DataClient's add_caps; dfs.common.caps)
        self.cap_sink: Callable[[list[bytes]], None] | None = None

    @property
    def nshards(self) -> int:
        assert self.map is not None, "connect() first"
        return len(self.map.shards)

    # ------------------------------------------------------------------ channels
    def _channel(self, addr: str) -> grpc.aio.Channel:
        ch = self._channels.get(addr)
        if ch is None:
            # the token goes as per-call metadata (cheaper than an interceptor)
            ch = self._channels[addr] = self.auth.channel(addr, CHANNEL_OPTIONS, interceptor=False)
        return ch

    def _stub(self, addr: str) -> pbg.MetaServiceStub:
        s = self._stubs.get(addr)
        if s is None:
            s = self._stubs[addr] = pbg.MetaServiceStub(self._channel(addr))
        return s

    async def close(self) -> None:
        if self._bg_refresh is not None:
            self._bg_refresh.cancel()
        chans, self._channels = list(self._channels.values()), {}
        self._stubs.clear()
        for ch in chans:
            await ch.close()

    # ------------------------------------------------------------------ cluster map
    async def connect(self) -> GrpcTransport:
        await self.refresh_map()
        return self

    async def refresh_map(self, deadline: float | None = None) -> ClusterMap:
        """Fetch the map from mgmt, trying for ``deadline`` s (default: the transport's)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + (self.deadline if deadline is None else deadline)
        addrs = list(self.mgmt_addrs)
        last: Exception | None = None
        while loop.time() < end:
            for addr in addrs:
                try:
                    stub = pbg.MgmtServiceStub(self._channel(addr))
                    rep = await stub.GetClusterMap(pb.GetClusterMapRequest(), timeout=self.attempt_timeout,
                                                   metadata=self.metadata)
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                        raise _auth.unauthenticated(addr, e) from None
                    last = e
                    continue
                if rep.status == 0 and rep.map.shards:
                    self.map = ClusterMap.from_pb(rep.map)
                    self.map.auth = self.auth
                    if self.map.mgmt:
                        self.mgmt_addrs = self.map.mgmt
                    return self.map
            await asyncio.sleep(0.05)
        raise err.Unavailable(f"no cluster map from mgmt {addrs}: {last}")

    # ------------------------------------------------------------------ calls
    def _candidates(self, shard: int) -> list[str]:
        assert self.map is not None
        if not 0 <= shard < len(self.map.shards):
            raise err.WrongShard(f"no shard {shard}")
        reps = self.map.shards[shard]
        lead = self._leader.get(shard)
        return ([lead] if lead else []) + [r for r in reps if r != lead]

    def _request(self, shard: int, op: int, caller: Caller, args: list, rid: bytes, ts: int | None) -> pb.OpRequest:
        return pb.OpRequest(request_id=rid, op=int(op), shard=shard, epoch=self.map.epoch if self.map else 0,
                            caller=pb.Caller(uid=caller.uid, gid=caller.gid, groups=list(caller.groups)),
                            body=msgpack.packb(args), ts=ts or 0)

    async def call(self, shard: int, op: Op, caller: Caller, args: list, rid: bytes = b"",
                   ts: int | None = None) -> Any:
        req = self._request(shard, op, caller, args, rid, ts)
        rep = await self._send(shard, lambda stub, t: stub.Execute(req, timeout=t, metadata=self.metadata))
        if rep.caps and self.cap_sink is not None:
            self.cap_sink(rep.caps)
        return self._result(rep)

    @staticmethod
    def _result(rep: pb.OpReply) -> Any:
        if rep.status:
            raise err.error_for(rep.status, rep.message or None)
        return _unpack(rep.body) if rep.body else None

    async def call_many(self, shard: int, ops: list[tuple[Op, Caller, list, bytes]]) -> list[Any]:
        results: list[Any] = [None] * len(ops)
        todo = list(range(len(ops)))
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline
        while todo:
            req = pb.BatchRequest(ops=[self._request(shard, *ops[i], None) for i in todo])
            rep = await self._send(shard, lambda stub, t, req=req: stub.ExecuteBatch(req, timeout=t, metadata=self.metadata))
            again = []
            for i, r in zip(todo, rep.replies):
                if r.caps and self.cap_sink is not None:
                    self.cap_sink(r.caps)
                try:
                    results[i] = self._result(r)
                except err.Retryable as e:
                    if loop.time() >= end:
                        results[i] = e
                    else:
                        again.append(i)
                except err.DfsError as e:
                    results[i] = e
            if again:
                await asyncio.sleep(0.005 * (0.5 + random.random()))
            todo = again
        return results

    async def _send(self, shard: int, rpc):
        """Send to the shard leader; follow hints, fail over, retry retryable statuses."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline
        delay = 0.002
        last: Exception | None = None
        if self.map is not None and shard >= len(self.map.shards) and self.mgmt_addrs:
            await self._refresh_for(shard)  # a shard added since our map (dfs admin add-meta-shard)
        while True:
            progressed = False
            unreachable = False  # some replica did not answer or did not know a leader
            for addr in self._candidates(shard):
                remaining = end - loop.time()
                if remaining <= 0:
                    break
                try:
                    rep = await rpc(self._stub(addr), min(self.attempt_timeout, remaining))
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                        raise _auth.unauthenticated(addr, e) from None
                    if e.code() not in _RETRYABLE_GRPC:
                        raise err.DfsError(f"{addr}: {e.code().name}: {e.details()}") from None
                    last = e
                    unreachable = True
                    if self._leader.get(shard) == addr:
                        del self._leader[shard]
                    continue
                epoch = rep.epoch if isinstance(rep, pb.OpReply) else (rep.replies[0].epoch if rep.replies else 0)
                if self.map is not None and epoch > self.map.epoch:
                    self._refresh_soon()
                status = rep.status if isinstance(rep, pb.OpReply) else (
                    rep.replies[0].status if rep.replies else 0)
                hint = rep.leader if isinstance(rep, pb.OpReply) else (
                    rep.replies[0].leader if rep.replies else "")
                if status == err.NOT_LEADER:
                    last = err.NotLeader(leader=hint)
                    if hint and hint != addr:
                        self._leader[shard] = hint
                        progressed = True
                        break
                    unreachable = True
                    if self._leader.get(shard) == addr:
                        del self._leader[shard]
                    continue
                if status in (err.LOCKED, err.UNAVAILABLE, err.STALE_EPOCH) or status == 11:  # EAGAIN
                    self._leader[shard] = addr
                    last = err.error_for(status)
                    break
                self._leader[shard] = addr
                return rep
            if loop.time() >= end:
                if isinstance(last, err.DfsError):
                    raise last
                raise err.Unavailable(f"shard {shard}: no answer before the deadline ({last})")
            if not progressed:
                if unreachable:
                    await self._maybe_refresh_map()
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)

    def _refresh_soon(self) -> None:
        """A server knows a newer map: fetch it in the background (one fetch at a time)."""
        if self._bg_refresh is None or self._bg_refresh.done():
            self._bg_refresh = asyncio.get_running_loop().create_task(self._maybe_refresh_map())

    async def _refresh_for(self, shard: int) -> None:
        """Fetch the map now (bounded) in the hope that it has ``shard``."""
        try:
            await self.refresh_map(min(self.deadline, 5.0))
        except err.DfsError as e:
            log.debug("cluster map refresh for shard %d failed: %s", shard, e)

    async def _maybe_refresh_map(self) -> None:
        """No replica of a shard could serve: the map may be stale (replicas moved)."""
        loop = asyncio.get_running_loop()
        if not self.mgmt_addrs or loop.time() - self._map_refreshed < 1.0:
            return
        self._map_refreshed = loop.time()
        try:
            await self.refresh_map(min(self.deadline, 2.0))
        except err.DfsError as e:
            log.debug("cluster map refresh failed: %s", e)
