"""Client authentication, TLS and the Raft ports on real clusters (docs/design/security.md).

One cluster with the client token LocalCluster generates (1 mgmt, 1 shard x 3
replicas, 1 data server): requests without the token, or with a wrong one, are
refused on gRPC (UNAUTHENTICATED) and on the data plane (the connection is
closed) and leave nothing behind; the library and the mount work with the
token of the cluster file; the Raft ports listen on the cluster addresses
only. A second, smaller cluster runs gRPC over TLS with a CA made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno as E
import ipaddress
import os
import socket
import stat
import subprocess
import sys
import time
import tomllib

import grpc
import msgpack
import pytest

import dfs
from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.common import caps
from dfs.common import errors as err
from dfs.common.config import ClientConfig, ClusterConfig, TlsConfig
from dfs.common.ids import ROOT_INO
from dfs.common.layout import Layout
from dfs.common.ops import Op
from dfs.wire import auth
from dfs.wire import dataplane as dp
from dfs.route.data import DataClient
from dfs.route.shards import GrpcTransport
from dfs.testing.cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters.make(shards=1, replicas=3, mgmt_replicas=1, data_servers=1, chain_replicas=1)


def run(coro):
    return asyncio.run(coro)


def exists(c: LocalCluster, name: str) -> bool:
    with c.client() as m:
        try:
            m.lookup(ROOT_INO, name)
        except err.NotFound:
            return False
        return True


# ---------------------------------------------------------------------- the cluster file
def test_local_cluster_turns_auth_on(cluster):
    assert cluster.cfg.client_token and len(cluster.cfg.client_token) >= 32
    assert stat.S_IMODE(os.stat(cluster.config_path).st_mode) == 0o600
    client_file = os.path.join(cluster.root, "client.toml")
    with open(client_file, "rb") as f:
        d = tomllib.load(f)
    assert "raft_password" not in d and d["client_token"] == cluster.cfg.client_token
    assert ClientConfig.load(client_file).mgmt == tuple(cluster.mgmt_addresses)


def test_cluster_file_auth_fields(tmp_path, cluster):
    d = cluster.cfg.to_dict()
    assert ClusterConfig.from_dict(d) == cluster.cfg
    with_tls = {**d, "tls": {"ca": "ca.pem", "cert": "s.pem", "key": "s.key", "server_name": "x"}}
    c = ClusterConfig.from_dict(with_tls)
    assert c.tls == TlsConfig("ca.pem", "s.pem", "s.key", "x") and ClusterConfig.from_dict(c.to_dict()) == c
    no_auth = {k: v for k, v in d.items() if k != "client_token"}
    assert ClusterConfig.from_dict(no_auth).auth_token is None  # an old file: auth off
    for bad in ({**d, "client_token_file": "t"}, {**d, "client_token": "has space"}, {**d, "client_token": ""},
                {**d, "tls": {"cert": "s.pem", "key": "s.key"}}, {**d, "tls": {"ca": "c", "cert": "s.pem"}},
                {**d, "tls": {"ca": "c", "nope": 1}}):
        with pytest.raises(ValueError):
            ClusterConfig.from_dict(bad)
    # load: relative paths are the cluster file's folder's
    (tmp_path / "tok").write_text("abc123\n")
    ClusterConfig.from_dict({**no_auth, "client_token_file": "tok", "tls": {"ca": "ca.pem"}}).save(
        str(tmp_path / "c.toml"))
    c = ClusterConfig.load(str(tmp_path / "c.toml"))
    assert c.auth_token == "abc123" and c.tls.ca == str(tmp_path / "ca.pem")


# ---------------------------------------------------------------------- gRPC
def _mkdir_request(name: str) -> pb.OpRequest:
    return pb.OpRequest(request_id=os.urandom(16), op=int(Op.MKDIR), shard=0, caller=pb.Caller(uid=0, gid=0),
                        body=msgpack.packb([ROOT_INO, name.encode(), 0o755, 0]))


async def _raw_execute(addr: str, req, metadata=()) -> grpc.aio.AioRpcError | pb.OpReply:
    async with grpc.aio.insecure_channel(addr) as ch:
        try:
            return await pbg.MetaServiceStub(ch).Execute(req, timeout=5.0, metadata=metadata)
        except grpc.aio.AioRpcError as e:
            return e


@pytest.mark.parametrize("metadata, why", [((), auth.MISSING), ((("authorization", "Bearer nope"),), auth.WRONG),
                                           ((("authorization", "nope"),), auth.WRONG)])
def test_grpc_without_the_token_is_refused_and_changes_nothing(cluster, metadata, why):
    name = f"refused-{len(metadata)}-{why[:5]}"
    for p in cluster.meta_procs():  # the leader among them: none may apply it
        res = run(_raw_execute(p.address, _mkdir_request(name), metadata))
        assert isinstance(res, grpc.aio.AioRpcError), res
        assert res.code() == grpc.StatusCode.UNAUTHENTICATED and res.details() == why
    assert not exists(cluster, name)


def test_grpc_with_the_token_works(cluster):
    """The control of the test above: the same raw request, with the token, is applied."""
    lead = cluster.leader_of(0)
    md = ((auth.AUTH_HEADER, auth.BEARER + cluster.cfg.client_token),)
    rep = run(_raw_execute(lead.address, _mkdir_request("raw-ok"), md))
    assert isinstance(rep, pb.OpReply) and rep.status == 0, rep
    assert exists(cluster, "raw-ok")


def test_mgmt_refuses_without_the_token(cluster):
    async def go():
        addr = cluster.mgmt_addresses[0]
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = pbg.MgmtServiceStub(ch)
            for call, req in ((stub.GetClusterMap, pb.GetClusterMapRequest()),
                              (stub.Heartbeat, pb.HeartbeatRequest(role="data", server=0, targets=[
                                  pb.TargetState(id=1, state="serving", synced=[pb.SyncedChain(chain=0, version=1)])]))):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await call(req, timeout=5.0)
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # SetClusterMap takes the internal token too: the client token is not enough
        async with cluster.credentials.channel(addr) as ch:
            rep = await pbg.MgmtServiceStub(ch).SetClusterMap(pb.SetClusterMapRequest(), timeout=5.0)
            assert rep.status == E.EPERM

    run(go())


def test_clients_raise_a_clear_error(cluster):
    async def go(creds):
        t = GrpcTransport(cluster.mgmt_addresses, deadline=5.0, auth=creds)
        try:
            await t.connect()
        finally:
            await t.close()

    with pytest.raises(auth.Unauthenticated, match="no client token") as ei:
        run(go(auth.Credentials()))
    assert isinstance(ei.value, PermissionError) and ei.value.errno == E.EACCES
    with pytest.raises(PermissionError, match="wrong client token"):
        run(go(auth.Credentials("x" * 64)))
    with pytest.raises(PermissionError, match="wrong client token"):
        dfs.connect(cluster.config_path, token="y" * 64, deadline=5.0).listdir("/")


# ---------------------------------------------------------------------- data plane
def _chain(cluster):
    async def go():
        t = await GrpcTransport(cluster.mgmt_addresses, deadline=10.0).connect()
        await t.close()
        return t.map

    m = run(go())
    ch = m.chains[0]
    return m, ch, m.targets[ch.head]


def _write_frame(ch, tid: int, ino: int) -> bytes:
    payload = b"x" * 4096
    h = dp.Header(dp.WRITE, req_id=1, ino=ino, index=0, offset=0, chain_id=ch.id, chain_version=ch.version,
                  arg=Layout(chunk_size=1 << 20, stripe=1, replicas=1).pack(), target=tid)
    return dp.encode(h, payload) + payload


def _raw_session(addr: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything the server sends until it closes."""
    host, port = dp.split_address(addr)
    with socket.create_connection((host, port), timeout=10.0) as s:
        try:
            s.sendall(data)
        except OSError:  # closed under us: nothing more to send
            pass
        out = b""
        while True:
            try:
                b = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not b:
                break
            out += b
        return out


