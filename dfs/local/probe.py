"""Asking servers how they are: the Status of metadata replicas, the cluster map
of the first mgmt replica that answers. Short timeouts; a server that does not
answer is None, never an exception. The launcher's health waits use them, and
so do ``dfs admin`` and ``dfs cluster status`` (against any cluster's
addresses, with that cluster's credentials).

May import: dfs.common, dfs.wire (credentials) and the generated stubs.
"""

from __future__ import annotations

import asyncio

import grpc

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.wire.auth import Credentials

TIMEOUT = 2.0


async def replica_status(creds: Credentials, address: str, timeout: float = TIMEOUT) -> pb.ShardStatus | None:
    """MetaService.Status of the replica at ``address`` (None: no answer)."""
    async with creds.channel(address) as ch:
        try:
            return await pbg.MetaServiceStub(ch).Status(pb.ShardStatusRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return None


async def replica_statuses(creds: Credentials, addresses: list[str],
                           timeout: float = TIMEOUT) -> list[pb.ShardStatus | None]:
    """``replica_status`` of each address, asked concurrently, in order."""
    return list(await asyncio.gather(*(replica_status(creds, a, timeout) for a in addresses)))


async def first_map(creds: Credentials, addresses: list[str], timeout: float = TIMEOUT) -> pb.ClusterMap | None:
    """The protobuf cluster map of the first mgmt replica in ``addresses`` that answers with
    one (None: none does)."""
    for addr in addresses:
        async with creds.channel(addr) as ch:
            try:
                rep = await pbg.MgmtServiceStub(ch).GetClusterMap(pb.GetClusterMapRequest(), timeout=timeout)
            except grpc.aio.AioRpcError:
                continue
        if rep.status == 0:
            return rep.map
    return None
