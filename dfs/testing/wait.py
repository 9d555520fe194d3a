"""Deadline-bounded waits for tests: poll a condition until it holds or time runs out.

Tests synchronise with a running system only through these (no fixed sleeps):
the sleep inside is the polling interval of a wait that ends as soon as the
condition holds, or with an AssertionError naming what never happened.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable


def until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Call ``cond()`` until it returns something truthy and return that value.

    Raises AssertionError ("timed out after {timeout}s waiting for {what}") once
    ``timeout`` seconds have passed without it.
    """
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # polling interval of a deadline-bounded wait, not synchronisation


async def until_async(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """``until`` for the event loop: ``cond()`` may return a value or an awaitable
    (an ``async def`` probe); the loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)  # polling interval of a deadline-bounded wait, not synchronisation


class ThreadLoad:
    """A load test's client threads, run as a context manager: subclasses fill ``threads``
    (targets loop until ``stop`` is set); leaving the block stops them and joins each for
    up to ``join_timeout`` seconds."""

    join_timeout = 120.0

    def __init__(self) -> None:
        import threading

        self.stop = threading.Event()
        self.threads: list = []

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(self.join_timeout)