def _has_chunk(cluster, m, tid: int, ino: int) -> bool:
    async def go():
        dc = DataClient(m, auth=cluster.server_credentials)  # an inspection: what the target holds
        try:
            return await dc.stat_target(tid, ino, 0) is not None
        finally:
            await dc.close()

    return run(go())


@pytest.mark.parametrize("hello", [None, "wrong", "malformed"])
def test_data_plane_refuses_and_writes_nothing(cluster, hello):
    m, ch, t = _chain(cluster)
    ino = (1 << 40) + {None: 1, "wrong": 2, "malformed": 3}[hello]
    first = b""
    if hello == "wrong":
        h, p = dp.hello("z" * 64)
        first = dp.encode(h, p) + p
    elif hello == "malformed":
        first = dp.encode(dp.Header(dp.HELLO, arg=1), b"\xc1") + b"\xc1"
    got = _raw_session(t.address, first + _write_frame(ch, t.id, ino))
    if hello is None:
        assert got == b""  # closed before any request was read
    else:  # one EACCES answer to the HELLO, then closed: the WRITE is never read
        h = dp.decode(got[:dp.HEADER_SIZE])
        assert h.op == dp.HELLO and h.status == E.EACCES and len(got) == dp.HEADER_SIZE + h.length
    assert not _has_chunk(cluster, m, t.id, ino)


