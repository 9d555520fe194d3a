"""Root squashing (``[security] root_squash``, docs/design/security.md).

A client's uid 0 (and gid 0) is taken as the squash uid/gid at the metadata
server's gRPC edge, before any permission check; calls showing the internal
token (servers) are taken as they come. The edge is the production one
(``MetaServicer`` behind the production options and token interceptor) over an
in-process shard.
"""

from __future__ import annotations

import asyncio
import errno
import tomllib

import msgpack
import pytest

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.client.meta import MetaClient, setattr_request
from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.config import ClusterConfig, ReplicaAddr, SecurityConfig, ShardConfig
from dfs.common.ids import ROOT_INO
from dfs.common.records import Caller, squash_root
from dfs.meta.local import LocalEngine
from dfs.meta.ops.base import R_OK, W_OK
from dfs.meta.server import MetaServicer
from dfs.testing.fuzz import GrpcEdge
from dfs.testing.keys import raft_password, raft_salt

pytestmark = pytest.mark.timeout(120)

ROOT = Caller(0, 0, ())
ALICE = Caller(1000, 1000, ())
EXECUTE, BATCH = "/dfs.v1.MetaService/Execute", "/dfs.v1.MetaService/ExecuteBatch"


# ------------------------------------------------------------------ the mapping

@pytest.mark.parametrize(("caller", "squashed"), [
    (Caller(0, 0, ()), Caller(65534, 65534, ())),
    (Caller(0, 5, (5, 7)), Caller(65534, 5, (5, 7))),
    (Caller(0, 0, (0, 4, 65534)), Caller(65534, 65534, (65534, 4))),
    (Caller(1000, 0, ()), Caller(1000, 65534, ())),  # gid 0 is squashed as well (as knfsd does)
    (Caller(1000, 1000, (0, 1000)), Caller(1000, 1000, (65534, 1000))),
    (Caller(1000, 1000, (27,)), Caller(1000, 1000, (27,))),
])
def test_squash_root_maps_uid_and_gid_zero_only(caller, squashed):
    assert squash_root(caller, 65534, 65534) == squashed


def test_the_security_table():
    base = _cfg(SecurityConfig()).to_dict()
    assert "security" not in base  # the default leaves files as they were
    assert ClusterConfig.from_dict(base).security == SecurityConfig(False, 65534, 65534)
    on = _cfg(SecurityConfig(True, 99, 98))
    assert ClusterConfig.from_dict(on.to_dict()).security == SecurityConfig(True, 99, 98)
    assert SecurityConfig.from_dict(tomllib.loads("root_squash = true")) == SecurityConfig(True)
    for bad in ({"root_squash": "yes"}, {"root_squash": 1}, {"squash_uid": -1}, {"squash_gid": 2**32},
                {"squash_uid": True}, {"squash_uid": "65534"}, {"root_squsah": True}):
        with pytest.raises(ValueError):
            ClusterConfig.from_dict({**base, "security": bad})
    with pytest.raises(ValueError):
        ClusterConfig.from_dict({**base, "security": True})


# ------------------------------------------------------------------ through the edge

def _cfg(security: SecurityConfig) -> ClusterConfig:
    r = ReplicaAddr(0, "127.0.0.1:1", "127.0.0.1:2")
    return ClusterConfig("squash", raft_password(), (r,), (ShardConfig(0, (r,)),), raft_salt=raft_salt(),
                         client_token="t" + raft_salt(), security=security)


class EdgeCalls:
    """``MetaClient``'s transport over a ``GrpcEdge``: every call as a client (the token) or,
    ``internal``, as a server (the internal token as well)."""

    def __init__(self, edge: GrpcEdge, cfg: ClusterConfig, internal: bool) -> None:
        self.edge, self.token = edge, cfg.client_token
        self.internal = cfg.internal_token if internal else None
        self.nshards = 1

    @staticmethod
    def _req(op, caller: Caller, args, rid: bytes) -> pb.OpRequest:
        return pb.OpRequest(request_id=rid, op=int(op), shard=0, body=msgpack.packb(args),
                            caller=pb.Caller(uid=caller.uid, gid=caller.gid, groups=list(caller.groups)))

    @staticmethod
    def _result(rep: pb.OpReply):
        if rep.status:
            raise err.error_for(rep.status, rep.message or None)
        return msgpack.unpackb(rep.body, raw=False, strict_map_key=False) if rep.body else None

    async def call(self, shard, op, caller, args, rid=b"", ts=None):
        code, raw = await self.edge.call(EXECUTE, self._req(op, caller, args, rid).SerializeToString(),
                                         token=self.token, internal=self.internal)
        assert raw is not None, code
        return self._result(pb.OpReply.FromString(raw))

    async def call_many(self, shard, ops):
        req = pb.BatchRequest(ops=[self._req(op, c, a, rid) for op, c, a, rid in ops])
        code, raw = await self.edge.call(BATCH, req.SerializeToString(), token=self.token, internal=self.internal)
        assert raw is not None, code
        out = []
        for r in pb.BatchReply.FromString(raw).replies:
            try:
                out.append(self._result(r))
            except err.DfsError as e:
                out.append(e)
        return out

    async def close(self) -> None:
        pass


