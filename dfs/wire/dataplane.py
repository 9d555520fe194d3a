"""The data-plane wire format: fixed 72-byte frame headers + payload, over TCP.

    magic u32 | op u8 | flags u8 | status i16 | req_id u64 | ino u64 | index u32 |
    chain_id u32 | chain_version u32 | offset u32 | length u32 | version u64 |
    payload_crc u32 | arg u32 | target u32 | epoch u32 | snap u32

All little-endian (``struct`` format ``<IBBhQQIIIIIQIIIII``), 72 bytes. ``length``
payload bytes follow; ``payload_crc`` is the CRC32C of the payload (0 for an
empty one) and the receiver checks it. ``status`` is 0 or an errno (or one of
dfs's internal statuses, see ``dfs.common.errors``; they fit an i16 only as
``NEED_INSTALL``, the one the data plane uses); an error reply carries the
message as its UTF-8 payload. ``length`` is always the payload length.
``target`` is the 4 bytes the design left ``reserved``: the target a request
is for (a data server may own several targets, even two of one chain).
``arg`` (the design's ``token``) is a per-op argument: the packed layout for
WRITE/TRUNCATE (the server learns the chunk size from it), the byte count for
READ. ``epoch`` and ``snap`` are for snapshots (docs/design/snapshots.md):
a mutation's ``epoch`` is the data epoch its chain head tagged it with and
``snap`` the newest live snapshot older than that (0: none), so that every
replica keeps a version of epoch ``t <= snap`` before changing it; a READ
with ``F_SNAP`` reads at snapshot ``epoch``; a preserved version in
SYNC_FETCH (``F_SNAP``) and INSTALL (``F_SNAP``) frames is ``(epoch, until =
snap)``. The header grew from 64 bytes for them, and the magic changed with
it (``DFS2``): a server or client of the old format drops the connection at
the first frame (bad magic) instead of misreading it.

Per-op use of the fields is in ``docs/design/data.md`` ("Data plane").

Handshake: a client opens every connection with a HELLO frame (``arg`` = the
handshake version it speaks, ``HELLO_VERSION``; payload = a msgpack map, today
``{"token": <client token>}``). The
server answers HELLO with status 0 (``arg`` = the version it speaks, payload a
msgpack map of what it offers) or, when the token is missing or wrong, with
EACCES and a message, and closes the connection; it reads no request before a
good HELLO when the cluster has a client token. A server without one also takes
a connection that starts with a request. Servers add ``"internal": <internal
token>`` to the map: only such a connection may send the chain's own requests
(``INTERNAL_OPS`` and anything ``F_FORWARD``); a client's is answered EPERM.
A client's chunk requests need a capability (``dfs.common.caps``) shown
earlier on the connection in a CAP frame, which the server takes before it
reads the next frame (``cap_need``: the rights each op needs); without one
the answer is ENOKEY.

Hostile input (docs/design/security.md): a HELLO payload is at most
``HELLO_MAX`` bytes wherever it arrives (the length is checked before a byte
of it is read), ``F_BLOCKCRC`` is a reply's flag only (a server's reader
refuses it: ``FrameReader(replies=False)``), and ``read_frame(admit=...)``
lets a server charge a payload to a budget before its buffer exists.

I/O: **raw non-blocking sockets** driven by the event loop
(``loop.sock_recv_into`` / ``sock.sendmsg``), not asyncio streams. A
``StreamReader`` copies every byte at least twice (into its own buffer, then
into a fresh ``bytes`` per ``readexactly``) and cannot receive into a buffer
we choose; here ``FrameReader`` receives headers and small payloads into one
reused ``bytearray`` (many frames per ``recv`` when they are pipelined) and a
large payload straight into the buffer that is handed to the request's handler
(which has to own it anyway: requests on one connection run concurrently, so a
payload cannot live in a buffer the next frame overwrites). Sends are one
scatter/gather ``sendmsg([header, payload])`` (no concatenation copy), falling
back to ``loop.sock_sendall`` for the rest when the socket buffer is full.
``loop.sock_sendfile`` is available on the same sockets for chunk files.

Imports: dfs.common only.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from typing import NamedTuple

import msgpack

from dfs.common import errors as err
from dfs.common.blocks import BLOCK_SIZE, first_bad_block
from dfs.common.checksum import crc32c

MAGIC = 0x32534644  # b"DFS2" little-endian (DFS1: the 64-byte header before epochs)
HEADER = struct.Struct("<IBBhQQIIIIIQIIIII")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 72

MAX_PAYLOAD = (64 << 20) + (1 << 20)  # a whole 64 MiB chunk plus room for listings
NO_TARGET = 0xFFFFFFFF

# ops
WRITE = 1          # offset, length=len(data), version (forwarded) -> reply version
READ = 2           # offset, length -> payload (<= length bytes; b"" past the end), version
TRUNCATE = 3       # offset = new length, version (forwarded)
REMOVE = 4         # one chunk
REMOVE_INODE = 5   # every chunk of ino on the target; reply offset = chunks removed
STAT = 6           # -> version, offset=committed, length=0, payload = msgpack [version, committed, length, crcs]
SYNC_LIST = 7      # chain_id, cursor (ino, index exclusive start; flags CURSOR) -> msgpack [[ino, index, version, digest]...]
SYNC_FETCH = 8     # (ino, index) -> whole chunk payload, version
INSTALL = 9        # forwarded whole-chunk replace at version (repairs a replica that missed writes)
PING = 10
HELLO = 11         # the first frame of a connection: arg = handshake version, payload = msgpack {"token": ...}
SNAP_HOLD = 12     # version = snapshot S, arg = lease ms: stop admitting client mutations, answer once none is in flight
SNAP_RESUME = 13   # version = the S whose hold ends (0: none), epoch = data epoch, payload = msgpack [live snapshots]
CAP = 14           # payload = a capability (dfs.common.caps) the connection's later requests may use

HELLO_VERSION = 1
HELLO_MAX = 4096   # the largest HELLO payload anyone reads (request or reply)

# The chain's own requests: a data server's successor, resync and the snapshot
# coordinator send them; a client connection (no internal token) gets EPERM.
INTERNAL_OPS = frozenset({INSTALL, SYNC_LIST, SYNC_FETCH, SNAP_HOLD, SNAP_RESUME})

OP_NAMES = {WRITE: "WRITE", READ: "READ", TRUNCATE: "TRUNCATE", REMOVE: "REMOVE", REMOVE_INODE: "REMOVE_INODE",
            STAT: "STAT", SYNC_LIST: "SYNC_LIST", SYNC_FETCH: "SYNC_FETCH", INSTALL: "INSTALL", PING: "PING",
            HELLO: "HELLO", SNAP_HOLD: "SNAP_HOLD", SNAP_RESUME: "SNAP_RESUME", CAP: "CAP"}

# flags
F_REPLY = 0x01      # a reply (req_id matches the request)
F_FORWARD = 0x02    # sent by the chain predecessor: version is assigned, apply it as is
F_MORE = 0x04       # SYNC_LIST reply: more entries after the last one
F_CURSOR = 0x08     # SYNC_LIST request: start after (ino, index)
F_ANY = 0x10        # READ: serve even if not the tail / a write is in flight (repair, tests)
F_BLOCKS = 0x20     # READ request: reply with whole blocks and their stored CRCs (zero-copy send)
F_BLOCKCRC = 0x40   # READ reply: payload = CRCs (arg bytes, one u32 per block) + whole blocks from
                    # offset; payload_crc unused: the reader checks every block (end to end)
F_SNAP = 0x80       # READ: at snapshot ``epoch``; SYNC_FETCH / INSTALL: the preserved version of epoch
                    # ``epoch`` (until = ``snap``), not the current one

# internal status (fits an i16): a forwarded WRITE/TRUNCATE found a version gap;
# the predecessor answers it with an INSTALL of its whole chunk.
NEED_INSTALL = 1001


class Header(NamedTuple):
    op: int
    flags: int = 0
    status: int = 0
    req_id: int = 0
    ino: int = 0
    index: int = 0
    chain_id: int = 0
    chain_version: int = 0
    offset: int = 0
    length: int = 0
    version: int = 0
    payload_crc: int = 0
    arg: int = 0
    target: int = NO_TARGET
    epoch: int = 0
    snap: int = 0

    @property
    def name(self) -> str:
        return OP_NAMES.get(self.op, str(self.op))


class ProtocolError(ConnectionError):
    """The byte stream is not a frame stream (bad magic, absurd length): drop the connection."""


class BlockChecksumError(Exception):
    """A block of an F_BLOCKCRC reply does not match its stored CRC."""

    def __init__(self, header: Header, block: int) -> None:
        super().__init__(f"{header.name} req {header.req_id}: block {block} checksum mismatch")
        self.header = header
        self.block = block


class PayloadChecksumError(Exception):
    """A well-formed frame whose payload does not match its CRC: reply EIO to ``header``."""

    def __init__(self, header: Header) -> None:
        super().__init__(f"{header.name} req {header.req_id}: payload CRC mismatch")
        self.header = header


def encode(h: Header, payload=b"", crc: int | None = None) -> bytes:
    """The header bytes for ``h`` with ``length`` and ``payload_crc`` set from ``payload``.

    ``crc``: the payload's CRC when the caller already has it (a forwarded
    write carries on the CRC it arrived with and was checked against)."""
    n = len(payload)
    if not n:
        crc = 0
    elif crc is None:
        crc = crc32c(payload)
    return HEADER.pack(MAGIC, h.op, h.flags, h.status, h.req_id, h.ino, h.index, h.chain_id, h.chain_version,
                       h.offset, n, h.version, crc, h.arg, h.target, h.epoch, h.snap)


def decode(b) -> Header:
    """Parse ``HEADER_SIZE`` header bytes; ``ProtocolError`` on bad magic or a length over ``MAX_PAYLOAD``."""
    t = HEADER.unpack_from(b)
    if t[0] != MAGIC:
        raise ProtocolError(f"bad magic {t[0]:#x}")
    h = Header(*t[1:])
    if h.length > MAX_PAYLOAD:
        raise ProtocolError(f"payload length {h.length} over {MAX_PAYLOAD}")
    return h


def check_payload(h: Header, payload) -> None:
    if (crc32c(payload) if len(payload) else 0) != h.payload_crc:
        raise PayloadChecksumError(h)


def reply_to(h: Header, *, status: int = 0, version: int | None = None, offset: int | None = None,
             flags: int = 0) -> Header:
    """The reply header to request ``h`` (same ids, F_REPLY)."""
    return h._replace(flags=F_REPLY | flags, status=status, version=h.version if version is None else version,
                      offset=h.offset if offset is None else offset, length=0, payload_crc=0)


def error_payload(e: BaseException) -> bytes:
    msg = e.detail if isinstance(e, err.DfsError) and e.detail else str(e)
    return msg.encode("utf-8", "replace")[:4096]


def status_of(e: BaseException) -> int:
    if isinstance(e, err.DfsError):
        code = e.errno or 5
        return code if code < 32768 else 5
    if isinstance(e, OSError) and e.errno:
        return e.errno
    return 5  # EIO


def raise_for(h: Header, payload) -> None:
    """Raise the ``DfsError`` an error reply stands for (ChecksumError for EIO 'checksum ...')."""
    if not h.status:
        return
    msg = bytes(payload).decode("utf-8", "replace") or None
    if h.status == 5 and msg and "checksum" in msg:
        raise err.ChecksumError(msg)
    raise err.error_for(h.status, msg)


def needs_internal(h: Header) -> bool:
    """Whether request ``h`` is one only servers may send (an internal connection)."""
    return h.op in INTERNAL_OPS or bool(h.flags & F_FORWARD)


_READS = frozenset({READ, STAT})
_WRITES = frozenset({WRITE, TRUNCATE, REMOVE, REMOVE_INODE})


def cap_need(h: Header) -> tuple[int, int] | None:
    """(rights, snapshot) a client's request needs a capability for (``dfs.common.caps``);
    None: it needs none (PING, CAP)."""
    if h.op in _READS:
        return 1, (h.epoch if h.flags & F_SNAP and h.op == READ else 0)
    if h.op in _WRITES:
        return 2, 0
    return None


def hello(token: str | None, internal: str | None = None) -> tuple[Header, bytes]:
    """A HELLO frame (header, payload): a client's (``token``), or a server's (and ``internal``)."""
    d = {"token": token} if token else {}
    if internal:
        d["internal"] = internal
    return Header(HELLO, arg=HELLO_VERSION), msgpack.packb(d)


def parse_hello(h: Header, payload) -> dict:
    """The map of a HELLO frame or reply (``ProtocolError`` if it is not one)."""
    if h.op != HELLO:
        raise ProtocolError(f"expected HELLO, got {h.name}")
    try:
        d = msgpack.unpackb(bytes(payload), raw=False) if len(payload) else {}
    except Exception as e:  # noqa: BLE001 - any garbage is the same protocol error
        raise ProtocolError(f"malformed HELLO: {e}") from None
    if not isinstance(d, dict):
        raise ProtocolError("malformed HELLO: not a map")
    return d


# ---------------------------------------------------------------------- socket I/O
class FrameReader:
    """Reads frames from a non-blocking socket into a reused buffer.

    ``await read_frame()`` -> ``(Header, payload)``: ``payload`` is a memoryview
    the caller owns (small payloads are copied out of the shared buffer, large
    ones are received directly into their own bytearray). Raises
    ``ConnectionError`` at EOF, ``ProtocolError`` on garbage and
    ``PayloadChecksumError`` (the stream stays usable) on a CRC mismatch.

    ``replies``: whether the peer may send ``F_BLOCKCRC`` frames (replies); a
    server's reader says False, and such a frame is a ``ProtocolError``.
    ``bufsize``: a server starts a connection with a small buffer (enough for
    a HELLO) and ``grow``s it once the peer is known.
    """

    SMALL = 64 << 10
    BUFSIZE = 256 << 10

    def __init__(self, sock: socket.socket, bufsize: int = BUFSIZE, *, replies: bool = True) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.replies = replies
        self.buf = bytearray(bufsize)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.small = min(self.SMALL, bufsize // 2)

    def grow(self, bufsize: int = BUFSIZE) -> None:
        """A bigger buffer, keeping what is buffered (frames pipelined behind a HELLO)."""
        if bufsize <= len(self.buf):
            return
        n = self.end - self.start
        buf = bytearray(bufsize)
        buf[:n] = self.view[self.start:self.end]
        self.buf, self.view = buf, memoryview(buf)
        self.start, self.end = 0, n
        self.small = min(self.SMALL, bufsize // 2)

    async def _fill(self, need: int) -> None:
        """Until at least ``need`` bytes are buffered (need <= len(buf))."""
        if self.start + need > len(self.buf):
            n = self.end - self.start
            self.buf[:n] = self.view[self.start:self.end]
            self.start, self.end = 0, n
        while self.end - self.start < need:
            got = await self.loop.sock_recv_into(self.sock, self.view[self.end:])
            if not got:
                raise ConnectionError("connection closed")
            self.end += got

    async def read_frame(self, dest=None, limit: int = MAX_PAYLOAD, admit=None) -> tuple[Header, memoryview]:
        """The next frame. ``dest(header)`` may name a writable buffer that a
        large payload is received into directly (a read straight into the
        caller's memory: no copy after the socket). ``limit``: a longer payload
        is a ``ProtocolError`` (found before any of it is read), as is a HELLO
        over ``HELLO_MAX``. ``admit(header)``: awaited once the header is
        known and before any payload byte is read or buffered for it (a
        server's budget of payload bytes)."""
        await self._fill(HEADER_SIZE)
        h = decode(self.view[self.start:self.start + HEADER_SIZE])
        if h.length > limit:
            raise ProtocolError(f"{h.name}: payload length {h.length} over {limit}")
        if h.op == HELLO and h.length > HELLO_MAX:
            raise ProtocolError(f"HELLO payload length {h.length} over {HELLO_MAX}")
        if h.flags & F_BLOCKCRC and not self.replies:
            raise ProtocolError(f"{h.name}: block CRCs (a reply's flag) in a request")
        if admit is not None:
            await admit(h)
        self.start += HEADER_SIZE
        crcs = b""
        if h.flags & F_BLOCKCRC:
            if h.arg > h.length or h.arg > self.small:
                raise ProtocolError(f"bad block CRC length {h.arg}")
            await self._fill(h.arg)
            crcs = bytes(self.view[self.start:self.start + h.arg])
            self.start += h.arg
            h = h._replace(length=h.length - h.arg)
        n = h.length
        if n == 0:
            payload = memoryview(b"")
        elif n <= self.small:
            await self._fill(n)
            payload = memoryview(bytes(self.view[self.start:self.start + n]))
            self.start += n
        else:
            mv = dest(h) if dest is not None else None
            if mv is None or len(mv) < n:
                mv = memoryview(bytearray(n))
            else:
                mv = mv[:n]
            have = min(n, self.end - self.start)
            mv[:have] = self.view[self.start:self.start + have]
            self.start += have
            pos = have
            while pos < n:
                got = await self.loop.sock_recv_into(self.sock, mv[pos:])
                if not got:
                    raise ConnectionError("connection closed")
                pos += got
            payload = mv
        if self.start == self.end:
            self.start = self.end = 0
        if h.flags & F_BLOCKCRC:
            bad = first_bad_block(payload, crcs, BLOCK_SIZE)
            if bad >= 0:
                raise BlockChecksumError(h, bad)
        else:
            check_payload(h, payload)
        return h, payload


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_writer(fd)


class FrameWriter:
    """Sends frames on a non-blocking socket; one frame at a time (a lock), whole frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()

    async def send_extent(self, h: Header, crcs: bytes, fd: int, offset: int, count: int) -> None:
        """A READ reply of whole blocks straight from a chunk file (``os.sendfile``):
        the header and the blocks' stored CRCs, then ``count`` bytes of ``fd``."""
        hb = HEADER.pack(MAGIC, h.op, h.flags | F_BLOCKCRC, h.status, h.req_id, h.ino, h.index, h.chain_id,
                         h.chain_version, h.offset, len(crcs) + count, h.version, 0, len(crcs), h.target, h.epoch,
                         h.snap)
        async with self.lock:
            await self.loop.sock_sendall(self.sock, hb + crcs)
            sent = 0
            while sent < count:
                try:
                    n = os.sendfile(self.sock.fileno(), fd, offset + sent, count - sent)
                except (BlockingIOError, InterruptedError):
                    await _writable(self.loop, self.sock)
                    continue
                if n == 0:  # the file shrank under us: the frame cannot be completed
                    raise ConnectionError("chunk file ended during sendfile")
                sent += n

    async def send(self, h: Header, payload=b"", crc: int | None = None) -> None:
        hb = encode(h, payload, crc)
        async with self.lock:
            bufs = [hb, payload] if len(payload) else [hb]
            total = sum(len(b) for b in bufs)
            try:
                sent = self.sock.sendmsg(bufs)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent < total:
                if sent < len(hb):
                    await self.loop.sock_sendall(self.sock, hb[sent:])
                    if len(payload):
                        await self.loop.sock_sendall(self.sock, payload)
                else:
                    await self.loop.sock_sendall(self.sock, memoryview(payload)[sent - len(hb):])


def tune(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        except OSError:
            pass
    return sock


def split_address(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


async def open_connection(addr: str, timeout: float = 5.0) -> socket.socket:
    loop = asyncio.get_running_loop()
    host, port = split_address(addr)
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: Exception | None = None
    for family, type_, proto, _, sa in infos:
        s = socket.socket(family, type_, proto)
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, sa), timeout)
        except (OSError, TimeoutError) as e:
            s.close()
            last = e
            continue
        return tune(s)
    raise ConnectionError(f"cannot connect to {addr}: {last}")
