"""The cluster file: one TOML document that every dfs process and client reads.

    cluster_id = "c1"
    raft_password = "..."          # encrypts and authenticates Raft peer traffic (16+ bytes, not a placeholder)
    raft_salt = "..."              # random per cluster (secrets.token_hex(16)): mixed into every key
                                   # derived from the password (absent: an older file, see below)
    durability = "sync"            # "sync": acknowledged writes survive a power cut of every
                                   # machine; "async" (scratch data): only process crashes
                                   # (docs/design/durability.md)
    client_token = "..."           # optional: the bearer token every client and server shows
    # client_token_file = "client.token"   # or: a file holding it (relative to this file's folder)

    [[mgmt]]                       # the cluster-map Raft group (1, 3 or 5 replicas)
    id = 0
    address = "127.0.0.1:7000"     # gRPC, for clients and servers
    raft = "127.0.0.1:7100"        # Raft peers only (cluster network)
    metrics = "127.0.0.1:9100"     # optional: Prometheus metrics over HTTP (absent: none)

    [[shards]]                     # metadata shards, each a Raft group (ids 0..S-1)
    id = 0
    [[shards.replicas]]
    id = 0
    address = "127.0.0.1:7010"
    raft = "127.0.0.1:7110"
    metrics = "127.0.0.1:9110"     # optional, as for mgmt

    [[data]]                       # data servers (optional)
    id = 0
    address = "127.0.0.1:7200"     # data plane host:port
    metrics = "127.0.0.1:9200"     # optional, as for mgmt
    [[data.targets]]               # one directory on a local disk each
    id = 1                         # cluster-wide unique u32
    path = "/srv/dfs/t1"

    chain_replicas = 3             # targets per chain (capped at the number of data servers)
    target_timeout = 3.0           # seconds without a heartbeat before mgmt takes a target out
    scrub_interval = 3600.0        # data servers: seconds between scrub passes of a target
    scrub_rate = 67108864          # data servers: bytes/s a scrub pass reads (0: unlimited)
    resync_rate = 0                # data servers: bytes/s a resync copies into a target (0: unlimited)
    orphan_scan_interval = 600.0   # data servers: seconds between orphan scans of a target
    orphan_grace = 3600.0          # data servers: an orphan scan leaves chunks younger than this (s)
    max_inflight_bytes = 536870912 # data servers: client payload bytes in flight at once (more wait)

    [raft]                         # optional tuning
    election_timeout = [0.4, 0.8]
    group_commit = true

    [security]                     # optional
    root_squash = false            # true: metadata servers treat a client's uid 0 (and gid 0) as
                                   # squash_uid / squash_gid (servers, with the internal token, are not squashed)
    squash_uid = 65534             # nobody
    squash_gid = 65534             # nogroup
    data_capabilities = true       # data servers serve a client's chunk request only under a
                                   # capability the metadata service signed (docs/design/security.md)
    capability_ttl = 600.0         # seconds a capability lasts (clients renew it before)

    [tls]                          # optional: gRPC over TLS (the data plane stays plaintext)
    cert = "server.pem"            # this host's certificate chain (servers only)
    key = "server.key"             # its private key (servers only)
    ca = "ca.pem"                  # the CA that signed the servers' certificates (everyone)
    server_name = "dfs.internal"   # optional: the name to check in the certificate instead
                                   # of the address's host

A shard has 1 to 7 replicas (odd counts are the useful ones: 2 tolerates no
more failures than 1, 4 no more than 3; even counts are what a membership
change passes through). Replica ids are unique within their shard and every
gRPC and Raft address is used once. Replicas are named by id, not by their
position in the list: `dfs admin remove-meta-replica` takes entries out and
``add-meta-replica`` appends them with new ids (``edit_cluster_file``).

The Raft password is refused when it is empty, shorter than
``RAFT_PASSWORD_MIN`` bytes, has fewer than 8 distinct characters, or looks
like a placeholder (``change-me``, ``password``, the example file's): it is
all that keeps strangers off the Raft ports. ``raft_key`` (what pysyncobj
gets) and ``internal_token`` are derived from it and ``raft_salt`` with
HKDF-SHA256, so two clusters that share a password share no key. A file
without ``raft_salt`` (written before it existed) still loads, with the keys
derived as they were (the password itself for Raft); servers log a warning,
and ``dfs cluster up``, the bootstrap and the Kubernetes renderer refuse or
add one (adding a salt changes every key: restart all servers together).

No ``client_token`` (nor ``client_token_file``) means no client
authentication (files from before it existed). Relative paths of
``client_token_file`` and ``[tls]`` are taken from the cluster file's folder by
``load``. ``ClientConfig`` reads only what a client needs (mgmt addresses,
the token, the CA), so a client machine can be given a file without
``raft_password`` and without server keys. docs/design/security.md has the
threat model.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import tomli_w

MAX_REPLICAS = 7  # per shard
RAFT_PASSWORD_MIN = 16  # bytes
RAFT_SALT_MIN = 16  # characters
# Substrings that mark a password as an example's or a placeholder (compared in lower case).
PLACEHOLDERS = ("change-me", "changeme", "change_me", "replace-me", "replaceme", "replace_me", "placeholder",
                "example", "password", "secret", "xxxxxxxx", "12345678", "qwerty")
DURABILITY = ("sync", "async")  # what an acknowledged write survives: docs/design/durability.md


@dataclass(frozen=True, slots=True)
class ReplicaAddr:
    id: int
    address: str
    raft: str
    metrics: str | None = None  # Prometheus metrics host:port (None: no endpoint)


@dataclass(frozen=True, slots=True)
class ShardConfig:
    id: int
    replicas: tuple[ReplicaAddr, ...]

    def replica(self, rid: int) -> ReplicaAddr:
        """The replica with id ``rid`` (KeyError if none)."""
        for r in self.replicas:
            if r.id == rid:
                return r
        raise KeyError(f"shard {self.id} has no replica {rid}")


@dataclass(frozen=True, slots=True)
class TargetConfig:
    id: int  # cluster-wide unique u32
    path: str  # the target's directory on the data server's machine


@dataclass(frozen=True, slots=True)
class DataServerConfig:
    id: int
    address: str  # data plane host:port
    targets: tuple[TargetConfig, ...]
    metrics: str | None = None  # Prometheus metrics host:port (None: no endpoint)


def _check_hostport(what: str, addr: str) -> None:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: address must be host:port, not {addr!r}")


check_hostport = _check_hostport  # raises ValueError unless ``addr`` is host:port (port 1..65535)


def _metrics(x: dict) -> str | None:
    v = x.get("metrics")
    if v is not None and not isinstance(v, str):
        raise ValueError(f"metrics must be a host:port string, not {v!r}")
    return v


def _as_int(what: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{what} must be an integer, not {v!r}")  # noqa: TRY004 - the file's errors are ValueErrors
    return v


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """gRPC TLS: PEM file paths. Servers need ``cert`` and ``key``; everyone needs ``ca``."""

    ca: str
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None  # checked against the servers' certificates instead of the host

    def to_dict(self) -> dict:
        return {k: v for k, v in (("ca", self.ca), ("cert", self.cert), ("key", self.key),
                                  ("server_name", self.server_name)) if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> TlsConfig:
        unknown = set(d) - {"ca", "cert", "key", "server_name"}
        if unknown:
            raise ValueError(f"[tls]: unknown keys {sorted(unknown)}")
        if not isinstance(d.get("ca"), str) or not d["ca"]:
            raise ValueError("[tls] needs ca (the PEM file of the CA that signed the servers' certificates)")
        for k in ("cert", "key", "server_name"):
            if d.get(k) is not None and (not isinstance(d[k], str) or not d[k]):
                raise ValueError(f"[tls] {k} must be a non-empty string, not {d[k]!r}")
        if ("cert" in d) != ("key" in d):
            raise ValueError("[tls]: cert and key go together")
        return cls(d["ca"], d.get("cert"), d.get("key"), d.get("server_name"))

    def relative_to(self, base: str) -> TlsConfig:
        def j(p: str | None) -> str | None:
            return None if p is None else os.path.join(base, os.path.expanduser(p))

        return replace(self, ca=j(self.ca), cert=j(self.cert), key=j(self.key))


NOBODY = 65534  # the default uid and gid a squashed root acts as (nobody / nogroup)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """``[security]``: root squashing of the clients' requests, data-plane capabilities
    (docs/design/security.md)."""

    root_squash: bool = False
    squash_uid: int = NOBODY
    squash_gid: int = NOBODY
    data_capabilities: bool = True
    capability_ttl: float = 600.0

    def __post_init__(self) -> None:
        if not isinstance(self.root_squash, bool):
            raise ValueError(f"[security] root_squash must be true or false, not {self.root_squash!r}")
        for k in ("squash_uid", "squash_gid"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32:
                raise ValueError(f"[security] {k} must be an integer in 0..2^32-1, not {v!r}")
        if not isinstance(self.data_capabilities, bool):
            raise ValueError(f"[security] data_capabilities must be true or false, not {self.data_capabilities!r}")
        t = self.capability_ttl
        if isinstance(t, bool) or not isinstance(t, int | float) or not 1 <= t <= 86400:
            raise ValueError(f"[security] capability_ttl must be 1 to 86400 seconds, not {t!r}")

    def to_dict(self) -> dict:
        return {"root_squash": self.root_squash, "squash_uid": self.squash_uid, "squash_gid": self.squash_gid,
                "data_capabilities": self.data_capabilities, "capability_ttl": self.capability_ttl}

    @classmethod
    def from_dict(cls, d) -> SecurityConfig:
        if not isinstance(d, dict):
            raise ValueError("security must be a table ([security])")
        unknown = set(d) - {"root_squash", "squash_uid", "squash_gid", "data_capabilities", "capability_ttl"}
        if unknown:
            raise ValueError(f"[security]: unknown keys {sorted(unknown)}")
        return cls(**d)


# Set only by ``example_secrets()``: render a documentation example whose secrets are still
# placeholders. No server, no bootstrap and no `dfs` command ever sets it.
_EXAMPLE_SECRETS: contextvars.ContextVar[bool] = contextvars.ContextVar("dfs_example_secrets", default=False)


@contextlib.contextmanager
def example_secrets():
    """Within it, a cluster file's placeholder (never empty or short) Raft password and salt
    load: for rendering the shipped examples (``cluster/render_k8s.py --example``) only."""
    tok = _EXAMPLE_SECRETS.set(True)
    try:
        yield
    finally:
        _EXAMPLE_SECRETS.reset(tok)


def _placeholder(v: str) -> str | None:
    low = v.lower()
    return next((p for p in PLACEHOLDERS if p in low), None)


def check_raft_password(pw) -> str:
    """``pw`` if it may be a cluster's Raft password, else ValueError saying why."""
    if not isinstance(pw, str) or not pw:
        raise ValueError("raft_password is empty: generate one (python -c 'import secrets; "
                         "print(secrets.token_hex(32))')")
    if len(pw.encode()) < RAFT_PASSWORD_MIN:
        raise ValueError(f"raft_password must be at least {RAFT_PASSWORD_MIN} bytes (it is all that keeps "
                         f"strangers off the Raft ports): generate one with secrets.token_hex(32)")
    hit = _placeholder(pw)
    if (hit is not None or len(set(pw)) < 8) and not _EXAMPLE_SECRETS.get():
        raise ValueError(f"raft_password looks like a placeholder or is too regular"
                         f"{f' (it contains {hit!r})' if hit else ''}: generate one with secrets.token_hex(32)")
    return pw


