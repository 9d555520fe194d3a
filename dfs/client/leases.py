"""Server open handles of the core's open files: one renewer, one close batcher.

A handle registered with the metadata service (``MetaClient.open_file``,
``open_read``, ``lookup_open``, ``create_open``) keeps a file whose last name
goes while it is open here alive for this client, in every other client too.
Opens for reading take read handles (kept in the shard leader's memory, no
Raft round), except those of inline files, which come with the file's bytes
and need none; the others take durable ones.

* Renewal: every third of the lease, one request per shard for all handles of
  each kind (``renew_handles``, ``renew_read_handles``). The renewer and the
  close batcher run under the core's ``Supervisor`` (dfs/common/tasks.py): an
  unexpected error is logged and the task runs again, never dies silently.
* A lost handle (the service answers that it is gone: this client could not
  renew it for a whole lease, e.g. partitioned or suspended) of a file still
  open here is registered again under the same id (``open_handle(ino,
  handle=h)``) when it is durable: that works while the file still exists.
  When it cannot be (the file was deleted and its chunks freed meanwhile, and
  always for a read handle, which the service reports gone only then), the
  open file is marked lost: its later reads and writes fail with ESTALE, as an
  NFS client's do, instead of returning zeros for freed chunks. The error is
  logged. (Before, the mount re-registered and the library silently dropped.)
* Closes do not hold up the caller: ``release`` queues the handle and one
  background task sends the queue, batched per shard (``close_handles``,
  ``close_read_handles``). ``drain`` waits for it (``Client.sync()``).

Imports: dfs.common and this package only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from dfs.common import errors as err
from dfs.common.ops import DEFAULT_LEASE_S
from dfs.common.tasks import Supervisor

log = logging.getLogger("dfs.client")

__all__ = ["Leases"]


class Leases:
    """The server open handles of one core. ``on_lost(ino, handle, error)`` is called for a
    handle that is gone and could not be registered again."""

    def __init__(self, meta, lease_s: float = DEFAULT_LEASE_S,
                 on_lost: Callable[[int, bytes, err.DfsError], None] | None = None,
                 tasks: Supervisor | None = None) -> None:
        self.meta = meta
        self.tasks = tasks if tasks is not None else Supervisor()  # a renewer that died would lose handles
        self.lease = lease_s
        self.on_lost = on_lost
        self.held: dict[bytes, tuple[int, bool]] = {}  # handle -> (ino, read handle?)
        self._renewer: asyncio.Task | None = None
        self._closing: list[tuple[int, bytes, bool]] = []
        self._closer: asyncio.Task | None = None

    def hold(self, ino: int, h: bytes, read: bool = False) -> None:
        """Renew (and later close) ``h``, a handle of ``ino`` registered with the service."""
        self.held[h] = (ino, read)
        if self._renewer is None or self._renewer.done():
            self._renewer = self.tasks.spawn("handle-renewal", self._renew, forever=False)

    def made_durable(self, ino: int, h: bytes) -> None:
        """``h`` was a read handle and is now also durable (an OPEN of the same id, for a
        write open): renew it as durable, close the read one in the background."""
        if self.held.get(h) == (ino, True):
            self.held[h] = (ino, False)
            self._queue(ino, h, True)

    def release(self, ino: int, h: bytes, read: bool | None = None) -> None:
        """Close ``h`` in the background (``read``: its kind, for a handle never held)."""
        got = self.held.pop(h, None)
        if got is not None:
            read = got[1]
        self._queue(ino, h, bool(read))

    def _queue(self, ino: int, h: bytes, read: bool) -> None:
        self._closing.append((ino, h, read))
        if self._closer is None or self._closer.done():
            self._closer = self.tasks.spawn("handle-close", self._close_pending, forever=False)

    async def _close_pending(self) -> None:
        while self._closing:
            batch, self._closing = self._closing, []
            reads = [(ino, h) for ino, h, r in batch if r]
            durable = [(ino, h) for ino, h, r in batch if not r]
            try:
                await asyncio.gather(*([self.meta.close_handles(durable)] if durable else []),
                                     *([self.meta.close_read_handles(reads)] if reads else []))
            except err.DfsError as e:  # expired, or the cluster is unreachable: the lease ends them
                log.warning("closing %d open handles: %s", len(batch), e)

    async def drain(self) -> None:
        """Wait until every released handle is closed on the service."""
        while self._closer is not None and not self._closer.done():
            await asyncio.shield(self._closer)

    async def _renew(self) -> None:
        while self.held:
            await asyncio.sleep(self.lease / 3)  # the renewal period, well inside the lease
            await self.renew_once()

    async def renew_once(self) -> None:
        """One renewal of every held handle (what the renewer does every third of the lease)."""
        pairs = [(ino, h, read) for h, (ino, read) in list(self.held.items())]
        reads = [(ino, h) for ino, h, r in pairs if r]
        durable = [(ino, h) for ino, h, r in pairs if not r]
        try:
            gone_reads = await self.meta.renew_read_handles(reads, self.lease) if reads else []
            gone = await self.meta.renew_handles(durable, self.lease) if durable else []
        except err.DfsError as e:
            log.warning("renewing %d open handles: %s", len(pairs), e)
            return  # again at the next tick, well before the lease ends
        for ino, h in gone_reads:
            if self.held.get(h) == (ino, True):
                self._lost(ino, h, err.Stale("read handle gone: the file was deleted and freed"))
        for ino, h in gone:
            if self.held.get(h) != (ino, False):
                continue  # closed meanwhile
            try:
                await self.meta.open_handle(ino, self.lease, handle=h)
            except err.DfsError as e:
                self._lost(ino, h, e)

    def _lost(self, ino: int, h: bytes, e: err.DfsError) -> None:
        log.error("open handle of inode %d lost: %s", ino, e)
        self.held.pop(h, None)
        if self.on_lost is not None:
            self.on_lost(ino, h, e)

    async def close(self) -> None:
        """Stop renewing; close every handle still held; wait for the closes."""
        if self._renewer is not None:
            self._renewer.cancel()
        for h, (ino, _) in list(self.held.items()):
            self.release(ino, h)
        await self.drain()
