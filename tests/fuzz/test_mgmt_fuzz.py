"""Fuzz the mgmt API: MgmtService (GetClusterMap, SetClusterMap, Heartbeat, Admin,
TransferLeader) behind the production gRPC options and token check, with and
without the client and internal tokens (docs/design/security.md, "Fuzzing").

One in-process mgmt replica (a MgmtStore behind a DirectLog, its map made from
a cluster file of two data servers with two targets each) serves every
example over loopback gRPC. For every example:

* without the client token: UNAUTHENTICATED, and nothing changes;
* with it but without the internal token: the map is readable, every other
  call is EPERM and changes nothing;
* with both (an operator, a server): each call is answered with status 0 or
  an errno, no error is logged, a refused command changes nothing, a
  heartbeat keeps no usage of snapshots the registry does not have and the
  set of unknown targets it remembers stays bounded;
* garbage request bytes end the call, never the server.
"""

from __future__ import annotations


import grpc
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.common.config import ClusterConfig, DataServerConfig, ReplicaAddr, ShardConfig, TargetConfig
from dfs.consensus.api import DirectLog
from dfs.mgmt.server import MAX_UNKNOWN, MgmtServicer, map_from_config
from dfs.mgmt.store import K_APPLIED, MgmtStore
from dfs.testing import fuzz
from dfs.testing.fuzz import GrpcEdge, fuzz_settings, serving
from dfs.testing.keys import raft_password, raft_salt

pytestmark = pytest.mark.timeout(fuzz.TIMEOUT)

FUZZ = fuzz_settings(40)
SVC = "/dfs.v1.MgmtService/"
TARGETS = (1, 2, 3, 4)


class Host(DirectLog):
    """The Raft host as MgmtServicer sees it: a log of one that leads."""

    self_address = "127.0.0.1:2"

    @property
    def leader(self) -> str:
        return self.self_address

    async def transfer_leadership(self, to, timeout: float) -> None:
        from dfs.common import errors as err

        raise err.InvalidArgument(f"no replica {to!r} to lead")


class Mgmt:
    def __init__(self) -> None:
        r = ReplicaAddr(0, "127.0.0.1:1", "127.0.0.1:2")
        data = tuple(DataServerConfig(s, f"127.0.0.1:{9000 + s}",
                                      tuple(TargetConfig(s * 2 + t + 1, f"/d{s}/t{t}") for t in range(2)))
                     for s in range(2))
        self.cfg = ClusterConfig("fuzz", raft_password(), (r,), (ShardConfig(0, (r,)),), data=data,
                                 chain_replicas=2, raft_salt=raft_salt(), client_token="t" + raft_salt())

    async def start(self) -> Mgmt:
        self.store = MgmtStore(None)
        self.host = Host(self.store)
        await self.host.submit(msgpack.packb(["init", map_from_config(self.cfg)]))
        self.servicer = MgmtServicer(self.store, self.host, self.cfg)
        self.edge = await GrpcEdge.start(self.cfg, lambda s: pbg.add_MgmtServiceServicer_to_server(self.servicer, s))
        return self

    def state(self) -> list:
        return [(k, v) for k, v in self.store.kv.items() if k != K_APPLIED]


@pytest.fixture(scope="module")
def mgmt():
    """(the loop thread, the mgmt, the errors it logs)."""
    with serving(Mgmt().start()) as x:
        yield x


# ---------------------------------------------------------------------- strategies
u32, u64 = st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 64) - 1)
tids = st.one_of(st.sampled_from(TARGETS), u32)
anything = st.recursive(st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.text(max_size=10), st.binary(max_size=10),
                                  st.none(), st.booleans(), st.sampled_from(TARGETS)),
                        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                        max_leaves=8)

heartbeats = st.builds(
    pb.HeartbeatRequest, role=st.sampled_from(["data", "meta", "", "x"]), server=u32,
    address=st.text(max_size=30), state=st.text(max_size=10),
    targets=st.lists(st.builds(
        pb.TargetState, id=tids, state=st.sampled_from(["serving", "syncing", "", "?"]), total=u64, free=u64,
        synced=st.lists(st.builds(pb.SyncedChain, chain=st.one_of(st.integers(0, 3), u32),
                                  version=st.one_of(st.integers(0, 3), u32)), max_size=3),
        snapshots=st.lists(st.builds(pb.SnapshotUsage, epoch=st.one_of(st.integers(0, 3), u64), exclusive=u64,
                                     shared=u64), max_size=3)), max_size=5))

