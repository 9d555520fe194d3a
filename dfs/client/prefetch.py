"""Reading many whole files in a given order while fetching the next ones ahead.

``read_many`` is what a training data loader needs from the library: its
sampler decides the order of an epoch (a shuffle), and waiting for each file's
open and read in turn leaves the data plane idle between files. Here up to
``ahead`` files (and ``max_bytes`` of their contents) are opened and read
concurrently on the client's loop while the caller consumes the earlier ones;
files are still handed over strictly in the order given, and a file's error is
raised at its turn, carrying its path, never earlier.

Memory: the bytes of fetched-but-not-consumed files (those of a list handed over
count until the consumer asks for the next) plus those being read stay under
``max_bytes``, except that the file the caller waits for is always let through
(a single file larger than the budget must still be readable).

Imports: dfs.common and this package only (no path resolution of its own: it
opens through the ``AsyncClient`` it is given).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

from dfs.common import errors as err

__all__ = ["read_many", "read_batches", "fetch", "check_window", "Budget", "DEFAULT_AHEAD", "DEFAULT_MAX_BYTES"]

DEFAULT_AHEAD = 32
DEFAULT_MAX_BYTES = 256 << 20


class Budget:
    """Bytes in flight or waiting to be consumed. The file at the consumer's turn may always
    take what it needs: it is the one everyone waits for, so holding it back would deadlock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.turn = 0  # the sequence number the consumer takes next
        self.cond = asyncio.Condition()

    async def take(self, seq: int, n: int) -> None:
        async with self.cond:
            await self.cond.wait_for(lambda: self.used + n <= self.limit or seq <= self.turn)
            self.used += n

    async def give(self, n: int, *, advance: bool | int) -> None:
        """Return ``n`` bytes; ``advance``: the consumer took that many files (True: one)."""
        async with self.cond:
            self.used -= n
            self.turn += int(advance)
            self.cond.notify_all()


async def fetch(client: Any, path: Any, seq: int, budget: Budget) -> tuple[bytes, int]:
    """(the whole file as of its open, the budget it holds). A bytearray, not bytes: the
    buffer the data plane received into, handed over without a copy (and writable, which
    ``torch.frombuffer`` and ``numpy.frombuffer(...).copy()``-free decoders want)."""
    ref = await client.open_handle(path, os.O_RDONLY)
    try:
        size = ref.size
        await budget.take(seq, size)
        try:
            buf = bytearray(size)
            got = await ref.preadinto(0, buf) if size else 0
        except BaseException:
            await budget.give(size, advance=False)
            raise
        if got != size:
            del buf[got:]
        return buf, size
    finally:
        await ref.close()


def check_window(ahead: Any, max_bytes: Any) -> None:
    if not isinstance(ahead, int) or ahead < 1:
        raise err.InvalidArgument(f"read_many: ahead must be a positive integer, not {ahead!r}")
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise err.InvalidArgument(f"read_many: max_bytes must be a positive integer, not {max_bytes!r}")


async def read_many(client: Any, paths: Iterable[Any], *, ahead: int = DEFAULT_AHEAD,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> AsyncIterator[tuple[Any, bytearray]]:
    """Yield ``(path, contents)`` for every path of ``paths``, in that order, with up to ``ahead``
    files and ``max_bytes`` of contents fetched ahead. ``paths`` may be any iterable (a
    sampler's indices mapped to names): it is consumed only as far as the window reaches."""
    async for batch in read_batches(client, paths, ahead=ahead, max_bytes=max_bytes):
        for item in batch:
            yield item


async def read_batches(client: Any, paths: Iterable[Any], *, ahead: int = DEFAULT_AHEAD,
                       max_bytes: int = DEFAULT_MAX_BYTES) -> AsyncIterator[list[tuple[Any, bytearray]]]:
    """``read_many``'s files as lists, in order: each holds the next file (waited for) and
    the files after it that are already fetched. A consumer on another thread (the sync
    Client) then makes one trip to the loop per list rather than per file. A file's error
    is raised at its turn: the list before it comes first."""
    check_window(ahead, max_bytes)
    budget = Budget(max_bytes)
    source = iter(paths)
    window: deque[tuple[Any, asyncio.Task]] = deque()
    seq = 0
    exhausted = False

    def fill() -> None:
        # Refilled once half the window is consumed, not file by file: the opens it starts
        # together leave for the shard as one request (MetaClient gathers the requests of
        # one loop iteration), where one at a time each paid a round trip of its own.
        nonlocal seq, exhausted
        if len(window) > ahead // 2:
            return
        while not exhausted and len(window) < ahead:
            try:
                p = next(source)
            except StopIteration:
                exhausted = True
                return
            window.append((p, asyncio.ensure_future(fetch(client, p, seq, budget))))
            seq += 1

    try:
        fill()
        while window:
            batch: list[tuple[Any, bytearray]] = []
            held = 0
            while window:
                path, task = window[0]
                if batch and (not task.done() or task.cancelled() or task.exception() is not None):
                    break  # not fetched yet, or its error: at its turn, after this list
                try:
                    data, n = await task
                except BaseException:
                    window.popleft()
                    await budget.give(held, advance=len(batch) + 1)
                    raise
                window.popleft()
                held += n
                batch.append((path, data))
                fill()
            yield batch
            # the consumer is back for more: it is done with this list (its bytes leave the budget)
            await budget.give(held, advance=len(batch))
    finally:
        for _, t in window:
            t.cancel()
        if window:
            await asyncio.gather(*(t for _, t in window), return_exceptions=True)
