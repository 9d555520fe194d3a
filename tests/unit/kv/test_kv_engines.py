"""One conformance suite for both KV engines and the overlay."""

from __future__ import annotations

import pytest

from dfs.kv import MemoryKV, RocksKV, WriteBatch, prefix_end
from dfs.kv.overlay import Overlay


@pytest.fixture(params=["memory", "rocks"])
def kv(request, tmp_path):
    e = MemoryKV() if request.param == "memory" else RocksKV(str(tmp_path / "db"))
    yield e
    e.close()


def put(kv, **items):
    b = WriteBatch()
    for k, v in items.items():
        b.put(k.encode(), v.encode())
    kv.write(b)


def test_get_put_delete(kv):
    assert kv.get(b"a") is None
    put(kv, a="1", b="2")
    assert kv.get(b"a") == b"1"
    b = WriteBatch()
    b.delete(b"a")
    b.put(b"c", b"3")
    kv.write(b, sync=True)
    assert kv.get(b"a") is None and kv.get(b"c") == b"3"


def test_scan_order_bounds_limit(kv):
    put(kv, a1="x", a2="y", a3="z", b="w")
    assert [k for k, _ in kv.scan(b"a1", b"a3")] == [b"a1", b"a2"]
    assert [k for k, _ in kv.scan_prefix(b"a", limit=2)] == [b"a1", b"a2"]
    assert [k for k, _ in kv.items()] == [b"a1", b"a2", b"a3", b"b"]


def test_binary_keys_sort_bytewise(kv):
    b = WriteBatch()
    for k in (b"\x00", b"\xff\x01", b"\x7f", b"\x80"):
        b.put(k, k)
    kv.write(b)
    assert [k for k, _ in kv.items()] == [b"\x00", b"\x7f", b"\x80", b"\xff\x01"]


def test_checkpoint_is_a_consistent_copy(kv, tmp_path):
    put(kv, a="1")
    cp = str(tmp_path / "cp")
    kv.checkpoint(cp)
    put(kv, a="2")
    copy = type(kv)(cp)
    assert copy.get(b"a") == b"1"
    copy.close()


def test_prefix_end():
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"


def test_overlay_reads_its_writes_and_merges_scans(kv):
    put(kv, a="1", c="3", e="5")
    o = Overlay(kv)
    o.put(b"b", b"2")
    o.delete(b"c")
    o.put(b"e", b"50")
    child = Overlay(o)
    child.put(b"d", b"4")
    child.delete(b"a")
    assert list(child.scan(b"", b"z")) == [(b"b", b"2"), (b"d", b"4"), (b"e", b"50")]
    assert list(o.scan(b"", b"z", limit=2)) == [(b"a", b"1"), (b"b", b"2")]
    assert kv.get(b"c") == b"3", "nothing reaches the engine before flush"
    child.merge_into(o)
    kv.write(o.to_batch())
    assert [k for k, _ in kv.items()] == [b"b", b"d", b"e"]
