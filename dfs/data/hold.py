"""Hold and resume on a data server: the snapshot coordinator's cut
(docs/design/snapshots.md, "Data").

SNAP_HOLD makes the server stop admitting client mutations as a chain head
(they wait) and answers once those in flight (with their forwards) are done;
forwarded mutations are never held. The hold ends at SNAP_RESUME (which sets
the data epoch and live snapshots first) or when its lease runs out; then the
server first asks mgmt to abort the snapshot (``resolve_hold`` of the
``ChainService``), which tells it through the Raft log whether the snapshot was
made ready meanwhile (resume at its epoch) or never will be (resume as
before), so that a resume lost on the way never lets writes of the old epoch
follow a ready snapshot. A server that starts while the map says a snapshot is
being created holds at once (``on_map``): the hold its old process may have
given is gone with it.

``HoldGate`` belongs to one ``dfs.data.chain.ChainService`` (its ``holds``) and
uses its data epoch, ``set_epochs``, ``resolve_hold`` and ``spawn``.
Imports: dfs.common, dfs.wire and msgpack only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as E
import logging

import msgpack

from dfs.common import errors as err
from dfs.wire import dataplane as dp

log = logging.getLogger("dfs.data.chain")

MAX_HOLD_LEASE = 60.0  # seconds: the longest hold a coordinator may ask for
RESTART_HOLD_LEASE = 10.0  # seconds: the hold of a server that starts while a snapshot is being created


class _Hold:
    """A SNAP_HOLD in force: client mutations wait until it is released."""

    __slots__ = ("deadline", "snap", "timer")

    def __init__(self, snap: int) -> None:
        self.snap = snap
        self.deadline = 0.0
        self.timer: asyncio.Task | None = None

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class HoldGate:
    """Whether client mutations may start as a chain head, and the hold that stops them."""

    def __init__(self, svc) -> None:
        self.svc = svc
        self._hold: _Hold | None = None
        self._open = asyncio.Event()      # set while no hold stops client mutations
        self._open.set()
        self._heading = 0                 # client mutations admitted as a chain head, in flight
        self.waiting = 0                  # client mutations waiting for a hold to end
        self._idle = asyncio.Event()
        self._idle.set()

    def on_map(self, first: bool, creating: list[int]) -> None:
        """A new map (after its epochs were taken): ``first`` of this process, with the
        snapshots it says are being created."""
        hold = self._hold
        if hold is not None and self.svc.epoch > hold.snap:
            # the snapshot is ready (the map says so): as good as its resume, which may be lost
            log.info("snapshot %d is ready in the map: hold over at epoch %d", hold.snap, self.svc.epoch)
            self.release(hold)
        if first and creating and self._hold is None:
            # started (or restarted) while a snapshot is being made: the hold this server may
            # have given before is gone with its old process, so hold again until the
            # coordinator resumes, or the lease runs out and mgmt says what became of it
            log.info("snapshot %d is being created: holding client mutations", max(creating))
            self.start(max(creating), RESTART_HOLD_LEASE)

    @contextlib.asynccontextmanager
    async def admitted(self, h: dp.Header):
        """A client's mutation waits while a hold stops them, then counts as in flight."""
        if h.flags & dp.F_FORWARD:
            yield
            return
        while not self._open.is_set():
            self.waiting += 1
            try:
                await self._open.wait()
            finally:
                self.waiting -= 1
        self._heading += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._heading -= 1
            if not self._heading:
                self._idle.set()

    def holding(self) -> int | None:
        """The snapshot a hold of this server is for (None: not held)."""
        return self._hold.snap if self._hold is not None else None

    async def snap_hold(self, h: dp.Header) -> dp.Header:
        snap, lease = h.version, h.arg / 1000
        if not 0 < lease <= MAX_HOLD_LEASE or not 0 < snap <= 0xFFFFFFFF:
            raise err.InvalidArgument(f"bad hold: snapshot {snap}, lease {lease}s")
        if snap < self.svc.epoch:
            raise err.Stale(f"snapshot {snap} is older than data epoch {self.svc.epoch}")
        if self._hold is not None and snap < self._hold.snap:
            raise err.DfsError(f"held for snapshot {self._hold.snap}", code=E.EBUSY)
        hold = self.start(snap, lease)
        try:
            await asyncio.wait_for(self._idle.wait(), lease)
        except TimeoutError:
            raise err.Retryable(f"mutations still in flight after {lease}s") from None
        if self._hold is not hold:
            raise err.Retryable(f"hold for snapshot {snap} ended before it took")
        return dp.reply_to(h)._replace(epoch=self.svc.epoch)

    def start(self, snap: int, lease: float) -> _Hold:
        """Hold client mutations for snapshot ``snap`` for ``lease`` seconds from now (a
        hold for it already in force is extended; one for an older snapshot is replaced)."""
        hold = self._hold
        if hold is None or hold.snap != snap:
            if hold is not None:
                hold.cancel()
            hold = self._hold = _Hold(snap)
            self._open.clear()
            log.info("hold for snapshot %d (lease %.1fs)", snap, lease)
        hold.deadline = asyncio.get_running_loop().time() + lease
        if hold.timer is None:
            hold.timer = self.svc.spawn(self._expire(hold))
        return hold

    def snap_resume(self, h: dp.Header, payload) -> dp.Header:
        try:
            live = msgpack.unpackb(bytes(payload)) if len(payload) else []
        except Exception:  # noqa: BLE001 - any undecodable list is EINVAL
            live = None
        if (not isinstance(live, list) or not all(isinstance(s, int) and 0 < s < h.epoch for s in live)
                or not 0 < h.epoch <= 0xFFFFFFFF):
            raise err.InvalidArgument(f"bad resume: epoch {h.epoch}, live {live!r}")
        self.svc.set_epochs(h.epoch, live)
        hold = self._hold
        if hold is not None and h.version == hold.snap:
            log.info("resumed after snapshot %d at epoch %d", hold.snap, self.svc.epoch)
            self.release(hold)
        return dp.reply_to(h)._replace(epoch=self.svc.epoch)

    def release(self, hold: _Hold) -> None:
        if self._hold is hold:
            self._hold = None
            self._open.set()
        hold.cancel()

    async def _expire(self, hold: _Hold) -> None:
        """At the end of the lease: learn the snapshot's fate from mgmt (through its log),
        take the epochs it says, and only then let client mutations in again."""
        loop = asyncio.get_running_loop()
        while loop.time() < hold.deadline:
            await asyncio.sleep(hold.deadline - loop.time())
        if self._hold is not hold:
            return
        log.warning("hold for snapshot %d expired without a resume", hold.snap)
        delay = 0.05
        while self.svc.resolve_hold is not None and self._hold is hold:
            try:
                got = await self.svc.resolve_hold(hold.snap)
            except Exception as e:  # noqa: BLE001 - mgmt unreachable: keep holding, ask again
                log.info("hold for snapshot %d: asking mgmt failed: %s", hold.snap, e)
                got = None
            if got is not None:
                self.svc.set_epochs(*got)
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        hold.timer = None  # this task is ending: nothing to cancel
        self.release(hold)