@contextlib.contextmanager
def _hello_and_write(cluster, ch, t, ino: int, shown: tuple[bytes, ...] = ()):
    """(the socket, its replies as [(header, payload)]: the HELLO's, each CAP's, the WRITE's) of a
    connection to target ``t`` that sent a HELLO with the client token, a CAP frame of each
    of ``shown``, and a write of chunk (``ino``, 0)."""
    h, p = dp.hello(cluster.cfg.client_token)
    host, port = dp.split_address(t.address)
    frames = dp.encode(h, p) + p
    for c in shown:
        frames += dp.encode(dp.Header(dp.CAP), c) + c
    with socket.create_connection((host, port), timeout=10.0) as s:
        s.sendall(frames + _write_frame(ch, t.id, ino))
        buf, replies = b"", []
        while len(replies) < 2 + len(shown):
            while len(buf) < dp.HEADER_SIZE:
                buf += s.recv(65536)
            rh = dp.decode(buf[:dp.HEADER_SIZE])
            while len(buf) < dp.HEADER_SIZE + rh.length:
                buf += s.recv(65536)
            replies.append((rh, buf[dp.HEADER_SIZE:dp.HEADER_SIZE + rh.length]))
            buf = buf[dp.HEADER_SIZE + rh.length:]
        yield s, replies


def _signer(cluster, key: bytes | None = None, ttl: float = 600.0, clock=None) -> caps.Signer:
    return caps.Signer(key or caps.cap_key(cluster.cfg.internal_token), ttl, **({"clock": clock} if clock else {}))


def test_data_plane_with_the_token_and_a_capability_writes(cluster):
    """The control: the frames after a good HELLO and a capability for the inode are served."""
    m, ch, t = _chain(cluster)
    ino = (1 << 40) + 9
    cap = _signer(cluster).inodes(ino, ino + 1, caps.WRITE)
    with _hello_and_write(cluster, ch, t, ino, (cap,)) as (s, replies):
        (hello_rep, _), (cap_rep, _), (w, wp) = replies
        assert hello_rep.op == dp.HELLO and hello_rep.status == 0 and hello_rep.arg == dp.HELLO_VERSION
        assert cap_rep.op == dp.CAP and cap_rep.status == 0
        assert w.op == dp.WRITE and w.status == 0, wp
    assert _has_chunk(cluster, m, t.id, ino)


@pytest.mark.parametrize("case", ["none", "forged", "other inode", "read only", "expired", "snapshot", "garbage"])
def test_data_plane_without_a_capability_writes_nothing(cluster, case):
    """A client with the token but no capability for the inode it writes (none, one signed with
    another key, one for another inode, for reading, run out, a snapshot's, bytes that are
    none) is answered ENOKEY, a CAP it shows that is not good EACCES; nothing is written."""
    m, ch, t = _chain(cluster)
    ino = (1 << 40) + 13 + ["none", "forged", "other inode", "read only", "expired", "snapshot",
                            "garbage"].index(case)
    good = _signer(cluster)
    shown = {
        "none": (),
        "forged": (_signer(cluster, key=b"k" * 32).inodes(ino, ino + 1, caps.WRITE),),
        "other inode": (good.inodes(ino + 100, ino + 101, caps.READ | caps.WRITE),),
        "read only": (good.inodes(ino, ino + 1, caps.READ),),
        "expired": (_signer(cluster, ttl=1, clock=lambda: time.time_ns() - 3600 * 10**9).inodes(
            ino, ino + 1, caps.WRITE),),
        "snapshot": (good.snapshot(5),),
        "garbage": (b"\x00" * 40,),
    }[case]
    with _hello_and_write(cluster, ch, t, ino, shown) as (s, replies):
        assert replies[0][0].status == 0  # HELLO
        for rh, _ in replies[1:-1]:
            assert rh.op == dp.CAP
            assert rh.status == (E.EACCES if case in ("forged", "expired", "garbage") else 0)
        w, wp = replies[-1]
        assert w.op == dp.WRITE and w.status == E.ENOKEY, wp
    assert not _has_chunk(cluster, m, t.id, ino)


