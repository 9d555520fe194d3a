"""Snapshot create and delete, run by shard 0's leader (docs/design/snapshots.md, "A
consistent cut across shards and data servers").

Create, in order, each step bounded by the holds' lease so that nothing stays
held if this coordinator dies:

1. mgmt allocates the number ``S`` (``snap_begin``: EEXIST for a name taken
   under that directory, EBUSY while another one is being created: retried);
2. every data server holds new client mutations and finishes those in flight;
3. every shard fences (SNAPFENCE: 2PC PREPAREs answer LOCKED) and the
   coordinator waits until no shard has a prepared, undecided operation;
4. every shard begins (SNAPBEGIN: epoch ``S + 1``, ``S`` live, fence lifted);
5. mgmt makes ``S`` ready (its answer: the data epoch and live snapshots);
6. every data server resumes with them.

Any failure before 5 aborts: every shard ends ``S`` (SNAPEND lifts a fence and
ends a begun snapshot), mgmt drops it (``snap_abort``), the data servers resume
with what mgmt answers. Delete: mgmt marks it ``deleting`` (the data servers
stop keeping its versions), every shard ends it (its history is pruned in the
background, ``ShardService.prune_loop``), mgmt forgets it.

mgmt and the data servers are reached through two small interfaces, so the
in-process engine runs the same coordinator: ``Registry`` (``command`` runs a
cluster-map command, ``snapshots`` reads the registry) and ``Holds``.

May import dfs.common, dfs.meta (the service it runs in); nothing of gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.limits import NAME_MAX
from dfs.common.records import Caller

log = logging.getLogger(__name__)

LEASE = 15.0          # seconds the data servers hold, and the shards stay fenced, at most
BUSY_DEADLINE = 30.0  # how long a create waits for another snapshot's creation to end


class Registry(Protocol):
    async def command(self, cmd: list) -> list:
        """A cluster-map command of dfs/mgmt/store.py: what it answered beyond the epoch."""

    async def snapshots(self) -> dict[int, Any]:
        """The registry, fresh: snapshot number -> info (name, root, path, state, ...)."""


class Holds(Protocol):
    async def snap_hold(self, snap: int, lease: float) -> None: ...

    async def snap_resume(self, snap: int, epoch: int, live: list[int]) -> None: ...


class NoData:
    """Holds of a cluster without data servers."""

    async def snap_hold(self, snap: int, lease: float) -> None:
        pass

    async def snap_resume(self, snap: int, epoch: int, live: list[int]) -> None:
        pass


def _name(name: bytes) -> str:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise err.InvalidArgument(f"bad snapshot name {name!r}")
    if len(name) > NAME_MAX:
        raise err.NameTooLong()
    try:
        return name.decode()
    except UnicodeDecodeError:
        raise err.InvalidArgument("a snapshot name must be UTF-8") from None


class SnapshotCoordinator:
    def __init__(self, svc, registry: Registry | None, holds: Holds | None = None, *,
                 lease: float = LEASE, clock=time.time_ns) -> None:
        self.svc = svc
        self.registry = registry
        self.holds = holds or NoData()
        self.lease = lease
        self.clock = clock
        self._running: dict[bytes, asyncio.Future] = {}
        self._done: dict[bytes, int] = {}  # request id -> snapshot (retries to this leader)

    # ------------------------------------------------------------------ helpers
    def _shards(self) -> range:
        return range(self.svc.coordinator.shards.nshards)

    async def _all(self, make) -> None:
        """``make(shard)`` on every shard, in parallel; the first error is raised."""
        await asyncio.gather(*(self.svc.coordinator.call(s, make(s)) for s in self._shards()))

    async def _root(self, caller: Caller, root: int):
        a = await self.svc.coordinator.getattr(root)
        if not a.is_dir():
            raise err.NotADirectory("a snapshot is of a directory")
        if caller.uid not in (0, a.uid):
            raise err.NotPermitted("only the directory's owner or root takes or deletes its snapshots")
        return a

    def _need_registry(self) -> Registry:
        if self.registry is None:
            raise err.DfsError("this engine has no snapshot registry", code=95)  # EOPNOTSUPP
        return self.registry

    # ------------------------------------------------------------------ create
    async def create(self, rid: bytes, caller: Caller, req: m.SnapCreate) -> int:
        if rid and rid in self._done:
            return self._done[rid]
        if rid and rid in self._running:
            return await asyncio.shield(self._running[rid])
        fut = asyncio.get_running_loop().create_future()
        if rid:
            self._running[rid] = fut
        try:
            s = await self._create(caller, req)
            if rid:
                self._done[rid] = s
                if len(self._done) > 1000:
                    self._done.pop(next(iter(self._done)))
            fut.set_result(s)
            return s
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: a failure nobody else waits for is no warning
            raise
        finally:
            if rid:
                self._running.pop(rid, None)

    async def _create(self, caller: Caller, req: m.SnapCreate) -> int:
        reg = self._need_registry()
        name = _name(req.name)
        await self._root(caller, req.root)
        loop = asyncio.get_running_loop()
        end = loop.time() + BUSY_DEADLINE
        delay = 0.05
        while True:
            try:
                s, *_ = await reg.command(["snap_begin", name, req.root, req.path, self.clock()])
                break
            except err.DfsError as e:
                if e.errno != 16 or loop.time() > end:  # EBUSY: another snapshot is being created
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        t0 = loop.time()
        try:
            await self.holds.snap_hold(s, self.lease)
            until = self.clock() + int(self.lease * 1e9)
            await self._all(lambda _: m.SnapFence(s, until))
            await self._drained(t0)
            await self._all(lambda _: m.SnapBegin(s))
            if loop.time() - t0 > self.lease * 0.8:
                raise err.Unavailable(f"snapshot {s}: the cut took longer than its lease")
            epoch, live, *_ = await reg.command(["snap_ready", s])
        except BaseException as e:
            log.warning("snapshot %d (%s of %#x) aborted: %r", s, name, req.root, e)
            await self._abort(s)
            raise
        try:
            await self.holds.snap_resume(s, epoch, list(live))
        except err.DfsError as e:  # a hold also ends when its server sees the map make s ready
            log.info("snapshot %d: resume of the data servers: %s", s, e)
        log.info("snapshot %d taken: %s of %#x (%s) in %.3fs", s, name, req.root, req.path, loop.time() - t0)
        return s

    async def _drained(self, t0: float) -> None:
        """Wait until no shard has a cross-shard operation prepared and undecided."""
        loop = asyncio.get_running_loop()
        delay = 0.002
        while True:
            states = await asyncio.gather(*(self.svc.coordinator.call(s, m.SnapStatus()) for s in self._shards()))
            busy = [s for s, st in zip(self._shards(), states) if st.prepared]
            if not busy:
                return
            if loop.time() - t0 > self.lease * 0.5:
                raise err.Unavailable(f"cross-shard operations still prepared on shards {busy}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def _abort(self, s: int) -> None:
        try:
            await self._all(lambda _: m.SnapEnd(s))
        except err.DfsError as e:  # a fence lifts at its lease anyway; an ended snapshot is pruned
            log.warning("snapshot %d abort: ending it on the shards: %s", s, e)
        try:
            _state, epoch, live, *_ = await self._need_registry().command(["snap_abort", s])
        except (err.DfsError, ValueError) as e:
            log.warning("snapshot %d abort: mgmt: %s", s, e)
            return
        try:
            await self.holds.snap_resume(s, epoch, list(live))
        except err.DfsError as e:
            log.info("snapshot %d abort: resume of the data servers: %s", s, e)

    # ------------------------------------------------------------------ delete
    async def delete(self, rid: bytes, caller: Caller, req: m.SnapDelete) -> None:
        reg = self._need_registry()
        name = _name(req.name)
        found = [s for s, info in (await reg.snapshots()).items()
                 if info.root == req.root and info.name == name and info.state in ("ready", "deleting")]
        if not found:
            raise err.NotFound(f"no snapshot {name!r} of {req.root:#x}")
        await self._root(caller, req.root)
        s = found[0]
        await reg.command(["snap_delete", s])
        await self._all(lambda _: m.SnapEnd(s))
        await reg.command(["snap_forget", s])
        log.info("snapshot %d deleted: %s of %#x", s, name, req.root)
