"""The servers' connection caps and pre-authentication limits, on real processes
(``dfs.wire.limits``, docs/design/security.md, "Bounds").

``tests/unit/data/test_server_bounds.py`` checks the data server's handling
in-process with lowered caps; this checks that the processes a cluster runs
apply the production values: a metadata replica and a mgmt replica (gRPC)
take ``GRPC_MAX_CONNECTIONS`` connections and close the next one at accept,
without a byte; a connection that never finishes its HTTP/2 handshake is
closed (``GRPC_HANDSHAKE_MS``); a data server closes a connection beyond
``DATA_MAX_PREAUTH`` still before their HELLO at accept, and one that sends no
HELLO (``DATA_HELLO_TIMEOUT``). Each server then serves as before, and
clients of the cluster work throughout the checks that leave room for them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

import dfs
from dfs.testing import metrics
from dfs.testing.dataplane import closed, recv, send
from dfs.testing.wait import until, until_async
from dfs.wire import dataplane as dp
from dfs.wire import limits

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

# the client's HTTP/2 connection preface and an empty SETTINGS frame: a connection past
# its handshake that never makes a call (an HTTP/2 frame header is 3 bytes of length, type, flags, stream id)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + struct.pack(">I", 0)[1:] + bytes([4, 0]) + struct.pack(">I", 0)
SETTINGS_ACK = struct.pack(">I", 0)[1:] + bytes([4, 1]) + struct.pack(">I", 0)
SETTINGS = 4


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters.make(shards=1, replicas=1, mgmt_replicas=1, data_servers=1, chain_replicas=1)


def run(coro):
    return asyncio.run(coro)


async def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, (host, int(port)))
    return s


async def first_bytes(s: socket.socket) -> bytes:
    """What the server sends first (b"": it closed the connection)."""
    try:
        return await asyncio.get_running_loop().sock_recv(s, 4096)
    except (ConnectionResetError, BrokenPipeError):
        return b""


async def http2(address: str) -> socket.socket | None:
    """A connection past its HTTP/2 handshake (None: the server closed it without a byte)."""
    s = await connect(address)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(s, PREFACE)
    except (ConnectionResetError, BrokenPipeError):
        s.close()
        return None
    got = await asyncio.wait_for(first_bytes(s), 60)  # the deadline only ends a hang
    if not got:
        s.close()
        return None
    assert got[3] == SETTINGS, got[:16]  # a gRPC server opens with its SETTINGS
    await loop.sock_sendall(s, SETTINGS_ACK)
    return s


def _works(c) -> None:
    with dfs.connect(c.config_path, uid=0, gid=0, groups=()) as fs:
        fs.listdir("/")


@pytest.mark.parametrize("role", ["meta", "mgmt"])
def test_a_grpc_server_closes_connections_over_its_cap(cluster, role):
    proc = cluster.meta_procs(0)[0] if role == "meta" else cluster.mgmt_procs()[0]

    async def main():
        held: list[socket.socket] = []
        refused = 0
        try:
            # the cluster's own connections (clients, servers) count too: the cap is reached
            # at most GRPC_MAX_CONNECTIONS of ours, a few fewer when others are connected
            for _ in range(limits.GRPC_MAX_CONNECTIONS + 1):
                s = await http2(proc.address)
                if s is None:
                    refused += 1
                    break
                held.append(s)
            assert refused == 1, f"{len(held)} connections taken, none refused"
            assert limits.GRPC_MAX_CONNECTIONS - 64 <= len(held) <= limits.GRPC_MAX_CONNECTIONS
            assert await http2(proc.address) is None  # and again: the cap holds
            for s in held[:8]:  # the connections it took are served (a PING is answered)
                await asyncio.get_running_loop().sock_sendall(s, PING)
                assert await asyncio.wait_for(ping_ack(s), 60)
        finally:
            for s in held:
                s.close()
        assert proc.alive
        # our connections gone, new ones are taken again, and clients work
        s = await until_async(lambda: http2(proc.address), 60, "a connection taken again")
        s.close()

    run(main())
    _works(cluster)


PING = struct.pack(">I", 8)[1:] + bytes([6, 0]) + struct.pack(">I", 0) + b"dfs-ping"


async def ping_ack(s: socket.socket) -> bool:
    """Whether the server answers our HTTP/2 PING (reads frames until its ACK; False: closed)."""
    loop = asyncio.get_running_loop()
    buf = b""
    while True:
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            ftype, flags, payload = buf[3], buf[4], buf[9:9 + n]
            buf = buf[9 + n:]
            if ftype == 6 and flags & 1 and payload == b"dfs-ping":
                return True
        got = await loop.sock_recv(s, 65536)
        if not got:
            return False
        buf += got


@pytest.mark.parametrize("role", ["meta", "mgmt"])
def test_a_grpc_connection_that_never_finishes_its_handshake_is_closed(cluster, role):
    """Before authentication: nothing sent, or half the preface; the server closes both
    (after GRPC_HANDSHAKE_MS) and still serves."""
    proc = cluster.meta_procs(0)[0] if role == "meta" else cluster.mgmt_procs()[0]

    async def main():
        silent = await connect(proc.address)
        half = await connect(proc.address)
        await asyncio.get_running_loop().sock_sendall(half, PREFACE[:10])
        try:
            for s in (silent, half):
                assert await asyncio.wait_for(closed(s), 120)  # the deadline only ends a hang
        finally:
            silent.close()
            half.close()

    run(main())
    assert proc.alive
    _works(cluster)


def test_a_data_server_refuses_connections_over_its_preauth_cap(cluster):
    """DATA_MAX_PREAUTH connections without a HELLO: the next is closed at accept (the server
    logs it), the waiting ones may still say HELLO and are served; one that never does is
    closed after DATA_HELLO_TIMEOUT."""
    proc = cluster.data_procs()[0]
    token = cluster.cfg.client_token

    def refusals() -> int:
        with open(proc.log, errors="replace") as f:
            return sum("connection refused:" in line for line in f)

    before = refusals()
    base = metrics.get(metrics.scrape(proc), "dfs_data_connections")

    async def main():
        silent = [await connect(proc.address) for _ in range(limits.DATA_MAX_PREAUTH)]
        try:
            # taken (each counts as before its HELLO from its first step, which runs before
            # the accept loop takes another connection)
            await until_async(lambda: metrics.get(metrics.scrape(proc), "dfs_data_connections")
                              >= base + limits.DATA_MAX_PREAUTH, 30, "the connections to be taken")
            extra = await connect(proc.address)
            assert await asyncio.wait_for(closed(extra), 60)
            extra.close()
            until(lambda: refusals() > before, 30, "the data server to log the refused connection")
            for s in silent[:4]:  # those it took and still waits for may say HELLO
                h, p = dp.hello(token)
                try:
                    await send(s, h, p)
                    rep = await asyncio.wait_for(recv(s), 60)
                except (ConnectionResetError, BrokenPipeError):
                    rep = None
                if rep is None:  # the machine was slow enough for DATA_HELLO_TIMEOUT to pass
                    continue
                assert rep[0].status == 0
                await send(s, dp.Header(dp.PING, req_id=1, target=cluster.cfg.data[0].targets[0].id))
                assert (await asyncio.wait_for(recv(s), 60)) is not None
            # the others never say HELLO: closed after DATA_HELLO_TIMEOUT
            for s in silent[4:8]:
                assert await asyncio.wait_for(closed(s), 120)
        finally:
            for s in silent:
                s.close()

    run(main())
    assert proc.alive
    _works(cluster)
    with dfs.connect(cluster.config_path, uid=0, gid=0, groups=()) as fs:
        data = os.urandom(100_000)
        fs.write_bytes("/after-caps", data)
        assert fs.read_bytes("/after-caps") == data
