"""Support for the fuzz tests (tests/fuzz): hypothesis settings and a server's event loop.

    FUZZ = fuzz_settings(40)          # 40 examples in the suite; DFS_FUZZ_EXAMPLES=N for more
    lt = LoopThread()                 # one event loop in a thread for the whole module
    ds = lt.run(InProcessDataServer(tmp).__aenter__())
    @FUZZ
    @given(...)
    def test_x(...):
        lt.run(exchange(...))         # each example's I/O on the server's loop

The suite's runs are deterministic (``derandomize``: the examples follow from
the test's source) and keep no example database; ``scripts/fuzz.py`` runs the
same tests with many more examples (and, with ``--random``, fresh ones).

Test support: may import any production package (and hypothesis).
"""

from __future__ import annotations

import asyncio
import os
import threading

from hypothesis import HealthCheck, settings


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
