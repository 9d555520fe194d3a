"""Fuzz the data plane: a real data server's connection handling (frame reader,
HELLO handshake, request dispatch) against hostile byte streams, with and
without a valid token (docs/design/security.md, "Fuzzing").

One in-process data server (dfs.testing.dataplane) with a client token and a
small payload budget serves every example: a fresh connection gets the
example's bytes, then end-of-file, and its answers are read until the server
closes it. For every example:

* the server answers or closes (no hang) and its replies are replies;
* without a good HELLO nothing is answered but EACCES, and nothing changes;
* after a good client HELLO every request gets an errno or success, the
  chain's own requests never succeed, and the target's files, chunk meta and
  chain index change only if a mutating request succeeded;
* afterwards the server still serves a new connection, no connection is left
  open or half-authenticated, and the payload budget is back to zero (what it
  held never went past its limit, or one request alone).
"""

from __future__ import annotations

import asyncio
import socket

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs.common.checksum import crc32c
from dfs.testing.dataplane import CHAIN, LAYOUT_ARG, TARGET, InProcessDataServer, recv, send
from dfs.testing import fuzz
from dfs.testing.fuzz import LoopThread, fuzz_settings
from dfs.testing.wait import until_async
from dfs.wire import dataplane as dp

pytestmark = pytest.mark.timeout(fuzz.TIMEOUT)

FUZZ = fuzz_settings(30)
BUDGET = 4 << 20
MUTATING = {dp.WRITE, dp.TRUNCATE, dp.REMOVE, dp.REMOVE_INODE, dp.INSTALL, dp.SNAP_HOLD, dp.SNAP_RESUME}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    lt = LoopThread()
    ds = InProcessDataServer(tmp_path_factory.mktemp("fuzz-data"), inflight=BUDGET)
    lt.run(ds.__aenter__())
    # a few chunks to read, truncate and remove
    async def seed():
        s = await ds.client()
        for i in range(3):
            await send(s, *ds.write_frame(10 + i, bytes([i + 1]) * 5000, req_id=i + 1))
            h, _ = await recv(s)
            assert h.status == 0, h
        s.close()
    lt.run(seed())
    try:
        yield lt, ds
    finally:
        lt.run(ds.__aexit__(None, None, None))
        lt.close()


# ---------------------------------------------------------------------- strategies
u8, u16, u32, u64 = (st.integers(0, (1 << b) - 1) for b in (8, 16, 32, 64))
OPS = st.one_of(st.sampled_from(sorted(dp.OP_NAMES)), u8)


@st.composite
def frames(draw, ops=OPS) -> bytes:
    """One frame: a header with any fields (biased towards this server's chain, target and
    layout so that requests get past the first checks) and a payload that may not match it."""
    op = draw(ops)
    payload = draw(st.one_of(st.binary(max_size=300), st.just(b""),
                             st.builds(lambda n, b: bytes([b]) * n, st.integers(0, 200_000), u8)))
    if op in (dp.HELLO, dp.SNAP_RESUME, dp.STAT) and draw(st.booleans()):
        payload = msgpack.packb(draw(st.one_of(
            st.dictionaries(st.sampled_from(["token", "internal", "x"]),
                            st.one_of(st.text(max_size=50), st.binary(max_size=50), st.integers(), st.none())),
            st.lists(st.integers(-2, 1 << 40), max_size=5))))
    h = dp.Header(
        op=op, flags=draw(st.one_of(st.just(0), u8)), status=draw(st.integers(-32768, 32767)),
        req_id=draw(u64), ino=draw(st.one_of(st.integers(9, 14), u64)), index=draw(st.one_of(st.just(0), u32)),
        chain_id=draw(st.one_of(st.just(CHAIN), u32)), chain_version=draw(st.one_of(st.just(1), u32)),
        offset=draw(st.one_of(st.integers(0, 10_000), u32)), length=len(payload),
        version=draw(st.one_of(st.integers(0, 5), u64)), payload_crc=0,
        arg=draw(st.one_of(st.just(LAYOUT_ARG), st.integers(0, 10_000), u32)),
        target=draw(st.one_of(st.just(TARGET), u32)), epoch=draw(st.one_of(st.just(0), u32)),
        snap=draw(st.one_of(st.just(0), u32)))
    lie = draw(st.sampled_from(["none", "none", "none", "length", "crc", "magic", "huge"]))
    crc = crc32c(payload) if payload else 0
    if lie == "crc":
        crc ^= draw(st.integers(1, (1 << 32) - 1))
    if lie == "length":
        h = h._replace(length=draw(u32) % (dp.MAX_PAYLOAD + 1))
    if lie == "huge":
        h = h._replace(length=draw(st.integers(dp.MAX_PAYLOAD - 10, (1 << 32) - 1)))
    raw = dp.HEADER.pack(dp.MAGIC if lie != "magic" else draw(u32), h.op, h.flags, h.status, h.req_id, h.ino,
                         h.index, h.chain_id, h.chain_version, h.offset, h.length, h.version, crc, h.arg,
                         h.target, h.epoch, h.snap)
    return raw + payload


