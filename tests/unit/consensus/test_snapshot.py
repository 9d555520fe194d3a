"""SnapshotCodec: pysyncobj's dump as the state machine's checkpoint; the membership of
members.json replacing the dump's at the first load; a damaged dump refused."""

from __future__ import annotations

import os

import pytest
from pysyncobj.node import TCPNode

from dfs.consensus.files import CorruptState
from dfs.consensus.snapshot import SnapshotCodec
from dfs.consensus.testing import CounterSM, add_cmd

LAST, PREV = (b"\x00last", 12, 3), (b"\x00prev", 11, 3)


def dump(tmp_path, startup=lambda: None) -> tuple[SnapshotCodec, str, CounterSM]:
    sm = CounterSM(str(tmp_path / "sm"))
    sm.apply(11, [add_cmd("a"), add_cmd("b")])
    codec = SnapshotCodec(sm, str(tmp_path / "raft"), startup_members=startup)
    path = str(tmp_path / "raft" / "raft.dump")
    codec.serialize(path, (LAST, PREV, {TCPNode("127.0.0.1:1"), TCPNode("127.0.0.1:2")}))
    return codec, path, sm


def test_a_dump_loads_back_and_the_saved_membership_replaces_its_own(tmp_path):
    saved = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    calls = []

    def startup():
        calls.append(1)
        return saved if len(calls) == 1 else None  # asked once, as GroupMembers answers

    codec, path, sm = dump(tmp_path, startup)
    codec.check(path)
    last, prev, nodes = codec.deserialize(path)
    assert (last, prev) == (LAST, PREV)
    assert {n.address for n in nodes} == set(saved)  # members.json, not the compaction's membership
    _, _, nodes = codec.deserialize(path)
    assert {n.address for n in nodes} == {"127.0.0.1:1", "127.0.0.1:2"}
    assert sm.restores == 0  # the state machine is at the dump already
    sm.close()


def test_a_state_machine_behind_the_dump_is_restored_from_it(tmp_path):
    codec, path, sm = dump(tmp_path)
    sm.close()
    import shutil

    shutil.rmtree(tmp_path / "sm")  # what a power cut can leave of unsynced writes: less
    sm2 = CounterSM(str(tmp_path / "sm"))
    codec.sm = sm2
    codec.deserialize(path)
    assert sm2.restores == 1 and sm2.applied_index() == 11 and sm2.counters()["seq"] == 2
    sm2.close()


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a tar"])
def test_a_damaged_dump_is_refused(tmp_path, damage):
    codec, path, sm = dump(tmp_path)
    sm.close()
    size = os.path.getsize(path)
    if damage == "truncated":
        with open(path, "r+b") as f:
            f.truncate(size // 2)
    elif damage == "empty":
        open(path, "wb").close()
    else:
        with open(path, "wb") as f:
            f.write(b"\x80\x04pickle of an old pysyncobj dump" * 100)
    with pytest.raises(CorruptState, match="raft.dump"):
        codec.check(path)
