"""MetaClient: the namespace API over any transport (async core, sync facade).

It builds every operation as a typed request (``dfs.common.messages``),
routes it to its shard (``Request.shard``: inode ids carry their shard; a new
directory's shard is a hash of parent and name), gives each logical operation
one request id that its retries reuse, and decodes the typed reply into the
records it returns. It knows nothing of Raft or of how a transport reaches a
leader, and builds no wire list by hand.

Imports: dfs.common only (and a transport given to it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno as E
import itertools
import os
import stat
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import ROOT_INO, shard_of
from dfs.common.limits import NAME_MAX
from dfs.common.ops import (
    DEFAULT_DELEGATION_LEASE_S,
    DEFAULT_LEASE_S,
    SET_ATIME,
    SET_ATIME_NOW,
    SET_GID,
    SET_MODE,
    SET_MTIME,
    SET_MTIME_NOW,
    SET_SIZE,
    SET_UID,
    Op,
)
from dfs.common.records import ROOT, Attr, Caller, DirEntry, StatFs
from dfs.common.shards import ShardCalls

T = TypeVar("T")

# A name whose inode lives on another shard is read in two requests (the entry, then the
# inode); a rename or unlink may delete that inode in between. The name was then changed
# meanwhile, never missing: it is read again, this many times at most.
NAME_RACES = 8
CAPS_BATCH = 512  # files per ExecuteBatch of caps_many (a reply of ~100 bytes each)

# The requests that concurrent callers send to one shard together: one ExecuteBatch for all
# of them that the loop's tasks asked for before it next ran its callbacks (no timer: a lone
# request leaves at once, as before). These are what a training loop's readers ask by the
# thousand: a file's open by name or inode, a name, attributes, a read handle's close.
GATHERED = frozenset({Op.LOOKUP, Op.GETATTR, Op.LOOKUPOPEN, Op.OPENREAD, Op.CLOSEREAD})
GATHER_MAX = 256  # requests per ExecuteBatch of gathered requests
_NO_REPLY = object()


def _rid() -> bytes:
    return uuid.uuid4().bytes


def _own_copy(e: BaseException) -> BaseException:
    """A copy of exception ``e`` (its class, arguments and attributes), or ``e`` itself."""
    try:
        c = type(e).__new__(type(e))
        c.args = e.args
        c.__dict__.update(e.__dict__)
        return c
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is shared
        return e


def _enc(name: str | bytes) -> bytes:
    return os.fsencode(name) if isinstance(name, str) else name


class MetaClient:
    def __init__(self, transport: ShardCalls, caller: Caller = ROOT, *, gather: bool = True) -> None:
        self.t = transport
        self.caller = caller
        self.gather = gather  # send concurrent GATHERED requests to a shard together
        # (shard, caller) -> the requests gathering in this loop iteration: (op, args, rid, the
        # waiter's future; None for the first, which leads and sends)
        self._gathering: dict[tuple[int, Caller], list[tuple[Op, list, bytes, asyncio.Future | None]]] = {}
        self._groups: set[asyncio.Task] = set()  # gathered requests on their way (held: the loop keeps weak refs)

    @property
    def nshards(self) -> int:
        return self.t.nshards

    async def close(self) -> None:
        await self.t.close()

    async def _send(self, req: m.Request, caller: Caller | None, mutating: bool = False, *,
                    shard: int | None = None) -> Any:
        """``req`` to its shard (or ``shard``): its typed reply. A mutation gets a new request id."""
        s = req.shard(self.nshards) if shard is None else shard
        rid = _rid() if mutating else b""
        if self.gather and req.OP in GATHERED:
            raw = await self._gathered(s, req.OP, caller or self.caller, req.to_wire(), rid)
        else:
            raw = await self.t.call(s, req.OP, caller or self.caller, req.to_wire(), rid)
        return req.reply_from_wire(raw)

    async def _gathered(self, shard: int, op: Op, caller: Caller, args: list, rid: bytes) -> Any:
        """The wire reply of one GATHERED request, sent with the others that tasks of this loop
        ask of the same shard, as the same caller, in the same iteration. The first of them
        leads: it lets the loop run the others once (they join), then sends alone, as it
        always did, or for all of them in one request."""
        key = (shard, caller)
        group = self._gathering.get(key)
        if group is not None:  # another task's request leads: join it
            fut = asyncio.get_running_loop().create_future()
            group.append((op, args, rid, fut))
            return await fut
        group = self._gathering[key] = [(op, args, rid, None)]
        try:
            await asyncio.sleep(0)
        except BaseException:  # cancelled: those who joined are still sent
            self._close_gathering(key, group)
            if len(group) > 1:
                self._send_later(shard, caller, group[1:])
            raise
        self._close_gathering(key, group)
        if len(group) == 1:
            return await self.t.call(shard, op, caller, args, rid)
        r = await asyncio.shield(self._send_later(shard, caller, group))  # a cancelled leader: the rest go on
        if isinstance(r, BaseException):
            raise r
        return r

    def _close_gathering(self, key: tuple[int, Caller], group: list) -> None:
        if self._gathering.get(key) is group:
            del self._gathering[key]

    def _send_later(self, shard: int, caller: Caller, group: list) -> asyncio.Task:
        task = asyncio.ensure_future(self._send_group(shard, caller, group))
        self._groups.add(task)
        task.add_done_callback(self._groups.discard)
        return task

    async def _send_group(self, shard: int, caller: Caller, group: list) -> Any:
        """Send ``group`` (GATHER_MAX requests per ExecuteBatch) and answer the futures of its
        waiters; the reply (or the exception) of its first request when that one has no
        future (the leader's)."""
        parts = [group[i:i + GATHER_MAX] for i in range(0, len(group), GATHER_MAX)]
        return (await asyncio.gather(*(self._send_part(shard, caller, p) for p in parts)))[0]

    async def _send_part(self, shard: int, caller: Caller, part: list) -> Any:
        part = [w for w in part if w[3] is None or not w[3].done()]  # not those cancelled meanwhile
        res: list[Any] = []
        try:
            if len(part) == 1:
                op, args, rid, _ = part[0]
                res = [await self.t.call(shard, op, caller, args, rid)]
            elif part:
                res = await self.t.call_many(shard, [(op, caller, args, rid) for op, args, rid, _ in part])
        except BaseException as e:  # noqa: BLE001 - the whole request failed: each waiter's error
            res = [e] + [_own_copy(e) for _ in part[1:]]  # its own: a caller names its path on it
        first = res[0] if res else None
        for (_, _, _, fut), r in itertools.zip_longest(part, res[:len(part)], fillvalue=_NO_REPLY):
            if fut is None or fut.done():  # the leader's (returned), or a cancelled waiter's
                continue
            if r is _NO_REPLY or isinstance(r, asyncio.CancelledError):  # (None is a reply: Done's)
                fut.cancel()
            elif isinstance(r, BaseException):
                fut.set_exception(r)
            else:
                fut.set_result(r)
        return first

    async def _many(self, shard: int, reqs: list[m.Request], caller: Caller | None,
                    mutating: bool = True) -> list[Any]:
        """Several requests in one to ``shard`` (ExecuteBatch): a typed reply or a DfsError
        each. Mutations get a new request id each."""
        c = caller or self.caller
        res = await self.t.call_many(shard, [(r.OP, c, r.to_wire(), _rid() if mutating else b"") for r in reqs])
        return [x if isinstance(x, err.DfsError) else r.reply_from_wire(x) for r, x in zip(reqs, res)]

    async def _attr_of(self, ino: int, attr: Attr | None, caller: Caller | None, snap: int = 0) -> Attr:
        return attr if attr is not None else await self.getattr(ino, caller=caller, snap=snap)

    # ------------------------------------------------------------------ reads
    # ``snap``: read the tree as snapshot ``snap`` holds it (0: the live tree; ESTALE: no such
    # live snapshot). Snapshots are read-only: no mutation takes one.
    async def lookup(self, parent: int, name: str | bytes, *, caller: Caller | None = None, snap: int = 0) -> Attr:
        for attempt in range(NAME_RACES):
            r = await self._send(m.Lookup(parent, _enc(name), snap), caller)
            try:
                return await self._attr_of(r.ino, r.attr, caller, snap)
            except err.NotFound:
                if attempt == NAME_RACES - 1:
                    raise
        raise AssertionError("unreachable")

    async def getattr(self, ino: int, *, caller: Caller | None = None, snap: int = 0) -> Attr:
        return await self._send(m.Getattr(ino, snap), caller)

    async def getattrs(self, inos: list[int], *, caller: Caller | None = None,
                       snap: int = 0) -> dict[int, Attr | err.DfsError]:
        """Attributes of many inodes: one request per shard, in parallel."""
        by_shard: dict[int, list[int]] = defaultdict(list)
        for ino in inos:
            by_shard[shard_of(ino)].append(ino)

        async def one(shard: int, group: list[int]):
            res = await self._send(m.Getattrs(group, False, snap), caller, shard=shard)
            return zip(group, res.attrs)

        out: dict[int, Attr | err.DfsError] = {}
        for pairs in await asyncio.gather(*(one(s, g) for s, g in by_shard.items())):
            for ino, r in pairs:
                out[ino] = err.error_for(r) if isinstance(r, int) else r
        return out

    async def readdir(self, ino: int, cookie: int = 0, limit: int = 1000, *, plus: bool = True,
                      caller: Caller | None = None, snap: int = 0) -> tuple[list[DirEntry], bool]:
        """One page of entries after ``cookie`` and whether it is the last page."""
        r = await self._send(m.Readdir(ino, cookie, limit, plus, snap), caller)
        missing = [e.ino for e in r.entries if plus and e.attr is None]
        if not missing:
            return r.entries, r.eof
        attrs = await self.getattrs(missing, caller=caller, snap=snap)
        out = []
        for e in r.entries:
            if e.attr is None:
                a = attrs.get(e.ino)
                e = dataclasses.replace(e, attr=a if isinstance(a, Attr) else None)
            out.append(e)
        return out, r.eof

    async def iterdir(self, ino: int, *, plus: bool = True, page: int = 1000,
                      caller: Caller | None = None, snap: int = 0) -> AsyncIterator[DirEntry]:
        cookie = 0
        while True:
            entries, eof = await self.readdir(ino, cookie, page, plus=plus, caller=caller, snap=snap)
            for e in entries:
                yield e
            if eof or not entries:
                return
            cookie = entries[-1].cookie

    async def listdir(self, ino: int, *, plus: bool = False, caller: Caller | None = None,
                      snap: int = 0) -> list[DirEntry]:
        return [e async for e in self.iterdir(ino, plus=plus, caller=caller, snap=snap)]

    async def readlink(self, ino: int, *, caller: Caller | None = None, snap: int = 0) -> bytes:
        return (await self._send(m.Readlink(ino, snap), caller)).target

    async def getxattr(self, ino: int, name: str | bytes, *, caller: Caller | None = None, snap: int = 0) -> bytes:
        return (await self._send(m.Getxattr(ino, _enc(name), snap), caller)).value

    async def listxattr(self, ino: int, *, caller: Caller | None = None, snap: int = 0) -> list[bytes]:
        return (await self._send(m.Listxattr(ino, snap), caller)).names

    async def statfs(self, *, caller: Caller | None = None) -> StatFs:
        counts = await asyncio.gather(*(self._send(m.Statfs(), caller, shard=s) for s in range(self.nshards)))
        files = sum(c.files for c in counts)
        total_files = max(1 << 32, files * 2)
        # Space is the data servers' (Core.statfs takes it from the cluster map); this nominal
        # 1 PiB is what a client without them (or before any target reported) says.
        block = 4096
        blocks = (1 << 50) // block
        return StatFs(block, blocks, blocks, total_files, total_files - files, NAME_MAX)

    # ------------------------------------------------------------------ snapshots
    async def snapshot_create(self, root: int, name: str | bytes, path: str = "", *,
                              caller: Caller | None = None) -> int:
        """Take snapshot ``name`` of directory ``root`` (its owner or root): its number. EEXIST:
        the name is taken under that directory; ENOTDIR; EPERM; EINVAL: a bad name."""
        return (await self._send(m.SnapCreate(root, _enc(name), path), caller, True)).snap

    async def snapshot_delete(self, root: int, name: str | bytes, *, caller: Caller | None = None) -> None:
        """Delete snapshot ``name`` of ``root`` (ENOENT: none): its space is freed in the background."""
        await self._send(m.SnapDelete(root, _enc(name)), caller, True)

    # ------------------------------------------------------------------ mutations
    async def create(self, parent: int, name: str | bytes, mode: int = 0o644, *, excl: bool = True,
                     umask: int = 0, inline: bool | None = None, ino: int = 0, session: bytes = b"",
                     layout: int = 0, caller: Caller | None = None) -> tuple[Attr, bool]:
        """Create a regular file; with ``excl=False`` an existing one is returned.

        ``inline``: whether the new file keeps its bytes in the metadata shard while
        they fit under ``INLINE_MAX`` (None: as its directory's policy says, see
        ``setlayout``). ``ino``: an id the parent's shard delegated to ``session``
        (``delegate``); ``layout``: the file's layout instead of its directory's.
        Returns (attr, created)."""
        req = m.Create(parent, _enc(name), stat.S_IFREG | (mode & 0o7777), 0, excl, umask, None,
                       None if inline is None else bool(inline), ino=ino, session=session, layout=layout)
        r = await self._send(req, caller, True)
        return await self._attr_of(r.ino, r.attr, caller), r.created

    async def create_open(self, parent: int, name: str | bytes, mode: int = 0o644, *, excl: bool = True,
                          umask: int = 0, lease_s: float = DEFAULT_LEASE_S, inline: bool | None = None,
                          access: int = 0, caller: Caller | None = None) -> tuple[Attr, bool, bytes | None, Attr]:
        """``create`` and ``open_handle`` in one command (one Raft round): returns (attr,
        created, handle, the parent's attributes after it). An existing regular file
        (``excl=False``) is opened too, after an ``access`` check (os.R_OK | os.W_OK); an
        existing entry of another type (a directory, a symlink the caller must follow) is
        returned with handle None."""
        for attempt in range(NAME_RACES):
            h = os.urandom(16)
            req = m.Create(parent, _enc(name), stat.S_IFREG | (mode & 0o7777), 0, excl, umask, None, inline, h,
                           float(lease_s), int(access))
            r = await self._send(req, caller, True)
            if r.opened:
                return r.attr, r.created, h, r.parent
            try:
                attr = await self._attr_of(r.ino, r.attr, caller)
                if not attr.is_reg():
                    return attr, False, None, r.parent
                attr, _ = await self.open_file(r.ino, lease_s, access=access, handle=h, caller=caller)  # on another shard
            except err.NotFound:  # an existing name whose inode went meanwhile (NAME_RACES)
                if r.created or attempt == NAME_RACES - 1:
                    raise
                continue
            return attr, r.created, h, r.parent
        raise AssertionError("unreachable")

    async def mknod(self, parent: int, name: str | bytes, mode: int, rdev: int = 0, *, umask: int = 0,
                    caller: Caller | None = None) -> Attr:
        if stat.S_ISDIR(mode):
            return await self.mkdir(parent, name, mode, umask=umask, caller=caller)
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        r = await self._send(m.Create(parent, _enc(name), mode, rdev, True, umask, None), caller, True)
        return await self._attr_of(r.ino, r.attr, caller)

    async def symlink(self, parent: int, name: str | bytes, target: str | bytes, *,
                      caller: Caller | None = None) -> Attr:
        req = m.Create(parent, _enc(name), stat.S_IFLNK | 0o777, 0, True, 0, _enc(target))
        r = await self._send(req, caller, True)
        return await self._attr_of(r.ino, r.attr, caller)

    async def mkdir(self, parent: int, name: str | bytes, mode: int = 0o755, *, umask: int = 0, ino: int = 0,
                    session: bytes = b"", caller: Caller | None = None) -> Attr:
        """``ino``: an id the new directory's home shard delegated to ``session``."""
        name = _enc(name)
        if len(name) > NAME_MAX:
            raise err.NameTooLong()
        return await self._send(m.Mkdir(parent, name, mode, umask, ino, session), caller, True)

    async def unlink(self, parent: int, name: str | bytes, *, caller: Caller | None = None) -> None:
        """Remove a non-directory entry (EISDIR for a directory, ENOENT for none)."""
        await self._send(m.Unlink(parent, _enc(name)), caller, True)

    async def rmdir(self, parent: int, name: str | bytes, *, caller: Caller | None = None) -> None:
        await self._send(m.Rmdir(parent, _enc(name)), caller, True)

    async def rename(self, sparent: int, sname: str | bytes, dparent: int, dname: str | bytes, flags: int = 0,
                     *, caller: Caller | None = None) -> None:
        await self._send(m.Rename(sparent, _enc(sname), dparent, _enc(dname), flags), caller, True)

    async def link(self, ino: int, parent: int, name: str | bytes, *, caller: Caller | None = None) -> Attr:
        return await self._send(m.Link(ino, parent, _enc(name)), caller, True)

    async def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                      size: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None,
                      atime_now: bool = False, mtime_now: bool = False, grow: int | None = None,
                      caller: Caller | None = None) -> Attr:
        """``grow``: publish a writer's size first, as ``extend`` does (one command for both)."""
        req = setattr_request(ino, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns, mtime_ns=mtime_ns,
                              atime_now=atime_now, mtime_now=mtime_now, grow=grow)
        return await self._send(req, caller, True)

    async def extend(self, ino: int, size: int, *, caller: Caller | None = None) -> Attr:
        """A writer publishes its size (grow only) and mtime: close-to-open's close."""
        return await self._send(m.Extend(ino, size), caller, True)

    async def read_inline(self, ino: int, *, caller: Caller | None = None, snap: int = 0) -> tuple[bytes, int]:
        """An inline file's stored bytes (the file is those, then zeros up to its size) and
        their high water (the longest they ever were). ENOTSUP: the file is not inline."""
        r = await self._send(m.ReadInline(ino, snap), caller)
        return r.data, r.high_water

    async def write_inline(self, ino: int, runs: list[tuple[int, bytes]], size: int, *,
                           caller: Caller | None = None) -> Attr:
        """Write runs ``(offset, bytes)`` (in order, later ones win) into an inline file and
        publish ``size`` (grow only) and mtime: one logged command. ENOTSUP: not inline
        (any more); EFBIG: a run ends past INLINE_MAX."""
        body = [m.InlineRun(off, bytes(b)) for off, b in runs]
        return await self._send(m.WriteInline(ino, body, size), caller, True)

    async def migrate_inline(self, ino: int, expect: bytes | None, *, caller: Caller | None = None) -> Attr:
        """Declare an inline file's bytes copied to the data servers (``expect``: their
        ``inline_digest``, None for a file that never had inline bytes); ECANCELED if
        they changed meanwhile. A file already not inline is left as it is."""
        return await self._send(m.Migrate(ino, expect), caller, True)

    async def setxattr(self, ino: int, name: str | bytes, value: bytes, flags: int = 0, *,
                       caller: Caller | None = None) -> None:
        await self._send(m.Setxattr(ino, _enc(name), bytes(value), flags), caller, True)

    async def removexattr(self, ino: int, name: str | bytes, *, caller: Caller | None = None) -> None:
        await self._send(m.Removexattr(ino, _enc(name)), caller, True)

    async def setlayout(self, ino: int, layout: int, *, inline: bool | None = None,
                        caller: Caller | None = None) -> Attr:
        """Set directory ``ino``'s default layout (a packed ``dfs.common.layout.Layout``; 0 = the
        default): new files and subdirectories inherit it, existing files keep theirs.
        ``inline`` (if given) sets its small-files policy (``Attr.flags & FLAG_INLINE`` on a
        directory): new regular files in it keep their bytes inline while they fit under
        ``INLINE_MAX``; new subdirectories inherit the policy."""
        req = m.Setlayout(ino, int(layout), None if inline is None else bool(inline))
        return await self._send(req, caller, True)

    async def setlazy(self, ino: int, lazy: bool = True, *, caller: Caller | None = None) -> Attr:
        """Set directory ``ino``'s lazy policy (``Attr.flags & FLAG_LAZY``): clients in the
        per-directory lazy mode change its tree lazily; new subdirectories inherit it."""
        return await self._send(m.SetLazy(ino, bool(lazy)), caller, True)

    # ------------------------------------------------------------------ write-back (lazy mode)
    async def delegate(self, shard: int, session: bytes, count: int,
                       lease_s: float = DEFAULT_DELEGATION_LEASE_S) -> m.Grant:
        """Have ``shard`` delegate ``count`` inode ids (whole blocks) to client ``session``
        until its lease ends (which also renews the session's earlier grants there)."""
        return await self._send(m.Delegate(session, int(count), float(lease_s)), None, True, shard=shard)

    async def renew_delegation(self, shard: int, session: bytes, lease_s: float = DEFAULT_DELEGATION_LEASE_S, *,
                               release: bool = False) -> int:
        """Extend ``session``'s grants on ``shard`` (the new expiry, ns); NotFound when none is
        left. ``release``: drop them instead."""
        r = await self._send(m.RenewDelegation(session, float(lease_s), bool(release)), None, True, shard=shard)
        return r.expiry

    async def batch(self, shard: int, items: list[m.BatchItem]) -> list[m.Outcome | None]:
        """Logged ops of ``shard`` applied in order in one command (``m.Batch``): an outcome
        per item, None for an item not run. Resending the same items (same request ids) is
        answered from their idempotency records."""
        return (await self._send(m.Batch(items), None, False, shard=shard)).results

    # ------------------------------------------------------------------ data-plane capabilities
    async def caps(self, ino: int, rights: int, *, handle: bytes | None = None, session: bytes | None = None,
                   snap: int = 0, caller: Caller | None = None) -> bytes | None:
        """A capability for data-plane requests on ``ino`` (``dfs.common.caps``; ``rights``
        READ | WRITE): for open ``handle``, a delegated id of lazy ``session``, or the
        caller's access now; ``snap``: reads at that snapshot, ``ino`` its directory.
        None: the cluster does not check capabilities. EACCES as an open would answer."""
        r = await self._send(m.Caps(ino, rights, handle, session, snap), caller)
        return r.caps[0] if r.caps else None

    async def caps_many(self, inos: list[int], rights: int, *, caller: Caller | None = None
                        ) -> list[bytes | None | err.DfsError]:
        """``caps(ino, rights)`` of each of ``inos`` (the caller's access now), in one
        ExecuteBatch per shard and CAPS_BATCH files: a capability, None (the cluster does
        not check them) or the DfsError of each, in order."""
        out: list[bytes | None | err.DfsError] = [None] * len(inos)
        by_shard: dict[int, list[int]] = defaultdict(list)
        for i, ino in enumerate(inos):
            by_shard[shard_of(ino)].append(i)

        async def batch(shard: int, idx: list[int]) -> None:
            res = await self._many(shard, [m.Caps(inos[i], rights) for i in idx], caller, mutating=False)
            for i, x in zip(idx, res):
                out[i] = x if isinstance(x, err.DfsError) else (x.caps[0] if x.caps else None)

        await asyncio.gather(*(batch(s, idx[k:k + CAPS_BATCH]) for s, idx in by_shard.items()
                               for k in range(0, len(idx), CAPS_BATCH)))
        return out

    # ------------------------------------------------------------------ open handles
    async def open_handle(self, ino: int, lease_s: float = DEFAULT_LEASE_S, *, handle: bytes | None = None,
                          caller: Caller | None = None) -> bytes:
        """Register an open of regular file ``ino``: while the handle lives the file stays
        (readable, writable, its size and data kept) even if its last name goes. Returns the
        handle id (16 random bytes; pass ``handle`` to re-open one that was lost). The
        handle lives ``lease_s`` seconds: the caller renews it (``renew_handles``) every
        ``lease_s / 3`` and closes it (``close_handle``). EISDIR, EINVAL (not a regular
        file), ENOENT (no such inode, e.g. unlinked and deleted since the lookup)."""
        return (await self.open_file(ino, lease_s, handle=handle, caller=caller))[1]

    async def open_file(self, ino: int, lease_s: float = DEFAULT_LEASE_S, *, access: int = 0,
                        handle: bytes | None = None, caller: Caller | None = None) -> tuple[Attr, bytes]:
        """``open_handle`` that also returns the file's attributes as of the open (fresh, for
        close-to-open) and checks ``access`` (os.R_OK | os.W_OK) for the caller on the
        service: EACCES changes nothing."""
        h = handle if handle is not None else os.urandom(16)
        return await self._send(m.Open(ino, h, float(lease_s), int(access)), caller, True), h

    async def open_read(self, ino: int, lease_s: float = DEFAULT_LEASE_S, *, access: int = 0,
                        handle: bytes | None = None, caller: Caller | None = None, inline: bool = False):
        """``open_file`` for reading only: a read handle, kept in the shard leader's memory
        (no Raft round; see dfs.meta.readhandles). Returns (attributes, handle, durable):
        durable handles (the leader logged an OPEN: inline files) are renewed and
        closed with ``renew_handles`` / ``close_handles``, read handles with
        ``renew_read_handles`` / ``close_read_handles``. ``access``: 0 or os.R_OK.

        ``inline``: an inline file comes with its bytes instead of a handle (no Raft round,
        nothing to renew or close: the caller holds all of the file); the answer is then
        (attributes, handle or None, durable, the bytes or None)."""
        h = handle if handle is not None else os.urandom(16)
        r = await self._send(m.OpenRead(ino, h, float(lease_s), int(access), inline), caller, True)
        if not inline:
            return r.attr, h, bool(r.durable)
        if r.data is not None:
            return r.attr, None, False, r.data
        return r.attr, h, bool(r.durable), None

    async def lookup_open(self, parent: int, name: str | bytes, lease_s: float = DEFAULT_LEASE_S, *,
                          access: int = 0, handle: bytes | None = None,
                          caller: Caller | None = None, inline: bool = False):
        """``lookup`` and ``open_read`` of what it finds in one round trip: (attributes,
        handle, durable). The handle is None when nothing was opened (not a regular file,
        or an inode on another shard than the directory's: the caller opens it itself).
        ``inline``: as for ``open_read`` (a fourth item, the bytes of an inline file
        opened without a handle, or None)."""
        h = handle if handle is not None else os.urandom(16)
        for attempt in range(NAME_RACES):
            r = await self._send(m.LookupOpen(parent, _enc(name), h, float(lease_s), int(access), inline),
                                 caller, True)
            opened = r.opened in (m.Opened.READ, m.Opened.DURABLE)
            try:
                attr = await self._attr_of(r.ino, r.attr, caller)
            except err.NotFound:  # not opened (another shard's inode), and gone meanwhile (NAME_RACES)
                if attempt == NAME_RACES - 1:
                    raise
                continue
            durable = r.opened == m.Opened.DURABLE
            if not inline:
                return attr, (h if opened else None), durable
            return attr, (h if opened else None), durable, r.data
        raise AssertionError("unreachable")

    async def renew_read_handles(self, pairs: list[tuple[int, bytes]], lease_s: float = DEFAULT_LEASE_S, *,
                                 caller: Caller | None = None) -> list[tuple[int, bytes]]:
        """``renew_handles`` for read handles (a new leader adopts them). Returns the pairs
        that are gone for good: the file was deleted and its chunks freed."""
        return await self._per_shard(lambda g: m.RenewRead(g, float(lease_s)), pairs, caller)

    async def close_read_handles(self, pairs: list[tuple[int, bytes]], *, caller: Caller | None = None) -> None:
        """Drop read handles (unknown ones are fine), one request per shard, in parallel."""
        await self._per_shard(m.CloseRead, pairs, caller)

    async def _per_shard(self, make: Callable[[list[m.HandleRef]], m.Request], pairs: list[tuple[int, bytes]],
                         caller: Caller | None) -> list[tuple[int, bytes]]:
        """``make(handles)`` on each pairs' shard at once; the pairs answered with an errno."""
        by_shard: dict[int, list[m.HandleRef]] = defaultdict(list)
        for ino, h in pairs:
            by_shard[shard_of(ino)].append(m.HandleRef(ino, h))

        async def one(shard: int, group: list[m.HandleRef]):
            req = make(group)
            res = await self._send(req, caller, req.OP == Op.RENEW, shard=shard)
            errnos = res.errnos if isinstance(res, m.Errnos) else ()
            return [(r.ino, r.handle) for r, e in zip(group, errnos) if e]

        gone: list[tuple[int, bytes]] = []
        for g in await asyncio.gather(*(one(s, g) for s, g in by_shard.items())):
            gone.extend(g)
        return gone

    async def renew_handles(self, pairs: list[tuple[int, bytes]], lease_s: float = DEFAULT_LEASE_S, *,
                            caller: Caller | None = None) -> list[tuple[int, bytes]]:
        """Extend handles ``(ino, handle)`` to now + ``lease_s`` (one request per shard, in
        parallel). Returns the pairs that are gone (closed or expired): a file that still has a
        name can be opened again (``open_handle(ino, handle=h)``); one that does not is lost."""
        return await self._per_shard(lambda g: m.Renew(g, float(lease_s)), pairs, caller)

    async def close_handle(self, ino: int, handle: bytes, *, caller: Caller | None = None) -> bool:
        """Drop a handle (a gone one is fine). The last handle of a file without a name
        deletes it; returns whether this close did."""
        return bool((await self._send(m.Close(ino, handle), caller, True)).deleted)

    async def close_handles(self, pairs: list[tuple[int, bytes]], *, caller: Caller | None = None) -> None:
        """``close_handle`` for many handles: one batch request per shard, in parallel."""
        by_shard: dict[int, list[m.Request]] = defaultdict(list)
        for ino, h in pairs:
            by_shard[shard_of(ino)].append(m.Close(ino, h))
        for res in await asyncio.gather(*(self._many(s, reqs, caller) for s, reqs in by_shard.items())):
            for r in res:
                if isinstance(r, err.DfsError) and r.errno != E.ENOENT:
                    raise r

    # ------------------------------------------------------------------ batches
    async def create_many(self, parent: int, names: list[str | bytes], mode: int = 0o644, *,
                          caller: Caller | None = None) -> list[Attr | err.DfsError]:
        """Create many files in one directory with one request (one shard)."""
        reqs = [m.Create(parent, _enc(n), stat.S_IFREG | mode, 0, True, 0, None) for n in names]
        res = await self._many(shard_of(parent), reqs, caller)
        return [r if isinstance(r, err.DfsError) else r.attr for r in res]

    async def getattr_many(self, inos: list[int], *, caller: Caller | None = None) -> list[Attr | err.DfsError]:
        got = await self.getattrs(inos, caller=caller)
        return [got[i] for i in inos]

    # ------------------------------------------------------------------ paths
    async def resolve(self, path: str | bytes, *, caller: Caller | None = None) -> Attr:
        """Attributes of an absolute path (no symlink following)."""
        attr: Attr | None = None
        ino = ROOT_INO
        for part in _enc(path).split(b"/"):
            if not part or part == b".":
                continue
            if part == b"..":
                raise err.InvalidArgument("'..' in a path given to resolve()")
            attr = await self.lookup(ino, part, caller=caller)
            ino = attr.ino
        return attr if attr is not None else await self.getattr(ROOT_INO, caller=caller)

    async def resolve_parent(self, path: str | bytes, *, caller: Caller | None = None) -> tuple[int, bytes]:
        p = _enc(path).rstrip(b"/")
        head, _, name = p.rpartition(b"/")
        if not name:
            raise err.InvalidArgument("path has no last component")
        parent = await self.resolve(head or b"/", caller=caller)
        if not parent.is_dir():
            raise err.NotADirectory()
        return parent.ino, name


