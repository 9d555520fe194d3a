"""A real cluster on this machine: mgmt and metadata replicas (and, when
asked, data servers) as separate OS processes on loopback, under one data
folder. Used by the integration and fault tests, the demo and the benchmarks.

    c = LocalCluster("/tmp/x", shards=2, replicas=3).start()
    c = LocalCluster("/tmp/y", data_servers=3, targets_per_server=2).start()
    with c.client() as fs: ...
    c.procs[0].metrics            # "127.0.0.1:PORT": GET /metrics there (metrics=False: none)
    c.kill(c.leader_of(0))        # kill -9
    c.restart(proc)
    p = c.add_meta_replica(0)     # a new replica in the cluster file, started: then
                                  #   dfs admin add-meta-replica --shard 0 <p.replica>
    c.remove_meta_replica(p)      # after dfs admin remove-meta-replica: stop it, forget it
    ps = c.add_meta_shard()       # a new shard's replicas: then dfs admin add-meta-shard
    c.stop()

Security is on as ``dfs cluster up`` deploys it: the cluster file gets a
random client token (``auth=False``: none) and, with ``tls=TlsConfig(...)``,
gRPC over TLS. The cluster's credentials are remembered for its addresses in
this process (``dfs.rpc.auth.remember``), so clients made from its addresses
alone reach it; ``client.toml`` next to ``cluster.toml`` is what a client
machine would get (no Raft password).

Processes are tracked by PID; ``stop`` ends exactly the processes this object
started (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import grpc

from dfs._proto import meta_pb2 as pb
from dfs._proto import meta_pb2_grpc as pbg
from dfs.client.meta import MetaClient, SyncMetaClient
from dfs.common.config import (
    ClusterConfig,
    DataServerConfig,
    RaftOptions,
    ReplicaAddr,
    ShardConfig,
    TargetConfig,
    TlsConfig,
)
from dfs.rpc import auth as rpc_auth
from dfs.rpc.transport import ClusterMap, GrpcTransport


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Proc:
    role: str  # "mgmt" | "meta" | "data"
    shard: int  # -1 for mgmt and data servers
    # replica: the mgmt replica, the shard replica, or the data server id
    replica: int
    address: str
    data: str
    log: str
    popen: subprocess.Popen | None = None
    argv: list[str] = field(default_factory=list)
    metrics: str | None = None  # Prometheus endpoint host:port (from the cluster file), if any

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def name(self) -> str:
        if self.role == "meta":
            return f"meta.{self.shard}.{self.replica}"
        return f"{self.role}.{self.replica}"


class LocalCluster:
    def __init__(self, root: str, shards: int = 2, replicas: int = 3, mgmt_replicas: int = 3,
                 raft: RaftOptions | None = None, host: str = "127.0.0.1", *, data_servers: int = 0,
                 targets_per_server: int = 1, chain_replicas: int = 3, target_timeout: float = 3.0,
                 spawn_data: bool = True, scrub_interval: float | None = None, scrub_rate: int | None = None,
                 orphan_scan_interval: float | None = None, orphan_grace: float | None = None,
                 resync_rate: int | None = None, metrics: bool = True, auth: bool = True, tls: TlsConfig | None = None) -> None:
        """``spawn_data=False``: the data servers are in the cluster file, but this object
        does not run them (a test plays their part, e.g. sends their heartbeats).
        ``metrics``: give every process a free port for its Prometheus endpoint.
        ``scrub_interval``, ``scrub_rate``, ``orphan_scan_interval``, ``orphan_grace``, ``resync_rate``: the
        data servers' options of the cluster file (None: the cluster file's default).
        ``auth``: generate a client token; ``tls``: gRPC over TLS with these files.
        Both only for a new cluster file (an existing one is used as it is)."""
        self.root = os.path.abspath(root)
        self.config_path = os.path.join(self.root, "cluster.toml")
        if os.path.exists(self.config_path):
            self.cfg = ClusterConfig.load(self.config_path)  # the same cluster again
        else:
            os.makedirs(self.root, exist_ok=True)
            per = 3 if metrics else 2
            n = mgmt_replicas * per + shards * replicas * per + data_servers * (per - 1)
            ports = iter(free_ports(n, host))

            def mport() -> str | None:
                return f"{host}:{next(ports)}" if metrics else None

            def rep(i: int) -> ReplicaAddr:
                return ReplicaAddr(i, f"{host}:{next(ports)}", f"{host}:{next(ports)}", mport())

            mgmt = tuple(rep(i) for i in range(mgmt_replicas))
            shard_cfgs = tuple(ShardConfig(s, tuple(rep(i) for i in range(replicas))) for s in range(shards))
            # target ids are 1-based and cluster-wide: server S, target T -> S * targets_per_server + T + 1
            data = tuple(
                DataServerConfig(d, f"{host}:{next(ports)}", tuple(
                    TargetConfig(d * targets_per_server + t + 1, os.path.join(self.root, f"data{d}", f"t{t}"))
                    for t in range(targets_per_server)), mport())
                for d in range(data_servers))
            self.cfg = ClusterConfig(
                cluster_id=secrets.token_hex(4), raft_password=secrets.token_hex(16),
                mgmt=mgmt, shards=shard_cfgs, raft=raft or RaftOptions(), data=data,
                chain_replicas=chain_replicas, target_timeout=target_timeout,
                **{k: v for k, v in (("scrub_interval", scrub_interval), ("scrub_rate", scrub_rate),
                                     ("orphan_scan_interval", orphan_scan_interval),
                                     ("orphan_grace", orphan_grace), ("resync_rate", resync_rate))
                   if v is not None},
                client_token=secrets.token_hex(32) if auth else None, tls=tls)
            self._save_private(self.config_path, self.cfg.save)
            self._save_private(os.path.join(self.root, "client.toml"), self.cfg.client_config().save)
        self.credentials = rpc_auth.remember_config(self.cfg)  # what clients of this cluster show
        self.procs: list[Proc] = []
        for m in self.cfg.mgmt:
            d = os.path.join(self.root, f"mgmt{m.id}")
            self.procs.append(Proc("mgmt", -1, m.id, m.address, d, d + ".log", metrics=m.metrics))
        for s in self.cfg.shards:
            for r in s.replicas:
                self.procs.append(self._meta_proc(s.id, r))
        for ds in self.cfg.data if spawn_data else ():
            d = os.path.join(self.root, f"data{ds.id}")
            self.procs.append(Proc("data", -1, ds.id, ds.address, d, d + ".log", metrics=ds.metrics))

    @staticmethod
    def _save_private(path: str, save) -> None:
        """``save(path)`` with the file readable by its owner only (it holds secrets)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        save(path)

    # ------------------------------------------------------------------ life cycle
    def _argv(self, p: Proc) -> list[str]:
        if p.role == "mgmt":
            return [sys.executable, "-m", "dfs.mgmt.server", "--config", self.config_path,
                    "--replica", str(p.replica), "--data", p.data]
        if p.role == "data":
            return [sys.executable, "-m", "dfs.data.server", "--config", self.config_path,
                    "--server", str(p.replica)]
        return [sys.executable, "-m", "dfs.meta.server", "--config", self.config_path,
                "--shard", str(p.shard), "--replica", str(p.replica), "--data", p.data]

    def spawn(self, p: Proc) -> None:
        assert not p.alive, f"{p.name} is running"
        os.makedirs(p.data, exist_ok=True)
        logf = open(p.log, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        p.popen = subprocess.Popen(self._argv(p), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
        logf.close()

    def start(self, timeout: float = 60.0) -> LocalCluster:
        try:
            for p in self.procs:
                if not p.alive:
                    self.spawn(p)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 10.0) -> None:
        for p in self.procs:
            if p.alive:
                p.popen.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace
        for p in self.procs:
            if p.popen is None:
                continue
            try:
                p.popen.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def kill(self, p: Proc) -> None:
        """kill -9, and reap."""
        if p.alive:
            p.popen.send_signal(signal.SIGKILL)
            p.popen.wait()

    def restart(self, p: Proc) -> None:
        self.kill(p)
        self.spawn(p)

    def reload(self) -> ClusterConfig:
        """Read the cluster file again (``dfs admin`` membership commands rewrite it)."""
        self.cfg = ClusterConfig.load(self.config_path)
        self.credentials = rpc_auth.remember_config(self.cfg)
        return self.cfg

    def _new_replica_addr(self, rid: int, metrics: bool) -> ReplicaAddr:
        host = self.cfg.mgmt[0].address.rsplit(":", 1)[0]
        ports = iter(free_ports(3 if metrics else 2, host))
        return ReplicaAddr(rid, f"{host}:{next(ports)}", f"{host}:{next(ports)}",
                           f"{host}:{next(ports)}" if metrics else None)

    def _meta_proc(self, shard: int, r: ReplicaAddr) -> Proc:
        d = os.path.join(self.root, f"shard{shard}", f"r{r.id}")
        return Proc("meta", shard, r.id, r.address, d, d + ".log", metrics=r.metrics)

    def add_meta_replica(self, shard: int, spawn: bool = True) -> Proc:
        """Append a replica (a new id, free ports) to shard ``shard`` in the cluster file and
        (``spawn``) start it; it knows the group from the file and waits, empty, to be added:
        `dfs admin add-meta-replica --shard SHARD ID` makes it a member."""
        from dfs.common.config import edit_cluster_file, replica_entry

        self.reload()
        s = self.cfg.shard(shard)
        rid = max((r.id for r in s.replicas), default=-1) + 1
        while os.path.exists(os.path.join(self.root, f"shard{shard}", f"r{rid}")):
            rid += 1  # never reuse a removed replica's folder
        r = self._new_replica_addr(rid, any(x.metrics for x in s.replicas))

        def edit(d: dict) -> None:
            d["shards"][shard]["replicas"].append(replica_entry(r))

        self.cfg = edit_cluster_file(self.config_path, edit)
        self.credentials = rpc_auth.remember_config(self.cfg)
        p = self._meta_proc(shard, r)
        self.procs.append(p)
        if spawn:
            self.spawn(p)
        return p

    def remove_meta_replica(self, p: Proc, grace: float = 10.0) -> None:
        """Stop replica ``p`` (SIGTERM, then SIGKILL after ``grace``) and forget it: after
        `dfs admin remove-meta-replica` took it out of its group and the cluster file."""
        if p.alive:
            p.popen.send_signal(signal.SIGTERM)
            try:
                p.popen.wait(grace)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
        self.procs.remove(p)
        self.reload()

    def add_meta_shard(self, replicas: int | None = None, spawn: bool = True) -> list[Proc]:
        """Append shard S (the next id) with ``replicas`` replicas (default: as many as shard
        0) on free ports to the cluster file and (``spawn``) start them: a new Raft group that
        `dfs admin add-meta-shard` brings into the cluster map."""
        from dfs.common.config import edit_cluster_file, replica_entry

        self.reload()
        sid = self.cfg.nshards
        n = replicas or len(self.cfg.shards[0].replicas)
        metrics = any(r.metrics for s in self.cfg.shards for r in s.replicas)
        reps = [self._new_replica_addr(i, metrics) for i in range(n)]

        def edit(d: dict) -> None:
            d["shards"].append({"id": sid, "replicas": [replica_entry(r) for r in reps]})

        self.cfg = edit_cluster_file(self.config_path, edit)
        self.credentials = rpc_auth.remember_config(self.cfg)
        ps = [self._meta_proc(sid, r) for r in reps]
        self.procs.extend(ps)
        if spawn:
            for p in ps:
                self.spawn(p)
        return ps

    def add_data_server(self, targets: int = 1, spawn: bool = True) -> Proc:
        """Append a data server (new id, new target ids, free ports) to the cluster file and
        (``spawn``) start it. The running processes keep the file they loaded; the new server
        joins the cluster map with `dfs admin add-data-server ID`."""
        from dataclasses import replace

        host = self.cfg.mgmt[0].address.rsplit(":", 1)[0]
        sid = max((d.id for d in self.cfg.data), default=-1) + 1
        first = max((t.id for d in self.cfg.data for t in d.targets), default=0) + 1
        metrics = any(d.metrics for d in self.cfg.data) or (not self.cfg.data and bool(self.cfg.mgmt[0].metrics))
        ports = iter(free_ports(2 if metrics else 1, host))
        ds = DataServerConfig(sid, f"{host}:{next(ports)}", tuple(
            TargetConfig(first + t, os.path.join(self.root, f"data{sid}", f"t{t}")) for t in range(targets)),
            f"{host}:{next(ports)}" if metrics else None)
        self.cfg = replace(self.cfg, data=self.cfg.data + (ds,))
        self._save_private(self.config_path, self.cfg.save)
        self.credentials = rpc_auth.remember_config(self.cfg)
        d = os.path.join(self.root, f"data{sid}")
        p = Proc("data", -1, sid, ds.address, d, d + ".log", metrics=ds.metrics)
        self.procs.append(p)
        if spawn:
            self.spawn(p)
        return p

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection
    def meta_procs(self, shard: int | None = None) -> list[Proc]:
        return [p for p in self.procs if p.role == "meta" and (shard is None or p.shard == shard)]

    def mgmt_procs(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "mgmt"]

    def data_procs(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "data"]

    def _run(self, coro):
        return asyncio.run(coro)

    async def _statuses(self, procs: list[Proc]) -> list[pb.ShardStatus | None]:
        async def one(p: Proc):
            if not p.alive:
                return None
            async with self.credentials.channel(p.address) as ch:
                try:
                    return await pbg.MetaServiceStub(ch).Status(pb.ShardStatusRequest(), timeout=2.0)
                except grpc.aio.AioRpcError:
                    return None

        return list(await asyncio.gather(*(one(p) for p in procs)))

    def statuses(self, shard: int) -> list[pb.ShardStatus | None]:
        return self._run(self._statuses(self.meta_procs(shard)))

    def leader_of(self, shard: int) -> Proc | None:
        for p, st in zip(self.meta_procs(shard), self.statuses(shard)):
            if st is not None and st.role == "leader":
                return p
        return None

    async def _cluster_map(self) -> ClusterMap | None:
        for p in self.mgmt_procs():
            if not p.alive:
                continue
            async with self.credentials.channel(p.address) as ch:
                try:
                    rep = await pbg.MgmtServiceStub(ch).GetClusterMap(pb.GetClusterMapRequest(), timeout=2.0)
                except grpc.aio.AioRpcError:
                    continue
                if rep.status == 0:
                    return ClusterMap.from_pb(rep.map)
        return None

    async def _mgmt_ready(self) -> bool:
        m = await self._cluster_map()
        if m is None:
            return False
        if self.data_procs():  # and every target of the data servers we run serving
            # (those still in the map: `dfs admin remove-target` takes targets out; drained ones count)
            want = {t.id for d in self.cfg.data for t in d.targets} & set(m.targets)
            return want <= {tid for tid, t in m.targets.items() if t.state in ("serving", "draining")}
        return True

    def cluster_map(self) -> ClusterMap | None:
        """The cluster map as the first mgmt replica that answers has it applied (None: none answers)."""
        return self._run(self._cluster_map())

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until mgmt serves the map (with every data target serving, if there are data servers)
        and every shard has a leader."""
        end = time.monotonic() + timeout
        while True:
            dead = [p.name for p in self.procs if p.popen is not None and p.popen.poll() is not None]
            ok = not dead and self._run(self._mgmt_ready())
            if ok:
                for s in range(self.cfg.nshards):
                    if self.leader_of(s) is None:
                        ok = False
                        break
            if ok:
                return
            if time.monotonic() > end:
                raise TimeoutError(f"cluster not healthy after {timeout}s (dead: {dead}); logs in {self.root}")
            time.sleep(0.05)

    def wait_converged(self, shard: int, timeout: float = 30.0) -> int:
        """Until every live replica of ``shard`` has applied the same index; returns it."""
        end = time.monotonic() + timeout
        while True:
            sts = [s for p, s in zip(self.meta_procs(shard), self.statuses(shard)) if p.alive]
            idx = {s.applied_index for s in sts if s is not None}
            if sts and None not in sts and len(idx) == 1:
                return idx.pop()
            if time.monotonic() > end:
                raise TimeoutError(f"shard {shard} replicas did not converge: {sts}")
            time.sleep(0.05)

    # ------------------------------------------------------------------ clients
    @property
    def mgmt_addresses(self) -> list[str]:
        return [m.address for m in self.cfg.mgmt]

    async def aclient(self) -> MetaClient:
        return MetaClient(await GrpcTransport(self.mgmt_addresses, auth=self.credentials).connect())

    def client(self) -> SyncMetaClient:
        return SyncMetaClient(self.aclient)

    # ------------------------------------------------------------------ fault-test helpers (read-only)
    def db_path(self, p: Proc) -> str:
        """The RocksDB directory a meta replica currently uses (``<data>/db/<CURRENT_DB or db-0>``)."""
        assert p.role == "meta", p.name
        root = os.path.join(p.data, "db")
        cur = os.path.join(root, "CURRENT_DB")
        name = open(cur).read().strip() if os.path.exists(cur) else "db-0"
        return os.path.join(root, name)

    def read_replica(self, p: Proc, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Pairs under ``prefix`` in a meta replica's RocksDB, opened read-only.

        Works on a running replica too (RocksDB's read-only mode takes no lock
        and sees what the process wrote, its WAL included, as of the open)."""
        import rocksdict

        from dfs.kv import prefix_end

        path = self.db_path(p)
        if not os.path.exists(os.path.join(path, "CURRENT")):
            return []
        db = rocksdict.Rdict(path, options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        try:
            it = db.iter()
            it.seek(prefix)
            end = prefix_end(prefix) if prefix else None
            out = []
            while it.valid():
                k = it.key()
                if end is not None and k >= end:
                    break
                out.append((k, it.value()))
                it.next()
            del it
            return out
        finally:
            db.close()

    def pending_records(self) -> dict[str, list[bytes]]:
        """Cross-shard op records ('P') and locks ('K') left on live meta replicas, by replica name."""
        out: dict[str, list[bytes]] = {}
        for p in self.meta_procs():
            if not p.alive:
                continue
            keys = [k for k, _ in self.read_replica(p, b"P")] + [k for k, _ in self.read_replica(p, b"K")]
            if keys:
                out[p.name] = keys
        return out

    def wait_all_converged(self, timeout: float = 60.0) -> None:
        """wait_healthy, then wait_converged on every shard."""
        end = time.monotonic() + timeout
        self.wait_healthy(timeout)
        for s in range(self.cfg.nshards):
            self.wait_converged(s, max(1.0, end - time.monotonic()))
