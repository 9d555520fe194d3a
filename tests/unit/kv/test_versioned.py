"""Versioned keys (dfs/kv/versioned.py) against a model: a dict per snapshot.

Random puts, deletes, snapshots taken and deleted, and pruning steps, on the
in-memory engine and on RocksDB, through a write overlay as a state machine
uses it; after every step the head and every live snapshot read exactly what
the model holds, and once every snapshot is gone and pruning has run, no
history is left.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfs.kv import MemoryKV, RocksKV
from dfs.kv.base import prefix_end
from dfs.kv.overlay import Overlay
from dfs.kv.versioned import Epochs, Versioned, escape, tag, unescape, untag

V = b"I"        # the versioned prefix
H = b"V"        # history
U = b"M"        # an unversioned prefix
KEYS = [V + k for k in (b"", b"a", b"a\x00", b"a\x00b", b"ab", b"b", b"\x00", b"\x00\xff", b"z" * 3)] + [U + b"x"]


def view(kv, epochs: Epochs) -> tuple[Overlay, Versioned]:
    ov = Overlay(kv)
    return ov, Versioned(ov, [V], H, epochs)


class Harness:
    def __init__(self, kv) -> None:
        self.kv = kv
        self.epochs = Epochs()
        self.head: dict[bytes, bytes] = {}
        self.snaps: dict[int, dict[bytes, bytes]] = {}
        self.cursor = b""

    def apply(self, fn) -> None:
        """Run ``fn(versioned)`` in one overlay, then write it (one Raft entry)."""
        ov, vv = view(self.kv, self.epochs)
        fn(vv)
        self.kv.write(ov.to_batch())

    def put(self, k: bytes, v: bytes) -> None:
        self.apply(lambda vv: vv.put(k, v))
        self.head[k] = v

    def delete(self, k: bytes) -> None:
        self.apply(lambda vv: vv.delete(k))
        self.head.pop(k, None)

    def take(self) -> int:
        s = self.epochs.epoch
        assert self.epochs.begin(s)
        self.snaps[s] = {k: v for k, v in self.head.items() if k.startswith(V)}
        return s

    def drop(self, s: int) -> None:
        assert self.epochs.end(s)
        del self.snaps[s]

    def prune(self, limit: int) -> None:
        out = []
        self.apply(lambda vv: out.append(vv.prune(self.cursor, limit)))
        self.cursor = out[0][1] or b""

    def check(self) -> None:
        vv = Versioned(self.kv, [V], H, self.epochs)
        for k in KEYS:
            assert vv.get(k) == self.head.get(k), k
        assert list(vv.scan_prefix(V)) == sorted((k, v) for k, v in self.head.items() if k.startswith(V))
        for s, want in self.snaps.items():
            sv = vv.snapshot(s)
            for k in KEYS:
                if k.startswith(V):
                    assert sv.get(k) == want.get(k), (s, k)
            assert list(sv.scan_prefix(V)) == sorted(want.items()), s
            for lo, hi in ((V + b"a", V + b"b"), (V + b"a\x00", prefix_end(V + b"a\x00"))):
                assert list(sv.scan(lo, hi)) == sorted((k, v) for k, v in want.items() if lo <= k < hi)
            assert list(sv.scan_prefix(V, 2)) == sorted(want.items())[:2]

    def history(self) -> list:
        return list(self.kv.scan_prefix(H))


ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.binary(max_size=4)),
    st.tuples(st.just("del"), st.sampled_from(KEYS)),
    st.tuples(st.just("take")),
    st.tuples(st.just("drop"), st.integers(0, 10)),
    st.tuples(st.just("prune"), st.integers(1, 5)),
), max_size=60)


def run(h: Harness, program) -> None:
    for op in program:
        if op[0] == "put":
            h.put(op[1], op[2])
        elif op[0] == "del":
            h.delete(op[1])
        elif op[0] == "take":
            h.take()
        elif op[0] == "drop" and h.snaps:
            h.drop(sorted(h.snaps)[op[1] % len(h.snaps)])
        elif op[0] == "prune":
            h.prune(op[1])
        h.check()
    for s in list(h.snaps):
        h.drop(s)
    for _ in range(200):
        h.prune(7)
        if h.cursor == b"":
            break
    h.prune(10_000)
    assert h.history() == []
    assert not h.epochs.unpruned
    h.check()


@settings(max_examples=300, deadline=None)
@given(ops)
def test_model_memory(program):
    run(Harness(MemoryKV()), program)


@settings(max_examples=40, deadline=None)
@given(ops)
def test_model_rocksdb(tmp_path_factory, program):
    kv = RocksKV(str(tmp_path_factory.mktemp("v")))
    try:
        run(Harness(kv), program)
    finally:
        kv.close()


def test_no_history_without_snapshots():
    h = Harness(MemoryKV())
    for i in range(50):
        h.put(KEYS[i % 5], bytes([i]))
        h.delete(KEYS[(i + 2) % 5])
    assert h.history() == []
    h.check()


def test_history_grows_with_changes_not_with_size():
    h = Harness(MemoryKV())
    for i in range(1000):
        h.put(V + i.to_bytes(4, "big"), b"x")
    h.take()
    assert h.history() == []  # taking a snapshot writes nothing
    for i in range(10):
        h.put(V + i.to_bytes(4, "big"), b"y")
    assert len(h.history()) == 10
    for i in range(10):
        h.put(V + i.to_bytes(4, "big"), b"z")  # same epoch: in place
    assert len(h.history()) == 10
    h.check()


def test_a_delete_after_an_old_snapshot_is_gone_hides_older_history():
    """A snapshot deleted but not pruned yet leaves history; a later delete must still shadow it."""
    h = Harness(MemoryKV())
    k = V + b"k"
    h.put(k, b"1")
    s1 = h.take()
    h.put(k, b"2")       # 1 -> history
    h.drop(s1)           # history of s1 not pruned yet
    h.delete(k)
    h.take()
    h.check()            # the new snapshot sees no k


def test_tags_and_escape_round_trip():
    for e in (0, 1, 127, 128, 300, 1 << 40):
        assert untag(tag(e, b"v")) == (e, b"v")
    for k in (b"", b"\x00", b"\x00\xff", b"a\x00\x00b"):
        assert unescape(escape(k)) == k
        assert b"\x00\x00" not in escape(k)
    ks = sorted([b"a", b"a\x00", b"a\x00\x00", b"a\x01", b"ab", b"\x00", b""])
    assert sorted(ks, key=escape) == ks


def test_snapshot_views_are_read_only():
    h = Harness(MemoryKV())
    h.put(V + b"a", b"1")
    s = h.take()
    with pytest.raises(AssertionError):
        Versioned(Overlay(h.kv), [V], H, h.epochs).snapshot(s).put(V + b"a", b"2")
