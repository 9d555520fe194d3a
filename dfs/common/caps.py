"""Data-plane capabilities: what the metadata service signs and the data servers check.

A data server cannot check permissions: it knows chunks, not paths, owners or
modes. The metadata service can. So, as Lustre, Ceph and 3FS do, the service
checks a client's access where it decides (an open, a truncate, a delegation of
inode ids, a snapshot) and signs a short-lived *capability* for what it
allowed; the client shows it to the data servers, which check the signature,
the expiry and that the request falls within it. A client with only the
cluster token can no longer read or write chunks of files it could not open.

A capability is ``msgpack([VERSION, kind, a, b, rights, expiry_ns]) + mac``
(``mac``: the first 16 bytes of HMAC-SHA256 under ``cap_key(internal
token)``, a key only servers hold):

* ``INODES``: inode ids ``a <= ino < b`` (one file: ``b = a + 1``; a lazy
  session's delegated block: the block) with ``rights`` (``READ``,
  ``WRITE``), on the current data only;
* ``SNAPSHOT``: reads at snapshot ``a`` (every inode; ``b`` = 0).

``expiry_ns`` is the signer's wall clock; a server takes a capability until
``expiry + CLOCK_SKEW_NS`` by its own. The design, its threat model and what
it costs are in docs/design/security.md ("Data-plane capabilities").

Imports: the standard library and msgpack only.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import NamedTuple

import msgpack

__all__ = ["Cap", "CapBook", "CapError", "CapSet", "Signer", "cap_key", "READ", "WRITE", "INODES", "SNAPSHOT"]

VERSION = 1
INODES, SNAPSHOT = 0, 1
READ, WRITE = 1, 2
MAC_BYTES = 16
CAP_MAX = 128                       # the largest capability anyone parses (bytes)
CLOCK_SKEW_NS = 30_000_000_000      # signer and data server clocks may differ this much
DEFAULT_TTL_S = 600.0               # how long a capability lasts ([security] capability_ttl)
CONN_CAPS_MAX = 65536               # capabilities one data-plane connection holds at most
CONN_RANGES_MAX = 256               # ... of them for inode ranges (each request scans these)


class CapError(ValueError):
    """Not a capability this cluster signed, or one that ran out."""


class Cap(NamedTuple):
    kind: int
    a: int
    b: int
    rights: int
    expiry: int  # ns, the signer's wall clock

    def covers(self, ino: int, rights: int, snap: int = 0) -> bool:
        """Whether it allows ``rights`` on ``ino`` (at snapshot ``snap``; 0: the current data)."""
        if snap:
            return self.kind == SNAPSHOT and self.a == snap and rights == READ
        return self.kind == INODES and self.a <= ino < self.b and rights & self.rights == rights


def cap_key(internal_token: str) -> bytes:
    """The signing key: derived from the internal token, so every server has it and no client."""
    return hmac.new(internal_token.encode(), b"dfs data capability v1", hashlib.sha256).digest()


def parse(token: bytes) -> Cap:
    """A capability's content, unchecked (a client reads its own to know what it covers)."""
    if not isinstance(token, bytes | bytearray | memoryview) or not MAC_BYTES < len(token) <= CAP_MAX:
        raise CapError("not a capability")
    try:
        v = msgpack.unpackb(bytes(token[:-MAC_BYTES]))
    except Exception:  # noqa: BLE001 - any garbage is the same refusal
        raise CapError("not a capability") from None
    if (not isinstance(v, list) or len(v) != 6 or v[0] != VERSION
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**64 for x in v)):
        raise CapError("not a capability")
    _, kind, a, b, rights, expiry = v
    if kind not in (INODES, SNAPSHOT) or rights not in (READ, WRITE, READ | WRITE):
        raise CapError("not a capability")
    return Cap(kind, a, b, rights, expiry)


class Signer:
    """Signs and checks capabilities with one cluster's key (metadata and data servers)."""

    def __init__(self, key: bytes, ttl_s: float = DEFAULT_TTL_S, clock=time.time_ns) -> None:
        self.key = key
        self.ttl_ns = int(ttl_s * 1e9)
        self.clock = clock

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self.key, body, hashlib.sha256).digest()[:MAC_BYTES]

    def sign(self, kind: int, a: int, b: int, rights: int) -> bytes:
        body = msgpack.packb([VERSION, kind, a, b, rights, self.clock() + self.ttl_ns])
        return body + self._mac(body)

    def inodes(self, lo: int, hi: int, rights: int) -> bytes:
        return self.sign(INODES, lo, hi, rights)

    def snapshot(self, epoch: int) -> bytes:
        return self.sign(SNAPSHOT, epoch, 0, READ)

    def verify(self, token) -> Cap:
        """The capability, if this cluster signed it and it has not run out; else CapError."""
        cap = parse(token)
        body = bytes(token[:-MAC_BYTES])
        if not hmac.compare_digest(self._mac(body), bytes(token[-MAC_BYTES:])):
            raise CapError("capability not signed by this cluster")
        if cap.expiry + CLOCK_SKEW_NS < self.clock():
            raise CapError("capability expired")
        return cap


