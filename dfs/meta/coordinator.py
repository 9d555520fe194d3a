"""The engine of namespace operations that may span shards: one-phase or two-phase
commit of a plan, and recovery.

The coordinator runs on the leader of the shard the client sent the
operation to (always a shard the operation touches: the parent's for
unlink/rmdir, the new directory's home for mkdir, the new parent's for link,
the source parent's for rename). The operation's module in ``dfs.meta.ops``
(mkdir, remove, rename, link; registered with ``@coordinate``)

1. reads what it needs through ``Coordinator.call`` (lookups, attributes; for
   a directory moved to another parent, the rename epoch and the ancestry of
   the target),
2. turns the operation into typed *actions* per shard (``dfs.meta.ops.actions``),
3. hands the plan to ``Coordinator.execute``, which, if one shard holds them
   all, submits one ONEPHASE command there (atomic, one Raft round), and
   otherwise runs two-phase commit keyed by the operation id (= the client's
   request id plus an attempt suffix): PREPARE on itself first (this is the
   durable intent), then on the others; COMMIT on itself (the durable
   decision, with the reply for retries), then on the others (shard 0 last,
   which releases the rename ordering lock), then FORGET.

A prepared action holds locks that keep its preconditions true. A failed
prepare aborts everything prepared so far. ``Recovery`` finishes what a dead
coordinator left: decided operations are committed everywhere, undecided ones
aborted (presumed abort), and participants ask the coordinator about
operations they hold prepared for too long.

If a precondition changed between the read and the prepare (``Locked``), or a
PREPARE met a held key or a snapshot's fence (``Conflict``: answered at once,
never waited on by the transport, since this coordinator may hold locks the
other side waits for), everything prepared is aborted and the operation is
retried from the read, with backoff.

May import dfs.common, dfs.meta.schema and dfs.meta.ops; not the store or the service.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import shard_of
from dfs.common.records import Attr, Caller
from dfs.common.shards import ShardCalls
from dfs.meta.ops import actions as A
from dfs.meta.ops.base import Handler
from dfs.meta.schema import LOCK_RENAME, OpRecord, OpState

log = logging.getLogger(__name__)

INTERNAL = Caller(0, 0, ())
MAX_ATTEMPTS = 40
NAME_RACES = 8  # lookups of one name whose inode keeps vanishing between two reads, at most
RECOVERY_GRACE_NS = 2 * 10**9  # an undecided operation older than this, not running here, is aborted

Plan = dict[int, list[A.Action]]

# the op a plan executes for (set by Coordinator.run in the request's task), for the counts
_OP: contextvars.ContextVar[str] = contextvars.ContextVar("dfs_coordinated_op", default="?")


class Coordinator:
    def __init__(self, shard: int, shards: ShardCalls, clock=time.time_ns, *,
                 pending: Callable[..., list[tuple[bytes, OpRecord]]]) -> None:
        """``shards``: how to reach every shard (this one included); ``pending(prefix=b"")``:
        this shard's cross-shard operation records (those whose id starts with ``prefix``)."""
        self.shard = shard
        self.shards = shards
        self.pending = pending
        self.clock = clock
        self.active: set[bytes] = set()
        # (op name, "one_phase" | "two_phase"): plans committed by this coordinator, so that
        # the share of operations that needed two-phase commit can be measured (the
        # leader's /metrics: dfs_meta_commits_total); in memory, per leadership
        self.commits: Counter[tuple[str, str]] = Counter()

    async def call(self, shard: int, req: m.Request, caller: Caller = INTERNAL, rid: bytes = b"",
                   ts: int | None = None) -> Any:
        """``req`` on ``shard``'s leader: its typed reply."""
        raw = await self.shards.call(shard, req.OP, caller, req.to_wire(), rid=rid, ts=ts)
        return req.reply_from_wire(raw)

    # ------------------------------------------------------------ entry point
    async def run(self, h: Handler, rid: bytes, caller: Caller, req: m.Request) -> Any:
        rid = rid or uuid.uuid4().bytes
        _OP.set(req.OP.name)
        if rid in self.active:
            raise err.Locked("operation already running")
        for op_id, rec in self.pending(rid):  # an attempt's id is the request id + 8 bytes: no scan of all
            if rec.rid == rid and rec.is_coordinator:
                # An earlier attempt of this very request is stuck: finish it
                # (if decided) or undo it before answering, so that a retry's
                # success means every participant has committed.
                await Recovery(self).resolve_local(op_id)
        prev = (await self.call(self.shard, m.ReqStatus(rid))).outcome
        if prev is not None:
            if prev.status:
                raise err.error_for(prev.status, prev.payload)
            return h.answer(req, m.from_wire(m.ActionResult, prev.payload))
        delay = 0.002
        for _ in range(MAX_ATTEMPTS):
            try:
                return h.answer(req, await h.fn(self, rid, caller, req))
            except (err.Locked, err.Conflict):
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.2)
        raise err.Locked("gave up after repeated conflicts")

    # ------------------------------------------------------------ reads the plans share
    async def lookup(self, parent: int, name: bytes) -> tuple[int, int, Attr]:
        """(ino, mode, attr) of an entry; attr fetched from the inode's shard. An inode on
        another shard that went between the two reads was replaced by a rename meanwhile
        (the name never went missing): the name is read again."""
        for attempt in range(NAME_RACES):
            r = await self.call(shard_of(parent), m.Lookup(parent, name))
            attr = r.attr
            if attr is None:
                try:
                    attr = await self.call(shard_of(r.ino), m.Getattr(r.ino))
                except err.NotFound:
                    if attempt == NAME_RACES - 1:
                        raise
                    continue
            return r.ino, r.mode, attr
        raise AssertionError("unreachable")

    async def maybe_lookup(self, parent: int, name: bytes) -> tuple[int, int, Attr] | None:
        try:
            return await self.lookup(parent, name)
        except err.NotFound:
            return None

    async def getattr(self, ino: int) -> Attr:
        return await self.call(shard_of(ino), m.Getattr(ino))

    @staticmethod
    def plan() -> Plan:
        return defaultdict(list)

    # ------------------------------------------------------------ execution
    async def execute(self, rid: bytes, caller: Caller, ts: int, plan: Plan,
                      reply_of: Callable[[int], m.ActionResult] | None = None) -> m.ActionResult:
        """Apply ``plan`` (shard -> actions) atomically. ``reply_of(new_ino)``: the result the
        decision records for the client's retries (default: the new inode, no attributes)."""
        plan = {s: a for s, a in plan.items() if a}
        if set(plan) == {self.shard}:
            res = await self.call(self.shard, m.OnePhase(rid, A.encode(plan[self.shard])), caller, rid=rid, ts=ts)
            self.commits[(_OP.get(), "one_phase")] += 1
            return res
        plan.setdefault(self.shard, [])
        others = sorted(s for s in plan if s != self.shard)
        # Each attempt has its own operation id, so a participant's record left
        # by an earlier, aborted attempt can never be mistaken for this one's
        # (recovery clears it: its coordinator has no record of it).
        op_id = rid + os.urandom(8)
        self.active.add(rid)
        self.active.add(op_id)
        prepared: list[int] = []
        try:
            try:
                mine = m.Prepare(op_id, self.shard, A.encode(plan[self.shard]), others, rid)
                new_ino = (await self.call(self.shard, mine, caller, ts=ts)).new_ino
                prepared.append(self.shard)
                for s in others:
                    acts = A.encode([a.fill(new_ino) for a in plan[s]])
                    # Counted as prepared before the answer: a PREPARE whose
                    # reply was lost (deadline) may have taken effect, and must
                    # be aborted too, or a retry with the same op id would
                    # find that stale record (ABORT of nothing is harmless).
                    prepared.append(s)
                    r = await self.call(s, m.Prepare(op_id, self.shard, acts, []), caller, ts=ts)
                    new_ino = new_ino or r.new_ino
            except err.DfsError:
                await self.abort(op_id, prepared)
                raise
            reply = reply_of(new_ino) if reply_of else m.ActionResult(new_ino, [])
            await self.call(self.shard, m.Commit(op_id, reply), ts=ts)  # the decision
            self.commits[(_OP.get(), "two_phase")] += 1
            try:
                await self.finish(op_id, others, ts)
            except err.DfsError as e:  # decided and durable: recovery completes it
                log.warning("operation %s committed, completion deferred to recovery: %s", op_id.hex(), e)
            return reply
        finally:
            self.active.discard(op_id)
            self.active.discard(rid)

    async def abort(self, op_id: bytes, shards: list[int]) -> None:
        for s in reversed(shards):
            try:
                await self.call(s, m.Abort(op_id))
            except err.DfsError as e:  # recovery (presumed abort) will finish it
                log.warning("abort of %s on shard %d failed: %s", op_id.hex(), s, e)

    async def finish(self, op_id: bytes, others: list[int], ts: int | None = None) -> None:
        """Commit a decided operation on every participant, shard 0 last, then forget it."""
        order = [s for s in others if s != 0] + [s for s in others if s == 0]
        for s in order:
            await self.call(s, m.Commit(op_id, None), ts=ts)
        await self.call(self.shard, m.Forget(op_id), ts=ts)


