"""The op registry: every op has one request class and one handler, the generated
protocol table is current, and the wire codec keeps the layout and refuses bad bodies."""

from __future__ import annotations

import pathlib
import stat
import subprocess
import sys

import pytest

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ops import Op
from dfs.common.records import Attr, DirEntry
from dfs.meta.ops import HANDLERS, protocol_markdown

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_every_op_code_has_a_request_and_a_handler():
    assert set(m.REQUESTS) == set(Op)
    assert set(HANDLERS) == set(Op)
    for op, h in HANDLERS.items():
        assert h.request is m.REQUESTS[op] and h.op == op
        assert h.module.startswith("dfs.meta.ops.")
        assert (h.answer is not None) == (h.kind is m.Kind.COORDINATED)


def test_protocol_table_is_current():
    """docs/protocol.md is generated from the registry: regenerate it with scripts/gen_protocol.py."""
    assert (ROOT / "docs" / "protocol.md").read_text() == protocol_markdown()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protocol.py"), "--check"], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()


def test_requests_keep_the_positional_layout():
    # the layouts clients and servers of the earlier, hand-built lists exchanged
    assert m.Create(1, b"a", stat.S_IFREG | 0o644, 0, True, 0, None).to_wire() == \
        [1, b"a", stat.S_IFREG | 0o644, 0, True, 0, None]
    assert m.Create(1, b"a", 0o100644, 0, False, 0o22, None, None, b"h", 30.0).to_wire() == \
        [1, b"a", 0o100644, 0, False, 0o22, None, None, b"h", 30.0]
    assert m.Open(5, b"h", 30.0).to_wire() == [5, b"h", 30.0]
    assert m.Open(5, b"h", 30.0, 4).to_wire() == [5, b"h", 30.0, 4]
    assert m.Renew([m.HandleRef(5, b"h")], 30.0).to_wire() == [[[5, b"h"]], 30.0]
    assert m.Prepare(b"o", 1, [["touch", 5]], []).to_wire() == [b"o", 1, [["touch", 5]], []]
    assert m.Statfs().to_wire() == []
    # optional tails decode to their defaults
    assert m.Getattrs.from_wire([[1, 2]]) == m.Getattrs([1, 2], False)
    assert m.ExpireHandles.from_wire([]) == m.ExpireHandles(1000)


def test_replies_round_trip():
    a = Attr(1, stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, 1, 2, 3, 7, 0)
    r = m.ReaddirReply([DirEntry(b"x", 2, stat.S_IFREG, 9, a), DirEntry(b"y", 3, stat.S_IFREG, 10)], False)
    w = m.to_wire(r)
    assert w == [[[b"x", 2, stat.S_IFREG, 9, list(m.to_wire(a))], [b"y", 3, stat.S_IFREG, 10, None]], False]
    assert m.from_wire(m.ReaddirReply, w) == r
    assert m.to_wire(m.Closed(True)) is True and m.to_wire(m.Done()) is None
    assert m.Getattrs.reply_from_wire([m.to_wire(a), 2]) == m.AttrsReply([a, 2])


@pytest.mark.parametrize("cls,body", [
    (m.Create, [1, "not-bytes"]),  # too few fields
    (m.Getattr, ["x", 1, 2]),  # too many
    (m.Getattr, ["x"]),  # wrong type
    (m.Lookup, [1, "name"]),  # str, not bytes
    (m.Open, [1, b"h", True]),  # a bool is no lease
    (m.Renew, [[[1]], 30.0]),  # a pair of one
    (m.Renew, [[["x", b"h"]], 30.0]),
    (m.WriteInline, [1, [[0, "text"]], 4]),
    (m.Readdir, {"ino": 1}),  # not a list
])
def test_malformed_bodies_are_einval(cls, body):
    with pytest.raises(err.InvalidArgument):
        cls.from_wire(body)


def test_unknown_op_is_einval():
    with pytest.raises(err.InvalidArgument):
        m.request_class(999)


def test_readdir_rows_are_direntries():
    """READDIR builds its rows in DirEntry's wire form by hand (its hot loop): they must
    decode to the DirEntry the client returns."""
    from dfs.meta.store import MetaStore, encode_command
    from dfs.common.records import ROOT

    s = MetaStore(0, 1)
    s.apply(1, [encode_command(Op.CREATE, b"", 5, ROOT, m.Create(1, b"f", stat.S_IFREG | 0o640, 0, True, 0,
                                                                   None).to_wire())])
    reply = m.Readdir.reply_from_wire(s.read(Op.READDIR, ROOT, m.Readdir(1, 0, 10, True).to_wire()))
    (e,) = reply.entries
    assert isinstance(e, DirEntry) and e.name == b"f" and e.type == stat.S_IFREG and reply.eof
    assert e.attr == m.Getattr.reply_from_wire(s.read(Op.GETATTR, ROOT, [e.ino]))


def test_no_key_slicing_or_literal_names_outside_schema():
    """Keys are built and taken apart in dfs/meta/schema.py only; action kinds, lock modes
    and operation states are named (ActionKind, LockMode, OpState), not spelled."""
    import ast

    from dfs.meta.ops.actions import ActionKind
    from dfs.meta.schema import LockMode, OpState

    spelled = {str(v) for e in (ActionKind, LockMode, OpState) for v in e} - {""}
    bad = []
    for f in (ROOT / "dfs" / "meta").rglob("*.py"):
        if f.name == "schema.py":
            continue
        tree = ast.parse(f.read_text())
        allowed: set[int] = set()
        for node in ast.walk(tree):  # the enum definitions themselves
            if isinstance(node, ast.ClassDef) and node.name == "ActionKind":
                allowed |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            where = f"{f.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
                if any(isinstance(b, ast.Constant) for b in (node.slice.lower, node.slice.upper)):
                    bad.append(f"{where} slices with a constant: {ast.unparse(node)}")
            if isinstance(node, ast.Constant) and node.value in spelled and id(node) not in allowed:
                bad.append(f"{where} spells {node.value!r}")
    assert not bad, "\n".join(bad)