def rights_str(rights: int) -> str:
    return ("r" if rights & READ else "") + ("w" if rights & WRITE else "")


class CapSet:
    """The capabilities one data-plane connection has shown (a data server's side), bounded:
    past ``limit`` the oldest go (the client shows them again when told ENOKEY)."""

    def __init__(self, limit: int = CONN_CAPS_MAX) -> None:
        self.limit = limit
        self.one: dict[int, tuple[int, int]] = {}          # ino -> (READ's expiry, WRITE's) of one-file caps
        self.ranges: dict[tuple[int, int, int], int] = {}  # (lo, hi, rights) -> expiry
        self.snaps: dict[int, int] = {}                    # snapshot -> expiry

    def __len__(self) -> int:
        return len(self.one) + len(self.ranges) + len(self.snaps)

    def add(self, cap: Cap) -> None:
        if len(self) >= self.limit:
            self._shed()
        if cap.kind == SNAPSHOT:
            self.snaps[cap.a] = max(cap.expiry, self.snaps.get(cap.a, 0))
        elif cap.b == cap.a + 1:
            r, w = self.one.pop(cap.a, (0, 0))  # (re)inserted last: the oldest go first when shed
            # each right lasts as long as the latest capability that gave it
            self.one[cap.a] = (max(r, cap.expiry) if cap.rights & READ else r,
                               max(w, cap.expiry) if cap.rights & WRITE else w)
        else:
            key = (cap.a, cap.b, cap.rights)
            self.ranges.pop(key, None)
            if len(self.ranges) >= CONN_RANGES_MAX:  # a request scans them: bounded apart
                del self.ranges[next(iter(self.ranges))]
            self.ranges[key] = cap.expiry

    def _shed(self) -> None:
        for d in (self.one, self.ranges, self.snaps):
            for k in list(d)[:max(1, len(d) // 2)]:
                del d[k]

    def allows(self, ino: int, rights: int, snap: int, now: int) -> bool:
        limit = now - CLOCK_SKEW_NS
        if snap:
            return rights == READ and self.snaps.get(snap, 0) >= limit
        one = self.one.get(ino)
        if one is not None and (not rights & READ or one[0] >= limit) and (not rights & WRITE or one[1] >= limit):
            return True
        return any(lo <= ino < hi and r & rights == rights and e >= limit
                   for (lo, hi, r), e in self.ranges.items())


class CapBook:
    """The capabilities a client holds (its DataClient), by what they cover."""

    def __init__(self, limit: int = CONN_CAPS_MAX) -> None:
        self.limit = limit
        self.one: dict[int, list[tuple[Cap, bytes]]] = {}
        self.ranges: list[tuple[Cap, bytes]] = []
        self.snaps: dict[int, tuple[Cap, bytes]] = {}

    def add(self, token: bytes) -> Cap:
        cap = parse(token)
        token = bytes(token)
        if cap.kind == SNAPSHOT:
            self.snaps[cap.a] = (cap, token)
        elif cap.b == cap.a + 1:
            if len(self.one) >= self.limit and cap.a not in self.one:
                for k in list(self.one)[:len(self.one) // 2]:
                    del self.one[k]
            # the newest of each rights kind is enough
            kept = [(c, t) for c, t in self.one.get(cap.a, ()) if c.rights != cap.rights]
            self.one[cap.a] = kept + [(cap, token)]
        else:
            self.ranges = [(c, t) for c, t in self.ranges if (c.a, c.b, c.rights) != (cap.a, cap.b, cap.rights)]
            self.ranges.append((cap, token))
            if len(self.ranges) > CONN_RANGES_MAX:
                self.ranges = self.ranges[-CONN_RANGES_MAX:]
        return cap

    def find(self, ino: int, rights: int, snap: int, fresh_until: int) -> bytes | None:
        """A held capability for the request that lasts beyond ``fresh_until`` (ns), if any."""
        if snap:
            got = self.snaps.get(snap)
            return got[1] if got is not None and got[0].expiry > fresh_until else None
        for c, t in self.one.get(ino, ()):
            if c.rights & rights == rights and c.expiry > fresh_until:
                return t
        for c, t in reversed(self.ranges):
            if c.covers(ino, rights) and c.expiry > fresh_until:
                return t
        return None
