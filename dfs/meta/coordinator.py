"""Namespace operations that may span shards: mkdir, rmdir, unlink, rename, link.

The coordinator runs on the leader of the shard the client sent the
operation to (always a shard the operation touches: the parent's for
unlink/rmdir, the new directory's home for mkdir, the new parent's for link,
the source parent's for rename). It

1. reads what it needs (lookups, attributes; for a directory moved to another
   parent, the rename epoch and the ancestry of the target),
2. turns the operation into *actions* per shard (see ``MetaStore._validate_action``),
3. if one shard holds them all, submits one ONEPHASE command there: atomic,
   one Raft round;
4. otherwise runs two-phase commit keyed by the operation id (= the client's
   request id): PREPARE on itself first (this is the durable intent), then on
   the others; COMMIT on itself (the durable decision, with the reply for
   retries), then on the others (shard 0 last, which releases the rename
   ordering lock), then FORGET.

A prepared action holds locks that keep its preconditions true. A failed
prepare aborts everything prepared so far. ``Recovery`` finishes what a dead
coordinator left: decided operations are committed everywhere, undecided ones
aborted (presumed abort), and participants ask the coordinator about
operations they hold prepared for too long.

If a precondition changed between the read and the prepare (``Locked``), the
operation is retried from the read, with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import stat
import time
import uuid
from collections import defaultdict
from typing import Any, Protocol

from dfs.common import errors as err
from dfs.common.ids import ROOT_INO, dir_home_shard, shard_of
from dfs.common.records import FLAG_INLINE, Caller
from dfs.common.ops import RENAME_EXCHANGE, RENAME_NOREPLACE, Op
from dfs.meta.schema import LOCK_RENAME
from dfs.meta.store import R_W, R_X, check_access, check_name

log = logging.getLogger(__name__)

INTERNAL = Caller(0, 0, ())
MAX_ATTEMPTS = 40
RECOVERY_GRACE_NS = 2 * 10**9  # an undecided operation older than this, not running here, is aborted


class ShardCaller(Protocol):
    nshards: int

    async def call(self, shard: int, op: Op, caller: Caller, args: list, rid: bytes = b"",
                   ts: int | None = None) -> Any:
        """Run ``op`` on ``shard``'s leader; raises DfsError."""


def _reply(op: Op, raw: list, target: int) -> Any:
    """The client's answer from an action result ``[new_ino, [attr...]]``."""
    if op in (Op.MKDIR, Op.LINK):
        new_ino, touched = raw
        want = new_ino or target
        for w in touched:
            if w[0] == want:
                return w
        raise err.DfsError("reply lost its inode")
    return None


