"""mgmt's admin commands, as servers and operators' tools send them.

``MgmtAdmin.command(cmd)`` runs one cluster-map command of dfs/mgmt/store.py
(``["snap_begin", ...]``, ``["drain", target]``, ...) on the mgmt leader,
showing the internal token (``dfs.wire.auth.INTERNAL_HEADER``): it follows
NOT_LEADER hints, moves on from replicas that do not answer, retries while
no leader can commit, and raises the ``DfsError`` of a refusal, or
``Unavailable`` when no leader accepted it before the deadline. It answers
what the command answered beyond the map epoch.

Used by the snapshot coordinator (a metadata server), a data server whose
snapshot hold ran out, and `dfs admin`.

Imports: dfs.common, dfs.wire and the generated stubs only.
"""

from __future__ import annotations

import asyncio

import grpc
import msgpack

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.common import errors as err
from dfs.route.shards import CHANNEL_OPTIONS
from dfs.wire.auth import INTERNAL_HEADER, Credentials

_AGAIN = {err.NOT_LEADER, err.UNAVAILABLE, 11}  # no leader, or it could not commit yet (EAGAIN)


class MgmtAdmin:
    def __init__(self, mgmt: list[str], internal_token: str, creds: Credentials | None = None, *,
                 deadline: float = 10.0, attempt_timeout: float = 5.0) -> None:
        self.mgmt = list(mgmt)
        self.creds = creds or Credentials()
        self.metadata = ((INTERNAL_HEADER, internal_token),)
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self.leader: str | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, addr: str) -> pbg.MgmtServiceStub:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = self.creds.channel(addr, CHANNEL_OPTIONS)
        return pbg.MgmtServiceStub(ch)

    async def command(self, cmd: list, deadline: float | None = None) -> list:
        req = pb.AdminRequest(command=msgpack.packb(cmd))
        loop = asyncio.get_running_loop()
        end = loop.time() + (self.deadline if deadline is None else deadline)
        delay = 0.05
        last = "no mgmt replica answered"
        while True:
            order = ([self.leader] if self.leader else []) + [a for a in self.mgmt if a != self.leader]
            for addr in order:
                hops = 0
                while addr and hops < 2:
                    hops += 1
                    try:
                        rep = await self._stub(addr).Admin(req, metadata=self.metadata,
                                                           timeout=self.attempt_timeout)
                    except grpc.aio.AioRpcError as e:
                        last = f"{addr}: {e.code().name}"
                        break
                    if rep.status == 0:
                        self.leader = addr
                        return msgpack.unpackb(rep.result, raw=False) if rep.result else []
                    if rep.status == err.NOT_LEADER and rep.leader and rep.leader != addr:
                        addr = rep.leader
                        continue
                    if rep.status in _AGAIN:
                        last = f"{addr}: {rep.message or rep.status}"
                        break
                    raise err.error_for(rep.status, f"{cmd[0]}: {rep.message or rep.status}")
            if loop.time() >= end:
                raise err.Unavailable(f"{cmd[0]}: no mgmt leader accepted it ({last})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def close(self) -> None:
        chans, self._channels = list(self._channels.values()), {}
        for ch in chans:
            await ch.close()
