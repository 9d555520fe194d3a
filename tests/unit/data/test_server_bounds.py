"""A data server against hostile connections (docs/design/security.md, "Bounds").

Each test is a case found by reading the connection handling, and fails on the
code before its fix: a HELLO with block CRCs that do not match (the handshake
raised out of the connection's task, leaving the socket to the garbage
collector), block CRCs on a request, an oversized HELLO (read in full before
it was looked at), 256 pipelined payloads on one connection (all buffered at
once), the chain's own requests from a client connection (a SNAP_RESUME to a
huge epoch with no live snapshots set the data epoch for good and dropped
every snapshot's versions), a wrong internal token, connection caps, and an
accept that fails (out of file descriptors: the accept loop ended).
"""

from __future__ import annotations

import asyncio
import errno as E
import socket
import struct

import msgpack
import pytest

from dfs.common.checksum import crc32c
from dfs.testing.dataplane import CHAIN, TARGET, InProcessDataServer, closed, recv, send, send_raw
from dfs.testing.wait import until_async
from dfs.wire import dataplane as dp

pytestmark = pytest.mark.timeout(120)


def run(coro):
    return asyncio.run(coro)


def test_hello_with_bad_block_crcs_closes_only_the_connection(tmp_path):
    """F_BLOCKCRC is a reply's flag. On a HELLO (or any request) the server closes the
    connection; the connection's task ends normally and its socket is closed at once."""
    async def main():
        async with InProcessDataServer(tmp_path) as ds:
            for after_hello in (False, True):
                a, b = socket.socketpair()
                a.setblocking(False)
                b.setblocking(False)
                if after_hello:
                    h, p = dp.hello(ds.cfg.client_token)
                    a.sendall(dp.encode(h, p) + p)
                payload = b"\xff" * 4 + b"x" * 100  # one "CRC" that is not the block's
                h = dp.Header(dp.HELLO if not after_hello else dp.PING, flags=dp.F_BLOCKCRC, arg=4, req_id=7)
                a.sendall(dp.encode(h, payload) + payload)
                await ds.server.serve_conn(b)  # returns (raised BlockChecksumError before)
                assert b.fileno() == -1
                assert await closed(a)
                a.close()
            # and the server serves the next connection as ever
            s = await ds.client()
            await send(s, dp.Header(dp.PING, req_id=1, target=TARGET))
            h, _ = await recv(s)
            assert h.status == 0 and h.req_id == 1

    run(main())


@pytest.mark.parametrize("token", [None, "c" * 40])
def test_an_oversized_hello_is_refused_before_its_payload(tmp_path, token):
    """A HELLO longer than HELLO_MAX closes the connection as soon as its header is in,
    with or without a client token (without one, the first frame used to be read up to
    MAX_PAYLOAD, and a HELLO's msgpack map parsed in full)."""
    async def main():
        async with InProcessDataServer(tmp_path, token=token) as ds:
            ds.server.hello_timeout = 3600.0  # what closes it is the length, not the clock
            s = await ds.connect()
            hb = bytearray(dp.encode(dp.Header(dp.HELLO, arg=dp.HELLO_VERSION)))
            struct.pack_into("<I", hb, 40, 64 << 20)  # length: 64 MiB, none of it sent
            await send_raw(s, bytes(hb))
            assert await asyncio.wait_for(closed(s), 60)  # the deadline only ends a hang

    run(main())


def test_frame_reader_refuses_an_oversized_hello_and_block_crcs_from_a_client():
    async def main():
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(False)
        hb = bytearray(dp.encode(dp.Header(dp.HELLO)))
        struct.pack_into("<I", hb, 40, dp.HELLO_MAX + 1)
        a.sendall(bytes(hb))
        with pytest.raises(dp.ProtocolError, match="HELLO"):
            await asyncio.wait_for(dp.FrameReader(b).read_frame(), 60)
        a.sendall(dp.encode(dp.Header(dp.READ, flags=dp.F_BLOCKCRC, arg=4), b"\0\0\0\0abcd") + b"\0\0\0\0abcd")
        with pytest.raises(dp.ProtocolError, match="block CRCs"):
            await asyncio.wait_for(dp.FrameReader(b, replies=False).read_frame(), 60)
        a.close()
        b.close()

    run(main())


