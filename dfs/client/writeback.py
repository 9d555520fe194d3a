"""The client write-back engine: delegated inode ids, the ordered operation log, barriers.

A policy that applies namespace changes to its own view at once and sends them
later (lazy mode, dfs/client/lazy.py; strict mode under exclusive leases,
later) puts each change here as an ``Entry``: the request it will send (with
its request id, fixed now, so a resend after a timeout or a leader change is
answered from the shard's idempotency record and never applied twice), its
caller, the objects it reads and writes, and what to say if it fails. The
engine (docs/design/writeback.md):

* orders: an entry depends on every earlier unfinished entry that writes an
  object it reads or writes, or reads one it writes (objects: an inode, an
  entry ``(parent, name)``); a create in a directory waits for the directory's
  mkdir, a rmdir for every change inside, a setattr of a directory for the
  creates in it (so the times it sets stick);
* flushes: ready entries (every dependency acknowledged) go out at once,
  single-shard ones as ordered ``BATCH`` commands of their shard (an entry
  may join a batch holding its dependencies: the shard applies it after
  them, or not at all if one failed), cross-shard ones (mkdir, unlink, rmdir,
  rename, link: the shard's coordinator) one request each; batches of a
  shard pipeline (a few in flight), so they grow with the load as group
  commit does;
* bounds: a producer waits (back-pressure) while the log holds too many
  entries or bytes, or its oldest unsent entry is older than ``delay``, so
  what this client changed reaches the service within about ``delay``;
* reports: an entry the service refuses (and every later one that depends on
  it, not sent) is a ``Failure`` (operation, path, errno), logged at once,
  raised by the next ``barrier`` (one OSError naming all, of the first one's
  errno) and by the close of the file it concerns (``take_failures(ino)``);
* barriers: ``barrier()`` returns once every entry added before it is
  acknowledged (or failed, and reported).

``Delegations`` holds the ranges of inode ids the shards delegated to this
client's session (DELEGATE), refilled in the background when half used and
renewed every third of their lease.

Imports: dfs.common and this package only.
"""

from __future__ import annotations

import asyncio
import errno as E
import heapq
import itertools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ops import DEFAULT_DELEGATION_LEASE_S, DELEGATION_BLOCK, SESSION_BYTES
from dfs.common.tasks import Supervisor
from dfs.common.records import ROOT, Caller

log = logging.getLogger("dfs.client.writeback")

__all__ = ["Delegations", "Entry", "Failure", "WriteBack", "WriteBackError"]

# objects an entry touches: ("i", ino) an inode; ("e", parent, name) a directory entry
Key = tuple

PENDING, INFLIGHT, DONE, FAILED = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Failure:
    """A change the service refused at flush (or that depended on one it refused)."""

    op: str  # "create", "mkdir", "setattr", ...
    path: str  # as well as this client knows it
    errno: int
    message: str
    ino: int = 0  # the inode it concerns (its file's close reports it too)

    def __str__(self) -> str:
        return f"{self.op} {self.path}: {os.strerror(self.errno) if self.errno < 4096 else self.errno}" + (
            f" ({self.message})" if self.message else "")


class WriteBackError:
    """Builds the error a barrier raises: the ``DfsError`` subclass of the first failure's
    errno (so ``except FileExistsError`` works), naming every failure; ``.failures`` lists them."""

    @staticmethod
    def make(failures: list[Failure]) -> err.DfsError:
        first = failures[0]
        more = f"; and {len(failures) - 1} more: " + "; ".join(str(f) for f in failures[1:6]) if len(
            failures) > 1 else ""
        e = err.error_for(first.errno, f"lazy write-back: {first}{more}")
        e.filename = first.path
        e.failures = list(failures)  # type: ignore[attr-defined]
        return e


class Entry:
    """One change of the log."""

    __slots__ = ("seq", "shard", "req", "rid", "caller", "coordinated", "reads", "writes", "op", "path", "ino",
                 "deps", "waiters", "state", "added", "nbytes", "on_done", "on_fail", "fut", "error", "merge")

    def __init__(self, seq: int, req: m.Request, shard: int, caller: Caller, op: str, path: str, ino: int,
                 reads: tuple, writes: tuple, nbytes: int, on_done: Callable[[Any], None] | None,
                 on_fail: Callable[[], None] | None) -> None:
        self.seq = seq
        self.req = req
        self.shard = shard
        self.rid = os.urandom(16)
        self.caller = caller
        self.coordinated = req.KIND is m.Kind.COORDINATED
        self.reads = reads
        self.writes = writes
        self.op = op
        self.path = path
        self.ino = ino
        self.deps: set[Entry] = set()
        self.waiters: list[Entry] = []
        self.state = PENDING
        self.added = time.monotonic()
        self.nbytes = nbytes
        self.on_done = on_done  # the reply (typed), on acknowledgement
        self.on_fail = on_fail
        self.fut: asyncio.Future | None = None  # made when someone waits for this entry
        self.error: Failure | None = None
        self.merge: Any = None  # what the mode needs to fold a later change into this one (unsent)

    def __lt__(self, other: Entry) -> bool:
        return self.seq < other.seq

    def __repr__(self) -> str:
        return f"<Entry {self.seq} {self.op} {self.path} state={self.state} deps={len(self.deps)}>"


