"""Versioned keys: the copy-on-write metadata under snapshots (docs/design/snapshots.md).

A store that takes snapshots keeps, for the key prefixes it names, every value
a live snapshot still needs, and nothing else:

* The **head** (what the store reads today) stays at the key itself. Its value
  is prefixed with the *epoch* it was written in (a varint): the number of
  the snapshot the write belongs to. Snapshot ``S`` holds every write tagged
  ``<= S``; after it is taken the store writes at ``S + 1``.
* When a write replaces or deletes a head whose epoch ``t`` is older than the
  current epoch and a live snapshot ``S`` with ``t <= S < epoch`` exists, the
  old value first moves to the **history**: ``<history prefix> escape(key)
  0x00 0x00 ~t`` (newest first per key; ``escape`` doubles 0x00 as 0x00 0xff,
  so the history sorts in the keys' order and a key is never a prefix of
  another's entries). A delete also leaves a tombstone in the history when
  the key has one, so that later snapshots do not see older values again.
* Reading at snapshot ``S``: the head if its epoch is ``<= S``, else the
  newest history entry ``<= S`` (absent for a tombstone or none). Scans merge
  the two streams. Head reads and scans cost a tag strip, nothing more, and a
  store that never took a snapshot writes no history at all.
* Deleting a snapshot makes history entries garbage: ``prune`` removes, in
  bounded steps, every entry no live snapshot reads (an entry is read by ``S``
  when its epoch is ``<= S`` and the next newer version of its key is ``> S``).

``Versioned`` wraps anything with ``get/put/delete/scan`` (a state machine's
write overlay, so that versioning decisions are made per command, at the
epoch of that command, and roll back with it) or, read-only, a ``KV``.
``Epochs`` is the state a store persists: the current epoch and the live
snapshots. This module knows nothing of inodes or shards.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import msgpack

from dfs.kv.base import prefix_end

SEP = b"\x00\x00"
_TOMB = b"\x01"
_VALUE = b"\x00"
_MAX = (1 << 64) - 1


def escape(key: bytes) -> bytes:
    return key.replace(b"\x00", b"\x00\xff")


def unescape(key: bytes) -> bytes:
    return key.replace(b"\x00\xff", b"\x00")


def tag(epoch: int, value: bytes) -> bytes:
    """``value`` as stored at the head: its epoch (LEB128), then the bytes."""
    if epoch < 0x80:
        return bytes((epoch,)) + value
    out = bytearray()
    while True:
        b = epoch & 0x7F
        epoch >>= 7
        if epoch:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out) + value


def untag(stored: bytes) -> tuple[int, bytes]:
    """(epoch, value) of a stored head value."""
    b = stored[0]
    if b < 0x80:
        return b, stored[1:]
    epoch, shift, i = 0, 0, 0
    while True:
        b = stored[i]
        epoch |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return epoch, stored[i:]
        shift += 7


@dataclass
class Epochs:
    """The current write epoch and the live snapshots (each ``< epoch``)."""

    epoch: int = 1
    live: list[int] = field(default_factory=list)  # sorted
    unpruned: bool = False  # a deleted snapshot's history may remain (until a prune pass ends)

    def needed(self, t: int, until: int) -> bool:
        """Whether a value valid from epoch ``t`` until ``until`` (exclusive) is read by a live snapshot."""
        i = bisect.bisect_left(self.live, t)
        return i < len(self.live) and self.live[i] < until

    def begin(self, snapshot: int) -> bool:
        """Snapshot ``snapshot`` is taken: it holds every write so far; writes go on at ``snapshot + 1``.
        False if it is older than the current epoch allows (a repeat)."""
        if snapshot < self.epoch - 1 or snapshot in self.live:
            return False
        bisect.insort(self.live, snapshot)
        self.epoch = max(self.epoch, snapshot + 1)
        return True

    def end(self, snapshot: int) -> bool:
        if snapshot not in self.live:
            return False
        self.live.remove(snapshot)
        self.unpruned = True
        return True

    def history_possible(self) -> bool:
        """Whether any key may have a history (else deletes need not look for one)."""
        return bool(self.live) or self.unpruned

    def pack(self) -> bytes:
        return msgpack.packb([self.epoch, self.live, self.unpruned])

    @classmethod
    def unpack(cls, b: bytes | None) -> Epochs:
        if b is None:
            return cls()
        epoch, live, unpruned = msgpack.unpackb(b)
        return cls(epoch, sorted(live), unpruned)


class Versioned:
    """A view of ``base`` in which the keys under ``prefixes`` are versioned.

    ``at`` None: the head, read-write (writes at ``epochs.epoch``); an int: the
    state snapshot ``at`` holds, read-only."""

    __slots__ = ("at", "base", "epochs", "history", "prefixes")

    def __init__(self, base, prefixes: Iterable[bytes], history: bytes, epochs: Epochs,
                 at: int | None = None) -> None:
        self.base = base
        self.prefixes = tuple(prefixes)
        self.history = history
        self.epochs = epochs
        self.at = at

    def snapshot(self, s: int) -> Versioned:
        return Versioned(self.base, self.prefixes, self.history, self.epochs, s)

    def versioned(self, key: bytes) -> bool:
        return key.startswith(self.prefixes)

    def _hkey(self, key: bytes, epoch: int) -> bytes:
        return self.history + escape(key) + SEP + (_MAX - epoch).to_bytes(8, "big")

    # ------------------------------------------------------------------ reads
    def get(self, key: bytes) -> bytes | None:
        raw = self.base.get(key)
        if not self.versioned(key):
            return raw
        if raw is not None:
            t, v = untag(raw)
            if self.at is None or t <= self.at:
                return v
        if self.at is None:
            return None
        return self._old(key, self.at)

    def _old(self, key: bytes, s: int) -> bytes | None:
        """The newest history value of ``key`` with epoch ``<= s`` (None: none, or a tombstone)."""
        start = self._hkey(key, s)
        end = prefix_end(self.history + escape(key) + SEP)
        for _, v in self.base.scan(start, end, 1):
            return None if v[:1] == _TOMB else v[1:]
        return None

    def scan(self, start: bytes, end: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        if not self._touches_versioned(start, end):
            yield from self.base.scan(start, end, limit)
            return
        if self.at is None:
            for k, raw in self.base.scan(start, end, limit):
                yield k, (untag(raw)[1] if self.versioned(k) else raw)
            return
        yield from self._scan_at(start, end, limit)

    def scan_prefix(self, prefix: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        return self.scan(prefix, prefix_end(prefix), limit)

    def _touches_versioned(self, start: bytes, end: bytes) -> bool:
        return any(p < end and prefix_end(p) > start for p in self.prefixes)

    def _scan_at(self, start: bytes, end: bytes, limit: int | None) -> Iterator[tuple[bytes, bytes]]:
        """Scan at snapshot ``self.at``: the heads written at or before it, merged with the
        newest history entry at or before it of every key whose head is newer or gone."""
        s = self.at
        heads = self.base.scan(start, end)
        hist = self._history_at(start, end, s)
        hk, hv = next(heads, (None, None))
        ok, ov = next(hist, (None, None))
        n = 0
        while hk is not None or ok is not None:
            if limit is not None and n >= limit:
                return
            if ok is None or (hk is not None and hk < ok):
                k, raw = hk, hv
                hk, hv = next(heads, (None, None))
                if not self.versioned(k):
                    n += 1
                    yield k, raw
                    continue
                t, v = untag(raw)
                if t <= s:
                    n += 1
                    yield k, v
                continue
            if hk is not None and hk == ok:
                raw = hv
                hk, hv = next(heads, (None, None))
                t, v = untag(raw)
                k, old = ok, ov
                ok, ov = next(hist, (None, None))
                if t <= s:
                    n += 1
                    yield k, v
                elif old is not None:
                    n += 1
                    yield k, old
                continue
            k, old = ok, ov
            ok, ov = next(hist, (None, None))
            if old is not None:
                n += 1
                yield k, old

    def _history_at(self, start: bytes, end: bytes, s: int) -> Iterator[tuple[bytes, bytes | None]]:
        """(key, value or None for a tombstone) of the newest history entry ``<= s`` of every
        key in ``[start, end)`` that has one, in key order."""
        lo = self.history + escape(start)
        hi = self.history + escape(end) if end < b"\xff" * 64 else prefix_end(self.history)
        cur = None
        for hk, v in self.base.scan(lo, hi):
            body = hk[len(self.history):]
            ek, _, inv = body.rpartition(SEP)
            epoch = _MAX - int.from_bytes(inv, "big")
            if ek == cur or epoch > s:
                continue  # an older entry of a key already answered, or newer than the snapshot
            cur = ek
            key = unescape(ek)
            if start <= key < end:
                yield key, (None if v[:1] == _TOMB else v[1:])

    # ------------------------------------------------------------------ writes (the head only)
    def put(self, key: bytes, value: bytes) -> None:
        if not self.versioned(key):
            self.base.put(key, value)
            return
        self._keep(key, deleting=False)
        self.base.put(key, tag(self.epochs.epoch, value))

    def delete(self, key: bytes) -> None:
        if not self.versioned(key):
            self.base.delete(key)
            return
        if self._keep(key, deleting=True):
            self.base.delete(key)

    def _keep(self, key: bytes, deleting: bool) -> bool:
        """Before the head of ``key`` changes at the current epoch: move its value to the
        history if a live snapshot reads it; when deleting, leave a tombstone over an older
        history. Returns whether a head exists."""
        assert self.at is None, "a snapshot is read-only"
        e = self.epochs
        raw = self.base.get(key)
        pushed = False
        if raw is not None:
            t, v = untag(raw)
            if t < e.epoch and e.needed(t, e.epoch):
                self.base.put(self._hkey(key, t), _VALUE + v)
                pushed = True
        if deleting and (pushed or (e.history_possible() and self._has_history(key))):
            self.base.put(self._hkey(key, e.epoch), _TOMB)
        return raw is not None

    def _has_history(self, key: bytes) -> bool:
        p = self.history + escape(key) + SEP
        return next(iter(self.base.scan(p, prefix_end(p), 1)), None) is not None

    # ------------------------------------------------------------------ pruning
    def prune(self, start: bytes = b"", limit: int = 1000) -> tuple[int, bytes | None]:
        """Remove history entries no live snapshot reads, looking at the entries of up to
        about ``limit`` history entries' keys from history key ``start`` on. Returns
        (entries removed, where to go on, or None at the end). Deterministic: every replica
        given the same calls removes the same keys."""
        assert self.at is None
        lo = max(start, self.history)
        removed = 0
        cur = None
        newer = _MAX  # epoch of the version after the entries of ``cur`` (its head's, or none)
        group: list[tuple[bytes, int, bool]] = []
        for seen, (hk, v) in enumerate(self.base.scan(lo, prefix_end(self.history))):
            ek, _, inv = hk[len(self.history):].rpartition(SEP)
            if ek != cur:
                if group:
                    removed += self._settle(group, newer)
                if seen >= limit:
                    return removed, hk
                cur, group = ek, []
                head = self.base.get(unescape(ek))
                newer = untag(head)[0] if head is not None else _MAX
            group.append((hk, _MAX - int.from_bytes(inv, "big"), v[:1] == _TOMB))
        if group:
            removed += self._settle(group, newer)
        if self.epochs.unpruned and next(iter(self.base.scan(self.history, prefix_end(self.history), 1)),
                                          None) is None:
            self.epochs.unpruned = False  # no history left: deletes need not look for one
        return removed, None

    def _settle(self, group: list[tuple[bytes, int, bool]], newer: int) -> int:
        """Delete the entries of one key (newest first) that no live snapshot reads.
        ``newer``: the head's epoch, or ``_MAX`` when the key has no head: then its newest
        entry is a tombstone that future snapshots read, kept while any older entry is."""
        e = self.epochs
        keep: list[tuple[bytes, bool]] = []
        drop: list[bytes] = []
        nxt = newer
        for i, (hkey, epoch, tomb) in enumerate(group):
            if (i == 0 and newer == _MAX) or e.needed(epoch, nxt):
                keep.append((hkey, tomb))
            else:
                drop.append(hkey)
            nxt = epoch
        # oldest first: tombstones with no value kept under them read as "absent" anyway
        for hkey, tomb in reversed(keep):
            if not tomb:
                break
            drop.append(hkey)
        for hkey in drop:
            self.base.delete(hkey)
        return len(drop)