def check_raft_salt(salt) -> str:
    """``salt`` if it may be a cluster's ``raft_salt`` (printable ASCII, ``RAFT_SALT_MIN``+ characters)."""
    _check_token("raft_salt", salt)
    if len(salt) < RAFT_SALT_MIN:
        raise ValueError(f"raft_salt must be at least {RAFT_SALT_MIN} characters: generate one with "
                         f"secrets.token_hex(16)")
    hit = _placeholder(salt)
    if hit is not None and not _EXAMPLE_SECRETS.get():  # an example's salt is everyone's: no salt at all
        raise ValueError(f"raft_salt looks like a placeholder (it contains {hit!r}): generate one with "
                         f"secrets.token_hex(16)")
    return salt


def new_raft_salt() -> str:
    import secrets

    return secrets.token_hex(16)


def _hkdf(secret: str, salt: str, info: bytes) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt.encode(), info=info).derive(secret.encode()).hex()


def _check_token(what: str, v) -> str:
    if not isinstance(v, str) or not v or v != v.strip() or any(ord(c) < 33 or ord(c) > 126 for c in v):
        raise ValueError(f"{what} must be a non-empty string of printable ASCII without spaces")
    return v


def _token_of(token: str | None, token_file: str | None) -> str | None:
    """A cluster file's client token, given inline or as a file; None: auth off."""
    if token is not None:
        return token
    return read_token_file(token_file) if token_file is not None else None


