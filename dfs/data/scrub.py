"""The scrubber: reads every chunk of a target at a bounded rate, compares
each block with its CRC, and hands chunks with bad blocks to a repair
callback (the data server's repair fetches the chunk from a good replica and
``install``s it).

One pass is ``await Scrubber.run_once()``; the server runs passes on its own
schedule. Chunk reads run in a worker thread (``asyncio.to_thread``) so a big
chunk never blocks the event loop, and the chunk list is read in pages so no
RocksDB iterator is held across an ``await``.

This module may import only ``dfs.common`` and ``dfs.data.store``; how a chunk
is repaired is the callback's business.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dfs.data.store import ChunkStore

log = logging.getLogger(__name__)

RepairFn = Callable[[int, int], Awaitable[object]]


@dataclass
class ScrubStats:
    passes: int = 0
    chunks: int = 0  # chunks scrubbed
    bytes: int = 0  # bytes read and checked
    bad_chunks: int = 0  # chunks found with bad blocks
    bad_blocks: int = 0
    repaired: int = 0  # bad chunks that scrub clean after the repair
    repair_failures: int = 0  # repair raised, or the chunk is still bad after it
    errors: int = 0  # chunks the scrub itself failed on (I/O errors)
    bad: list[tuple[int, int, list[int]]] = field(default_factory=list)  # last pass: (ino, index, blocks)


class Scrubber:
    def __init__(
        self,
        store: ChunkStore,
        repair_fn: RepairFn,
        rate_bytes_per_s: float | None,
        *,
        page: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.repair_fn = repair_fn
        self.rate = rate_bytes_per_s  # None or <= 0: as fast as the disk goes
        self.page = page
        self.clock = clock
        self.sleep = sleep
        self.stats = ScrubStats()

    async def run_once(self) -> ScrubStats:
        """One pass over every chunk of the store; returns the running totals."""
        st = self.stats
        st.bad = []
        t0 = self.clock()
        done = 0  # bytes this pass, for the rate
        start: tuple[int, int] | None = None
        while True:
            page = []
            for ino, index, m in self.store.list_chunks(start=start):
                if len(page) == self.page:
                    break
                page.append((ino, index, m.length))
            if not page:
                break
            for ino, index, length in page:
                done += length
                await self._one(ino, index, length)
                if self.rate and self.rate > 0:
                    # Sleep until this pass is no further ahead than the rate
                    # allows, so the scrub stays a background load.
                    ahead = done / self.rate - (self.clock() - t0)
                    if ahead > 0:
                        await self.sleep(ahead)
            if len(page) < self.page:
                break
            ino, index, _ = page[-1]
            start = (ino, index + 1) if index < 0xFFFFFFFF else (ino + 1, 0)
            if start[0] > (1 << 64) - 1:
                break
        st.passes += 1
        return st

    async def _one(self, ino: int, index: int, length: int) -> None:
        st = self.stats
        try:
            bad = await asyncio.to_thread(self.store.scrub, ino, index)
        except OSError as e:
            st.errors += 1
            log.warning("scrub of chunk %016x.%08x failed: %s", ino, index, e)
            return
        st.chunks += 1
        st.bytes += length
        if not bad:
            return
        st.bad_chunks += 1
        st.bad_blocks += len(bad)
        st.bad.append((ino, index, bad))
        log.warning("chunk %016x.%08x has bad blocks %s: repairing", ino, index, bad)
        try:
            await self.repair_fn(ino, index)
            still = await asyncio.to_thread(self.store.scrub, ino, index)
        except Exception as e:  # noqa: BLE001 - a failed repair is counted, the pass goes on
            st.repair_failures += 1
            log.warning("repair of chunk %016x.%08x failed: %s", ino, index, e)
            return
        if still:
            st.repair_failures += 1
            log.warning("chunk %016x.%08x still has bad blocks %s after repair", ino, index, still)
        else:
            st.repaired += 1
