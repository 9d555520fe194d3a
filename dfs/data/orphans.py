"""The orphan scan: frees the chunks of one target that no inode references.

The metadata side frees a deleted file's chunks itself (an orphan record and
the shard leader's orphan task, ``dfs.meta.service``). What that misses —
a target that was offline or out of its chain when ``REMOVE_INODE`` went
down the chain and came back with its old chunks, a remover that gave up,
chunks written for an inode id no shard ever had — this scan finds. Every
target runs its own scan and removes only its own copies (no chain, no
forwarding): every replica runs the same scan.

One pass (``await OrphanScanner.run_once()``):

1. List the distinct inode ids the target holds chunks of
   (``ChunkStore.list_chunks``), a page of ``page`` inodes at a time. The
   listing runs in a worker thread and no RocksDB iterator is held across an
   ``await``; an inode with many chunks is stepped over with a fresh seek
   rather than read chunk by chunk.
2. Ask the metadata shards whether those inodes exist (``exists``: one
   batched request per shard, see the server's ``GETATTRS``). An inode the
   shard reports ``ENOENT`` for is gone; an inode the shard has is live; any
   other answer (an error, a shard that does not answer, an id of no shard)
   is *unknown* and skipped until a later pass.
3. For a gone inode, the chunk files' mtimes: if any chunk is younger than
   ``grace`` seconds it is left for a later pass (a safety margin: an inode
   exists before its first chunk is written, so a fresh chunk of a missing
   inode is unexpected); else ``remove(ino)`` drops all its chunks here.

Inode ids are never reused (each shard allocates them from a counter), so a
chunk of a missing inode can never come to belong to a new file.

This module may import only ``dfs.common`` and ``dfs.data.store``; how the
shards are asked and how a removal is done are the callbacks' business.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from dfs.data.store import ChunkStore

log = logging.getLogger(__name__)

_U64 = (1 << 64) - 1
_RESEEK = 64  # chunks of one inode read in a row before jumping past it with a new seek

# ``exists(inos)`` -> {ino: True (the inode exists) | False (ENOENT: it does not) | None (unknown)}
ExistsFn = Callable[[list[int]], Awaitable[dict[int, bool | None]]]
# ``remove(ino)`` -> the number of chunks removed from this target
RemoveFn = Callable[[int], Awaitable[int]]


@dataclass
class OrphanStats:
    inodes: int = 0  # distinct inodes the target holds chunks of
    live: int = 0  # ... that their shard has
    unknown: int = 0  # ... the shard could not answer for (skipped)
    young: int = 0  # ... gone, but with a chunk younger than the grace (left for later)
    removed_inodes: int = 0  # ... gone: their chunks removed here
    removed_chunks: int = 0
    errors: int = 0  # removals that failed (left for later)

    def add(self, o: OrphanStats) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(o, k))


class OrphanScanner:
    def __init__(
        self,
        store: ChunkStore,
        exists: ExistsFn,
        grace: float,
        *,
        remove: RemoveFn | None = None,
        page: int = 256,
        clock: Callable[[], float] = time.time,
        run: Callable[..., Awaitable] | None = None,
    ) -> None:
        self.store = store
        self.exists = exists
        self.grace = grace
        # run(fn, *args): where store calls run (a worker thread; the server passes its target's pool,
        # so closing the target waits for a listing in progress)
        self.run = run or asyncio.to_thread
        self.remove = remove or (lambda ino: self.run(store.remove_inode, ino))
        self.page = max(1, page)
        self.clock = clock  # wall clock: compared with the files' mtimes
        self.passes = 0
        self.totals = OrphanStats()

    # ------------------------------------------------------------ listing (worker thread)
    def _inodes_from(self, first: int) -> tuple[list[int], bool]:
        """Up to ``page`` distinct inode ids >= ``first`` in order, and whether
        the listing reached the end of the store."""
        out: list[int] = []
        cur = first
        while True:
            it = self.store.list_chunks(start=(cur, 0))
            reseek = None
            try:
                same = 0
                for ino, _index, _m in it:
                    if out and out[-1] == ino:
                        same += 1
                        if same >= _RESEEK:  # a big file: jump past it
                            reseek = ino
                            break
                        continue
                    if len(out) == self.page:
                        return out, False
                    out.append(ino)
                    same = 0
            finally:
                it.close()
            if reseek is None:
                return out, True
            if reseek >= _U64:
                return out, True
            cur = reseek + 1

    def _newest_mtime(self, ino: int) -> tuple[float, int]:
        """(newest mtime of the inode's chunk files, number of chunks); a chunk
        without a file (no data) has no age."""
        newest = 0.0
        n = 0
        for _ino, index, _m in self.store.list_chunks(ino):
            n += 1
            try:
                newest = max(newest, os.stat(self.store._file(ino, index)).st_mtime)
            except FileNotFoundError:
                pass
        return newest, n

    # ------------------------------------------------------------ one pass
    async def run_once(self) -> OrphanStats:
        """One pass over the target; returns this pass's counts (``totals`` keeps the sum)."""
        st = OrphanStats()
        first = 0
        while True:
            inos, end = await self.run(self._inodes_from, first)
            if inos:
                await self._check(inos, st)
            if end or not inos or inos[-1] >= _U64:
                break
            first = inos[-1] + 1
        self.passes += 1
        self.totals.add(st)
        return st

    async def _check(self, inos: list[int], st: OrphanStats) -> None:
        st.inodes += len(inos)
        try:
            verdict = await self.exists(inos)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - nothing is removed on a failed check
            log.info("orphan scan: checking %d inodes failed: %s", len(inos), e)
            verdict = {}
        for ino in inos:
            v = verdict.get(ino)
            if v is None:
                st.unknown += 1
                continue
            if v:
                st.live += 1
                continue
            newest, n = await self.run(self._newest_mtime, ino)
            if n == 0:
                continue  # removed meanwhile (the metadata side's remover got there)
            if self.clock() - newest < self.grace:
                st.young += 1
                continue
            try:
                removed = await self.remove(ino)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - left for the next pass
                st.errors += 1
                log.warning("orphan scan: removing the chunks of inode %#x failed: %s", ino, e)
                continue
            st.removed_inodes += 1
            st.removed_chunks += removed
            log.info("orphan scan: inode %#x does not exist: removed its %d chunks on target %d",
                     ino, removed, self.store.target_id)