async def _shard(security: SecurityConfig):
    cfg = _cfg(security)
    engine = LocalEngine(1)
    svc = engine.services[0]
    servicer = MetaServicer(svc, svc.log, cfg, 0, 0)
    edge = await GrpcEdge.start(cfg, lambda s: pbg.add_MetaServiceServicer_to_server(servicer, s))
    client = MetaClient(EdgeCalls(edge, cfg, internal=False))
    server = MetaClient(EdgeCalls(edge, cfg, internal=True))
    # alice's private file and directory, in a world-writable directory
    d = await server.mkdir(ROOT_INO, "pub", 0o777, caller=ROOT)
    f, _ = await client.create(d.ino, "secret", 0o600, caller=ALICE)
    await client.mkdir(d.ino, "private", 0o700, caller=ALICE)
    return edge, client, server, d, f


def test_a_squashed_root_is_nobody_to_the_permission_checks():
    """root cannot read or write alice's 0600 file, list her 0700 directory, chown or chmod
    her file; what root creates is nobody's; through the batch call as through the single one."""
    async def main():
        edge, client, server, d, f = await _shard(SecurityConfig(root_squash=True))
        try:
            for opening in (client.open_read(f.ino, access=R_OK, caller=ROOT),
                            client.open_file(f.ino, access=W_OK, caller=ROOT)):
                with pytest.raises(err.DfsError) as e:
                    await opening
                assert e.value.errno == errno.EACCES
            with pytest.raises(err.DfsError) as e:
                await client.setattr(f.ino, uid=0, caller=ROOT)
            assert e.value.errno == errno.EPERM
            with pytest.raises(err.DfsError) as e:
                await client.setattr(f.ino, mode=0o644, caller=ROOT)
            assert e.value.errno == errno.EPERM
            with pytest.raises(err.DfsError) as e:
                await client.setattr(f.ino, uid=65534, caller=ROOT)  # not even to itself
            assert e.value.errno == errno.EPERM
            priv = await client.lookup(d.ino, "private", caller=ROOT)
            with pytest.raises(err.DfsError) as e:
                await client.readdir(priv.ino, caller=ROOT)
            assert e.value.errno == errno.EACCES
            mine, _ = await client.create(d.ino, "roots", 0o644, caller=ROOT)
            assert (mine.uid, mine.gid) == (65534, 65534)
            (res,) = await client.getattr_many([f.ino], caller=ROOT)  # a batch: squashed too
            assert res.uid == 1000
            chown = setattr_request(f.ino, uid=0)
            res = await client.t.call_many(0, [(chown.OP, ROOT, chown.to_wire(), b"r" * 16)])
            assert isinstance(res[0], err.DfsError) and res[0].errno == errno.EPERM
            assert (await client.getattr(f.ino)).uid == 1000 and (await client.getattr(f.ino)).mode & 0o777 == 0o600
            # a lazy client's BATCH: its items' own callers are squashed too
            for c in (ROOT, Caller(0, 1000, (0,))):
                item = m.BatchItem(chown.OP, b"b" * 15 + bytes([c.gid & 0xFF]), c.uid, c.gid, list(c.groups),
                                   chown.to_wire(), [])
                (res,) = await client.batch(0, [item])
                assert res.status == errno.EPERM, res
            assert (await client.getattr(f.ino)).uid == 1000
            # alice herself is not affected
            await client.open_read(f.ino, access=R_OK, caller=ALICE)
            await client.setattr(f.ino, mode=0o640, caller=ALICE)
            # a server (internal token) is not squashed: its caller was squashed where it came in
            await server.open_read(f.ino, access=R_OK, caller=ROOT)
            await server.setattr(f.ino, uid=7, caller=ROOT)
            assert (await client.getattr(f.ino)).uid == 7
            item = m.BatchItem(chown.OP, b"s" * 16, 0, 0, [], setattr_request(f.ino, uid=8).to_wire(), [])
            (res,) = await server.batch(0, [item])
            assert res.status == 0 and (await client.getattr(f.ino)).uid == 8
        finally:
            await edge.stop()

    asyncio.run(main())


def test_without_root_squash_root_may_do_anything():
    async def main():
        edge, client, server, d, f = await _shard(SecurityConfig())
        try:
            await client.open_read(f.ino, access=R_OK, caller=ROOT)
            await client.open_file(f.ino, access=R_OK | W_OK, caller=ROOT)
            await client.setattr(f.ino, uid=0, gid=0, mode=0o644, caller=ROOT)
            a = await client.getattr(f.ino)
            assert (a.uid, a.gid, a.mode & 0o777) == (0, 0, 0o644)
            mine, _ = await client.create(d.ino, "roots", 0o644, caller=ROOT)
            assert (mine.uid, mine.gid) == (0, 0)
        finally:
            await edge.stop()

    asyncio.run(main())