def test_frame_reader_grows_keeping_pipelined_frames():
    async def main():
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(False)
        frames = [dp.Header(dp.HELLO, req_id=0)] + [dp.Header(dp.WRITE, req_id=i) for i in range(1, 4)]
        a.sendall(b"".join(dp.encode(h, b"p" * 1000) + b"p" * 1000 for h in frames))
        r = dp.FrameReader(b, 8 << 10, replies=False)
        h, p = await r.read_frame()
        assert h.op == dp.HELLO and len(r.buf) == 8 << 10
        r.grow()
        assert len(r.buf) == dp.FrameReader.BUFSIZE
        for i in range(1, 4):
            h, p = await r.read_frame()
            assert h.req_id == i and bytes(p) == b"p" * 1000
        a.close()
        b.close()

    run(main())


def test_queued_frames_on_one_connection_are_bounded_by_the_budget(tmp_path):
    """256 pipelined 64 MiB WRITEs would hold 16 GiB; here (scaled down) 32 frames of 1 MiB
    against a budget of 8 MiB, with handlers that do not finish: the server stops reading
    once 8 MiB are held (the sender waits on TCP), then serves the rest as bytes come back."""
    async def main():
        async with InProcessDataServer(tmp_path, inflight=8 << 20) as ds:
            srv = ds.server
            entered: list[int] = []
            go = asyncio.Event()
            real = srv.svc.handle

            async def slow(h, payload):
                entered.append(len(payload))
                await go.wait()
                return await real(h, payload)
            srv.svc.handle = slow
            s = await ds.client()
            n, size = 32, 1 << 20

            async def writer():
                for i in range(n):
                    h, p = ds.write_frame(100 + i, bytes([i]) * size, req_id=i + 1)
                    await send(s, h, p)
            w = asyncio.ensure_future(writer())
            budget = getattr(srv, "budget", None)  # (none before the fix: every frame got in)
            await until_async(lambda: len(entered) == n or (budget is not None and budget.waiting
                                                            and len(entered) * size == budget.used),
                              60, "the server to stop reading or take every frame")
            assert len(entered) == 8 and sum(entered) <= 8 << 20
            assert budget.used == 8 << 20 and budget.peak == 8 << 20
            go.set()
            got = {}
            while len(got) < n:
                h, _ = await recv(s)
                got[h.req_id] = h.status
            await w
            assert set(got) == set(range(1, n + 1)) and set(got.values()) == {0}
            assert budget.used == 0 and budget.peak <= 8 << 20 and len(entered) == n

    run(main())


def test_a_client_cannot_send_the_chains_own_requests(tmp_path):
    """A client connection (the client token only) is answered EPERM for SNAP_RESUME (to a huge
    epoch, no live snapshots), SNAP_HOLD, a forwarded WRITE, INSTALL, SYNC_LIST and SYNC_FETCH,
    and nothing changes; a server's connection (the internal token) is served."""
    async def main():
        async with InProcessDataServer(tmp_path) as ds:
            s = await ds.client()
            h, p = ds.write_frame(5, b"original")
            await send(s, h, p)
            assert (await recv(s))[0].status == 0
            before, epoch = ds.snapshot(), ds.server.svc.epoch
            hostile = [
                (dp.Header(dp.SNAP_RESUME, req_id=2, version=1, epoch=0xFFFFFFFF), msgpack.packb([])),
                (dp.Header(dp.SNAP_HOLD, req_id=3, version=0xFFFFFFFF, arg=60_000), b""),
                (ds.write_frame(5, b"FORGED!!", req_id=4, flags=dp.F_FORWARD, version=2, epoch=0xFFFFFFFE,
                                snap=0xFFFFFFFD)),
                (dp.Header(dp.INSTALL, req_id=5, ino=5, chain_id=CHAIN, chain_version=1, target=TARGET,
                           flags=dp.F_FORWARD, version=9), b"replaced"),
                (dp.Header(dp.SYNC_LIST, req_id=6, chain_id=CHAIN, chain_version=1, target=TARGET), b""),
                (dp.Header(dp.SYNC_FETCH, req_id=7, ino=5, target=TARGET), b""),
            ]
            for h, p in hostile:
                await send(s, h, p)
                rh, rp = await recv(s)
                assert rh.req_id == h.req_id and rh.status == E.EPERM, (h, rh, rp)
            assert ds.server.svc.epoch == epoch and ds.server.svc.holding() is None
            assert ds.snapshot() == before
            # the same on a server's connection is taken
            t = await ds.client(internal=True)
            await send(t, dp.Header(dp.SYNC_LIST, req_id=8, chain_id=CHAIN, chain_version=1, target=TARGET))
            rh, rp = await recv(t)
            assert rh.status == 0 and [x[:2] for x in msgpack.unpackb(rp)] == [[5, 0]]
            await send(t, dp.Header(dp.SNAP_RESUME, req_id=9, version=0, epoch=epoch + 1), msgpack.packb([]))
            assert (await recv(t))[0].status == 0 and ds.server.svc.epoch == epoch + 1

    run(main())