class Delegations:
    """Inode ids delegated to this client's session, per shard."""

    def __init__(self, meta, session: bytes, *, lease_s: float = DEFAULT_DELEGATION_LEASE_S,
                 count: int = 4 * DELEGATION_BLOCK, tasks: Supervisor | None = None) -> None:
        if len(session) != SESSION_BYTES:
            raise ValueError(f"a session id is {SESSION_BYTES} bytes")
        self.meta = meta
        self.session = session
        self.lease_s = lease_s
        self.count = count
        self._ranges: dict[int, deque[list[int]]] = {}  # shard -> [[next, hi], ...]
        self._left: dict[int, int] = {}
        self._fetching: dict[int, asyncio.Task] = {}
        self._renewer: asyncio.Task | None = None
        self.tasks = tasks if tasks is not None else Supervisor()
        self.granted: dict[int, int] = {}  # shard -> ids granted so far (tests, stats)

    async def take(self, shard: int) -> int:
        """A fresh inode id of ``shard`` (fetches a grant when none is left)."""
        while True:
            q = self._ranges.get(shard)
            while q:
                r = q[0]
                if r[0] < r[1]:
                    ino = r[0]
                    r[0] += 1
                    self._left[shard] -= 1
                    if self._left[shard] < self.count // 2:
                        self._refill(shard)
                    return ino
                q.popleft()
            await self._fetch(shard)

    def _refill(self, shard: int) -> None:
        if shard not in self._fetching:
            t = asyncio.get_running_loop().create_task(self._grant(shard))
            self._fetching[shard] = t
            t.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _fetch(self, shard: int) -> None:
        t = self._fetching.get(shard)
        if t is None:
            self._refill(shard)
            t = self._fetching[shard]
        await asyncio.shield(t)

    async def _grant(self, shard: int) -> None:
        try:
            g = await self.meta.delegate(shard, self.session, self.count, self.lease_s)
            self._ranges.setdefault(shard, deque()).append([g.lo, g.hi])
            self._left[shard] = self._left.get(shard, 0) + (g.hi - g.lo)
            self.granted[shard] = self.granted.get(shard, 0) + (g.hi - g.lo)
            if self._renewer is None:
                self._renewer = self.tasks.spawn("delegation-renewal", self._renew_loop)
        finally:
            self._fetching.pop(shard, None)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await self.renew()

    async def renew(self) -> None:
        """Renew the grants on every shard holding some (those gone are forgotten: their ids
        would be refused, ESTALE, and reported)."""
        for shard in list(self._ranges):
            try:
                await self.meta.renew_delegation(shard, self.session, self.lease_s)
            except err.NotFound:
                log.warning("the delegation of shard %d expired: its unused ids are dropped", shard)
                self._ranges.pop(shard, None)
                self._left.pop(shard, None)
            except err.DfsError as e:
                log.info("renewing the delegation of shard %d: %s", shard, e)

    async def close(self, release: bool = True) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None
        for t in list(self._fetching.values()):
            t.cancel()
        if release:
            for shard in list(self._ranges):
                try:
                    await self.meta.renew_delegation(shard, self.session, self.lease_s, release=True)
                except err.DfsError as e:
                    log.debug("releasing the delegation of shard %d: %s", shard, e)
        self._ranges.clear()
        self._left.clear()