def read_token_file(path: str) -> str:
    """The token in ``path`` (surrounding whitespace ignored)."""
    with open(path) as f:
        return _check_token(f"the token in {path}", f.read().strip())


def _auth_fields(d: dict) -> dict:
    """client_token / client_token_file / [tls] of a cluster (or client) file, checked."""
    out: dict = {}
    if "client_token" in d and "client_token_file" in d:
        raise ValueError("client_token and client_token_file: give one of them")
    if "client_token" in d:
        out["client_token"] = _check_token("client_token", d["client_token"])
    if "client_token_file" in d:
        if not isinstance(d["client_token_file"], str) or not d["client_token_file"]:
            raise ValueError("client_token_file must be a path")
        out["client_token_file"] = d["client_token_file"]
    if "tls" in d:
        if not isinstance(d["tls"], dict):
            raise ValueError("tls must be a table ([tls])")
        out["tls"] = TlsConfig.from_dict(d["tls"])
    return out


@dataclass(frozen=True)
class RaftOptions:
    election_timeout: tuple[float, float] = (0.4, 0.8)
    heartbeat: float = 0.1
    leader_fallback_timeout: float = 1.0
    group_commit: bool = True
    max_batch: int = 1024
    max_inflight: int = 2
    log_compaction_min_entries: int = 20000
    log_compaction_min_time: float = 600.0