def test_server_state_is_its_users_only(cluster):
    """Chunk files, target folders, RocksDB and Raft state are created 0600/0700 (servers run
    under umask 077 and make their folders 0700), and the cluster folder is 0700: another
    local user reads nothing (docs/design/security.md, "Bounds")."""
    m, ch, t = _chain(cluster)
    ino = (1 << 40) + 11
    with _hello_and_write(cluster, ch, t, ino, (_signer(cluster).inodes(ino, ino + 1, caps.WRITE),)):
        pass
    assert _has_chunk(cluster, m, t.id, ino)
    assert stat.S_IMODE(os.stat(cluster.root).st_mode) == 0o700
    roots = [tc.path for d in cluster.cfg.data for tc in d.targets] + [p.data for p in cluster.procs if p.data]
    seen = 0
    for root in roots:
        for d, dirs, files in os.walk(root):
            for name in [d, *(os.path.join(d, f) for f in files)]:
                mode = stat.S_IMODE(os.lstat(name).st_mode)
                assert mode & 0o077 == 0, f"{name}: {mode:o}"
                seen += 1
    assert seen > 20  # chunks, RocksDB files, Raft journals


def test_data_client_with_a_wrong_token(cluster):
    m, _, _ = _chain(cluster)

    async def go():
        dc = DataClient(m, auth=auth.Credentials("w" * 64), deadline=5.0)
        try:
            await dc.write(1 << 41, 0, 0, b"data", Layout(chunk_size=1 << 20, stripe=1, replicas=1))
        finally:
            await dc.close()

    with pytest.raises(auth.Unauthenticated, match="wrong client token"):
        run(go())


# ---------------------------------------------------------------------- the library and the mount
def test_library_with_the_token_of_the_cluster_file(cluster, tmp_path, monkeypatch):
    with dfs.connect(cluster.config_path, uid=0, gid=0, groups=()) as fs:
        fs.write_bytes("/lib.txt", b"hello" * 50000)
        assert fs.read_bytes("/lib.txt") == b"hello" * 50000
    # a client machine's file: no Raft password, the token in a file of its own
    tok = tmp_path / "client.token"
    tok.write_text(cluster.cfg.client_token + "\n")
    (tmp_path / "client.toml").write_text(
        'client_token_file = "client.token"\n'
        + "".join(f'[[mgmt]]\naddress = "{a}"\n' for a in cluster.mgmt_addresses))
    with dfs.connect(str(tmp_path / "client.toml"), uid=0, gid=0, groups=()) as fs:
        assert fs.read_bytes("/lib.txt") == b"hello" * 50000
    # addresses only, the token from the environment (nothing remembered for them)
    auth.forget(cluster.mgmt_addresses)
    try:
        monkeypatch.setenv("DFS_TOKEN", cluster.cfg.client_token)
        with dfs.connect(mgmt=cluster.mgmt_addresses, uid=0, gid=0, groups=()) as fs:
            assert fs.exists("/lib.txt")
        monkeypatch.delenv("DFS_TOKEN")
        with pytest.raises(PermissionError, match="no client token"):
            dfs.connect(mgmt=cluster.mgmt_addresses, deadline=5.0).listdir("/")
    finally:
        auth.remember_config(cluster.cfg)