class Recovery:
    """Finishes cross-shard operations whose coordinator went away."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    async def resolve_local(self, op_id: bytes) -> None:
        """Drive one operation recorded on this (coordinator) shard to its end."""
        c = self.coord
        st = (await c.call(c.shard, m.OpStatus(op_id))).state
        if not st:
            return
        recs = dict(c.pending(op_id))
        rec = recs.get(op_id)
        if rec is None:
            return
        if rec.coord != c.shard:
            await self._ask_coordinator(op_id, rec)
            return
        others = rec.parts or []
        if rec.state is OpState.COMMITTED:
            await c.finish(op_id, others)
        else:
            outcome = (await c.call(c.shard, m.Abort(op_id))).outcome
            if outcome == OpState.COMMITTED:
                await c.finish(op_id, others)
            else:
                await c.abort(op_id, others)

    async def _ask_coordinator(self, op_id: bytes, rec: OpRecord) -> None:
        c = self.coord
        st = (await c.call(rec.coord, m.OpStatus(op_id))).state
        if st == OpState.COMMITTED:
            if any(k == LOCK_RENAME for k, _ in rec.locks):
                return  # shard 0 commits last: the coordinator's recovery sends it in order
            await c.call(c.shard, m.Commit(op_id, None))
        elif st == OpState.NONE:  # presumed abort: no intent means it was never decided
            await c.call(c.shard, m.Abort(op_id))

    async def sweep(self, grace_ns: int = RECOVERY_GRACE_NS) -> int:
        """One pass over this shard's operation records; returns how many it resolved."""
        c = self.coord
        now = c.clock()
        n = 0
        for op_id, rec in c.pending():
            if op_id in c.active:
                continue
            if rec.state is not OpState.COMMITTED and now - rec.ts < grace_ns:
                continue
            try:
                if rec.coord == c.shard:
                    await self.resolve_local(op_id)
                else:
                    await self._ask_coordinator(op_id, rec)
                n += 1
            except err.DfsError as e:
                log.info("recovery of %s deferred: %s", op_id.hex(), e)
        return n