admin = st.builds(pb.AdminRequest, command=st.one_of(
    st.binary(max_size=100),
    st.builds(lambda name, args: msgpack.packb([name, *args]),
              st.one_of(st.sampled_from(MgmtServicer.ADMIN_COMMANDS), st.sampled_from(["init", "set", "capacity",
                                                                                        "target_up", "snap_usage"])),
              st.lists(anything, max_size=5))))

CALLS = {
    "GetClusterMap": st.builds(pb.GetClusterMapRequest, known_epoch=u64),
    "SetClusterMap": st.builds(pb.SetClusterMapRequest, request_id=st.binary(max_size=10)),
    "Heartbeat": heartbeats,
    "Admin": admin,
    "TransferLeader": st.builds(pb.TransferLeaderRequest, to=st.text(max_size=30),
                                timeout=st.floats(0, 1e9, allow_nan=False)),
}
REPLIES = {"GetClusterMap": pb.GetClusterMapReply, "SetClusterMap": pb.GetClusterMapReply,
           "Heartbeat": pb.HeartbeatReply, "Admin": pb.AdminReply, "TransferLeader": pb.TransferLeaderReply}


# ---------------------------------------------------------------------- tests
@FUZZ
@given(data=st.data(), internal=st.booleans())
def test_calls_with_the_client_token(mgmt, data, internal):
    lt, m, errors = mgmt
    calls = data.draw(st.lists(st.sampled_from(sorted(CALLS)).flatmap(
        lambda name: st.tuples(st.just(name), CALLS[name])), min_size=1, max_size=4))

    async def go():
        for name, req in calls:
            before = m.state()
            code, raw = await m.edge.call(SVC + name, req.SerializeToString(), token=m.cfg.client_token,
                                          internal=m.cfg.internal_token if internal else None)
            assert code == grpc.StatusCode.OK, (name, code)
            rep = REPLIES[name].FromString(raw)
            after = m.state()
            if not internal and name != "GetClusterMap":
                assert rep.status == 1 and after == before, (name, rep)  # EPERM, nothing changed
                continue
            assert rep.status >= 0, (name, rep)
            if rep.status != 0 or name == "GetClusterMap":
                assert after == before, (name, rep)
            cm = m.store.cluster_map()
            for usage in cm["snap_usage"].values():
                assert set(usage) <= set(cm["snapshots"]), (usage, cm["snapshots"])
            assert len(m.servicer._unknown) <= MAX_UNKNOWN
    try:
        lt.run(go())
        assert not errors.records, [e.getMessage() for e in errors.records]
    finally:
        errors.records.clear()


@FUZZ
@given(name=st.sampled_from(sorted(CALLS)), data=st.data(), token=st.sampled_from([None, "", "wrong", "t" * 33]),
       raw=st.booleans())
def test_calls_without_a_valid_token(mgmt, name, data, token, raw):
    lt, m, _ = mgmt
    body = data.draw(st.binary(max_size=300)) if raw else data.draw(CALLS[name]).SerializeToString()

    async def go():
        before = m.state()
        code, _ = await m.edge.call(SVC + name, body, token=token, internal=m.cfg.internal_token)
        assert code == grpc.StatusCode.UNAUTHENTICATED, code
        assert m.state() == before
    lt.run(go())


@FUZZ
@given(name=st.sampled_from(sorted(CALLS)), raw=st.binary(max_size=300))
def test_garbage_request_bytes_end_the_call_not_the_server(mgmt, name, raw):
    lt, m, _ = mgmt

    async def go():
        code, rep = await m.edge.call(SVC + name, raw, token=m.cfg.client_token)
        assert code == grpc.StatusCode.OK or rep is None
        code, rep = await m.edge.call(SVC + "GetClusterMap", b"", token=m.cfg.client_token)
        assert code == grpc.StatusCode.OK and pb.GetClusterMapReply.FromString(rep).status == 0
    lt.run(go())