@dataclass(frozen=True)
class ClusterConfig:
    cluster_id: str
    raft_password: str
    mgmt: tuple[ReplicaAddr, ...]
    shards: tuple[ShardConfig, ...]
    raft: RaftOptions = field(default_factory=RaftOptions)
    data: tuple[DataServerConfig, ...] = ()
    chain_replicas: int = 3
    target_timeout: float = 3.0
    scrub_interval: float = 3600.0  # data servers: seconds between scrub passes of a target
    scrub_rate: int = 64 << 20  # data servers: bytes/s a scrub pass reads; 0 = unlimited
    resync_rate: int = 0  # data servers: bytes/s a resync copies into a target; 0 = unlimited
    orphan_scan_interval: float = 600.0  # data servers: seconds between orphan scans of a target
    orphan_grace: float = 3600.0  # data servers: chunks younger than this are never orphan-scanned away
    client_token: str | None = None  # None (and no client_token_file): no client authentication
    client_token_file: str | None = None
    tls: TlsConfig | None = None  # None: gRPC in plaintext
    durability: str = "sync"  # one of DURABILITY
    raft_salt: str | None = None  # None: a file from before salts (keys derived as they were)
    max_inflight_bytes: int = 512 << 20  # data servers: client payload bytes in flight at once
    security: SecurityConfig = field(default_factory=SecurityConfig)  # [security]: root squashing

    def __post_init__(self) -> None:
        check_raft_password(self.raft_password)
        if self.raft_salt is not None:
            check_raft_salt(self.raft_salt)
        if (isinstance(self.max_inflight_bytes, bool) or not isinstance(self.max_inflight_bytes, int)
                or self.max_inflight_bytes < 1 << 20):
            raise ValueError(f"max_inflight_bytes must be an integer of at least 1 MiB, not "
                             f"{self.max_inflight_bytes!r}")
        if self.durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(map(repr, DURABILITY))}, "
                             f"not {self.durability!r}")
        self._check_metrics()
        self._check_replicas()
        servers: set[int] = set()
        targets: set[int] = set()
        for d in self.data:
            if not isinstance(d.id, int) or d.id < 0:
                raise ValueError(f"data server id must be a non-negative int, not {d.id!r}")
            if d.id in servers:
                raise ValueError(f"data server id {d.id} appears twice")
            servers.add(d.id)
            _check_hostport(f"data server {d.id}", d.address)
            if not d.targets:
                raise ValueError(f"data server {d.id}: at least one [[data.targets]]")
            for t in d.targets:
                if not isinstance(t.id, int) or not 0 <= t.id < 2**32:
                    raise ValueError(f"data server {d.id}: target id must be a u32, not {t.id!r}")
                if t.id in targets:
                    raise ValueError(f"target id {t.id} appears twice (target ids are cluster-wide)")
                targets.add(t.id)
                if not t.path:
                    raise ValueError(f"target {t.id}: empty path")
        if not isinstance(self.chain_replicas, int) or not 1 <= self.chain_replicas <= 255:
            raise ValueError(f"chain_replicas must be in 1..255, not {self.chain_replicas!r}")
        if not self.target_timeout > 0:
            raise ValueError(f"target_timeout must be positive, not {self.target_timeout!r}")
        if not self.scrub_interval > 0:
            raise ValueError(f"scrub_interval must be positive, not {self.scrub_interval!r}")
        if isinstance(self.scrub_rate, bool) or not isinstance(self.scrub_rate, int) or self.scrub_rate < 0:
            raise ValueError(f"scrub_rate must be a non-negative integer (bytes/s), not {self.scrub_rate!r}")
        if isinstance(self.resync_rate, bool) or not isinstance(self.resync_rate, int) or self.resync_rate < 0:
            raise ValueError(f"resync_rate must be a non-negative integer (bytes/s), not {self.resync_rate!r}")
        if not self.orphan_scan_interval > 0:
            raise ValueError(f"orphan_scan_interval must be positive, not {self.orphan_scan_interval!r}")
        if not self.orphan_grace >= 0:
            raise ValueError(f"orphan_grace must not be negative, not {self.orphan_grace!r}")

    def _check_metrics(self) -> None:
        seen: dict[str, str] = {}
        named = [(f"mgmt replica {m.id}", m.metrics) for m in self.mgmt]
        named += [(f"shard {s.id} replica {r.id}", r.metrics) for s in self.shards for r in s.replicas]
        named += [(f"data server {d.id}", d.metrics) for d in self.data]
        for what, addr in named:
            if addr is None:
                continue
            if not isinstance(addr, str):  # the cluster file's errors are all ValueErrors
                raise ValueError(f"{what}: metrics must be a host:port string, not {addr!r}")  # noqa: TRY004
            _check_hostport(f"{what} metrics", addr)
            if addr in seen:
                raise ValueError(f"{what}: metrics address {addr} is also {seen[addr]}'s")
            seen[addr] = what

    def _check_replicas(self) -> None:
        """Ids unique per group; addresses unique among the mgmt replicas and among the
        shards' replicas (a host may run mgmt and meta services on one address)."""
        shard_seen: dict[str, str] = {}
        groups = [("mgmt", self.mgmt, {})] + [(f"shard {s.id}", s.replicas, shard_seen) for s in self.shards]
        for group, reps, seen in groups:
            ids = [r.id for r in reps]
            if len(set(ids)) != len(ids):
                raise ValueError(f"{group}: replica ids appear twice: {ids}")
            for r in reps:
                for kind, addr in (("address", r.address), ("raft", r.raft)):
                    what = f"{group} replica {r.id}"
                    _check_hostport(f"{what} {kind}", addr)
                    if addr in seen:
                        raise ValueError(f"{what}: {kind} {addr} is also {seen[addr]}'s")
                    seen[addr] = what
        for s in self.shards:
            if not 1 <= len(s.replicas) <= MAX_REPLICAS:
                raise ValueError(f"shard {s.id}: 1 to {MAX_REPLICAS} replicas, not {len(s.replicas)}")

    @property
    def replicas_per_chain(self) -> int:
        """chain_replicas capped at the number of data servers (at least 1)."""
        return max(1, min(self.chain_replicas, len(self.data)))

    def data_server(self, sid: int) -> DataServerConfig:
        for d in self.data:
            if d.id == sid:
                return d
        raise KeyError(f"no data server {sid}")

    @property
    def internal_token(self) -> str:
        """What servers show each other (and operators' tools show them) for internal
        operations: two-phase steps, mgmt's admin commands and heartbeats, the chain's
        own data-plane requests."""
        if self.raft_salt is None:  # a file from before salts: as it was derived then
            import hashlib
            import hmac

            return hmac.new(self.raft_password.encode(), b"dfs-internal-ops", hashlib.sha256).hexdigest()
        return _hkdf(self.raft_password, self.raft_salt, b"dfs internal token v1")

    @property
    def raft_key(self) -> str:
        """The password pysyncobj gets (it derives its Fernet key with a fixed salt of its own):
        the Raft password and this cluster's salt through HKDF; without a salt, the password."""
        if self.raft_salt is None:
            return self.raft_password
        return _hkdf(self.raft_password, self.raft_salt, b"dfs raft key v1")

    @property
    def auth_token(self) -> str | None:
        """The client token (read from ``client_token_file`` if that is how it is given); None: auth off."""
        return _token_of(self.client_token, self.client_token_file)

    @property
    def nshards(self) -> int:
        return len(self.shards)

    def shard(self, sid: int) -> ShardConfig:
        return self.shards[sid]

    def to_dict(self) -> dict:
        rep = replica_entry

        def server(x: DataServerConfig) -> dict:
            d = {"id": x.id, "address": x.address}
            if x.metrics is not None:
                d["metrics"] = x.metrics
            d["targets"] = [{"id": t.id, "path": t.path} for t in x.targets]
            return d

        o = self.raft
        d = {
            "cluster_id": self.cluster_id,
            "raft_password": self.raft_password,
            **({"raft_salt": self.raft_salt} if self.raft_salt is not None else {}),
            "durability": self.durability,
            **({"client_token": self.client_token} if self.client_token is not None else {}),
            **({"client_token_file": self.client_token_file} if self.client_token_file is not None else {}),
            "chain_replicas": self.chain_replicas,
            "target_timeout": self.target_timeout,
            "scrub_interval": self.scrub_interval,
            "scrub_rate": self.scrub_rate,
            "resync_rate": self.resync_rate,
            "orphan_scan_interval": self.orphan_scan_interval,
            "orphan_grace": self.orphan_grace,
            "max_inflight_bytes": self.max_inflight_bytes,
            "mgmt": [rep(r) for r in self.mgmt],
            "shards": [{"id": s.id, "replicas": [rep(r) for r in s.replicas]} for s in self.shards],
            "raft": {
                "election_timeout": list(o.election_timeout),
                "heartbeat": o.heartbeat,
                "leader_fallback_timeout": o.leader_fallback_timeout,
                "group_commit": o.group_commit,
                "max_batch": o.max_batch,
                "max_inflight": o.max_inflight,
                "log_compaction_min_entries": o.log_compaction_min_entries,
                "log_compaction_min_time": o.log_compaction_min_time,
            },
        }
        if self.data:
            d["data"] = [server(x) for x in self.data]
        if self.tls is not None:
            d["tls"] = self.tls.to_dict()
        if self.security != SecurityConfig():
            d["security"] = self.security.to_dict()
        return d

    def client_config(self) -> ClientConfig:
        """What a client machine needs: no Raft password, no server keys."""
        tls = None if self.tls is None else TlsConfig(self.tls.ca, server_name=self.tls.server_name)
        return ClientConfig(tuple(m.address for m in self.mgmt), self.client_token, self.client_token_file, tls,
                            self.cluster_id)

    @classmethod
    def from_dict(cls, d: dict) -> ClusterConfig:
        def rep(x: dict) -> ReplicaAddr:
            return ReplicaAddr(int(x["id"]), str(x["address"]), str(x["raft"]), _metrics(x))

        shards = tuple(ShardConfig(int(s["id"]), tuple(rep(r) for r in s["replicas"])) for s in d["shards"])
        if [s.id for s in shards] != list(range(len(shards))):
            raise ValueError("shard ids must be 0..S-1 in order")
        r = d.get("raft", {})
        opts = RaftOptions(**{k: (tuple(v) if k == "election_timeout" else v) for k, v in r.items()})
        data = []
        for x in d.get("data", []):
            if "id" not in x or "address" not in x:
                raise ValueError(f"[[data]] needs id and address: {x!r}")
            tg = []
            for t in x.get("targets", []):
                if "id" not in t or "path" not in t:
                    raise ValueError(f"[[data.targets]] needs id and path: {t!r}")
                tg.append(TargetConfig(_as_int("target id", t["id"]), str(t["path"])))
            data.append(DataServerConfig(_as_int("data server id", x["id"]), str(x["address"]), tuple(tg),
                                         _metrics(x)))
        return cls(str(d["cluster_id"]), str(d["raft_password"]), tuple(rep(m) for m in d["mgmt"]), shards, opts,
                   data=tuple(data), chain_replicas=_as_int("chain_replicas", d.get("chain_replicas", 3)),
                   target_timeout=float(d.get("target_timeout", 3.0)),
                   scrub_interval=float(d.get("scrub_interval", 3600.0)),
                   scrub_rate=_as_int("scrub_rate", d.get("scrub_rate", 64 << 20)),
                   resync_rate=_as_int("resync_rate", d.get("resync_rate", 0)),
                   orphan_scan_interval=float(d.get("orphan_scan_interval", 600.0)),
                   orphan_grace=float(d.get("orphan_grace", 3600.0)), durability=d.get("durability", "sync"),
                   raft_salt=d.get("raft_salt"),
                   max_inflight_bytes=_as_int("max_inflight_bytes", d.get("max_inflight_bytes", 512 << 20)),
                   security=SecurityConfig.from_dict(d.get("security", {})), **_auth_fields(d))

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            tomli_w.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: str) -> ClusterConfig:
        """Parse ``path``; a relative client_token_file or [tls] path is taken from its folder."""
        with open(path, "rb") as f:
            cfg = cls.from_dict(tomllib.load(f))
        return _resolve_paths(cfg, os.path.dirname(os.path.abspath(path)))


