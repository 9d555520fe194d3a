"""The scrubber: reads every chunk of a target at a bounded rate, compares
each block with its CRC, and hands chunks with bad blocks to a repair
callback (the data server's repair fetches the chunk from a good replica and
``install``s it). Then the same for the chunks' preserved versions (kept for
snapshots): the callback gets the version's epoch as a third argument.

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

RepairFn = Callable[..., Awaitable[object]]  # (ino, index) or, for a preserved version, (ino, index, epoch)


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
    versions: int = 0  # preserved versions scrubbed
    bad: list[tuple] = field(default_factory=list)  # last pass: (ino, index, blocks), or (ino, index, blocks, epoch)


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
        vstart: tuple[int, int, int] | None = None
        while self.store.has_versions():
            vpage = []
            for ino, index, p in self.store.list_versions(start=vstart):
                if len(vpage) == self.page:
                    break
                vpage.append((ino, index, p.epoch, p.length))
            for ino, index, t, length in vpage:
                done += length
                await self._one(ino, index, length, t)
                if self.rate and self.rate > 0:
                    ahead = done / self.rate - (self.clock() - t0)
                    if ahead > 0:
                        await self.sleep(ahead)
            if len(vpage) < self.page:
                break
            ino, index, t, _ = vpage[-1]
            if t:
                vstart = (ino, index, t - 1)
            elif index < 0xFFFFFFFF:
                vstart = (ino, index + 1, 0xFFFFFFFF)
            else:
                vstart = (ino + 1, 0, 0xFFFFFFFF)
            if vstart[0] > (1 << 64) - 1:
                break
        st.passes += 1
        return st

    async def _one(self, ino: int, index: int, length: int, preserved: int | None = None) -> None:
        st = self.stats
        args = (ino, index) if preserved is None else (ino, index, preserved)
        what = f"chunk {ino:016x}.{index:08x}" + ("" if preserved is None else f"@{preserved}")
        try:
            bad = await asyncio.to_thread(self.store.scrub, ino, index, preserved=preserved)
        except OSError as e:
            st.errors += 1
            log.warning("scrub of %s failed: %s", what, e)
            return
        if preserved is None:
            st.chunks += 1
        else:
            st.versions += 1
        st.bytes += length
        if not bad:
            return
        st.bad_chunks += 1
        st.bad_blocks += len(bad)
        st.bad.append((*args[:2], bad, *args[2:]))
        log.warning("%s has bad blocks %s: repairing", what, bad)
        try:
            await self.repair_fn(*args)
            still = await asyncio.to_thread(self.store.scrub, ino, index, preserved=preserved)
        except Exception as e:  # noqa: BLE001 - a failed repair is counted, the pass goes on
            st.repair_failures += 1
            log.warning("repair of %s failed: %s", what, e)
            return
        if still:
            st.repair_failures += 1
            log.warning("%s still has bad blocks %s after repair", what, still)
        else:
            st.repaired += 1
