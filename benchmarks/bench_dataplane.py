"""The data plane's wire format (dfs.wire.dataplane) and a real round trip.

Codec (no I/O): the 64-byte frame header of a READ request, encoded and
decoded; a WRITE request's header with a 4 KiB payload (its CRC32C
included) and the receiver's payload check; the reply header to a request;
the HELLO frame and its parsing; a STAT reply's msgpack payload.

Framing over a socket (one process, one event loop): a PING frame sent with
``FrameWriter`` over a socketpair and read back with ``FrameReader``.

Loopback round trips against a real data server process (``bench_cluster``,
benchmarks/conftest.py): PING, and a 4 KiB READ of a written chunk through
``DataClient.read`` (the client library's path: whole blocks with their
CRCs, sent with sendfile, checked here).

Every asyncio benchmark drives its event loop with ``run_until_complete``
once per operation; ``test_loop_run_until_complete_empty`` is that cost
alone, to subtract.

    .venv/bin/python -m pytest benchmarks/ -k dataplane -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

import asyncio
import os
import socket

import msgpack
import pytest

from dfs.common.layout import Layout
from dfs.wire import dataplane as dp

READ_REQ = dp.Header(dp.READ, flags=dp.F_BLOCKS, req_id=12345, ino=0x1234_5678_9ABC, index=7, chain_id=3,
                     chain_version=9, offset=65536, arg=4096, target=2)
READ_BYTES = dp.encode(READ_REQ)
DATA_4K = os.urandom(4096)
WRITE_REQ = dp.Header(dp.WRITE, req_id=12346, ino=0x1234_5678_9ABC, index=7, chain_id=3, chain_version=9,
                      offset=8192, arg=Layout(chunk_size=4 << 20, stripe=1, replicas=1).pack(), target=2)
WRITE_HEADER = dp.decode(dp.encode(WRITE_REQ, DATA_4K))
HELLO_HEADER, HELLO_PAYLOAD = dp.hello("f" * 64)
STAT_PAYLOAD = msgpack.packb([41, 41, 4 << 20, os.urandom(64 * 4)])  # version, committed, length, 64 block CRCs


# ---------------------------------------------------------------------- codec
def test_header_encode_read_request(benchmark):
    assert len(benchmark(dp.encode, READ_REQ)) == dp.HEADER_SIZE


def test_header_decode(benchmark):
    assert benchmark(dp.decode, READ_BYTES) == READ_REQ._replace(length=0, payload_crc=0)


def test_header_encode_write_request_4k(benchmark):
    """Header of a 4 KiB WRITE: the CRC32C of the payload is most of it."""
    benchmark(dp.encode, WRITE_REQ, DATA_4K)


def test_payload_check_4k(benchmark):
    benchmark(dp.check_payload, WRITE_HEADER, DATA_4K)


def test_reply_header(benchmark):
    """A server's reply header to a request, encoded."""
    benchmark(lambda: dp.encode(dp.reply_to(WRITE_HEADER, version=42)))


def test_hello_encode(benchmark):
    benchmark(lambda: dp.encode(*dp.hello("f" * 64)))


def test_hello_parse(benchmark):
    assert benchmark(dp.parse_hello, HELLO_HEADER, HELLO_PAYLOAD) == {"token": "f" * 64}


def test_stat_reply_decode(benchmark):
    benchmark(msgpack.unpackb, STAT_PAYLOAD)


# ---------------------------------------------------------------------- framing over a socketpair
@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def test_loop_run_until_complete_empty(benchmark, loop):
    """The cost every asyncio benchmark here pays once per operation."""
    async def nothing():
        return None

    benchmark(lambda: loop.run_until_complete(nothing()))


def test_frame_socketpair_ping(benchmark, loop):
    """FrameWriter.send + FrameReader.read_frame of a PING over a local socketpair."""
    a, b = socket.socketpair()
    try:
        for s in (a, b):
            s.setblocking(False)

        async def setup():
            return dp.FrameWriter(a), dp.FrameReader(b)

        writer, reader = loop.run_until_complete(setup())
        ping = dp.Header(dp.PING, req_id=1)

        async def one():
            await writer.send(ping)
            return await reader.read_frame()

        h, _ = benchmark(lambda: loop.run_until_complete(one()))
        assert h.op == dp.PING
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------- loopback, real data server
LAYOUT = Layout(chunk_size=1 << 20, stripe=1, replicas=1)
INO = 0x7E57_0000_0001  # no inode of the namespace: the data server does not ask


@pytest.fixture(scope="module")
def data_client(bench_cluster):
    """(loop, DataClient, target id, its address) with one 64 KiB chunk written."""
    from dfs.route.data import DataClient
    from dfs.route.shards import GrpcTransport
    from dfs.testing.caps import trust

    lp = asyncio.new_event_loop()
    tr = dc = None
    try:
        async def setup():
            t = await GrpcTransport(bench_cluster.mgmt_addresses, deadline=30.0,
                                    auth=bench_cluster.credentials).connect()
            dc = DataClient(t.map, t.refresh_map, deadline=30.0, attempt_timeout=10.0)
            trust(dc, bench_cluster.cfg)  # raw chunk I/O: the benchmark signs its own capabilities
            return t, dc

        tr, dc = lp.run_until_complete(setup())
        lp.run_until_complete(dc.write(INO, 0, 0, os.urandom(64 << 10), LAYOUT))
        tid = dc.chain_for(INO, 0, LAYOUT).targets[0]
        yield lp, dc, tid, dc.map.targets[tid].address
    finally:
        if dc is not None:
            lp.run_until_complete(dc.close())
        if tr is not None:
            lp.run_until_complete(tr.close())
        lp.close()


def test_loopback_ping(benchmark, data_client):
    lp, dc, tid, addr = data_client
    h = dp.Header(dp.PING, target=tid)
    rh, _ = benchmark(lambda: lp.run_until_complete(dc.call(addr, h)))
    assert rh.status == 0


def test_loopback_read_4k(benchmark, data_client):
    lp, dc, _, _ = data_client
    got = benchmark(lambda: lp.run_until_complete(dc.read(INO, 0, 4096, 4096, LAYOUT)))
    assert len(got) == 4096
