"""A data server in this process, on loopback, for tests that speak raw frames to it.

    async with InProcessDataServer(tmp_path, token="t" * 32, inflight=8 << 20) as ds:
        s = await ds.connect()                       # a raw non-blocking socket
        await ds.hello(s)                            # (header, payload) of the answer
        await send(s, dp.Header(dp.PING, req_id=1))
        h, p = await recv(s)

One target (id 1) in one chain (id 0, version 1) of a cluster map set by hand:
no mgmt, no heartbeats, no background passes; ``dfs.data.server.DataServer``'s
own connection handling (``accept_loop``, ``serve_conn``) and ``ChainService``
do the rest. ``snapshot()`` is every file under the target and every key of
its chunk meta and chain index, to tell that a request changed nothing.

Test support: may import any production package.
"""

from __future__ import annotations

import asyncio
import os
import socket

from dfs.common.clustermap import ChainInfo, ClusterMap, TargetInfo
from dfs.common.config import ClusterConfig, DataServerConfig, ReplicaAddr, ShardConfig, TargetConfig
from dfs.common.layout import Layout
from dfs.data.server import DataServer
from dfs.testing.keys import raft_password, raft_salt
from dfs.wire import dataplane as dp

TARGET = 1
CHAIN = 0
LAYOUT_ARG = Layout(chunk_size=1 << 20, stripe=1, replicas=1).pack()


def config(root: str, *, token: str | None, inflight: int = 512 << 20, salt: str | None = "") -> ClusterConfig:
    """One data server's cluster file (``salt`` "": a fresh one; None: none, as older files)."""
    r = ReplicaAddr(0, "127.0.0.1:1", "127.0.0.1:2")
    data = (DataServerConfig(0, "127.0.0.1:3", (TargetConfig(TARGET, os.path.join(root, "t1")),)),)
    return ClusterConfig("inproc", raft_password(), (r,), (ShardConfig(0, (r,)),), data=data, chain_replicas=1,
                         client_token=token, raft_salt=raft_salt() if salt == "" else salt, max_inflight_bytes=inflight)


class InProcessDataServer:
    def __init__(self, root, *, token: str | None = "c" * 40, inflight: int = 512 << 20) -> None:
        self.cfg = config(os.fspath(root), token=token, inflight=inflight)
        self.server: DataServer | None = None
        self.address: tuple[str, int] | None = None
        self._lsock: socket.socket | None = None
        self._accept: asyncio.Task | None = None
        self._socks: list[socket.socket] = []

    async def __aenter__(self) -> InProcessDataServer:
        ds = self.server = DataServer(self.cfg, 0)
        ds.map = ClusterMap(1, [["127.0.0.1:1"]], ["127.0.0.1:1"],
                            {TARGET: TargetInfo(TARGET, 0, "127.0.0.1:3", "serving")},
                            [ChainInfo(CHAIN, 1, (TARGET,), (), (TARGET,))])
        ds.svc.on_map(ds.map)

        async def no_refresh(min_interval: float = 0.05) -> None:
            return None  # the map is the test's; there is no mgmt to ask
        ds.refresh_map = no_refresh
        ds.svc.refresh_map = no_refresh
        ls = self._lsock = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(128)
        ls.setblocking(False)
        self.address = ls.getsockname()
        self._accept = asyncio.get_running_loop().create_task(ds.accept_loop(ls))
        return self

    async def __aexit__(self, *exc) -> None:
        for s in self._socks:
            s.close()
        self._accept.cancel()
        conns = list(self.server._conns)
        for t in conns:
            t.cancel()
        await asyncio.gather(self._accept, *conns, return_exceptions=True)
        self._lsock.close()
        await self.server.svc.stop()
        await self.server.peers.close()
        await self.server.transport.close()
        for t in self.server.targets.values():
            t.close()

    # ------------------------------------------------------------------ clients
    async def connect(self) -> socket.socket:
        s = socket.socket()
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, self.address)
        self._socks.append(s)
        return s

    async def hello(self, s: socket.socket, token: str | None = "", internal: str | None = None):
        """Send a HELLO (``token`` "": the cluster's) and return its answer (None: closed)."""
        h, p = dp.hello(self.cfg.client_token if token == "" else token, internal)
        await send(s, h, p)
        return await recv(s)

    async def client(self, internal: bool = False, *, cap: bool = True) -> socket.socket:
        """A connection past a good HELLO (a server's, with the internal token, if ``internal``);
        a client's has shown a capability for every inode (``cap``, dfs.common.caps)."""
        s = await self.connect()
        h, _ = await self.hello(s, internal=self.cfg.internal_token if internal else None)
        assert h.status == 0, h
        if cap and not internal:
            from dfs.common import caps

            tok = caps.Signer(caps.cap_key(self.cfg.internal_token)).inodes(0, 2**64 - 1, caps.READ | caps.WRITE)
            await send(s, dp.Header(dp.CAP, req_id=0), tok)
            h, _ = await recv(s)
            assert h.op == dp.CAP and h.status == 0, h
        return s

    def write_frame(self, ino: int, data: bytes, *, req_id: int = 1, offset: int = 0, **kw) -> tuple:
        return dp.Header(dp.WRITE, req_id=req_id, ino=ino, chain_id=CHAIN, chain_version=1, offset=offset,
                         arg=LAYOUT_ARG, target=TARGET, **kw), data

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict:
        """Files (path -> bytes) under the target and its RocksDB keys and values."""
        t = self.server.targets[TARGET]
        out: dict = {}
        root = self.cfg.data[0].targets[0].path
        chunks = os.path.join(root, "chunks")
        for d, _, files in os.walk(chunks):
            for f in files:
                with open(os.path.join(d, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
        out["meta"] = sorted(t.store._kv.items())
        out["index"] = sorted(t.index.kv.items())
        return out


async def send(s: socket.socket, h: dp.Header, payload=b"", *, crc: int | None = None) -> None:
    await asyncio.get_running_loop().sock_sendall(s, dp.encode(h, payload, crc) + bytes(payload))


async def send_raw(s: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(s, data)


async def recv_exactly(s: socket.socket, n: int) -> bytes | None:
    loop = asyncio.get_running_loop()
    buf = b""
    while len(buf) < n:
        try:
            got = await loop.sock_recv(s, n - len(buf))
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not got:
            return None
        buf += got
    return buf


async def recv(s: socket.socket) -> tuple[dp.Header, bytes] | None:
    """The next frame the server sends (None: it closed the connection)."""
    hb = await recv_exactly(s, dp.HEADER_SIZE)
    if hb is None:
        return None
    h = dp.decode(hb)
    p = await recv_exactly(s, h.length) if h.length else b""
    return None if p is None else (h, p)


async def closed(s: socket.socket) -> bool:
    """Whether the server has closed ``s`` (reads what it still sends until then)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            if not await loop.sock_recv(s, 65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