def test_a_wrong_internal_token_is_refused(tmp_path):
    async def main():
        async with InProcessDataServer(tmp_path) as ds:
            s = await ds.connect()
            h, p = await ds.hello(s, internal="not-the-internal-token")
            assert h.status == E.EACCES and b"internal" in p
            assert await closed(s)

    run(main())


def test_connection_caps(tmp_path):
    """Over the cap of connections before their HELLO, or of connections in all, a new
    connection is closed at once; the others are not disturbed, and once some are gone
    new ones are taken again."""
    async def main():
        async with InProcessDataServer(tmp_path) as ds:
            srv = ds.server
            srv.hello_timeout = 3600.0
            srv.max_preauth, srv.max_connections = 2, 4
            silent = [await ds.connect() for _ in range(2)]
            await until_async(lambda: getattr(srv, "_preauth", 0) == 2, 30, "two connections before HELLO")
            extra = await ds.connect()
            assert await asyncio.wait_for(closed(extra), 60)  # the deadline only ends a hang
            for s in silent:  # they finish their HELLOs: no longer counted before it
                h, p = dp.hello(ds.cfg.client_token)
                await send(s, h, p)
                assert (await recv(s))[0].status == 0
            more = [await ds.client() for _ in range(2)]  # 4 connections: the cap
            extra = await ds.connect()
            assert await asyncio.wait_for(closed(extra), 60)
            assert srv.refused_connections == 2
            for s in silent + more:
                await send(s, dp.Header(dp.PING, req_id=3, target=TARGET))
                assert (await recv(s))[0].status == 0
            silent[0].close()
            await until_async(lambda: len(srv._conns) == 3, 30, "the closed connection to be gone")
            s = await ds.client()
            await send(s, dp.Header(dp.PING, req_id=4, target=TARGET))
            assert (await recv(s))[0].status == 0

    run(main())


def test_the_accept_loop_survives_running_out_of_file_descriptors(tmp_path):
    async def main():
        async with InProcessDataServer(tmp_path) as ds:
            loop = asyncio.get_running_loop()
            real = loop.sock_accept
            failures = [OSError(E.EMFILE, "Too many open files")]

            async def accept(sock):
                if failures:
                    raise failures.pop()
                return await real(sock)
            loop.sock_accept = accept
            try:
                ds._accept.cancel()  # restart the loop under the failing accept
                await asyncio.gather(ds._accept, return_exceptions=True)
                ds._accept = loop.create_task(ds.server.accept_loop(ds._lsock))
                s = await ds.client()
                await send(s, dp.Header(dp.PING, req_id=1, target=TARGET))
                assert (await recv(s))[0].status == 0 and not failures
            finally:
                del loop.sock_accept

    run(main())


def test_payload_crc_error_gives_back_its_budget(tmp_path):
    async def main():
        async with InProcessDataServer(tmp_path, inflight=4 << 20) as ds:
            s = await ds.client()
            h, p = ds.write_frame(9, b"z" * (1 << 20), req_id=1)
            await send(s, h, p, crc=crc32c(p) ^ 1)
            rh, rp = await recv(s)
            assert rh.status == E.EIO and b"checksum" in rp
            assert ds.server.budget.used == 0

    run(main())
