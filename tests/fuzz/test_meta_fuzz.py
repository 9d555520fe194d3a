"""Fuzz the metadata edge: a shard's MetaService (Execute, ExecuteBatch) behind the
production gRPC options and token check, and the op decoder under it
(dfs.common.wire codecs of every registered request class), with and without
a valid token (docs/design/security.md, "Fuzzing").

One in-process shard (a MetaStore behind a DirectLog, as dfs.meta.local) with a
small tree serves every example over loopback gRPC. For every example:

* without the client token: UNAUTHENTICATED, whatever the bytes, and nothing changes;
* with it: a well-formed call is answered with status 0 or an errno (never a
  bug's EIO: no error is logged), internal operations are EPERM without the
  internal token, and a call that fails changes nothing in the store;
* garbage request bytes end the call (a gRPC error), never the server;
* the decoder: any wire list either decodes to the request or raises
  InvalidArgument (EINVAL), for every request class.
"""

from __future__ import annotations

import errno
import typing

import grpc
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common import messages
from dfs.common.config import ClusterConfig, ReplicaAddr, ShardConfig
from dfs.common.ids import ROOT_INO
from dfs.common.wire import from_wire
from dfs.meta.local import LocalEngine
from dfs.meta.schema import K_APPLIED, P_EXPIRY, P_REQUEST
from dfs.meta.server import MetaServicer
from dfs.testing import fuzz
from dfs.testing.fuzz import ErrorLog, GrpcEdge, fuzz_settings, serving
from dfs.testing.keys import raft_password, raft_salt

pytestmark = pytest.mark.timeout(fuzz.TIMEOUT)

FUZZ = fuzz_settings(40)
EXECUTE, BATCH = "/dfs.v1.MetaService/Execute", "/dfs.v1.MetaService/ExecuteBatch"


class Shard:
    def __init__(self) -> None:
        r = ReplicaAddr(0, "127.0.0.1:1", "127.0.0.1:2")
        self.cfg = ClusterConfig("fuzz", raft_password(), (r,), (ShardConfig(0, (r,)),), raft_salt=raft_salt(),
                                 client_token="t" + raft_salt())
        self.inos: list[int] = [ROOT_INO]
        self.names: list[str] = []

    async def start(self) -> Shard:
        self.engine = LocalEngine(1)
        self.svc = self.engine.services[0]
        self.servicer = MetaServicer(self.svc, self.svc.log, self.cfg, 0, 0)
        self.edge = await GrpcEdge.start(self.cfg, lambda s: pbg.add_MetaServiceServicer_to_server(self.servicer, s))
        m = MetaClient(self.engine)
        d = await m.mkdir(ROOT_INO, "d")
        self.inos.append(d.ino)
        for name in ("a", "b"):
            f, _ = await m.create(d.ino, name)
            self.inos.append(f.ino)
            self.names.append(name)
        self.names.append("d")
        return self

    def state(self) -> list:
        return [(k, v) for k, v in self.svc.store.kv.items() if k != K_APPLIED]


@pytest.fixture(scope="module")
def shard():
    """(the loop thread, the shard, the errors it logs)."""
    with serving(Shard().start()) as x:
        yield x


# ---------------------------------------------------------------------- strategies
def ints(s: Shard):
    return st.one_of(st.sampled_from(s.inos), st.integers(0, 5), st.integers(-(1 << 63), (1 << 64) - 1))


def leaf(s: Shard):
    return st.one_of(ints(s), st.sampled_from(s.names), st.text(max_size=20), st.binary(max_size=20), st.none(),
                     st.booleans(), st.floats(allow_nan=True))


def value_for(tp, s: Shard, depth: int = 0):
    """Mostly a value of annotation ``tp`` (this shard's inodes and names among them), sometimes not."""
    wrong = st.recursive(leaf(s), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c,
                                                                                        max_size=2), max_leaves=5)
    if depth > 3:
        return wrong
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is int:
        right = ints(s)
    elif tp is bool:
        right = st.booleans() | st.integers(0, 1)
    elif tp is float:
        right = st.floats(allow_nan=True) | st.integers(-5, 5)
    elif tp is str:
        right = st.sampled_from(s.names) | st.text(max_size=300)
    elif tp is bytes:
        right = st.sampled_from([n.encode() for n in s.names]) | st.binary(max_size=300)
    elif origin is list:
        right = st.lists(value_for(args[0] if args else typing.Any, s, depth + 1), max_size=4)
    elif args and origin is not None:  # a union
        right = st.one_of(*(st.none() if a is type(None) else value_for(a, s, depth + 1) for a in args))
    elif isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        right = args_for(tp, s, depth + 1)
    else:
        right = wrong
    return st.one_of(right, right, right, wrong)


def args_for(cls, s: Shard, depth: int = 0):
    hints = typing.get_type_hints(cls)
    fields = list(cls.__dataclass_fields__)
    shaped = st.tuples(*(value_for(hints[f], s, depth) for f in fields)).map(list) if fields else st.just([])
    return st.one_of(shaped, shaped.flatmap(lambda v: st.integers(0, len(v)).map(lambda n: v[:n])),
                     shaped.flatmap(lambda v: st.lists(leaf(s), max_size=2).map(lambda extra: v + extra)))