class WriteBack:
    """The ordered operation log of one client and its flusher."""

    def __init__(self, meta, *, delay: float = 1.0, max_entries: int = 100_000, max_bytes: int = 256 << 20,
                 max_batch: int = 512, batch_bytes: int = 512 << 10, inflight: int = 4, coordinated: int = 256,
                 retry_deadline: float = 300.0, on_failure: Callable[[Entry, Failure], None] | None = None) -> None:
        self.meta = meta
        self.delay = delay
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_batch = max_batch
        self.batch_bytes = batch_bytes
        self.inflight = inflight
        self.retry_deadline = retry_deadline
        self.on_failure = on_failure
        self._seq = itertools.count(1)
        self._added = 0  # the seq of the last entry added
        self._writer: dict[Key, Entry] = {}
        self._readers: dict[Key, set[Entry]] = {}
        self._ready: dict[int, list[Entry]] = {}  # shard -> heap of ready logged entries
        self._ready_coord: list[Entry] = []  # heap of ready cross-shard entries
        self._inflight: dict[int, int] = {}  # shard -> batches in flight
        self._coord_sem = coordinated
        self._coord_inflight = 0
        self._unfinished: list[Entry] = []  # heap by seq (finished ones popped lazily)
        self._count = 0  # unfinished entries
        self._bytes = 0
        self._unsent: deque[Entry] = deque()  # in order of addition: the oldest unsent entry (bound)
        self._barriers: list[tuple[int, int, asyncio.Future]] = []  # heap (seq, n, future)
        self._bn = itertools.count()
        self._room: list[asyncio.Future] = []  # producers waiting in admit
        self._pumping = False
        self._tasks: set[asyncio.Task] = set()
        self._failures: list[Failure] = []  # not reported by a barrier yet
        self._by_ino: dict[int, list[Failure]] = {}  # not reported by a close yet
        self._closed = False
        self.stats = {"entries": 0, "merged": 0, "batches": 0, "items": 0, "coordinated": 0, "failed": 0,
                      "resent": 0, "admit_waits": 0, "admit_wait_s": 0.0}

    # ------------------------------------------------------------------ state
    @property
    def idle(self) -> bool:
        return self._count == 0

    def pending(self, key: Key) -> bool:
        """Whether an unfinished entry touches ``key``."""
        w = self._writer.get(key)
        return (w is not None and w.state < DONE) or bool(self._readers.get(key))

    def __len__(self) -> int:
        return self._count

    # ------------------------------------------------------------------ adding
    async def admit(self, nbytes: int = 0) -> None:
        """Back-pressure: wait while the log is full (entries, bytes) or its oldest unsent
        entry is older than ``delay`` (what this client changed must reach the service
        within about that). A log with nothing unfinished always admits."""
        if not self._full(nbytes):
            return
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        self.stats["admit_waits"] += 1
        while self._full(nbytes):
            self._kick()
            fut = loop.create_future()
            self._room.append(fut)
            try:  # woken when an entry finishes; the age bound moves by itself, so look again soon
                await asyncio.wait_for(fut, timeout=max(0.005, self.delay / 8))
            except asyncio.TimeoutError:
                pass
        self.stats["admit_wait_s"] += time.monotonic() - t0

    def _full(self, nbytes: int) -> bool:
        if self._count == 0:
            return False
        if self._count >= self.max_entries or self._bytes + nbytes > self.max_bytes:
            return True
        u = self._unsent
        while u and u[0].state != PENDING:
            u.popleft()
        return bool(u) and time.monotonic() - u[0].added > self.delay

    def add(self, req: m.Request, *, shard: int | None = None, caller: Caller | None = None, op: str = "",
            path: str = "", ino: int = 0, reads: Iterable[Key] = (), writes: Iterable[Key] = (), nbytes: int = 0,
            on_done: Callable[[Any], None] | None = None, on_fail: Callable[[], None] | None = None) -> Entry:
        """Queue ``req`` after every unfinished entry it depends on. Call ``admit`` first."""
        if self._closed:
            raise err.DfsError("the write-back log is closed", code=E.EBADF)
        reads, writes = tuple(reads), tuple(writes)
        self._added = seq = next(self._seq)
        e = Entry(seq, req, req.shard(0) if shard is None else shard, caller or ROOT,
                  op or req.OP.name.lower(), path, ino, reads, writes, nbytes, on_done, on_fail)
        deps = e.deps
        writer, readers = self._writer, self._readers
        for k in reads:
            w = writer.get(k)
            if w is not None and w.state < DONE:
                deps.add(w)
            readers.setdefault(k, set()).add(e)
        for k in writes:
            w = writer.get(k)
            if w is not None and w.state < DONE:
                deps.add(w)
            rs = readers.pop(k, None)
            if rs:
                for r in rs:
                    if r is not e and r.state < DONE:
                        deps.add(r)
            writer[k] = e
        for d in deps:
            d.waiters.append(e)
        failed = next((d for d in deps if d.state == FAILED), None)
        self._count += 1
        self._bytes += nbytes
        self.stats["entries"] += 1
        heapq.heappush(self._unfinished, e)
        if failed is not None:  # cannot happen: a failed entry is finished; kept as a guard
            self._fail(e, failed.error)
            return e
        self._unsent.append(e)
        if not deps:
            self._make_ready(e)
        return e

    def _make_ready(self, e: Entry) -> None:
        if e.coordinated:
            heapq.heappush(self._ready_coord, e)
        else:
            heapq.heappush(self._ready.setdefault(e.shard, []), e)
        self._kick()

    def unsent(self, key: Key, caller: Caller) -> Entry | None:
        """The last entry that changes ``key``, if nothing since touched ``key``, it is not sent
        yet and it runs as ``caller``: a later change of ``key`` may be folded into it (its
        ``req`` replaced) instead of queued after it."""
        e = self._writer.get(key)
        if e is None or e.state != PENDING or e.caller != caller or self._readers.get(key):
            return None
        return e

    # ------------------------------------------------------------------ waiting
    async def settle(self, keys: Iterable[Key]) -> None:
        """Wait until every entry added so far that touches one of ``keys`` is finished (a
        synchronous request about those objects then sees them applied)."""
        waits = []
        for k in keys:
            w = self._writer.get(k)
            if w is not None and w.state < DONE:
                waits.append(w)
            for r in self._readers.get(k, ()):
                if r.state < DONE:
                    waits.append(r)
        for e in waits:
            await self.wait(e)

    async def wait(self, e: Entry) -> None:
        if e.state >= DONE:
            return
        if e.fut is None:
            e.fut = asyncio.get_running_loop().create_future()
        self._kick()
        await asyncio.shield(e.fut)

    async def barrier(self) -> list[Failure]:
        """Wait until every entry added before now is finished; the failures not reported by
        a barrier yet (taken: each is reported once here)."""
        if self._count:
            seq = self._last_seq()
            fut = asyncio.get_running_loop().create_future()
            heapq.heappush(self._barriers, (seq, next(self._bn), fut))
            self._kick()
            self._release_barriers()
            await asyncio.shield(fut)
        out, self._failures = self._failures, []
        return out

    def _last_seq(self) -> int:
        return self._added

    def take_failures(self, ino: int) -> list[Failure]:
        """The failures concerning inode ``ino`` not reported by one of its closes yet."""
        return self._by_ino.pop(ino, []) if self._by_ino else []

    def _release_barriers(self) -> None:
        u = self._unfinished
        while u and u[0].state >= DONE:
            heapq.heappop(u)
        low = u[0].seq if u else None
        b = self._barriers
        while b and (low is None or b[0][0] < low):
            fut = heapq.heappop(b)[2]
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------------ flushing
    def _kick(self) -> None:
        if not self._pumping:
            self._pumping = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pumping = False
        for shard, heap in self._ready.items():
            while heap and self._inflight.get(shard, 0) < self.inflight:
                batch = self._cut(shard, heap)
                if not batch:
                    break
                self._inflight[shard] = self._inflight.get(shard, 0) + 1
                self._spawn(self._send_batch(shard, batch))
        rc = self._ready_coord
        while rc and self._coord_inflight < self._coord_sem:
            e = heapq.heappop(rc)
            if e.state != PENDING or e.deps:
                continue
            e.state = INFLIGHT
            self._coord_inflight += 1
            self._spawn(self._send_one(e))

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _cut(self, shard: int, heap: list[Entry]) -> list[Entry]:
        """The next batch of ``shard``: ready entries in order, each followed by the entries
        of this shard that depend only on entries already in the batch."""
        batch: list[Entry] = []
        placed: set[Entry] = set()
        queued: set[Entry] = set()
        size = 0
        while heap and len(batch) < self.max_batch and size < self.batch_bytes:
            e = heapq.heappop(heap)
            if e.state != PENDING or e.deps:
                continue
            todo = deque([e])
            while todo and len(batch) < self.max_batch and size < self.batch_bytes:
                x = todo.popleft()
                placed.add(x)
                batch.append(x)
                x.state = INFLIGHT
                size += x.nbytes + 64
                for w in x.waiters:  # placed after every dependency it has: FIFO
                    if (w.state == PENDING and not w.coordinated and w.shard == shard and w not in queued
                            and all(d in placed for d in w.deps)):
                        queued.add(w)
                        todo.append(w)
            # what is left when the batch filled becomes ready when its dependencies are done
        return batch

    async def _send_batch(self, shard: int, batch: list[Entry]) -> None:
        index = {e: i for i, e in enumerate(batch)}
        items = [m.BatchItem(int(e.req.OP), e.rid, e.caller.uid, e.caller.gid, list(e.caller.groups),
                             e.req.to_wire(), sorted(index[d] for d in e.deps if d in index)) for e in batch]
        self.stats["batches"] += 1
        self.stats["items"] += len(batch)
        try:
            results = await self._retrying(lambda: self.meta.batch(shard, items))
        except err.DfsError as e:  # final: each item fails with it
            results = [m.Outcome(e.errno, e.detail or str(e))] * len(batch)
        finally:
            self._inflight[shard] -= 1
        again = False
        for e, r in zip(batch, results):
            if r is None:
                failed = next((d for d in e.deps if d.state == FAILED), None)
                if failed is not None:
                    self._fail(e, failed.error, dependent=True)
                else:
                    e.state = PENDING  # not run (a lock stopped the batch): resent in order
                    again = True
                    if not e.deps:
                        self._make_ready(e)
                continue
            if r.status == 0:
                self._done(e, e.req.reply_from_wire(r.payload))
            else:
                self._fail(e, Failure(e.op, e.path, r.status, str(r.payload or ""), e.ino))
        if again:
            self.stats["resent"] += 1
            await asyncio.sleep(0.005)
        self._kick()

    async def _send_one(self, e: Entry) -> None:
        self.stats["coordinated"] += 1
        req = e.req
        try:
            raw = await self._retrying(lambda: self.meta.t.call(e.shard, req.OP, e.caller, req.to_wire(), e.rid))
        except err.DfsError as x:
            self._fail(e, Failure(e.op, e.path, x.errno, x.detail or "", e.ino))
        else:
            self._done(e, req.reply_from_wire(raw))
        finally:
            self._coord_inflight -= 1
            self._kick()

    async def _retrying(self, call):
        """``call()`` until it answers for good: retryable errors (a lost leader, a
        partition, a lock) are tried again with the same request ids until the deadline."""
        end = time.monotonic() + self.retry_deadline
        delay = 0.01
        while True:
            try:
                return await call()
            except err.Retryable as e:
                if time.monotonic() >= end or self._closed:
                    raise
                log.info("write-back: %s; retrying", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # ------------------------------------------------------------------ finishing
    def _finish(self, e: Entry, state: int) -> None:
        e.state = state
        self._count -= 1
        self._bytes -= e.nbytes
        writer, readers = self._writer, self._readers
        for k in e.writes:
            if writer.get(k) is e:
                del writer[k]
        for k in e.reads:
            rs = readers.get(k)
            if rs is not None:
                rs.discard(e)
                if not rs:
                    del readers[k]
        if e.fut is not None and not e.fut.done():
            e.fut.set_result(None)
        if self._barriers:
            self._release_barriers()
        if self._room:
            room, self._room = self._room, []
            for fut in room:
                if not fut.done():
                    fut.set_result(None)

    def _done(self, e: Entry, reply: Any) -> None:
        self._finish(e, DONE)
        if e.on_done is not None:
            try:
                e.on_done(reply)
            except Exception:  # noqa: BLE001 - a view update must not stop the flusher
                log.exception("write-back: after %s %s", e.op, e.path)
        for w in e.waiters:
            if w.state == PENDING:
                w.deps.discard(e)
                if not w.deps:
                    self._make_ready(w)
        e.waiters = []

    def _fail(self, e: Entry, f: Failure | None, dependent: bool = False) -> None:
        """``e`` failed with ``f`` (its own, or, ``dependent``, an entry's it depends on); so does
        every unsent entry that depends on it."""
        todo = [(e, f, dependent)]
        while todo:
            e, f, dependent = todo.pop()
            if e.state >= DONE:
                continue
            if dependent and f is not None:
                f = Failure(e.op, e.path, f.errno, f"depends on {f.op} {f.path}"
                            if not f.message.startswith("depends on") else f.message, e.ino)
            elif f is None:
                f = Failure(e.op, e.path, E.EIO, "failed", e.ino)
            e.error = f
            self._finish(e, FAILED)
            self.stats["failed"] += 1
            (log.info if dependent else log.warning)("lazy write-back failed: %s", f)
            self._failures.append(f)
            if f.ino:
                self._by_ino.setdefault(f.ino, []).append(f)
            for cb in (self.on_failure and (lambda e=e, f=f: self.on_failure(e, f)), e.on_fail):
                if cb is not None:
                    try:
                        cb()
                    except Exception:  # noqa: BLE001 - a view update must not stop the flusher
                        log.exception("write-back: after the failure of %s %s", e.op, e.path)
            waiters, e.waiters = e.waiters, []
            todo.extend((w, f, True) for w in waiters if w.state == PENDING)

    # ------------------------------------------------------------------ closing
    async def close(self) -> None:
        """Stop: what is unfinished is abandoned (call ``barrier`` first)."""
        self._closed = True
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
