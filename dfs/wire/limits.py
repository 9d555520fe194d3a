"""What one connection, or everyone at once, may cost a server (docs/design/security.md).

Every server bounds what the network can make it hold: connections, bytes and
time before a peer has shown who it is, and the payload bytes of requests in
flight. The numbers live here so that the data server, the metadata replicas
and mgmt read them from one place, and the security page can name them.

* ``ByteBudget``: a process-wide budget of bytes (a data server charges every
  client request's payload to it before the payload's buffer exists; a
  request that does not fit waits, so TCP flow control pushes back on the
  sender instead of the server running out of memory).
* ``grpc_server_options``: the gRPC (C core) settings every dfs gRPC server
  uses: a cap on connections, on streams per connection, on the time a
  connection may take to finish its handshakes, and on message size.

Imports: nothing of dfs (asyncio and the standard library only).
"""

from __future__ import annotations

import asyncio
import collections

# ---------------------------------------------------------------------- data servers
DATA_MAX_CONNECTIONS = 1024     # data-plane connections a data server keeps open at once
DATA_MAX_PREAUTH = 64           # of which, connections that have not finished their HELLO
DATA_HELLO_TIMEOUT = 10.0       # seconds a new connection has to send its HELLO
DATA_INFLIGHT_BYTES = 512 << 20  # default ``max_inflight_bytes``: client payload bytes in flight per server

# ---------------------------------------------------------------------- gRPC servers (meta, mgmt)
GRPC_MAX_CONNECTIONS = 1024     # grpc.max_allowed_incoming_connections
GRPC_MAX_STREAMS = 256          # concurrent calls per connection (more wait client-side: HTTP/2 flow control)
GRPC_HANDSHAKE_MS = 10_000      # TCP accept to a usable HTTP/2 connection (TLS included)
GRPC_MAX_RPCS = 2048            # calls in progress per server; more end RESOURCE_EXHAUSTED (clients retry)


def grpc_server_options(max_message: int = 4 << 20, max_connections: int = GRPC_MAX_CONNECTIONS) -> list:
    """The options of a dfs gRPC server (``grpc.aio.server(options=...)``)."""
    return [("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.max_allowed_incoming_connections", max_connections),
            ("grpc.max_concurrent_streams", GRPC_MAX_STREAMS),
            ("grpc.server_handshake_timeout_ms", GRPC_HANDSHAKE_MS),
            ("grpc.so_reuseport", 0)]


class ByteBudget:
    """Admits callers, first come first served, while the bytes they hold stay
    within ``limit``; a caller bigger than the whole budget is admitted alone.

    ``acquire(n)`` waits; ``release(n)`` gives the bytes back (no await: it is
    called from ``finally`` blocks and done-callbacks)."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"a byte budget must be positive, not {limit}")
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()

    @property
    def waiting(self) -> int:
        """Callers waiting for bytes."""
        return len(self._waiters)

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.limit

    def _take(self, n: int) -> None:
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    async def acquire(self, n: int) -> None:
        if n <= 0:
            return
        if not self._waiters and self._fits(n):
            self._take(n)
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # admitted just as it was cancelled: give the bytes back
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
                self._wake()  # it may have been holding up smaller callers behind it
            raise

    def release(self, n: int) -> None:
        if n <= 0:
            return
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, fut = self._waiters.popleft()
            if fut.done():
                continue
            self._take(n)
            fut.set_result(None)