@st.composite
def requests(draw, s: Shard) -> pb.OpRequest:
    known = sorted(messages.REQUESTS)
    op = draw(st.one_of(st.sampled_from(known), st.integers(0, (1 << 32) - 1)))
    cls = messages.REQUESTS.get(op)
    if cls is not None and draw(st.integers(0, 4)):
        body = msgpack.packb(draw(args_for(cls, s)))
    else:
        body = draw(st.one_of(st.binary(max_size=200), st.builds(msgpack.packb, value_for(typing.Any, s))))
    caller = pb.Caller(uid=draw(st.sampled_from([0, 1000, (1 << 32) - 1])), gid=draw(st.sampled_from([0, 1000])),
                       groups=draw(st.lists(st.integers(0, (1 << 32) - 1), max_size=3)))
    return pb.OpRequest(request_id=draw(st.binary(max_size=20)), op=op, shard=draw(st.sampled_from([0, 0, 0, 1])),
                        epoch=draw(st.sampled_from([0, 0, 1, (1 << 64) - 1])), caller=caller, body=body,
                        ts=draw(st.sampled_from([0, 1, -1, 1 << 62])))


# ---------------------------------------------------------------------- checks
def check_reply(rep: pb.OpReply, req: pb.OpRequest, internal: bool) -> None:
    assert rep.status >= 0 and rep.status != errno.EIO, (req.op, rep)
    if messages.is_internal(req.op) and not internal:
        assert rep.status == errno.EPERM, (req.op, rep)


REFUSALS = ("bad arguments", "arguments must be a list", "malformed body", "unknown op", "this is shard",
            "internal operation")


def refused(rep: pb.OpReply) -> bool:
    """Whether ``rep`` refuses a request that is not one (undecodable, unknown, misrouted, not
    the caller's to send): such a request must leave no trace, not even an idempotency record."""
    return rep.status != 0 and rep.message.startswith(REFUSALS)


def outcomes_aside(state: list) -> list:
    """The state but the idempotency records (and their expiry index): a well-formed mutation
    that fails keeps its answer for its retries (docs/design/metadata.md)."""
    return [(k, v) for k, v in state if not k.startswith((P_REQUEST, P_EXPIRY))]


async def one(s: Shard, errors: ErrorLog, reqs: list[pb.OpRequest], *, internal: bool, batch: bool) -> None:
    before = s.state()
    token, itok = s.cfg.client_token, s.cfg.internal_token if internal else None
    if batch:
        code, raw = await s.edge.call(BATCH, pb.BatchRequest(ops=reqs).SerializeToString(), token=token,
                                      internal=itok)
        assert code == grpc.StatusCode.OK, code
        replies = list(pb.BatchReply.FromString(raw).replies)
        assert len(replies) == len(reqs)
    else:
        replies = []
        for r in reqs:
            code, raw = await s.edge.call(EXECUTE, r.SerializeToString(), token=token, internal=itok)
            assert code == grpc.StatusCode.OK, code
            replies.append(pb.OpReply.FromString(raw))
    for req, rep in zip(reqs, replies):
        check_reply(rep, req, internal)
    assert not errors.records, [e.getMessage() for e in errors.records]
    if all(r.status != 0 for r in replies):
        after = s.state()
        if not all(refused(r) for r in replies):  # a well-formed request that failed: its answer is kept
            before, after = outcomes_aside(before), outcomes_aside(after)
        assert after == before, ([(q.op, p.status, p.message) for q, p in zip(reqs, replies)],
                                 sorted(set(after) ^ set(before)))


# ---------------------------------------------------------------------- tests
@FUZZ
@given(data=st.data(), internal=st.booleans(), batch=st.booleans())
def test_execute_with_the_client_token(shard, data, internal, batch):
    lt, s, errors = shard
    reqs = data.draw(st.lists(requests(s), min_size=1, max_size=4))
    try:
        lt.run(one(s, errors, reqs, internal=internal, batch=batch))
    finally:
        errors.records.clear()


@FUZZ
@given(data=st.data(), raw=st.booleans(), token=st.sampled_from([None, "", "wrong", "t" * 33]))
def test_execute_without_a_valid_token(shard, data, raw, token):
    lt, s, _ = shard
    body = data.draw(st.binary(max_size=500)) if raw else data.draw(requests(s)).SerializeToString()

    async def go():
        before = s.state()
        for method in (EXECUTE, BATCH):
            code, _ = await s.edge.call(method, body, token=token, internal=s.cfg.internal_token)
            assert code == grpc.StatusCode.UNAUTHENTICATED, code
        assert s.state() == before
    lt.run(go())


@FUZZ
@given(raw=st.binary(max_size=500))
def test_garbage_request_bytes_end_the_call_not_the_server(shard, raw):
    lt, s, errors = shard

    async def go():
        before = s.state()
        for method in (EXECUTE, BATCH):
            code, rep = await s.edge.call(method, raw, token=s.cfg.client_token)
            if code == grpc.StatusCode.OK:  # bytes that happen to parse: an answer like any other
                continue
            assert rep is None
        code, rep = await s.edge.call(EXECUTE, pb.OpRequest(op=messages.Op.GETATTR, body=msgpack.packb([ROOT_INO]),
                                                            caller=pb.Caller()).SerializeToString(),
                                      token=s.cfg.client_token)
        assert code == grpc.StatusCode.OK and pb.OpReply.FromString(rep).status == 0
        return before
    before = lt.run(go())
    assert not [e for e in errors.records if "op " in e.getMessage()]
    errors.records.clear()
    del before


@FUZZ
@given(data=st.data())
def test_the_decoder_takes_a_request_or_says_einval(shard, data):
    _, s, _ = shard
    cls = data.draw(st.sampled_from([messages.REQUESTS[k] for k in sorted(messages.REQUESTS)]))
    v = data.draw(st.one_of(args_for(cls, s), value_for(typing.Any, s)))
    try:
        got = from_wire(cls, v, check=True)
    except err.DfsError as e:
        assert e.errno == errno.EINVAL, e
    else:
        assert isinstance(got, cls)