def _dfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DFS_TOKEN", "DFS_TOKEN_FILE")}
    return subprocess.run([sys.executable, "-m", "dfs.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_mount_with_the_token_of_the_cluster_file(cluster, tmp_path):
    pytest.importorskip("pyfuse3")
    if not (os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)):
        pytest.skip("no usable /dev/fuse")
    mp = tmp_path / "mnt"
    mp.mkdir()
    r = _dfs("mount", str(mp), "--cluster", cluster.config_path, "--log-file", str(tmp_path / "mount.log"))
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        (mp / "m.txt").write_bytes(b"through the mount")
        with dfs.connect(cluster.config_path, uid=0, gid=0, groups=()) as fs:
            assert fs.read_bytes("/m.txt") == b"through the mount"
    finally:
        u = _dfs("umount", str(mp))
        assert u.returncode == 0, u.stdout + u.stderr
    # addresses only and no token anywhere: the mount refuses to start, saying why
    r = _dfs("mount", str(mp), "--mgmt", ",".join(cluster.mgmt_addresses), "--log-file",
             str(tmp_path / "mount2.log"), "--timeout", "20")
    assert r.returncode != 0 and "no client token" in r.stdout + r.stderr, r.stdout + r.stderr


# ---------------------------------------------------------------------- Raft ports
def _listening(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of the TCP sockets process ``pid`` listens on (from /proc, no psutil)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = set()
    for table, size in (("tcp", 4), ("tcp6", 16)):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                hexip, hexport = local.split(":")
                raw = bytes.fromhex(hexip)
                # /proc prints the address as host-order 32-bit words
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
                ip = ipaddress.ip_address(raw)
                if ip.version == 6 and ip.ipv4_mapped:  # gRPC's dual-stack socket for an IPv4 address
                    ip = ip.ipv4_mapped
                out.add((str(ip), int(hexport, 16)))
    return out


def test_every_port_is_on_the_configured_address(cluster):
    for p in cluster.meta_procs() + cluster.mgmt_procs():
        if p.role == "meta":
            r = cluster.cfg.shard(p.shard).replicas[p.replica]
        else:
            r = cluster.cfg.mgmt[p.replica]
        want = {dp.split_address(a) for a in (r.address, r.raft, r.metrics) if a}
        got = _listening(p.pid)
        assert {(h, port) for h, port in got} == want, (p.name, got, want)
        assert not any(h in ("0.0.0.0", "::") for h, _ in got)


def test_raft_port_keeps_the_password(cluster):
    """A peer without the Raft password gets nothing but a closed connection (pysyncobj
    encrypts with it); the group's state is unaffected."""
    lead = cluster.leader_of(0)
    r = cluster.cfg.shard(0).replicas[lead.replica]
    got = _raw_session(r.raft, b"\x00" * 64 + b"garbage" * 100)
    assert b"term" not in got  # no plaintext Raft message
    assert cluster.leader_of(0) is not None


# ---------------------------------------------------------------------- TLS
def _make_ca(d) -> TlsConfig:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("dfs test CA")).issuer_name(name("dfs test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(pem_key(key))
    return TlsConfig(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"))


def test_tls_cluster_end_to_end(tmp_path, make_cluster):
    tls = _make_ca(tmp_path)
    c = make_cluster(shards=1, replicas=1, mgmt_replicas=1, data_servers=1, chain_replicas=1, metrics=False,
                     tls=tls)
    assert c.credentials.ca is not None
    with dfs.connect(c.config_path, uid=0, gid=0, groups=()) as fs:
        fs.makedirs("/tls/d")
        fs.write_bytes("/tls/d/f", b"secret" * 10000)
        assert fs.read_bytes("/tls/d/f") == b"secret" * 10000
    # a client that speaks plaintext gRPC (even with the right token) gets nowhere
    plain = auth.Credentials(c.cfg.client_token)

    async def go():
        t = GrpcTransport(c.mgmt_addresses, deadline=2.0, attempt_timeout=1.0, auth=plain)
        try:
            await t.connect()
        finally:
            await t.close()

    with pytest.raises(err.Unavailable):
        run(go())
    res = run(_raw_execute(c.meta_procs()[0].address, _mkdir_request("plain"),
                           plain.metadata()))
    assert isinstance(res, grpc.aio.AioRpcError) and res.code() == grpc.StatusCode.UNAVAILABLE