class Coordinator:
    def __init__(self, shard: int, shards: ShardCaller, clock=time.time_ns) -> None:
        self.shard = shard
        self.shards = shards
        self.clock = clock
        self.active: set[bytes] = set()

    async def _c(self, shard: int, op: Op, args: list, caller: Caller = INTERNAL, rid: bytes = b"",
                 ts: int | None = None):
        return await self.shards.call(shard, op, caller, args, rid=rid, ts=ts)

    # ------------------------------------------------------------ entry point
    async def run(self, op: Op, rid: bytes, caller: Caller, args: list) -> Any:
        rid = rid or uuid.uuid4().bytes
        if rid in self.active:
            raise err.Locked("operation already running")
        for op_id, rec in await self.shards.pending(self.shard):
            if rec.get("rid") == rid and "parts" in rec:
                # An earlier attempt of this very request is stuck: finish it
                # (if decided) or undo it before answering, so that a retry's
                # success means every participant has committed.
                await Recovery(self).resolve_local(op_id)
        prev = await self._c(self.shard, Op.REQSTATUS, [rid])
        if prev is not None:
            status, payload = prev
            if status:
                raise err.error_for(status, payload)
            return _reply(op, payload, self._target(op, args))
        fn = self._OPS[op]
        delay = 0.002
        for _ in range(MAX_ATTEMPTS):
            try:
                return await fn(self, rid, caller, *args)
            except err.Locked:
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.2)
        raise err.Locked("gave up after repeated conflicts")

    @staticmethod
    def _target(op: Op, args: list) -> int:
        return args[0] if op == Op.LINK else 0

    # ------------------------------------------------------------ reads
    async def _lookup(self, parent: int, name: bytes):
        """(ino, mode, attr) of an entry; attr fetched from the inode's shard."""
        ino, mode, attr = await self._c(shard_of(parent), Op.LOOKUP, [parent, name])
        if attr is None:
            attr = await self._c(shard_of(ino), Op.GETATTR, [ino])
        return ino, mode, attr

    async def _maybe_lookup(self, parent: int, name: bytes):
        try:
            return await self._lookup(parent, name)
        except err.NotFound:
            return None

    # ------------------------------------------------------------ execution
    async def _execute(self, rid: bytes, caller: Caller, ts: int, plan: dict[int, list],
                       reply_of=None) -> list:
        """Apply ``plan`` (shard -> actions) atomically; returns [new_ino, [attr...]]."""
        plan = {s: a for s, a in plan.items() if a}
        if set(plan) == {self.shard}:
            return await self._c(self.shard, Op.ONEPHASE, [rid, plan[self.shard]], caller, rid=rid, ts=ts)
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
                res = await self._c(self.shard, Op.PREPARE, [op_id, self.shard, plan[self.shard], others, rid],
                                    caller, ts=ts)
                prepared.append(self.shard)
                new_ino = res[0]
                for s in others:
                    acts = [self._fill(a, new_ino) for a in plan[s]]
                    # Counted as prepared before the answer: a PREPARE whose
                    # reply was lost (deadline) may have taken effect, and must
                    # be aborted too, or a retry with the same op id would
                    # find that stale record (ABORT of nothing is harmless).
                    prepared.append(s)
                    r = await self._c(s, Op.PREPARE, [op_id, self.shard, acts, []], caller, ts=ts)
                    new_ino = new_ino or r[0]
            except err.DfsError:
                await self._abort(op_id, prepared)
                raise
            reply = reply_of(new_ino) if reply_of else [new_ino, []]
            await self._c(self.shard, Op.COMMIT, [op_id, reply], ts=ts)  # the decision
            try:
                await self._finish(op_id, others, ts)
            except err.DfsError as e:  # decided and durable: recovery completes it
                log.warning("operation %s committed, completion deferred to recovery: %s", op_id.hex(), e)
            return reply
        finally:
            self.active.discard(op_id)
            self.active.discard(rid)

    @staticmethod
    def _fill(action: list, new_ino: int) -> list:
        if action[0] == "dput" and action[3] == 0:
            return [*action[:3], new_ino, *action[4:]]
        return action

    async def _abort(self, op_id: bytes, shards: list[int]) -> None:
        for s in reversed(shards):
            try:
                await self._c(s, Op.ABORT, [op_id])
            except err.DfsError as e:  # recovery (presumed abort) will finish it
                log.warning("abort of %s on shard %d failed: %s", op_id.hex(), s, e)

    async def _finish(self, op_id: bytes, others: list[int], ts: int | None = None) -> None:
        """Commit a decided operation on every participant, shard 0 last, then forget it."""
        order = [s for s in others if s != 0] + [s for s in others if s == 0]
        for s in order:
            await self._c(s, Op.COMMIT, [op_id, None], ts=ts)
        await self._c(self.shard, Op.FORGET, [op_id], ts=ts)

    # ------------------------------------------------------------ operations
    async def _mkdir(self, rid: bytes, caller: Caller, parent: int, name: bytes, mode: int, umask: int):
        check_name(name)
        p = await self._c(shard_of(parent), Op.GETATTR, [parent])
        if not stat.S_ISDIR(p[1]):
            raise err.NotADirectory()
        n = self.shards.nshards
        home = dir_home_shard(parent, name, n)
        if home != self.shard and not any(dir_home_shard(parent, name, k) == self.shard for k in range(1, n)):
            # Shard counts only grow (dfs admin add-meta-shard), so a client that has not
            # seen the newest map yet places by a smaller count: its choice is accepted.
            raise err.WrongShard(f"mkdir of this name is coordinated by shard {home}")
        home = self.shard  # the new directory lives where the client sent it
        perm = mode & 0o7777 & ~umask
        gid = caller.gid
        if p[1] & stat.S_ISGID:
            gid = p[4]
            perm |= stat.S_ISGID
        ts = self.clock()
        plan: dict[int, list] = defaultdict(list)
        layout = p[10] if len(p) > 10 else 0  # a new directory inherits its parent's default layout
        flags = p[11] & FLAG_INLINE if len(p) > 11 else 0  # and its inline-files policy
        plan[home].append(["mkdir", 0, perm, caller.uid, gid, parent, layout, flags])
        ps = shard_of(parent)
        plan[ps] += [["dir", parent, R_W | R_X], ["dput", parent, name, 0, stat.S_IFDIR, 0],
                     ["dirnlink", parent, 1]]

        def reply_of(new_ino: int) -> list:
            return [new_ino, [[new_ino, stat.S_IFDIR | perm, 2, caller.uid, gid, 0, 0, ts, ts, ts, layout, flags]]]

        raw = await self._execute(rid, caller, ts, plan, reply_of)
        return _reply(Op.MKDIR, raw, 0)

    async def _remove(self, rid: bytes, caller: Caller, parent: int, name: bytes, want_dir: bool):
        check_name(name)
        ino, mode, attr = await self._lookup(parent, name)
        is_dir = stat.S_ISDIR(mode)
        if want_dir and not is_dir:
            raise err.NotADirectory()
        if not want_dir and is_dir:
            raise err.IsADirectory()
        ps = shard_of(parent)
        plan: dict[int, list] = defaultdict(list)
        plan[ps] += [["dir", parent, R_W | R_X], ["sticky", parent, attr[3]], ["ddel", parent, name, ino]]
        if is_dir:
            plan[ps].append(["dirnlink", parent, -1])
            plan[shard_of(ino)].append(["rmdir", ino])
        else:
            plan[shard_of(ino)].append(["nlink", ino, -1, False])
        await self._execute(rid, caller, self.clock(), plan)
        return None

    async def _rmdir(self, rid: bytes, caller: Caller, parent: int, name: bytes):
        return await self._remove(rid, caller, parent, name, True)

    async def _unlink(self, rid: bytes, caller: Caller, parent: int, name: bytes):
        return await self._remove(rid, caller, parent, name, False)

    async def _link(self, rid: bytes, caller: Caller, ino: int, parent: int, name: bytes):
        check_name(name)
        attr = await self._c(shard_of(ino), Op.GETATTR, [ino])
        if stat.S_ISDIR(attr[1]):
            raise err.NotPermitted("hard link to a directory")
        ts = self.clock()
        plan: dict[int, list] = defaultdict(list)
        plan[shard_of(parent)] += [["dir", parent, R_W | R_X], ["dput", parent, name, ino, attr[1], 0]]
        plan[shard_of(ino)].append(["nlink", ino, 1, True])

        def reply_of(new_ino: int) -> list:
            a = list(attr)
            a[2] += 1
            a[9] = ts
            return [0, [a]]

        raw = await self._execute(rid, caller, ts, plan, reply_of)
        return _reply(Op.LINK, raw, ino)

    async def _rename(self, rid: bytes, caller: Caller, sp: int, sname: bytes, dp: int, dname: bytes,
                      flags: int):
        check_name(sname)
        check_name(dname)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise err.InvalidArgument("rename flags")
        exchange = bool(flags & RENAME_EXCHANGE)
        sino, smode, sattr = await self._lookup(sp, sname)
        dst = await self._maybe_lookup(dp, dname)
        dattr = await self._c(shard_of(dp), Op.GETATTR, [dp])
        if not stat.S_ISDIR(dattr[1]):
            raise err.NotADirectory()
        if dst is not None and dst[0] == sino:
            # the same inode under both names: POSIX says do nothing
            for d in {sp, dp}:
                check_access_wire(await self._c(shard_of(d), Op.GETATTR, [d]), caller, R_W | R_X)
            return None
        if flags & RENAME_NOREPLACE and dst is not None:
            raise err.Exists()
        if exchange and dst is None:
            raise err.NotFound()
        sdir = stat.S_ISDIR(smode)
        ddir = dst is not None and stat.S_ISDIR(dst[1])
        if dst is not None and not exchange:
            if sdir and not ddir:
                raise err.NotADirectory()
            if not sdir and ddir:
                raise err.IsADirectory()
        plan: dict[int, list] = defaultdict(list)
        ss, ds = shard_of(sp), shard_of(dp)
        plan[ss] += [["dir", sp, R_W | R_X], ["sticky", sp, sattr[3]]]
        plan[ds] += [["dir", dp, R_W | R_X]]
        if dst is not None:
            plan[ds].append(["sticky", dp, dst[2][3]])
        moved_dirs = []  # directories whose parent changes
        if sp != dp:
            if sdir:
                moved_dirs.append((sino, sattr, dp))
            if exchange and ddir:
                moved_dirs.append((dst[0], dst[2], sp))
        for _, a, _ in moved_dirs:  # its '..' entry changes: needs write permission on it
            check_access_wire(a, caller, R_W)
        if not exchange:
            plan[ss].append(["ddel", sp, sname, sino])
            plan[ds].append(["dput", dp, dname, sino, smode, dst[0] if dst else 0])
            if dst is not None:
                if ddir:
                    plan[shard_of(dst[0])].append(["rmdir", dst[0]])
                    plan[ds].append(["dirnlink", dp, -1])
                else:
                    plan[shard_of(dst[0])].append(["nlink", dst[0], -1, False])
            if sdir and sp != dp:
                plan[ss].append(["dirnlink", sp, -1])
                plan[ds].append(["dirnlink", dp, 1])
        else:
            plan[ss].append(["dput", sp, sname, dst[0], dst[1], sino])
            plan[ds].append(["dput", dp, dname, sino, smode, dst[0]])
            if sp != dp and sdir != ddir:
                plan[ss].append(["dirnlink", sp, 1 if ddir else -1])
                plan[ds].append(["dirnlink", dp, 1 if sdir else -1])
        reparented = {ino for ino, _, _ in moved_dirs}
        for ino, _, newp in moved_dirs:
            plan[shard_of(ino)].append(["reparent", ino, newp])
        for ino in {sino} | ({dst[0]} if exchange else set()):
            if ino not in reparented:
                plan[shard_of(ino)].append(["touch", ino])
        if moved_dirs:
            # The ordering point: the rename epoch read before the ancestry walk
            # must still hold when the lock is taken (see docs/design/metadata.md).
            epoch = await self._c(0, Op.RENAMEEPOCH, [])
            for ino, _, newp in moved_dirs:
                await self._check_not_ancestor(ino, newp)
            plan[0].append(["renlock", epoch])
        await self._execute(rid, caller, self.clock(), plan)
        return None

    async def _check_not_ancestor(self, ino: int, start: int) -> None:
        """EINVAL if directory ``ino`` is ``start`` or one of its ancestors."""
        p = start
        seen = 0
        while True:
            if p == ino:
                raise err.InvalidArgument("a directory cannot move into its own subtree")
            if p == ROOT_INO:
                return
            p = await self._c(shard_of(p), Op.DIRPARENT, [p])
            seen += 1
            if seen > 100000:
                raise err.DfsError("ancestry loop")

    _OPS = {
        Op.MKDIR: _mkdir,
        Op.RMDIR: _rmdir,
        Op.UNLINK: _unlink,
        Op.RENAME: _rename,
        Op.LINK: _link,
    }


