"""The data-plane frame codec and the socket frame reader/writer."""

from __future__ import annotations

import asyncio
import socket

import pytest

from dfs.common.checksum import crc32c
from dfs.wire import dataplane as dp


def test_header_is_72_bytes():
    assert dp.HEADER_SIZE == 72
    assert len(dp.encode(dp.Header(dp.PING))) == 72


def test_a_frame_of_the_64_byte_format_is_a_protocol_error():
    import struct

    old = struct.pack("<IBBhQQIIIIIQIII", 0x31534644, dp.PING, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    with pytest.raises(dp.ProtocolError):
        dp.decode(old + bytes(8))


def test_round_trip_every_field():
    h = dp.Header(dp.WRITE, flags=dp.F_FORWARD | dp.F_REPLY, status=-5, req_id=2**64 - 1, ino=2**63 + 7,
                  index=2**32 - 1, chain_id=12, chain_version=34, offset=4096, version=2**64 - 2, arg=0xDEADBEEF,
                  target=9, epoch=2**32 - 2, snap=77)
    payload = b"hello world" * 100
    b = dp.encode(h, payload)
    d = dp.decode(b)
    assert d == h._replace(length=len(payload), payload_crc=crc32c(payload))
    dp.check_payload(d, payload)


def test_empty_payload_crc_is_zero():
    d = dp.decode(dp.encode(dp.Header(dp.READ, length=12345)))
    assert d.length == 0 and d.payload_crc == 0
    dp.check_payload(d, b"")


def test_bad_magic():
    b = bytearray(dp.encode(dp.Header(dp.PING)))
    b[0] ^= 0xFF
    with pytest.raises(dp.ProtocolError):
        dp.decode(b)


def test_oversize_length_rejected():
    b = bytearray(dp.encode(dp.Header(dp.PING)))
    dp.HEADER.pack_into(b, 0, dp.MAGIC, dp.WRITE, 0, 0, 1, 0, 0, 0, 0, 0, dp.MAX_PAYLOAD + 1, 0, 0, 0, 0, 0, 0)
    with pytest.raises(dp.ProtocolError):
        dp.decode(b)


def test_bad_payload_crc():
    payload = bytearray(b"x" * 1000)
    d = dp.decode(dp.encode(dp.Header(dp.WRITE), payload))
    payload[500] ^= 1
    with pytest.raises(dp.PayloadChecksumError) as ei:
        dp.check_payload(d, payload)
    assert ei.value.header == d


def test_error_reply_maps_to_errors():
    from dfs.common import errors as err

    h = dp.reply_to(dp.Header(dp.READ, req_id=3), status=5)
    with pytest.raises(err.ChecksumError):
        dp.raise_for(h, b"checksum mismatch in block 2")
    with pytest.raises(err.Stale):
        dp.raise_for(dp.reply_to(h, status=116), b"stale")
    dp.raise_for(dp.reply_to(h, status=0), b"")


def test_socket_reader_writer_pipelined_and_large():
    """Many frames, small and large (> the reader buffer), through a socketpair; a corrupt payload is reported
    without losing the stream."""

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        w = dp.FrameWriter(a)
        r = dp.FrameReader(b, bufsize=4096)
        big = bytes(range(256)) * 5000  # 1.28 MB
        sizes = [0, 1, 100, 4000, 5000, 70000, len(big)] * 3

        async def send():
            for i, n in enumerate(sizes):
                await w.send(dp.Header(dp.WRITE, req_id=i), big[:n])
            # a frame whose payload is corrupted in flight
            hb = bytearray(dp.encode(dp.Header(dp.WRITE, req_id=999), b"abc"))
            await asyncio.get_running_loop().sock_sendall(a, bytes(hb) + b"abd")
            await w.send(dp.Header(dp.PING, req_id=1000))

        st = asyncio.get_running_loop().create_task(send())
        for i, n in enumerate(sizes):
            h, p = await r.read_frame()
            assert h.req_id == i and bytes(p) == big[:n]
        with pytest.raises(dp.PayloadChecksumError):
            await r.read_frame()
        h, p = await r.read_frame()
        assert h.req_id == 1000 and h.op == dp.PING
        await st
        a.close()
        with pytest.raises(ConnectionError):
            await r.read_frame()
        b.close()

    asyncio.run(main())
