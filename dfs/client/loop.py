"""The one sync facade: an asyncio object served from a private event-loop thread.

The client is asyncio all the way down; synchronous callers (``dfs.Client``,
``SyncMetaClient``, scripts and tests) reach it through ``SyncFacade``: one
daemon thread runs an event loop, ``run(coro)`` runs a coroutine there and
waits for its result in the calling thread, ``close()`` closes the wrapped
object on the loop and stops the thread.

A process forked while a facade's loop thread is running cannot use gRPC
(its state is the parent's, mid-poll: the child aborts in the poller), so
``live_at_fork()`` tells a child whether that happened, for code that makes a
client per worker process (dfs/torch.py) to say so instead of crashing.

Imports: the standard library only (every client module may build on it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("dfs.client")

T = TypeVar("T")

_live = 0  # facades of this process whose loop thread runs
_live_at_fork = 0  # in a forked child: the parent's count at the fork


def _forked() -> None:
    global _live, _live_at_fork
    _live_at_fork, _live = _live, 0


os.register_at_fork(after_in_child=_forked)


def live_at_fork() -> int:
    """How many facades (clients) were running in the parent when this process was forked
    from it (0 in a process that was not forked, or forked with none running)."""
    return _live_at_fork


class SyncFacade:
    """A private loop thread holding ``self.aio`` (what ``make`` built on it).

    ``make``: the object, or a callable returning it or a coroutine of it; it is
    called on the loop thread, so it may create asyncio objects."""

    def __init__(self, make: Any, *, thread_name: str = "dfs-client") -> None:
        global _live
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=thread_name, daemon=True)
        self._thread.start()
        _live += 1
        self._pid = os.getpid()
        self._closed = False
        try:
            self.aio = self.run(self._make(make))
        except BaseException:
            self._stop()
            raise

    @staticmethod
    async def _make(make):
        c = make() if callable(make) else make
        if asyncio.iscoroutine(c):
            c = await c
        return c

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the wrapped object lives on (for ``asyncio.run_coroutine_threadsafe``)."""
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop thread and wait for its result (from any other thread)."""
        if self._closed:
            coro.close()
            raise ValueError("client is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync client call from its own loop thread would wait for itself")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def run_later(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Start ``coro`` on the loop thread without waiting for it (its error is logged)."""
        if self._closed:
            coro.close()
            return
        f = asyncio.run_coroutine_threadsafe(coro, self._loop)
        f.add_done_callback(lambda f: f.cancelled() or f.exception() is None
                            or log.warning("background call failed: %s", f.exception()))

    # The name callers outside the client package used before ``run`` was public
    # (dfs.bench, dfs.cli.demo); tests use ``run``.

    def _stop(self) -> None:
        global _live
        if self._pid == os.getpid():
            _live -= 1
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def close(self) -> None:
        """Close the wrapped object (its ``close()`` coroutine) and stop the loop thread."""
        if self._closed:
            return
        try:
            self.run(self.aio.close())
        finally:
            self._closed = True
            self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
