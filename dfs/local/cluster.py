"""A real cluster on this machine: mgmt and metadata replicas (and, when
asked, data servers) as separate OS processes on loopback, under one data
folder. ``dfs cluster up``, ``dfs demo``, ``dfs admin add-meta-shard --start``
and ``dfs bench`` run it; the tests use ``dfs.testing.cluster.LocalCluster``,
this class with test-only extras.

    c = LocalCluster("/tmp/x", shards=2, replicas=3).start()
    c = LocalCluster("/tmp/y", data_servers=3, targets_per_server=2).start()
    c.procs[0].metrics            # "127.0.0.1:PORT": GET /metrics there (metrics=False: none)
    c.kill(c.leader_of(0))        # kill -9
    c.restart(proc)
    p = c.add_meta_replica(0)     # a new replica in the cluster file, started: then
                                  #   dfs admin add-meta-replica --shard 0 <p.replica>
    c.remove_meta_replica(p)      # after dfs admin remove-meta-replica: stop it, forget it
    ps = c.add_meta_shard()       # a new shard's replicas: then dfs admin add-meta-shard
    c.stop()

Security is on as ``dfs cluster up`` deploys it: the cluster file gets a
random client token (``auth=False``: none), a random Raft password and salt
and, with ``tls=TlsConfig(...)``, gRPC over TLS; the data folder is its
owner's only (0700), as is everything the servers write in it. The cluster's credentials are remembered for its addresses in
this process (``dfs.wire.auth.remember``), so clients made from its addresses
alone reach it; ``client.toml`` next to ``cluster.toml`` is what a client
machine would get (no Raft password).

Processes are tracked by PID; ``stop`` ends exactly the processes this object
started (SIGTERM, then SIGKILL after a grace period).

May import: dfs.common, dfs.wire, dfs.local and the generated stubs; never the
client library (clients of the cluster are their user's business) or dfs.testing.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import replace

from dfs._proto import meta_pb2 as pb
from dfs.common.config import (
    ClusterConfig,
    DataServerConfig,
    RaftOptions,
    ReplicaAddr,
    SecurityConfig,
    ShardConfig,
    TargetConfig,
    TlsConfig,
    edit_cluster_file,
    new_raft_salt,
    replica_entry,
)
from dfs.local import probe
from dfs.local.procs import Proc, ServerGroup, free_ports
from dfs.wire import auth as wire_auth
from dfs.common.clustermap import ClusterMap


class LocalCluster(ServerGroup):
    def __init__(self, root: str, shards: int = 2, replicas: int = 3, mgmt_replicas: int = 3,
                 raft: RaftOptions | None = None, host: str = "127.0.0.1", *, data_servers: int = 0,
                 targets_per_server: int = 1, chain_replicas: int = 3, target_timeout: float = 3.0,
                 spawn_data: bool = True, scrub_interval: float | None = None, scrub_rate: int | None = None,
                 orphan_scan_interval: float | None = None, orphan_grace: float | None = None,
                 resync_rate: int | None = None, metrics: bool = True, auth: bool = True, tls: TlsConfig | None = None,
                 durability: str | None = None, security: SecurityConfig | None = None) -> None:
        """``spawn_data=False``: the data servers are in the cluster file, but this object
        does not run them (a test plays their part, e.g. sends their heartbeats).
        ``metrics``: give every process a free port for its Prometheus endpoint.
        ``scrub_interval``, ``scrub_rate``, ``orphan_scan_interval``, ``orphan_grace``, ``resync_rate``: the
        data servers' options of the cluster file (None: the cluster file's default).
        ``auth``: generate a client token; ``tls``: gRPC over TLS with these files;
        ``durability``: "sync" or "async" (None: the cluster file's default, "sync");
        ``security``: the ``[security]`` table (root squashing; None: the default, off).
        These only for a new cluster file (an existing one is used as it is)."""
        self.root = os.path.abspath(root)
        self.config_path = os.path.join(self.root, "cluster.toml")
        if os.path.exists(self.config_path):
            self.cfg = ClusterConfig.load(self.config_path)  # the same cluster again
        else:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            os.chmod(self.root, 0o700)  # secrets, chunks and logs below: not other users' to read
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
                cluster_id=secrets.token_hex(4), raft_password=secrets.token_hex(32), raft_salt=new_raft_salt(),
                mgmt=mgmt, shards=shard_cfgs, raft=raft or RaftOptions(), data=data,
                chain_replicas=chain_replicas, target_timeout=target_timeout,
                **{k: v for k, v in (("scrub_interval", scrub_interval), ("scrub_rate", scrub_rate),
                                     ("orphan_scan_interval", orphan_scan_interval),
                                     ("orphan_grace", orphan_grace), ("resync_rate", resync_rate),
                                     ("durability", durability))
                   if v is not None},
                client_token=secrets.token_hex(32) if auth else None, tls=tls,
                **({"security": security} if security is not None else {}))
            self._save_private(self.config_path, self.cfg.save)
            self._save_private(os.path.join(self.root, "client.toml"), self.cfg.client_config().save)
        self.credentials = wire_auth.remember_config(self.cfg)  # what clients of this cluster show
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

    # ------------------------------------------------------------------ the cluster file
    def reload(self) -> ClusterConfig:
        """Read the cluster file again (``dfs admin`` membership commands rewrite it)."""
        self.cfg = ClusterConfig.load(self.config_path)
        self.credentials = wire_auth.remember_config(self.cfg)
        return self.cfg

    def _edited(self, edit) -> None:
        self.cfg = edit_cluster_file(self.config_path, edit)
        self.credentials = wire_auth.remember_config(self.cfg)

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
        self.reload()
        s = self.cfg.shard(shard)
        rid = max((r.id for r in s.replicas), default=-1) + 1
        while os.path.exists(os.path.join(self.root, f"shard{shard}", f"r{rid}")):
            rid += 1  # never reuse a removed replica's folder
        r = self._new_replica_addr(rid, any(x.metrics for x in s.replicas))

        def edit(d: dict) -> None:
            d["shards"][shard]["replicas"].append(replica_entry(r))

        self._edited(edit)
        p = self._meta_proc(shard, r)
        self.procs.append(p)
        if spawn:
            self.spawn(p)
        return p

    def remove_meta_replica(self, p: Proc, grace: float = 10.0) -> None:
        """Stop replica ``p`` (SIGTERM, then SIGKILL after ``grace``) and forget it: after
        `dfs admin remove-meta-replica` took it out of its group and the cluster file."""
        self.terminate(p, grace)
        self.procs.remove(p)
        self.reload()

    def add_meta_shard(self, replicas: int | None = None, spawn: bool = True) -> list[Proc]:
        """Append shard S (the next id) with ``replicas`` replicas (default: as many as shard
        0) on free ports to the cluster file and (``spawn``) start them: a new Raft group that
        `dfs admin add-meta-shard` brings into the cluster map."""
        self.reload()
        sid = self.cfg.nshards
        n = replicas or len(self.cfg.shards[0].replicas)
        metrics = any(r.metrics for s in self.cfg.shards for r in s.replicas)
        reps = [self._new_replica_addr(i, metrics) for i in range(n)]

        def edit(d: dict) -> None:
            d["shards"].append({"id": sid, "replicas": [replica_entry(r) for r in reps]})

        self._edited(edit)
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
        self.credentials = wire_auth.remember_config(self.cfg)
        d = os.path.join(self.root, f"data{sid}")
        p = Proc("data", -1, sid, ds.address, d, d + ".log", metrics=ds.metrics)
        self.procs.append(p)
        if spawn:
            self.spawn(p)
        return p

    # ------------------------------------------------------------------ asking the servers
    @property
    def mgmt_addresses(self) -> list[str]:
        return [m.address for m in self.cfg.mgmt]

    def _run(self, coro):
        return asyncio.run(coro)

    async def _statuses(self, procs: list[Proc]) -> list[pb.ShardStatus | None]:
        """Status of each process of ``procs`` (None: not running here, or no answer)."""
        sts = await probe.replica_statuses(self.credentials, [p.address for p in procs if p.alive])
        it = iter(sts)
        return [next(it) if p.alive else None for p in procs]

    def statuses(self, shard: int) -> list[pb.ShardStatus | None]:
        return self._run(self._statuses(self.meta_procs(shard)))

    async def _cluster_map(self) -> ClusterMap | None:
        m = await probe.first_map(self.credentials, [p.address for p in self.mgmt_procs() if p.alive])
        return None if m is None else ClusterMap.from_pb(m)

    def cluster_map(self) -> ClusterMap | None:
        """The cluster map as the first mgmt replica that answers has it applied (None: none answers)."""
        return self._run(self._cluster_map())

    async def _mgmt_ready(self) -> bool:
        m = await self._cluster_map()
        if m is None:
            return False
        if self.data_procs():  # and every target of the data servers we run serving
            # (those still in the map: `dfs admin remove-target` takes targets out; drained ones count)
            want = {t.id for d in self.cfg.data for t in d.targets} & set(m.targets)
            return want <= {tid for tid, t in m.targets.items() if t.state in ("serving", "draining")}
        return True

    def not_ready(self) -> str | None:
        """Healthy: mgmt serves the map (with every data target serving, if there are data
        servers) and every shard has a leader. A dead process is waited for (a test may
        restart it) until the wait's deadline."""
        dead = self.dead()
        if dead:
            return f"dead: {dead}"
        if not self._run(self._mgmt_ready()):
            return "no cluster map" + (" with every target serving" if self.data_procs() else "")
        for s in range(self.cfg.nshards):
            if self.leader_of(s) is None:
                return f"shard {s}: no leader"
        return None