def edit_cluster_file(path: str, edit: Callable[[dict], None]) -> ClusterConfig:
    """Change the cluster file at ``path`` in place: ``edit`` mutates its TOML document (as
    read: keys it does not touch stay as they were, relative paths stay relative); the result
    must still be a valid cluster file. Written atomically with the old file's mode. Returns
    the new file, loaded."""
    with open(path, "rb") as f:
        d = tomllib.load(f)
    edit(d)
    ClusterConfig.from_dict(d)  # refuse (ValueError) before anything is written
    mode = os.stat(path).st_mode & 0o777
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            tomli_w.dump(d, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return ClusterConfig.load(path)


def replica_entry(r: ReplicaAddr) -> dict:
    """A ``[[shards.replicas]]`` (or ``[[mgmt]]``) table of the cluster file."""
    d = {"id": r.id, "address": r.address, "raft": r.raft}
    if r.metrics is not None:  # TOML has no null: absent means no endpoint
        d["metrics"] = r.metrics
    return d


def _resolve_paths(cfg, base: str):
    kw = {}
    if cfg.client_token_file is not None:
        kw["client_token_file"] = os.path.join(base, os.path.expanduser(cfg.client_token_file))
    if cfg.tls is not None:
        kw["tls"] = cfg.tls.relative_to(base)
    return replace(cfg, **kw) if kw else cfg


@dataclass(frozen=True)
class ClientConfig:
    """The part of a cluster file a client reads: the mgmt addresses, the client
    token and the TLS CA. Anything else in the file (``raft_password``, shards,
    data servers, server keys) is ignored and may be left out."""

    mgmt: tuple[str, ...]
    client_token: str | None = None
    client_token_file: str | None = None
    tls: TlsConfig | None = None
    cluster_id: str | None = None

    @property
    def auth_token(self) -> str | None:
        return _token_of(self.client_token, self.client_token_file)

    @classmethod
    def from_dict(cls, d: dict) -> ClientConfig:
        mgmt = d.get("mgmt")
        if not isinstance(mgmt, list) or not mgmt:
            raise ValueError("a cluster file needs [[mgmt]] entries with an address")
        addrs = []
        for m in mgmt:
            if not isinstance(m, dict) or not isinstance(m.get("address"), str):
                raise ValueError(f"[[mgmt]] needs an address: {m!r}")  # noqa: TRY004 - the file's errors are ValueErrors
            _check_hostport("mgmt", m["address"])
            addrs.append(m["address"])
        cid = d.get("cluster_id")
        return cls(tuple(addrs), cluster_id=None if cid is None else str(cid), **_auth_fields(d))

    @classmethod
    def load(cls, path: str) -> ClientConfig:
        with open(path, "rb") as f:
            cfg = cls.from_dict(tomllib.load(f))
        return _resolve_paths(cfg, os.path.dirname(os.path.abspath(path)))

    def save(self, path: str) -> None:
        d: dict = {} if self.cluster_id is None else {"cluster_id": self.cluster_id}
        if self.client_token is not None:
            d["client_token"] = self.client_token
        if self.client_token_file is not None:
            d["client_token_file"] = self.client_token_file
        d["mgmt"] = [{"address": a} for a in self.mgmt]
        if self.tls is not None:
            d["tls"] = self.tls.to_dict()
        with open(path, "wb") as f:
            tomli_w.dump(d, f)


# ---------------------------------------------------------------------- finding the cluster

DEFAULT_DATA = os.path.expanduser("~/.local/share/dfs/local")  # `dfs cluster up`'s default folder
CLUSTER_FILE = "cluster.toml"


def _addresses(mgmt) -> tuple[str, ...]:
    return tuple(a.strip() for a in (mgmt.split(",") if isinstance(mgmt, str) else mgmt) if a.strip())


@dataclass(frozen=True)
class Located:
    """What a command's or a program's arguments name: mgmt addresses, or a cluster file.

    ``source``: what was asked for (a path or addresses, for messages); ``path``: the
    cluster file it names, when one exists there; ``mgmt``: addresses given directly."""

    source: str
    path: str | None = None
    mgmt: tuple[str, ...] = ()

    def require_file(self) -> str:
        """The cluster file, or FileNotFoundError saying where none was found."""
        if self.path is None:
            where = os.path.join(self.source, CLUSTER_FILE) if os.path.isdir(self.source) else self.source
            raise FileNotFoundError(errno.ENOENT, f"no dfs cluster file at {where}; start a cluster with "
                                                  f"`dfs cluster up` or name its cluster file", where)
        return self.path

    def mgmt_addresses(self) -> list[str]:
        """The mgmt replicas to ask: the addresses given, else the cluster file's."""
        if self.mgmt:
            return list(self.mgmt)
        return list(ClientConfig.load(self.require_file()).mgmt)

    def client_config(self) -> ClientConfig | None:
        return None if self.path is None else ClientConfig.load(self.path)

    def cluster_config(self) -> ClusterConfig | None:
        """The whole cluster file, if the file is one (a client's copy holds only mgmt
        addresses and credentials: None then)."""
        if self.path is None:
            return None
        with open(self.path, "rb") as f:
            if "shards" not in tomllib.load(f):
                return None
        return ClusterConfig.load(self.path)


def locate(cluster: str | os.PathLike | None = None, *, data: str | os.PathLike | None = None,
           mgmt: list[str] | tuple[str, ...] | str | None = None) -> Located:
    """The one place that turns "which cluster" into addresses or a cluster file, for the
    library, the mount and every command. The first given wins: ``mgmt`` (addresses, a
    list or comma-separated), ``cluster`` (a cluster file, a folder holding cluster.toml,
    or comma-separated host:port addresses), ``data`` (a folder), $DFS_MGMT (addresses),
    $DFS_CLUSTER (a file or folder), then the default folder of `dfs cluster up`."""
    if mgmt:
        return Located(",".join(_addresses(mgmt)), mgmt=_addresses(mgmt))
    if cluster is None and data is None:
        if os.environ.get("DFS_MGMT"):
            return Located(os.environ["DFS_MGMT"], mgmt=_addresses(os.environ["DFS_MGMT"]))
        cluster = os.environ.get("DFS_CLUSTER") or None
    src = os.fspath(cluster) if cluster is not None else os.fspath(data or DEFAULT_DATA)
    path = os.path.join(src, CLUSTER_FILE) if os.path.isdir(src) else src
    if os.path.isfile(path):
        return Located(src, path=os.path.abspath(path))
    if cluster is not None and not os.path.exists(src) and ":" in src and "/" not in src:
        return Located(src, mgmt=_addresses(src))  # host:port[,host:port...]
    return Located(src)
