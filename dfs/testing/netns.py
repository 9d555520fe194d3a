"""A multi-host cluster on one machine: each "host" is a Linux network namespace.

    with Fabric() as net:                                  # a private switch
        hosts = [net.add_host(f"h{i}", 10 + i) for i in range(3)]   # 10.213.0.10..12
        client = net.add_host("c", 100)
        c = NetnsCluster(root, hosts, client, shards=2).start()
        ...
        net.partition(hosts[0])    # the host's cable pulled out of the switch
        net.heal(hosts[0])
        c.stop()

Topology. ``Fabric`` makes a "switch" namespace holding a Linux bridge; every
host namespace is plugged into it with a veth pair (``eth0`` on the host side,
``v<N>`` on the switch side) and gets one address of a private /24
(``10.213.0.0/24`` by default) and its own loopback. Nothing is created in
the namespace the tests run in (no interface, no route, no rule there), and
the host namespaces have no default route, so no traffic leaves the fabric.
Interface names live inside the fabric's own namespaces, so they are short
and cannot collide with anything; the namespaces carry a per-run prefix
(``dfsnt-<pid>-<random>-``). ``partition`` sets the host's switch port down
(the host keeps talking to itself over its own address, like a machine whose
uplink died); ``heal`` sets it up again.

``NetnsCluster`` writes a cluster file (``ClusterConfig.save``) whose addresses
are the hosts' addresses, places the processes on the hosts (mgmt replica i,
replica r of every shard and data server d on host ``i % n`` / ``r % n`` /
``d % n``: with 3 hosts, a 3-machine deployment) and starts each one as
``ip netns exec NS python -m dfs.{mgmt,meta,data}.server ...``. ``ip netns
exec`` execs the server, so the PID it returns is the server's: processes are
stopped by PID, and only those this object started.

The test process itself cannot reach the fabric's addresses. It asks an
``Agent``: a small process inside a namespace (``python -m dfs.testing.netns
agent``) that answers JSON lines on stdin/stdout -- Status of meta replicas,
the cluster map of mgmt replicas, a probe write sent to one replica only.
Each replica's status is asked of the agent on its own host, so it is
visible during a partition too; the cluster map is asked from the client's
namespace (what a client sees).

``unavailable()`` says why this cannot run here (not root, no ``ip``, no
namespaces, veth or bridge support), or None.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Self

from dfs.common.config import (
    ClusterConfig,
    DataServerConfig,
    RaftOptions,
    ReplicaAddr,
    ShardConfig,
    TargetConfig,
)
from dfs.local.procs import Proc, ServerGroup, pid_alive
from dfs.testing.keys import raft_password, raft_salt
from dfs.testing.replicas import ReplicaFiles

PREFIX = "dfsnt-"  # every namespace this module makes: dfsnt-<pid>-<hex>-<label>
DEFAULT_SUBNET = "10.213.0"


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


def list_netns() -> list[str]:
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def remove_stale() -> list[str]:
    """Delete namespaces of earlier runs whose creating process is gone (a run
    killed before its cleanup). Processes are never touched: a namespace that
    still holds one lives on, unnamed, until they exit."""
    gone = []
    for name in list_netns():
        m = re.fullmatch(re.escape(PREFIX) + r"(\d+)-[0-9a-f]+-.*", name)
        if m and not pid_alive(int(m.group(1))) and _ip("netns", "del", name, check=False).returncode == 0:
            gone.append(name)
    return gone


_UNAVAILABLE: list[str | None] = []


def unavailable() -> str | None:
    """Why network-namespace tests cannot run here (None: they can). Probes once
    per process: a switch namespace with a bridge and one veth into a second one."""
    if _UNAVAILABLE:
        return _UNAVAILABLE[0]
    reason: str | None = None
    if not sys.platform.startswith("linux"):
        reason = "network namespaces are Linux only"
    elif os.geteuid() != 0:
        reason = "needs root (ip netns)"
    elif shutil.which("ip") is None:
        reason = "no `ip` command (iproute2)"
    else:
        try:
            with Fabric(subnet="10.213.255") as f:
                f.add_host("probe", 1)
        except (NetnsError, OSError, subprocess.SubprocessError) as e:
            reason = f"cannot set up network namespaces: {e}"
    _UNAVAILABLE.append(reason)
    return reason


# ---------------------------------------------------------------------- fabric

@dataclass
class Host:
    """One namespace plugged into the fabric's switch."""

    label: str
    ns: str  # the namespace's name
    addr: str  # its address on the fabric
    port: str  # the switch-side veth (in the switch namespace)

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: list[str], timeout: float = 60.0, check: bool = True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(self.argv(argv), check=False, capture_output=True, text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise NetnsError(f"[{self.label}] {' '.join(argv)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def listening(self) -> list[str]:
        """Local host:port of every listening TCP socket in the namespace (an IPv4-mapped
        IPv6 address, as gRPC binds an IPv4 one, is shown as the IPv4 address)."""
        out = self.run(["ss", "-H", "-l", "-t", "-n"]).stdout
        return [re.sub(r"^\[::ffff:([0-9.]+)\]", r"\1", line.split()[3]) for line in out.splitlines() if line.strip()]


class Fabric:
    """A private switch (a bridge in its own namespace) and the hosts plugged into it."""

    def __init__(self, subnet: str = DEFAULT_SUBNET, prefix: str | None = None) -> None:
        if not re.fullmatch(r"\d+\.\d+\.\d+", subnet):
            raise ValueError(f"subnet is the first three octets of a /24, not {subnet!r}")
        remove_stale()
        self.subnet = subnet
        self.prefix = prefix or f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}-"
        self.switch = self.prefix + "sw"
        self.hosts: list[Host] = []
        self._made: list[str] = []  # namespaces to delete, in creation order
        self._closed = False
        try:
            self._add_ns(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, label: str, octet: int) -> Host:
        """A namespace ``<prefix><label>`` with address ``<subnet>.<octet>/24`` on the switch."""
        if not 1 <= octet <= 254:
            raise ValueError(f"octet must be in 1..254, not {octet}")
        ns = self.prefix + label
        port = f"v{len(self.hosts)}"
        h = Host(label, ns, f"{self.subnet}.{octet}", port)
        self._add_ns(ns)
        # both ends are made from inside the switch namespace; the peer goes straight into ns
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", f"{h.addr}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        self.hosts.append(h)
        return h

    def partition(self, *hosts: Host) -> None:
        """Cut ``hosts`` off the switch (their ports down): they reach nobody, nobody reaches them."""
        for h in hosts:
            _ip("-n", self.switch, "link", "set", h.port, "down")

    def heal(self, *hosts: Host) -> None:
        for h in hosts:
            _ip("-n", self.switch, "link", "set", h.port, "up")

    def cut(self, host: Host, *others: Host) -> None:
        """Cut ``host`` off ``others`` only (blackhole routes to them in ``host``): what it
        sends them is dropped, so neither side gets an answer; the rest still reach it."""
        for o in others:
            _ip("-n", host.ns, "route", "replace", "blackhole", f"{o.addr}/32")

    def uncut(self, host: Host) -> None:
        _ip("-n", host.ns, "route", "flush", "type", "blackhole")

    def close(self) -> None:
        """Delete every namespace this fabric made (their veths and the bridge go with them)."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for name in reversed(self._made):
            r = _ip("netns", "del", name, check=False)
            if r.returncode != 0 and name in list_netns():
                errors.append(f"{name}: {r.stderr.strip()}")
        if errors:
            raise NetnsError("could not delete namespaces: " + "; ".join(errors))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HostFaults:
    """The network faults of dfs.stress.nemesis (its ``Net``) on a NetnsCluster: a fault of a
    process is its host's (every process there): ``partition`` pulls the host's cable,
    ``cut`` isolates it from the hosts of the given peers only (the client host still
    reaches it: a leader its clients talk to that cannot reach its followers)."""

    def __init__(self, fabric: Fabric, cluster: NetnsCluster) -> None:
        self.fabric = fabric
        self.cluster = cluster

    def affected(self, proc: NetProc) -> list[NetProc]:
        return self.cluster.on_host(proc.host)

    def partition(self, proc: NetProc) -> None:
        self.fabric.partition(proc.host)

    def cut(self, proc: NetProc, peers: list[NetProc]) -> None:
        hosts = {q.host.ns: q.host for q in peers if q.host is not proc.host}
        self.fabric.cut(proc.host, *hosts.values())

    def heal(self, proc: NetProc) -> None:
        self.fabric.heal(proc.host)
        self.fabric.uncut(proc.host)


# ---------------------------------------------------------------------- agent

class Agent:
    """A helper process inside one namespace, asked over JSON lines (see ``_agent_main``)."""

    def __init__(self, host: Host, log: str) -> None:
        self.host = host
        with open(log, "ab") as logf:
            self.popen = subprocess.Popen(
                host.argv([sys.executable, "-m", "dfs.testing.netns", "agent"]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"agent-{host.label}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(b"")  # EOF

    def call(self, op: str, timeout: float = 30.0, **args) -> dict:
        with self._lock:
            if self.popen.poll() is not None:
                raise NetnsError(f"agent in {self.host.label} exited ({self.popen.returncode})")
            self.popen.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
            self.popen.stdin.flush()
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.close()  # a late answer must not be taken for the next call's
                raise NetnsError(f"agent in {self.host.label}: no answer to {op} in {timeout}s") from None
        if not line:
            raise NetnsError(f"agent in {self.host.label} exited")
        rep = json.loads(line)
        if "error" in rep:
            raise NetnsError(f"agent in {self.host.label}: {op}: {rep['error']}")
        return rep

    def close(self) -> None:
        p = self.popen
        if p.poll() is None:
            try:
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _agent_main() -> int:
    """``python -m dfs.testing.netns agent``: one JSON request per stdin line, one JSON answer per stdout line.

    * ``{"op": "status", "addrs": [...]}`` -> ``{"status": [{role, leader, term, commit_index,
      applied_index, leader_ready} | null, ...]}`` (MetaService.Status of each replica; null: no answer)
    * ``{"op": "map", "mgmt": [...]}`` -> ``{"map": {epoch, shards, mgmt, targets: {id: state}}}``
      or ``{"map": null}`` (the first mgmt replica that answers)
    * ``{"op": "create", "addr": A, "shard": S, "parent": INO, "name": N, "deadline": D}`` -> a
      client's create sent to replica A only (every replica of every shard is A; no mgmt), with
      the client's retries until the deadline: ``{"ok": true, "ino": ...}`` or
      ``{"ok": false, "exception": "<class name>", "detail": ...}``
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg

    channels: dict[str, grpc.Channel] = {}

    def channel(addr: str) -> grpc.Channel:
        ch = channels.get(addr)
        if ch is None:
            ch = channels[addr] = grpc.insecure_channel(addr)
        return ch

    def status(addr: str) -> dict | None:
        try:
            st = pbg.MetaServiceStub(channel(addr)).Status(pb.ShardStatusRequest(), timeout=2.0)
        except grpc.RpcError:
            return None
        return {"shard": st.shard, "replica": st.replica, "role": st.role, "leader": st.leader, "term": st.term,
                "commit_index": st.commit_index, "applied_index": st.applied_index,
                "leader_ready": st.leader_ready}

    def cluster_map(addrs: list[str]) -> dict | None:
        for addr in addrs:
            try:
                rep = pbg.MgmtServiceStub(channel(addr)).GetClusterMap(pb.GetClusterMapRequest(), timeout=2.0)
            except grpc.RpcError:
                continue
            if rep.status == 0 and rep.map.shards:
                m = rep.map
                return {"epoch": m.epoch, "answered_by": addr,
                        "shards": [[r.address for r in sorted(s.replicas, key=lambda r: r.id)]
                                   for s in sorted(m.shards, key=lambda s: s.shard)],
                        "mgmt": [r.address for r in m.mgmt],
                        "targets": {str(t.id): t.state for t in m.targets}}
        return None

    async def create(req: dict) -> dict:
        from dfs.client.meta import MetaClient
        from dfs.common.clustermap import ClusterMap
        from dfs.route.shards import GrpcTransport

        addr = req["addr"]
        nshards = int(req.get("nshards", req["shard"] + 1))
        cmap = ClusterMap(0, [[addr] for _ in range(nshards)], [])
        t = GrpcTransport([], cmap=cmap, deadline=float(req.get("deadline", 5.0)),
                          attempt_timeout=float(req.get("attempt_timeout", 2.0)))
        try:
            attr, _ = await MetaClient(t).create(int(req["parent"]), req["name"])
            return {"ok": True, "ino": attr.ino}
        except Exception as e:  # noqa: BLE001 - reported to the asker
            return {"ok": False, "exception": type(e).__name__, "detail": str(e)}
        finally:
            await t.close()

    pool = ThreadPoolExecutor(8)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req["op"]
            if op == "status":
                rep = {"status": list(pool.map(status, req["addrs"]))}
            elif op == "map":
                rep = {"map": cluster_map(req["mgmt"])}
            elif op == "create":
                rep = asyncio.run(create(req))
            else:
                rep = {"error": f"unknown op {op!r}"}
        except Exception as e:  # noqa: BLE001 - reported to the asker
            rep = {"error": repr(e)}
        sys.stdout.write(json.dumps(rep) + "\n")
        sys.stdout.flush()
    for ch in channels.values():
        ch.close()
    pool.shutdown()
    return 0


# ---------------------------------------------------------------------- cluster

@dataclass
class NetProc(Proc):
    """One server process of a NetnsCluster, on one host."""

    host: Host | None = None


class NetnsCluster(ServerGroup, ReplicaFiles):
    """A cluster whose processes run on ``hosts`` (namespaces of one ``Fabric``), from a cluster file.

    ``client`` is the namespace the observer agent (cluster map) runs in.
    Placement: see the module docstring. Every address in the cluster file is
    a host's fabric address; ports are distinct cluster-wide from 7000 up.
    The process handling (spawn, stop, kill, waits) is the launcher's
    (``dfs.local.procs.ServerGroup``); each argv runs inside its host's namespace."""

    poll_interval = 0.1
    healthy_timeout = 90.0
    converge_timeout = 60.0

    def __init__(self, root: str, hosts: list[Host], client: Host, *, shards: int = 2, replicas: int = 3,
                 mgmt_replicas: int = 3, data_servers: int = 3, chain_replicas: int = 3,
                 target_timeout: float = 3.0, raft: RaftOptions | None = None, metrics: bool = False) -> None:
        """``metrics``: give mgmt and metadata replicas a Prometheus endpoint on their host."""
        if not hosts:
            raise ValueError("at least one host")
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.hosts = list(hosts)
        self.client_host = client
        self.config_path = os.path.join(self.root, "cluster.toml")
        n = len(self.hosts)
        port = iter(range(7000, 8000))

        def rep(i: int, h: Host) -> ReplicaAddr:
            return ReplicaAddr(i, f"{h.addr}:{next(port)}", f"{h.addr}:{next(port)}",
                               f"{h.addr}:{next(port)}" if metrics else None)

        mgmt = tuple(rep(i, self.hosts[i % n]) for i in range(mgmt_replicas))
        shard_cfgs = tuple(ShardConfig(s, tuple(rep(r, self.hosts[r % n]) for r in range(replicas)))
                           for s in range(shards))
        data = tuple(DataServerConfig(d, f"{self.hosts[d % n].addr}:{next(port)}",
                                      (TargetConfig(d + 1, os.path.join(self.root, f"data{d}", "t0")),))
                     for d in range(data_servers))
        self.cfg = ClusterConfig(cluster_id=secrets.token_hex(4), raft_password=raft_password(), raft_salt=raft_salt(),
                                 mgmt=mgmt,
                                 shards=shard_cfgs, raft=raft or RaftOptions(), data=data,
                                 chain_replicas=chain_replicas, target_timeout=target_timeout)
        self.cfg.save(self.config_path)
        self.cfg = ClusterConfig.load(self.config_path)  # what the servers read
        self.procs: list[NetProc] = []
        for m in self.cfg.mgmt:
            d = os.path.join(self.root, f"mgmt{m.id}")
            self.procs.append(NetProc("mgmt", -1, m.id, m.address, d, d + ".log", metrics=m.metrics,
                                      host=self.hosts[m.id % n]))
        for s in self.cfg.shards:
            for r in s.replicas:
                d = os.path.join(self.root, f"shard{s.id}", f"r{r.id}")
                self.procs.append(NetProc("meta", s.id, r.id, r.address, d, d + ".log", metrics=r.metrics,
                                          host=self.hosts[r.id % n]))
        for ds in self.cfg.data:
            d = os.path.join(self.root, f"data{ds.id}")
            self.procs.append(NetProc("data", -1, ds.id, ds.address, d, d + ".log", host=self.hosts[ds.id % n]))
        self._agents: dict[str, Agent] = {}

    # ------------------------------------------------------------------ life cycle
    def argv(self, p: NetProc) -> list[str]:
        return p.host.argv(super().argv(p))

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to every process this object started, SIGKILL after ``grace``; then the agents."""
        super().stop(grace)
        self.close_agents()

    def close_agents(self) -> None:
        agents, self._agents = list(self._agents.values()), {}
        for a in agents:
            a.close()

    # ------------------------------------------------------------------ agents
    def agent(self, host: Host) -> Agent:
        a = self._agents.get(host.ns)
        if a is None or a.popen.poll() is not None:
            a = self._agents[host.ns] = Agent(host, os.path.join(self.root, f"agent-{host.label}.log"))
        return a

    # ------------------------------------------------------------------ inspection
    def on_host(self, host: Host) -> list[NetProc]:
        return [p for p in self.procs if p.host is host]

    @property
    def mgmt_addresses(self) -> list[str]:
        return [m.address for m in self.cfg.mgmt]

    def statuses(self, shard: int, exclude: tuple[Host, ...] = ()) -> list[dict | None]:
        """Status of each replica of ``shard``, asked from the replica's own host (None: dead, no
        answer, or on a host in ``exclude``, whose agent is not asked)."""
        procs = self.meta_procs(shard)
        out: list[dict | None] = [None] * len(procs)
        by_host: dict[str, list[int]] = {}
        for i, p in enumerate(procs):
            if p.alive and p.host not in exclude:
                by_host.setdefault(p.host.ns, []).append(i)
        for idx in by_host.values():
            host = procs[idx[0]].host
            sts = self.agent(host).call("status", addrs=[procs[i].address for i in idx])["status"]
            for i, st in zip(idx, sts):
                out[i] = st
        return out

    @staticmethod
    def status_field(st: dict, name: str):
        return st[name]

    def leader_of(self, shard: int, exclude: tuple[Host, ...] = ()) -> NetProc | None:
        """The replica of ``shard`` that says it leads (on a host not in ``exclude``)."""
        for p, st in zip(self.meta_procs(shard), self.statuses(shard, exclude)):
            if st is not None and st["role"] == "leader":
                return p
        return None

    def cluster_map(self, via: Host | None = None) -> dict | None:
        """The cluster map as the first mgmt replica that answers ``via``'s agent has it (default: the client's)."""
        return self.agent(via or self.client_host).call("map", mgmt=self.mgmt_addresses)["map"]

    def probe_create(self, p: NetProc, parent: int, name: str, deadline: float = 5.0) -> dict:
        """A client's create sent to meta replica ``p`` only, from ``p``'s own host (retries until ``deadline``)."""
        assert p.role == "meta", p.name
        return self.agent(p.host).call("create", timeout=deadline + 30, addr=p.address, shard=p.shard,
                                       nshards=self.cfg.nshards, parent=parent, name=name, deadline=deadline)

    def not_ready(self) -> str | None:
        """Healthy: mgmt serves the map with every target serving (as the client's namespace
        sees it) and every shard has a leader; a process that died raises at once."""
        dead = self.dead()
        if dead:
            raise NetnsError(f"processes died: {dead}; logs in {self.root}\n" + self.log_tails(dead))
        m = self.cluster_map()
        if m is None:
            return "no cluster map"
        want = {str(t.id) for d in self.cfg.data for t in d.targets}
        serving = {tid for tid, st in m["targets"].items() if st == "serving"}
        if not want <= serving:
            return f"targets not serving: {m['targets']}"
        for s in range(self.cfg.nshards):
            if self.leader_of(s) is None:
                return f"shard {s}: no leader"
        return None

    # ------------------------------------------------------------------ client processes
    def client_argv(self, argv: list[str], host: Host | None = None) -> list[str]:
        """``python argv...`` inside ``host`` (default: the client namespace)."""
        return (host or self.client_host).argv([sys.executable, *argv])


if __name__ == "__main__":
    if sys.argv[1:] == ["agent"]:
        sys.exit(_agent_main())
    print("usage: python -m dfs.testing.netns agent", file=sys.stderr)
    sys.exit(2)
