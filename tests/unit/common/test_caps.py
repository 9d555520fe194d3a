"""Data-plane capabilities (dfs.common.caps): signing, checking, the sets a data server keeps
per connection and the book a client keeps."""

from __future__ import annotations

import pytest

from dfs.common import caps as C

KEY = C.cap_key("an internal token for the tests")
S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * S

    def __call__(self) -> int:
        return self.now


def test_a_signed_capability_checks_and_says_what_it_covers():
    clock = Clock()
    s = C.Signer(KEY, ttl_s=60, clock=clock)
    cap = s.verify(s.inodes(10, 11, C.READ))
    assert cap == C.Cap(C.INODES, 10, 11, C.READ, clock.now + 60 * S)
    assert cap.covers(10, C.READ) and not cap.covers(10, C.WRITE) and not cap.covers(11, C.READ)
    assert not cap.covers(10, C.READ, snap=5)
    snap = s.verify(s.snapshot(5))
    assert snap.covers(99, C.READ, snap=5) and not snap.covers(99, C.READ) and not snap.covers(99, C.READ, 6)
    rng = s.verify(s.inodes(1024, 2048, C.READ | C.WRITE))
    assert rng.covers(2047, C.READ | C.WRITE) and not rng.covers(2048, C.READ)


def test_a_capability_of_another_key_altered_run_out_or_garbage_is_refused():
    clock = Clock()
    s = C.Signer(KEY, ttl_s=60, clock=clock)
    other = C.Signer(C.cap_key("another cluster's token"), clock=clock)
    with pytest.raises(C.CapError, match="not signed"):
        s.verify(other.inodes(1, 2, C.READ))
    tok = bytearray(s.inodes(1, 2, C.READ))
    tok[3] ^= 1  # the inode or the rights changed after signing
    with pytest.raises(C.CapError):
        s.verify(bytes(tok))
    tok = s.inodes(1, 2, C.READ)
    clock.now += 60 * S + C.CLOCK_SKEW_NS  # the last instant it is taken
    s.verify(tok)
    clock.now += 1
    with pytest.raises(C.CapError, match="expired"):
        s.verify(tok)
    for junk in (b"", b"x" * 17, b"\x00" * 40, b"y" * (C.CAP_MAX + 1), "text", None):
        with pytest.raises(C.CapError):
            s.verify(junk)


def test_a_connection_set_allows_only_what_was_shown_and_is_bounded():
    clock = Clock()
    s = C.Signer(KEY, ttl_s=60, clock=clock)
    cs = C.CapSet(limit=8)
    now = clock.now
    assert not cs.allows(5, C.READ, 0, now)
    cs.add(s.verify(s.inodes(5, 6, C.READ)))
    assert cs.allows(5, C.READ, 0, now) and not cs.allows(5, C.WRITE, 0, now) and not cs.allows(6, C.READ, 0, now)
    clock.now += 10 * S
    cs.add(s.verify(s.inodes(5, 6, C.WRITE)))  # rights add up, each until its own capability runs out
    assert cs.allows(5, C.READ | C.WRITE, 0, now)
    late = now + 60 * S + C.CLOCK_SKEW_NS + 5 * S  # READ's ran out, WRITE's (10 s younger) not
    assert cs.allows(5, C.WRITE, 0, late) and not cs.allows(5, C.READ, 0, late)
    clock.now = now
    cs.add(s.verify(s.inodes(1024, 2048, C.READ | C.WRITE)))
    assert cs.allows(1500, C.WRITE, 0, now) and not cs.allows(2048, C.WRITE, 0, now)
    cs.add(s.verify(s.snapshot(7)))
    assert cs.allows(123, C.READ, 7, now) and not cs.allows(123, C.READ, 8, now)
    assert not cs.allows(5, C.READ, 8, now)  # a file's capability reads no snapshot
    assert not cs.allows(5, C.READ, 0, now + 61 * S + C.CLOCK_SKEW_NS)  # run out
    for i in range(100):  # never more than the limit: the oldest go
        cs.add(s.verify(s.inodes(10_000 + i, 10_001 + i, C.READ)))
        assert len(cs) <= 8
    assert cs.allows(10_099, C.READ, 0, now)
    # ranges, which every request scans, are bounded on their own: the oldest go
    big = C.CapSet()
    for i in range(C.CONN_RANGES_MAX + 10):
        big.add(s.verify(s.inodes(i * 1024, (i + 1) * 1024, C.WRITE)))
    assert len(big.ranges) == C.CONN_RANGES_MAX
    assert not big.allows(5, C.WRITE, 0, now) and big.allows((C.CONN_RANGES_MAX + 9) * 1024, C.WRITE, 0, now)


def test_the_client_book_finds_a_capability_that_covers_a_request():
    clock = Clock()
    s = C.Signer(KEY, ttl_s=60, clock=clock)
    book, small = C.CapBook(), C.CapBook(limit=4)
    now = clock.now
    assert book.find(5, C.READ, 0, now) is None
    r = s.inodes(5, 6, C.READ)
    book.add(r)
    assert book.find(5, C.READ, 0, now) == r and book.find(5, C.WRITE, 0, now) is None
    rw = s.inodes(5, 6, C.READ | C.WRITE)
    book.add(rw)
    assert book.find(5, C.WRITE, 0, now) == rw
    blk = s.inodes(2048, 3072, C.READ | C.WRITE)
    book.add(blk)
    assert book.find(3000, C.WRITE, 0, now) == blk and book.find(3072, C.WRITE, 0, now) is None
    sn = s.snapshot(9)
    book.add(sn)
    assert book.find(1, C.READ, 9, now) == sn and book.find(1, C.READ, 8, now) is None
    assert book.find(5, C.READ, 0, now + 61 * S) is None  # run out by the client's clock: ask anew
    for i in range(10, 10 + 3 * 4):  # bounded: past the limit, half the one-file ones go
        small.add(s.inodes(i, i + 1, C.READ))
        assert len(small.one) <= 4
    with pytest.raises(C.CapError):
        book.add(b"garbage that is long enough")
