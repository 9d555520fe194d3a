"""Support for the fuzz tests (tests/fuzz): hypothesis settings, a server's event loop, its
gRPC edge and the errors it logs.

    FUZZ = fuzz_settings(40)          # 40 examples in the suite; DFS_FUZZ_EXAMPLES=N for more
    lt = LoopThread()                 # one event loop in a thread for the whole module
    ds = lt.run(InProcessDataServer(tmp).__aenter__())
    @FUZZ
    @given(...)
    def test_x(...):
        lt.run(exchange(...))         # each example's I/O on the server's loop

    @pytest.fixture(scope="module")   # a server with a gRPC edge on its loop, the errors it logs
    def shard():
        with serving(Shard().start()) as (lt, shard, errors):
            yield lt, shard, errors

The suite's runs are deterministic (``derandomize``: the examples follow from
the test's source) and keep no example database; ``scripts/fuzz.py`` runs the
same tests with many more examples (and, with ``--random``, fresh ones).

Test support: may import any production package (and hypothesis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Iterator

from hypothesis import HealthCheck, settings


# pytest-timeout of a fuzz module: generous in the suite, none for scripts/fuzz.py's long runs
TIMEOUT = 0 if os.environ.get("DFS_FUZZ_EXAMPLES") else 600


def fuzz_settings(examples: int):
    """The settings of a fuzz test: ``examples`` in the suite, or ``DFS_FUZZ_EXAMPLES``;
    ``DFS_FUZZ_RANDOM=1``: fresh examples each run (scripts/fuzz.py --random)."""
    n = int(os.environ.get("DFS_FUZZ_EXAMPLES") or examples)
    return settings(max_examples=n, derandomize=not os.environ.get("DFS_FUZZ_RANDOM"), database=None,
                    deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


class LoopThread:
    """An event loop running in a daemon thread: servers live on it across hypothesis
    examples (which are plain functions), each example's coroutine is run on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run(self, coro, timeout: float = 60.0):
        """``coro``'s result (its exception), run on the loop; TimeoutError past ``timeout``
        (a hang is a finding: the server did not answer nor close)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class GrpcEdge:
    """A dfs gRPC server's edge in this process, on loopback: the production options and
    token interceptor (``dfs.wire.limits``, ``dfs.wire.auth.ServerAuth``) in front of a
    servicer; ``call`` sends raw request bytes, as a hostile client would.

        edge = await GrpcEdge.start(cfg, lambda s: pbg.add_MetaServiceServicer_to_server(servicer, s))
        code, reply = await edge.call("/dfs.v1.MetaService/Execute", raw, token=..., internal=...)
    """

    def __init__(self, server, channel, auth) -> None:
        self.server = server
        self.channel = channel
        self.auth = auth

    @classmethod
    async def start(cls, cfg, add) -> GrpcEdge:
        import grpc

        from dfs.wire import limits
        from dfs.wire.auth import ServerAuth

        auth = ServerAuth(cfg)
        server = grpc.aio.server(options=limits.grpc_server_options(), interceptors=auth.interceptors(),
                                 maximum_concurrent_rpcs=limits.GRPC_MAX_RPCS)
        add(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return cls(server, grpc.aio.insecure_channel(f"127.0.0.1:{port}"), auth)

    async def call(self, method: str, raw: bytes, *, token: str | None = None, internal: str | None = None,
                   timeout: float = 30.0):
        """(grpc.StatusCode, reply bytes or None) of one unary call with request bytes ``raw``."""
        import grpc

        from dfs.wire.auth import AUTH_HEADER, BEARER, INTERNAL_HEADER

        md = []
        if token is not None:
            md.append((AUTH_HEADER, BEARER + token))
        if internal is not None:
            md.append((INTERNAL_HEADER, internal))
        fn = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            return grpc.StatusCode.OK, await fn(raw, metadata=md, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            return e.code(), None

    async def stop(self) -> None:
        await self.channel.close()
        await self.server.stop(None)


class ErrorLog(logging.Handler):
    """The records of level ERROR and above logged while it is attached (a server that logs an
    error answered a bug, whatever it replied)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def serving(start: Awaitable, logger: str = "dfs") -> Iterator[tuple]:
    """(a LoopThread, what ``start`` returns, an ErrorLog on ``logger``) for the block: ``start``
    (which makes a server whose ``edge`` is a GrpcEdge) runs on the loop; at the end the edge
    stops and the loop closes."""
    lt = LoopThread()
    server = lt.run(start)
    errors = ErrorLog()
    logging.getLogger(logger).addHandler(errors)
    try:
        yield lt, server, errors
    finally:
        logging.getLogger(logger).removeHandler(errors)
        lt.run(server.edge.stop())
        lt.close()