def setattr_request(ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                    size: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None,
                    atime_now: bool = False, mtime_now: bool = False, grow: int | None = None) -> m.Setattr:
    """The SETATTR request of ``MetaClient.setattr``'s arguments (lazy mode queues it)."""
    valid = 0
    if mode is not None:
        valid |= SET_MODE
    if uid is not None and uid != -1:
        valid |= SET_UID
    if gid is not None and gid != -1:
        valid |= SET_GID
    if size is not None:
        valid |= SET_SIZE
    if atime_ns is not None:
        valid |= SET_ATIME
    if mtime_ns is not None:
        valid |= SET_MTIME
    if atime_now:
        valid |= SET_ATIME | SET_ATIME_NOW
    if mtime_now:
        valid |= SET_MTIME | SET_MTIME_NOW
    return m.Setattr(ino, valid, mode or 0, uid if valid & SET_UID else 0, gid if valid & SET_GID else 0,
                     size or 0, atime_ns or 0, mtime_ns or 0, None if grow is None else int(grow))


class SyncMetaClient:
    """The synchronous facade of a MetaClient: every method, run on a private loop thread.

    The thread is the one sync facade of the client package (``dfs.client.loop.SyncFacade``,
    which ``dfs.Client`` is built on too); ``run(coro)`` runs any coroutine there."""

    def __init__(self, make_client: Any) -> None:
        from dfs.client.loop import SyncFacade  # imported here: this class is its only user in the file

        self._facade = SyncFacade(make_client, thread_name="dfs-client-loop")
        self.aio: MetaClient = self._facade.aio

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop thread and wait for its result."""
        return self._facade.run(coro)


    def __getattr__(self, name: str):
        if name.startswith("_") or name == "aio":
            raise AttributeError(name)
        fn = getattr(self.aio, name)
        if not asyncio.iscoroutinefunction(fn):
            return fn

        def call(*a, **kw):
            return self._facade.run(fn(*a, **kw))

        call.__name__ = name
        return call

    def listdir(self, ino: int, **kw) -> list[DirEntry]:
        return self.run(self.aio.listdir(ino, **kw))

    def close(self) -> None:
        self._facade.close()

    def __enter__(self) -> SyncMetaClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
