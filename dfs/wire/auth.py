"""Client authentication and TLS for gRPC and the data plane (docs/design/security.md).

A cluster with a ``client_token`` in its cluster file refuses every request
that does not show it: gRPC calls carry it as ``authorization: Bearer <token>``
metadata (checked by ``TokenCheck``, a server interceptor, before the request
is even parsed) and data-plane connections open with a HELLO frame that holds
it (``dfs.wire.dataplane``; checked by the data server before it reads a
request). Comparisons are constant-time (``hmac.compare_digest``). A refused
gRPC call ends UNAUTHENTICATED, which clients raise as ``Unauthenticated`` (a
``PermissionError``, EACCES) saying whether the token was missing or wrong.

``Credentials`` is what a client shows: the token and, when the cluster file
has ``[tls]``, the CA that signed the servers' certificates. ``ServerAuth`` is
what a server needs: the token to expect and its own certificate and key.

Credentials known to this process by server address (``remember``/``known``):
code that is handed only addresses (``GrpcTransport(mgmt)``,
``dfs.connect(mgmt=...)``) reaches them with the credentials of the cluster
file that named them (``LocalCluster`` and ``dfs status`` register theirs).
Explicit credentials always win; with none registered, $DFS_TOKEN (or
$DFS_TOKEN_FILE) gives the token.

Imports: dfs.common only (and grpc).
"""

from __future__ import annotations

import hmac
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace

import grpc

from dfs.common import errors as err
from dfs.common.config import ClientConfig, ClusterConfig, read_token_file

AUTH_HEADER = "authorization"  # gRPC metadata key (lower case, as gRPC requires)
BEARER = "Bearer "
ENV_TOKEN = "DFS_TOKEN"            # the token itself
ENV_TOKEN_FILE = "DFS_TOKEN_FILE"  # a file holding it

MISSING = "no client token: this cluster requires one (client_token in the cluster file, $DFS_TOKEN or --token-file)"
WRONG = "wrong client token"


class Unauthenticated(err.PermissionDenied):
    """A server refused us: no client token, or not the cluster's (EACCES)."""


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


# What servers (and operators' tools) show each other for internal operations (two-phase
# commit steps, snapshot coordination, mgmt's admin commands): a secret derived from the Raft
# password (``ClusterConfig.internal_token``), which clients never hold.
INTERNAL_HEADER = "x-dfs-internal"


# ---------------------------------------------------------------------- client side
@dataclass(frozen=True)
class Credentials:
    """What a client shows a cluster: the client token (None: none) and, for
    gRPC over TLS, the CA's PEM (None: plaintext) and the name to check in the
    servers' certificates (None: the host of the address)."""

    token: str | None = None
    ca: bytes | None = None
    server_name: str | None = None
    # servers only: the internal token, shown in data-plane HELLOs so that the chain's own
    # requests (forwards, installs, resync, snapshot holds) are taken; never on gRPC by itself
    internal: str | None = None

    @classmethod
    def from_config(cls, cfg: ClusterConfig | ClientConfig, token: str | None = None) -> Credentials:
        """From a cluster (or client) file; ``token`` overrides the file's."""
        tls = cfg.tls
        return cls(token if token is not None else cfg.auth_token, _read(tls.ca) if tls else None,
                   tls.server_name if tls else None)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTH_HEADER, BEARER + self.token),) if self.token else ()

    def channel(self, addr: str, options: list | None = None, *, interceptor: bool = True) -> grpc.aio.Channel:
        """A gRPC channel to ``addr`` (TLS if there is a CA). ``interceptor``: every
        call on it carries the token (else the caller passes ``metadata()``)."""
        opts = list(options or [])
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        icpt = [_TokenInterceptor(self.metadata())] if interceptor and self.token else None
        if self.ca is not None:
            return grpc.aio.secure_channel(addr, grpc.ssl_channel_credentials(root_certificates=self.ca),
                                           options=opts, interceptors=icpt)
        return grpc.aio.insecure_channel(addr, options=opts, interceptors=icpt)


NONE = Credentials()


class _TokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, md: tuple[tuple[str, str], ...]) -> None:
        self.md = md

    async def intercept_unary_unary(self, continuation, details, request):
        md = tuple(details.metadata or ()) + self.md
        return await continuation(details._replace(metadata=grpc.aio.Metadata(*md)), request)


def client_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """An explicit token: ``token``, else the file ``token_file``, else $DFS_TOKEN, else
    the file $DFS_TOKEN_FILE; None when none is given (the cluster file's then counts)."""
    if token:
        return token
    if token_file:
        return read_token_file(token_file)
    if os.environ.get(ENV_TOKEN):
        return os.environ[ENV_TOKEN].strip()
    if os.environ.get(ENV_TOKEN_FILE):
        return read_token_file(os.environ[ENV_TOKEN_FILE])
    return None