def _hello(d: dict, flags: int = 0, arg: int = dp.HELLO_VERSION) -> bytes:
    p = msgpack.packb(d)
    return dp.encode(dp.Header(dp.HELLO, flags=flags, arg=arg), p) + p


# ---------------------------------------------------------------------- one example
async def run_example(ds: InProcessDataServer, data: bytes) -> tuple[list[dp.Header], bool]:
    """(replies, state unchanged?) of one example, once the server is quiet again."""
    before = ds.snapshot()
    s = await ds.connect()
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(s, data)
    except OSError:
        pass  # closed by the server part way: what it answered is still read below
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    got: list[dp.Header] = []
    try:
        while (f := await recv(s)) is not None:
            got.append(f[0])
    finally:
        s.close()
    srv = ds.server
    await until_async(lambda: len(srv._conns) == 0 and srv.inflight == 0, 30, "the connection to end")
    assert srv._preauth == 0 and srv.budget.used == 0 and not srv.budget.waiting
    # nothing held past the budget (a request bigger than all of it is let in alone)
    assert srv.budget.peak <= max(BUDGET, dp.MAX_PAYLOAD * 2)
    # the server still serves
    c = await ds.client()
    await send(c, dp.Header(dp.PING, req_id=99, target=TARGET))
    h, _ = await recv(c)
    assert h.status == 0 and h.req_id == 99
    c.close()
    await until_async(lambda: len(srv._conns) == 0, 30, "the check's connection to end")
    return got, ds.snapshot() == before


def check(got: list[dp.Header], unchanged: bool, authed: bool) -> None:
    for h in got:
        assert h.flags & dp.F_REPLY, h
    if not authed:
        assert all(h.op == dp.HELLO and h.status != 0 for h in got), got
        assert unchanged
        return
    ok = [h for h in got if h.status == 0 and h.op != dp.HELLO]
    assert not [h for h in ok if h.op in dp.INTERNAL_OPS or h.flags & dp.F_FORWARD], ok
    if not any(h.op in MUTATING for h in ok):
        assert unchanged, got


# ---------------------------------------------------------------------- tests
@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes(server, data):
    lt, ds = server
    got, unchanged = lt.run(run_example(ds, data))
    check(got, unchanged, authed=False)


@FUZZ
@given(body=st.lists(frames(), max_size=4), first=st.sampled_from(["none", "bad-token", "no-token", "blockcrc",
                                                                    "oversized", "bad-internal", "not-a-map"]))
def test_frames_without_a_valid_token(server, first, body):
    lt, ds = server
    lead = {"none": b"", "bad-token": _hello({"token": "x" * 40}), "no-token": _hello({}),
            "blockcrc": _hello({"token": ds.cfg.client_token}, flags=dp.F_BLOCKCRC, arg=4),
            "oversized": _hello({"token": ds.cfg.client_token, "x": "y" * dp.HELLO_MAX}),
            "bad-internal": _hello({"token": ds.cfg.client_token, "internal": "z" * 64}),
            "not-a-map": dp.encode(dp.Header(dp.HELLO, arg=1), b"\x93\x01\x02\x03") + b"\x93\x01\x02\x03"}[first]
    got, unchanged = lt.run(run_example(ds, lead + b"".join(body)))
    check(got, unchanged, authed=False)


@FUZZ
@given(body=st.lists(frames(), min_size=1, max_size=6), tail=st.binary(max_size=100))
def test_frames_after_a_client_hello(server, body, tail):
    lt, ds = server
    got, unchanged = lt.run(run_example(ds, _hello({"token": ds.cfg.client_token}) + b"".join(body) + tail))
    assert got and got[0].op == dp.HELLO and got[0].status == 0
    check(got, unchanged, authed=True)
