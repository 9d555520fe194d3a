"""The recorder's operations as the ``Files`` model's events (dfs.stress.history), and
their files' round trip."""

from __future__ import annotations

from dfs.stress.history import Op, check, dump, events, load

V1, V2 = b"a" * 16, b"b" * 16


def test_events_of_each_kind():
    put = Op(1, 0, 0, "put", ("d0/n0", V1), 1.0, 2.0, 3.0)
    assert [c.input[0] for c in events(put)] == ["open_w", "write"]
    assert (events(put)[0].ret, events(put)[1].call) == (2.0, 2.0)
    failed_open = Op(2, 0, 0, "put", ("d0/n0", V1), 1.0, None, None, None, "Unavailable")
    assert [(c.input[0], c.ret) for c in events(failed_open)] == [("open_w", None)]  # it may have created it
    assert events(Op(3, 0, 0, "get", ("d0/n0",), 1.0, None, None, None, "Unavailable")) == []
    assert [c.output for c in events(Op(4, 0, 0, "get", ("d0/n0",), 1.0, None, 2.0, "ENOENT"))] == ["ENOENT"]
    assert [c.input[0] for c in events(Op(5, 0, 0, "stat", ("d0/n0",), 1.0, None, 2.0, 16))] == ["open_r", "size"]
    assert events(Op(6, 0, 0, "rename", ("d0/n0", "d1/n0"), 1.0, None, 2.0, None))[0].input == \
        ("rename", "d0/n0", "d1/n0")


def test_check_accepts_a_legal_history_and_rejects_a_stale_read():
    ops = [Op(1, 0, 0, "put", ("d0/n0", V1), 1.0, 1.5, 2.0),
           Op(2, 1, 0, "put", ("d0/n0", V2), 3.0, 3.5, 4.0),
           Op(3, 0, 0, "get", ("d0/n0",), 5.0, 5.5, 6.0, V2),
           Op(4, 1, 0, "rename", ("d0/n0", "d1/n1"), 7.0, None, 8.0, None),
           Op(5, 0, 0, "ls", ("d1",), 9.0, None, 10.0, ("n1",))]
    assert check(ops).ok
    stale = ops[:2] + [Op(3, 0, 0, "get", ("d0/n0",), 5.0, 5.5, 6.0, V1)]
    assert not check(stale).ok
    assert load(dump(ops)) == ops
