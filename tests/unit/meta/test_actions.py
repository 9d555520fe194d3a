"""Typed 2PC actions and operation records keep the wire and record formats they replace."""

from __future__ import annotations

import stat

import msgpack
import pytest

from dfs.common import errors as err
from dfs.meta.ops import actions as A
from dfs.meta.schema import LOCK_RENAME, LockMode, OpRecord, OpState, lock_key_inode


def test_actions_travel_as_kind_and_fields():
    acts = [A.DirUsable(1, 3), A.PutEntry(1, b"n", 0, stat.S_IFDIR, 0), A.LinkCount(7, -1, False),
            A.MakeDir(0, 0o755, 1, 2, 1, 5, 2), A.RenameLock(4)]
    wire = A.encode(acts)
    assert wire == [["dir", 1, 3], ["dput", 1, b"n", 0, stat.S_IFDIR, 0], ["nlink", 7, -1, False],
                    ["mkdir", 0, 0o755, 1, 2, 1, 5, 2], ["renlock", 4]]
    assert A.decode(wire) == acts
    # a mkdir action of the first format, without layout and flags
    assert A.decode([["mkdir", 0, 0o755, 1, 2, 1]]) == [A.MakeDir(0, 0o755, 1, 2, 1)]
    assert A.PutEntry(1, b"n", 0, stat.S_IFDIR, 0).fill(9) == A.PutEntry(1, b"n", 9, stat.S_IFDIR, 0)


@pytest.mark.parametrize("wire", [[["bogus", 1]], [[]], ["dput"], [["dput", 1, "name", 0, 0, 0]], [["touch"]]])
def test_malformed_actions_are_einval(wire):
    with pytest.raises(err.InvalidArgument):
        A.decode(wire)


def test_op_record_keeps_its_map_format():
    locks = [(lock_key_inode(5), LockMode.EXCLUSIVE), (LOCK_RENAME, LockMode.EXCLUSIVE)]
    rec = OpRecord(2, [["touch", 5]], 123, OpState.PREPARED, [0], {"op_id": b"o"}, locks, b"rid", [0, 1])
    raw = msgpack.unpackb(rec.pack(), raw=False)
    assert raw == {"c": 2, "a": [["touch", 5]], "t": 123, "s": "P", "res": [0], "st": {"op_id": b"o"},
                   "l": [[lock_key_inode(5), "X"], [LOCK_RENAME, "X"]], "rid": b"rid", "parts": [0, 1]}
    back = OpRecord.unpack(rec.pack())
    assert back == rec and back.is_coordinator and back.state is OpState.PREPARED
    # a participant's record has no parts; a decided one carries the reply
    part = OpRecord.unpack(msgpack.packb({"c": 0, "a": [], "t": 1, "s": "C", "res": [0], "st": {}, "l": [],
                                          "rid": b"", "reply": None}))
    assert not part.is_coordinator and part.state is OpState.COMMITTED and part.has_reply
