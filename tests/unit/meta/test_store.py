"""MetaStore as a state machine: determinism, exactly-once, idempotency, snapshots."""

from __future__ import annotations

import stat

from dfs.common.ops import Op
from dfs.common.records import ROOT
from dfs.meta.store import MetaStore, encode_command, unpackb


def create(name: bytes, rid: bytes = b"", ts: int = 1000) -> bytes:
    return encode_command(Op.CREATE, rid, ts, ROOT, [1, name, stat.S_IFREG | 0o644, 0, True, 0, None])


def test_applied_index_is_stored_with_the_effects(tmp_path):
    s = MetaStore(0, 1, str(tmp_path / "db"))
    s.apply(1, [create(b"a"), create(b"b")])
    assert s.applied_index() == 1
    s.close()
    s2 = MetaStore(0, 1, str(tmp_path / "db"))
    assert s2.applied_index() == 1
    assert [e for e in s2.read(Op.READDIR, ROOT, [1, 0, 100, False])[0]].__len__() == 2
    s2.close()


def test_same_entries_same_state_on_every_replica():
    a, b = MetaStore(0, 1), MetaStore(0, 1)
    entries = [[create(f"f{i}".encode(), ts=1000 + i) for i in range(j, j + 5)] for j in range(0, 50, 5)]
    entries.append([encode_command(Op.SETATTR, b"", 99, ROOT, [1, 1, 0o700, 0, 0, 0, 0, 0])])
    for i, e in enumerate(entries, 1):
        assert a.apply(i, e) == b.apply(i, e)
    assert list(a.kv.items()) == list(b.kv.items())


def test_failed_command_leaves_no_trace_and_does_not_stop_the_entry():
    s = MetaStore(0, 1)
    before = list(s.kv.items())
    res = s.apply(1, [create(b"x" * 300), create(b"ok")])
    assert unpackb(res[0])[0] == 36 and unpackb(res[1])[0] == 0
    names = [r[0] for r in s.read(Op.READDIR, ROOT, [1, 0, 100, False])[0]]
    assert names == [b"ok"]
    assert len(list(s.kv.items())) > len(before)


def test_request_id_answers_retries_from_the_record():
    s = MetaStore(0, 1)
    r1 = s.apply(1, [create(b"f", rid=b"R1")])
    r2 = s.apply(2, [create(b"f", rid=b"R1")])  # a retry: same answer, not EEXIST
    assert r1 == r2
    r3 = s.apply(3, [create(b"f", rid=b"R2")])  # a new request: EEXIST
    assert unpackb(r3[0])[0] == 17


def test_malformed_command_gets_einval():
    s = MetaStore(0, 1)
    assert unpackb(s.apply(1, [b"\xc1garbage"])[0])[0] == 22
    assert unpackb(s.apply(2, [encode_command(Op.CREATE, b"", 1, ROOT, ["x"])])[0])[0] == 22
    assert unpackb(s.apply(3, [encode_command(999, b"", 1, ROOT, [])])[0])[0] == 22


def test_snapshot_restore_round_trip(tmp_path):
    a = MetaStore(0, 1, str(tmp_path / "a"))
    a.apply(1, [create(f"f{i}".encode()) for i in range(20)])
    a.snapshot(str(tmp_path / "snap"))
    b = MetaStore(0, 1, str(tmp_path / "b"))
    b.restore(str(tmp_path / "snap"))
    assert b.applied_index() == 1
    assert list(a.kv.items()) == list(b.kv.items())
    b.close()
    b2 = MetaStore(0, 1, str(tmp_path / "b"))  # the restored generation survives a restart
    assert list(a.kv.items()) == list(b2.kv.items())
    a.close()
    b2.close()


def test_idempotency_pruning_resumes_where_it_stopped_and_stays_deterministic(tmp_path):
    """Expired request records are pruned oldest first, PRUNE_PER_ENTRY per entry, from a
    cursor kept in memory (no walk over the tombstones of earlier prunes). A replica that
    restarts (no cursor) and one that kept running prune exactly the same keys, also when a
    new leader's clock stamps records older than the cursor."""
    from dfs.meta import schema as S
    from dfs.meta.store import IDEMPOTENCY_TTL_NS, PRUNE_PER_ENTRY

    ttl = IDEMPOTENCY_TTL_NS
    a = MetaStore(0, 1)
    b = MetaStore(0, 1, str(tmp_path / "b"))
    n = 3 * PRUNE_PER_ENTRY
    entries = [[create(f"f{i}".encode(), rid=i.to_bytes(16, "big"), ts=1000 + i)] for i in range(n)]
    # later entries expire the early records, a batch per entry; one is stamped in the past
    entries += [[create(f"g{i}".encode(), rid=(10**6 + i).to_bytes(16, "big"), ts=ttl + 1000 + 40 * i)]
                for i in range(6)]
    entries.insert(n + 2, [create(b"late", rid=(10**7).to_bytes(16, "big"), ts=1010)])
    for i, e in enumerate(entries, 1):
        assert a.apply(i, e) == b.apply(i, e)
        if i == n + 2:  # b restarts after the first prune: its cursor is gone, a's is not
            b.close()
            b = MetaStore(0, 1, str(tmp_path / "b"))
    assert list(a.kv.items()) == list(b.kv.items())
    left = [k for k, _ in a.kv.scan_prefix(S.P_EXPIRY)]
    assert len(left) < n and S.P_EXPIRY + S.u64(1010) + (10**7).to_bytes(16, "big") not in left
    b.close()


def test_inode_records_of_every_format_read_back():
    """Records written before the layout field and before the data version read as 0 there."""
    from dfs.meta.schema import Inode

    i = Inode(7, 0o100644, 1, 1000, 1000, 0, 5, 1, 2, 3, 0, 2, 0x16000403, dver=9)
    back = Inode.unpack(i.pack())
    assert (back.layout, back.dver, back.flags) == (0x16000403, 9, 2)
    assert back.wire()[-1] == 9 and len(back.wire()) == 13
    v2 = Inode._S_V2.pack(7, 0o100644, 1, 1000, 1000, 0, 5, 1, 2, 3, 0, 2, 0x16000403)
    assert (Inode.unpack(v2).layout, Inode.unpack(v2).dver) == (0x16000403, 0)
    assert len(Inode.unpack(v2).wire()) == 12  # no version: the Attr on the wire as before
    v1 = Inode._S_V1.pack(7, 0o100644, 1, 1000, 1000, 0, 5, 1, 2, 3, 0, 2)
    assert (Inode.unpack(v1).layout, Inode.unpack(v1).dver) == (0, 0)