def check_access_wire(attr: list, caller: Caller, mask: int) -> None:
    from dfs.meta.schema import Inode

    check_access(Inode(*attr[:10]), caller, mask)


class Recovery:
    """Finishes cross-shard operations whose coordinator went away."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    async def resolve_local(self, op_id: bytes) -> None:
        """Drive one operation recorded on this (coordinator) shard to its end."""
        c = self.coord
        from dfs.common.ops import Op as O

        st = await c._c(c.shard, O.OPSTATUS, [op_id])
        if not st:
            return
        recs = dict(await c.shards.pending(c.shard))
        rec = recs.get(op_id)
        if rec is None:
            return
        if rec["c"] != c.shard:
            await self._ask_coordinator(op_id, rec)
            return
        others = rec.get("parts", [])
        if rec["s"] == "C":
            await c._finish(op_id, others)
        else:
            outcome = await c._c(c.shard, O.ABORT, [op_id])
            if outcome == "C":
                await c._finish(op_id, others)
            else:
                await c._abort(op_id, others)

    async def _ask_coordinator(self, op_id: bytes, rec: dict) -> None:
        c = self.coord
        st = await c._c(rec["c"], Op.OPSTATUS, [op_id])
        if st == "C":
            if any(k == LOCK_RENAME for k, _ in rec.get("l", ())):
                return  # shard 0 commits last: the coordinator's recovery sends it in order
            await c._c(c.shard, Op.COMMIT, [op_id, None])
        elif st == "":  # presumed abort: no intent means it was never decided
            await c._c(c.shard, Op.ABORT, [op_id])

    async def sweep(self, grace_ns: int = RECOVERY_GRACE_NS) -> int:
        """One pass over this shard's operation records; returns how many it resolved."""
        c = self.coord
        now = c.clock()
        n = 0
        for op_id, rec in await c.shards.pending(c.shard):
            if op_id in c.active:
                continue
            if rec["s"] != "C" and now - rec["t"] < grace_ns:
                continue
            try:
                if rec["c"] == c.shard:
                    await self.resolve_local(op_id)
                else:
                    await self._ask_coordinator(op_id, rec)
                n += 1
            except err.DfsError as e:
                log.info("recovery of %s deferred: %s", op_id.hex(), e)
        return n
