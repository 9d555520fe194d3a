"""Which dfs processes a cluster file asks for, and on which machine each runs.

A role runs on the machine named by the host part of its `address` (the
client-facing one; its `raft` address must be an interface of the same
machine). This module only reads the cluster file; it never connects
anywhere. `bootstrap` and `render_k8s` both build on it so that the systemd
and Kubernetes deployments agree on the roles.
"""

from __future__ import annotations

from dataclasses import dataclass

from dfs.common.config import ClusterConfig

# The order in which roles are started: the cluster map first (every other
# process asks it for the map), then the metadata shards, then the data
# servers (they register their targets with mgmt), then the clients.
PHASES = ("mgmt", "meta", "data", "mount")


@dataclass(frozen=True, slots=True)
class Role:
    kind: str  # "mgmt" | "meta" | "data"
    ids: tuple[int, ...]  # (replica,) | (shard, replica) | (server,)
    address: str
    raft: str | None  # None for data servers
    targets: tuple[str, ...] = ()  # data servers: their target directories

    @property
    def host(self) -> str:
        return host_of(self.address)

    @property
    def instance(self) -> str:
        """The systemd instance name: 0 for mgmt replica 0, 1-2 for shard 1 replica 2."""
        return "-".join(str(i) for i in self.ids)

    @property
    def unit(self) -> str:
        return f"dfs-{self.kind}@{self.instance}.service"

    @property
    def listen(self) -> tuple[str, ...]:
        return (self.address,) if self.raft is None else (self.address, self.raft)


def split_hostport(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address must be host:port, not {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def host_of(addr: str) -> str:
    return split_hostport(addr)[0]


def port_of(addr: str) -> int:
    return split_hostport(addr)[1]


def roles(cfg: ClusterConfig) -> list[Role]:
    """Every server process of the cluster file, in start order."""
    out = [Role("mgmt", (m.id,), m.address, m.raft) for m in cfg.mgmt]
    out += [Role("meta", (s.id, r.id), r.address, r.raft) for s in cfg.shards for r in s.replicas]
    out += [Role("data", (d.id,), d.address, None, tuple(t.path for t in d.targets)) for d in cfg.data]
    check(out)
    return out


def check(rs: list[Role]) -> None:
    """Refuse what could never run: one host:port for two listeners, two
    instances with one name."""
    seen: dict[str, str] = {}
    names: set[str] = set()
    for r in rs:
        if r.unit in names:
            raise ValueError(f"{r.kind} {r.instance} appears twice")
        names.add(r.unit)
        for a in r.listen:
            h, p = split_hostport(a)
            key = f"{h}:{p}"
            if key in seen:
                raise ValueError(f"{key} is used by both {seen[key]} and {r.kind} {r.instance}")
            seen[key] = f"{r.kind} {r.instance}"


def hosts(rs: list[Role]) -> list[str]:
    """The machines, in the order they first appear in the cluster file."""
    return list(dict.fromkeys(r.host for r in rs))


def mgmt_addresses(cfg: ClusterConfig) -> list[str]:
    return [m.address for m in cfg.mgmt]