def unauthenticated(addr: str, e: grpc.aio.AioRpcError) -> Unauthenticated:
    return Unauthenticated(f"{addr} refused the call: {e.details() or 'unauthenticated'}")


# ---------------------------------------------------------------------- known credentials
_known: dict[str, Credentials] = {}
_known_lock = threading.Lock()


def remember(addresses: Iterable[str], creds: Credentials) -> None:
    """Use ``creds`` for these server addresses when a caller gives none."""
    with _known_lock:
        for a in addresses:
            _known[a] = creds


def forget(addresses: Iterable[str]) -> None:
    with _known_lock:
        for a in addresses:
            _known.pop(a, None)


def known(addresses: str | Iterable[str]) -> Credentials:
    """The credentials remembered for the first of ``addresses`` that has some, else
    the token of $DFS_TOKEN / $DFS_TOKEN_FILE (no TLS), else none."""
    for a in [addresses] if isinstance(addresses, str) else addresses:
        c = _known.get(a)
        if c is not None:
            return c
    token = client_token()
    return Credentials(token) if token else NONE


def remember_config(cfg: ClusterConfig) -> Credentials:
    """Remember a cluster file's credentials for every address in it; returns them."""
    creds = Credentials.from_config(cfg)
    addrs = [m.address for m in cfg.mgmt] + [r.address for s in cfg.shards for r in s.replicas]
    remember(addrs + [d.address for d in cfg.data], creds)
    return creds


def channel(addr: str, options: list | None = None) -> grpc.aio.Channel:
    """A channel to ``addr`` with the credentials known for it (tools and tests)."""
    return known(addr).channel(addr, options)


# ---------------------------------------------------------------------- server side
def check_token(expected: bytes | None, got: str | bytes | None) -> str | None:
    """None if ``got`` is acceptable, else why not (MISSING or WRONG). Constant time in the token."""
    if expected is None:
        return None
    if not got:
        return MISSING
    if isinstance(got, str):
        got = got.encode("utf-8", "replace")
    return None if hmac.compare_digest(got, expected) else WRONG


def shows(metadata, key: str, expected: str) -> bool:
    """Whether gRPC ``metadata`` has ``key`` with the value ``expected`` (constant-time compare)."""
    want = expected.encode()
    return any(k == key and hmac.compare_digest(v.encode() if isinstance(v, str) else v, want)
               for k, v in metadata or ())


class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) every call without the cluster's client token,
    before its request is deserialised or its handler runs."""

    def __init__(self, token: str) -> None:
        self.expected = token.encode()

    async def intercept_service(self, continuation, details):
        got = None
        for k, v in details.invocation_metadata or ():
            if k == AUTH_HEADER:
                got = v[len(BEARER):] if isinstance(v, str) and v.startswith(BEARER) else v
                break
        why = check_token(self.expected, got)
        if why is None:
            return await continuation(details)
        return _refusal(why)


def _refusal(why: str) -> grpc.RpcMethodHandler:
    async def refuse(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    # no deserializer: the request stays raw bytes nobody looks at
    return grpc.unary_unary_rpc_method_handler(refuse)


class ServerAuth:
    """A server's side of the cluster file's security settings."""

    def __init__(self, cfg: ClusterConfig) -> None:
        self.token = cfg.auth_token
        self.expected = self.token.encode() if self.token else None
        self.tls = cfg.tls
        self.client = Credentials.from_config(cfg)  # what this server shows the other servers
        self.internal = cfg.internal_token
        # the same, with the internal token for the data plane (data servers' chains, the
        # snapshot coordinator's holds)
        self.peer = replace(self.client, internal=self.internal)

    def interceptors(self) -> list:
        return [TokenCheck(self.token)] if self.token else []

    def check(self, got: str | bytes | None) -> str | None:
        return check_token(self.expected, got)

    def check_internal(self, got) -> bool:
        """Whether a data-plane HELLO's ``internal`` is this cluster's internal token."""
        if not isinstance(got, (str, bytes)) or not got:
            return False
        return hmac.compare_digest(got.encode("utf-8", "replace") if isinstance(got, str) else got,
                                   self.internal.encode())

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Listen on ``address``, over TLS when the cluster file has [tls]."""
        if self.tls is None:
            return server.add_insecure_port(address)
        if not self.tls.cert or not self.tls.key:
            raise ValueError("[tls] needs cert and key on a server")
        creds = grpc.ssl_server_credentials([(_read(self.tls.key), _read(self.tls.cert))])
        return server.add_secure_port(address, creds)
