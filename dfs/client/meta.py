"""MetaClient: the namespace API over any transport (async core, sync facade).

It routes every operation to its shard (inode ids carry their shard; a new
directory's shard is a hash of parent and name), gives each logical operation
one request id that its retries reuse, and turns wire results into typed
records. It knows nothing of Raft or of how a transport reaches a leader.

Imports: dfs.common only (and a transport given to it).
"""

from __future__ import annotations

import asyncio
import errno as E
import os
import stat
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol, TypeVar

from dfs.common import errors as err
from dfs.common.ids import ROOT_INO, dir_home_shard, shard_of
from dfs.common.limits import NAME_MAX
from dfs.common.ops import (
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

T = TypeVar("T")


class Transport(Protocol):
    """Delivers one operation to the leader of a shard, retrying what is retryable."""

    nshards: int

    async def call(self, shard: int, op: Op, caller: Caller, args: list, rid: bytes = b"") -> Any:
        """The op's result; raises a (non-retryable) DfsError."""

    async def call_many(self, shard: int, ops: list[tuple[Op, Caller, list, bytes]]) -> list[Any]:
        """Several ops in one request; each item is a result or a DfsError."""

    async def close(self) -> None: ...


def _rid() -> bytes:
    return uuid.uuid4().bytes


def _enc(name: str | bytes) -> bytes:
    return os.fsencode(name) if isinstance(name, str) else name


class MetaClient:
    def __init__(self, transport: Transport, caller: Caller = ROOT) -> None:
        self.t = transport
        self.caller = caller

    @property
    def nshards(self) -> int:
        return self.t.nshards

    async def close(self) -> None:
        await self.t.close()

    async def _call(self, shard: int, op: Op, args: list, caller: Caller | None, mutating: bool = False):
        return await self.t.call(shard, op, caller or self.caller, args, _rid() if mutating else b"")

    async def _attr_of(self, ino: int, wire: list | None, caller: Caller | None) -> Attr:
        if wire is None:
            wire = await self._call(shard_of(ino), Op.GETATTR, [ino], caller)
        return Attr.from_wire(wire)

    # ------------------------------------------------------------------ reads
    async def lookup(self, parent: int, name: str | bytes, *, caller: Caller | None = None) -> Attr:
        name = _enc(name)
        ino, _mode, wire = await self._call(shard_of(parent), Op.LOOKUP, [parent, name], caller)
        return await self._attr_of(ino, wire, caller)

    async def getattr(self, ino: int, *, caller: Caller | None = None) -> Attr:
        return Attr.from_wire(await self._call(shard_of(ino), Op.GETATTR, [ino], caller))

    async def getattrs(self, inos: list[int], *, caller: Caller | None = None) -> dict[int, Attr | err.DfsError]:
        """Attributes of many inodes: one request per shard, in parallel."""
        by_shard: dict[int, list[int]] = defaultdict(list)
        for ino in inos:
            by_shard[shard_of(ino)].append(ino)

        async def one(shard: int, group: list[int]):
            res = await self._call(shard, Op.GETATTRS, [group], caller)
            return zip(group, res)

        out: dict[int, Attr | err.DfsError] = {}
        for pairs in await asyncio.gather(*(one(s, g) for s, g in by_shard.items())):
            for ino, r in pairs:
                out[ino] = err.error_for(r) if isinstance(r, int) else Attr.from_wire(r)
        return out

    async def readdir(self, ino: int, cookie: int = 0, limit: int = 1000, *, plus: bool = True,
                      caller: Caller | None = None) -> tuple[list[DirEntry], bool]:
        """One page of entries after ``cookie`` and whether it is the last page."""
        rows, eof = await self._call(shard_of(ino), Op.READDIR, [ino, cookie, limit, plus], caller)
        missing = [r[1] for r in rows if plus and r[4] is None]
        attrs = await self.getattrs(missing, caller=caller) if missing else {}
        out = []
        for name, cino, mode, next_cookie, wire in rows:
            a = Attr.from_wire(wire) if wire is not None else attrs.get(cino)
            out.append(DirEntry(name, cino, mode, next_cookie, a if isinstance(a, Attr) else None))
        return out, eof

    async def iterdir(self, ino: int, *, plus: bool = True, page: int = 1000,
                      caller: Caller | None = None) -> AsyncIterator[DirEntry]:
        cookie = 0
        while True:
            entries, eof = await self.readdir(ino, cookie, page, plus=plus, caller=caller)
            for e in entries:
                yield e
            if eof or not entries:
                return
            cookie = entries[-1].cookie

    async def listdir(self, ino: int, *, plus: bool = False, caller: Caller | None = None) -> list[DirEntry]:
        return [e async for e in self.iterdir(ino, plus=plus, caller=caller)]

    async def readlink(self, ino: int, *, caller: Caller | None = None) -> bytes:
        return await self._call(shard_of(ino), Op.READLINK, [ino], caller)

    async def getxattr(self, ino: int, name: str | bytes, *, caller: Caller | None = None) -> bytes:
        return await self._call(shard_of(ino), Op.GETXATTR, [ino, _enc(name)], caller)

    async def listxattr(self, ino: int, *, caller: Caller | None = None) -> list[bytes]:
        return await self._call(shard_of(ino), Op.LISTXATTR, [ino], caller)

    async def statfs(self, *, caller: Caller | None = None) -> StatFs:
        counts = await asyncio.gather(*(self._call(s, Op.STATFS, [], caller) for s in range(self.nshards)))
        files = sum(c[0] for c in counts)
        total_files = max(1 << 32, files * 2)
        # Capacity comes from the data servers (a later part); until then a nominal 1 PiB.
        block = 4096
        blocks = (1 << 50) // block
        return StatFs(block, blocks, blocks, total_files, total_files - files, NAME_MAX)

    # ------------------------------------------------------------------ mutations
    async def create(self, parent: int, name: str | bytes, mode: int = 0o644, *, excl: bool = True,
                     umask: int = 0, inline: bool | None = None,
                     caller: Caller | None = None) -> tuple[Attr, bool]:
        """Create a regular file; with ``excl=False`` an existing one is returned.

        ``inline``: whether the new file keeps its bytes in the metadata shard while
        they fit under ``INLINE_MAX`` (None: as its directory's policy says, see
        ``setlayout``). Returns (attr, created)."""
        name = _enc(name)
        args = [parent, name, stat.S_IFREG | (mode & 0o7777), 0, excl, umask, None]
        if inline is not None:
            args.append(bool(inline))
        wire, created, ino, *_ = await self._call(shard_of(parent), Op.CREATE, args, caller, True)
        return await self._attr_of(ino, wire, caller), created

    async def create_open(self, parent: int, name: str | bytes, mode: int = 0o644, *, excl: bool = True,
                          umask: int = 0, lease_s: float = DEFAULT_LEASE_S, inline: bool | None = None,
                          access: int = 0, caller: Caller | None = None) -> tuple[Attr, bool, bytes | None, Attr]:
        """``create`` and ``open_handle`` in one command (one Raft round): returns (attr,
        created, handle, the parent's attributes after it). An existing regular file
        (``excl=False``) is opened too, after an ``access`` check (os.R_OK | os.W_OK); an
        existing entry of another type (a directory, a symlink the caller must follow) is
        returned with handle None."""
        name = _enc(name)
        h = os.urandom(16)
        args = [parent, name, stat.S_IFREG | (mode & 0o7777), 0, excl, umask, None, inline, h, float(lease_s)]
        if access:
            args.append(int(access))
        wire, created, ino, opened, pwire = await self._call(shard_of(parent), Op.CREATE, args, caller, True)
        if opened:
            return Attr.from_wire(wire), created, h, Attr.from_wire(pwire)
        attr = await self._attr_of(ino, wire, caller)
        if not attr.is_reg():
            return attr, False, None, Attr.from_wire(pwire)
        attr, _ = await self.open_file(ino, lease_s, access=access, handle=h, caller=caller)  # on another shard
        return attr, created, h, Attr.from_wire(pwire)

    async def mknod(self, parent: int, name: str | bytes, mode: int, rdev: int = 0, *, umask: int = 0,
                    caller: Caller | None = None) -> Attr:
        if stat.S_ISDIR(mode):
            return await self.mkdir(parent, name, mode, umask=umask, caller=caller)
        if stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFREG
        wire, _, ino, *_ = await self._call(shard_of(parent), Op.CREATE,
                                        [parent, _enc(name), mode, rdev, True, umask, None], caller, True)
        return await self._attr_of(ino, wire, caller)

    async def symlink(self, parent: int, name: str | bytes, target: str | bytes, *,
                      caller: Caller | None = None) -> Attr:
        wire, _, ino, *_ = await self._call(shard_of(parent), Op.CREATE,
                                        [parent, _enc(name), stat.S_IFLNK | 0o777, 0, True, 0, _enc(target)],
                                        caller, True)
        return await self._attr_of(ino, wire, caller)

    async def mkdir(self, parent: int, name: str | bytes, mode: int = 0o755, *, umask: int = 0,
                    caller: Caller | None = None) -> Attr:
        name = _enc(name)
        if len(name) > NAME_MAX:
            raise err.NameTooLong()
        home = dir_home_shard(parent, name, self.nshards)
        return Attr.from_wire(await self._call(home, Op.MKDIR, [parent, name, mode, umask], caller, True))

    async def unlink(self, parent: int, name: str | bytes, *, caller: Caller | None = None) -> None:
        """Remove a non-directory entry (EISDIR for a directory, ENOENT for none)."""
        await self._call(shard_of(parent), Op.UNLINK, [parent, _enc(name)], caller, True)

    async def rmdir(self, parent: int, name: str | bytes, *, caller: Caller | None = None) -> None:
        await self._call(shard_of(parent), Op.RMDIR, [parent, _enc(name)], caller, True)

    async def rename(self, sparent: int, sname: str | bytes, dparent: int, dname: str | bytes, flags: int = 0,
                     *, caller: Caller | None = None) -> None:
        await self._call(shard_of(sparent), Op.RENAME, [sparent, _enc(sname), dparent, _enc(dname), flags],
                         caller, True)

    async def link(self, ino: int, parent: int, name: str | bytes, *, caller: Caller | None = None) -> Attr:
        return Attr.from_wire(await self._call(shard_of(parent), Op.LINK, [ino, parent, _enc(name)], caller, True))

    async def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                      size: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None,
                      atime_now: bool = False, mtime_now: bool = False, grow: int | None = None,
                      caller: Caller | None = None) -> Attr:
        """``grow``: publish a writer's size first, as ``extend`` does (one command for both)."""
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
        args = [ino, valid, mode or 0, uid if valid & SET_UID else 0, gid if valid & SET_GID else 0, size or 0,
                atime_ns or 0, mtime_ns or 0]
        if grow is not None:
            args.append(int(grow))
        return Attr.from_wire(await self._call(shard_of(ino), Op.SETATTR, args, caller, True))

    async def extend(self, ino: int, size: int, *, caller: Caller | None = None) -> Attr:
        """A writer publishes its size (grow only) and mtime: close-to-open's close."""
        return Attr.from_wire(await self._call(shard_of(ino), Op.EXTEND, [ino, size], caller, True))

    async def read_inline(self, ino: int, *, caller: Caller | None = None) -> tuple[bytes, int]:
        """An inline file's stored bytes (the file is those, then zeros up to its size) and
        their high water (the longest they ever were). ENOTSUP: the file is not inline."""
        data, hw = await self._call(shard_of(ino), Op.READINLINE, [ino], caller)
        return data, hw

    async def write_inline(self, ino: int, runs: list[tuple[int, bytes]], size: int, *,
                           caller: Caller | None = None) -> Attr:
        """Write runs ``(offset, bytes)`` (in order, later ones win) into an inline file and
        publish ``size`` (grow only) and mtime: one logged command. ENOTSUP: not inline
        (any more); EFBIG: a run ends past INLINE_MAX."""
        body = [[off, bytes(b)] for off, b in runs]
        return Attr.from_wire(await self._call(shard_of(ino), Op.WRITEINLINE, [ino, body, size], caller, True))

    async def migrate_inline(self, ino: int, expect: bytes | None, *, caller: Caller | None = None) -> Attr:
        """Declare an inline file's bytes copied to the data servers (``expect``: their
        ``inline_digest``, None for a file that never had inline bytes); ECANCELED if
        they changed meanwhile. A file already not inline is left as it is."""
        return Attr.from_wire(await self._call(shard_of(ino), Op.MIGRATE, [ino, expect], caller, True))

    async def setxattr(self, ino: int, name: str | bytes, value: bytes, flags: int = 0, *,
                       caller: Caller | None = None) -> None:
        await self._call(shard_of(ino), Op.SETXATTR, [ino, _enc(name), bytes(value), flags], caller, True)

    async def removexattr(self, ino: int, name: str | bytes, *, caller: Caller | None = None) -> None:
        await self._call(shard_of(ino), Op.REMOVEXATTR, [ino, _enc(name)], caller, True)

    async def setlayout(self, ino: int, layout: int, *, inline: bool | None = None,
                        caller: Caller | None = None) -> Attr:
        """Set directory ``ino``'s default layout (a packed ``dfs.common.layout.Layout``; 0 = the
        default): new files and subdirectories inherit it, existing files keep theirs.
        ``inline`` (if given) sets its small-files policy (``Attr.flags & FLAG_INLINE`` on a
        directory): new regular files in it keep their bytes inline while they fit under
        ``INLINE_MAX``; new subdirectories inherit the policy."""
        args = [ino, int(layout)] if inline is None else [ino, int(layout), bool(inline)]
        return Attr.from_wire(await self._call(shard_of(ino), Op.SETLAYOUT, args, caller, True))

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
        args = [ino, h, float(lease_s)] + ([int(access)] if access else [])
        wire = await self._call(shard_of(ino), Op.OPEN, args, caller, True)
        return Attr.from_wire(wire), h

    async def open_read(self, ino: int, lease_s: float = DEFAULT_LEASE_S, *, access: int = 0,
                        handle: bytes | None = None, caller: Caller | None = None) -> tuple[Attr, bytes, bool]:
        """``open_file`` for reading only: a read handle, kept in the shard leader's memory
        (no Raft round; see dfs.meta.readhandles). Returns (attributes, handle, durable):
        durable handles (the leader logged an OPEN: inline files) are renewed and
        closed with ``renew_handles`` / ``close_handles``, read handles with
        ``renew_read_handles`` / ``close_read_handles``. ``access``: 0 or os.R_OK."""
        h = handle if handle is not None else os.urandom(16)
        args = [ino, h, float(lease_s)] + ([int(access)] if access else [])
        wire, durable = await self._call(shard_of(ino), Op.OPENREAD, args, caller, True)
        return Attr.from_wire(wire), h, bool(durable)

    async def lookup_open(self, parent: int, name: str | bytes, lease_s: float = DEFAULT_LEASE_S, *,
                          access: int = 0, handle: bytes | None = None,
                          caller: Caller | None = None) -> tuple[Attr, bytes | None, bool]:
        """``lookup`` and ``open_read`` of what it finds in one round trip: (attributes,
        handle, durable). The handle is None when nothing was opened (not a regular file,
        or an inode on another shard than the directory's: the caller opens it itself)."""
        h = handle if handle is not None else os.urandom(16)
        args = [parent, _enc(name), h, float(lease_s)] + ([int(access)] if access else [])
        ino, _mode, wire, opened = await self._call(shard_of(parent), Op.LOOKUPOPEN, args, caller, True)
        return await self._attr_of(ino, wire, caller), (h if opened else None), opened == 2

    async def renew_read_handles(self, pairs: list[tuple[int, bytes]], lease_s: float = DEFAULT_LEASE_S, *,
                                 caller: Caller | None = None) -> list[tuple[int, bytes]]:
        """``renew_handles`` for read handles (a new leader adopts them). Returns the pairs
        that are gone for good: the file was deleted and its chunks freed."""
        return await self._per_shard(Op.RENEWREAD, pairs, [float(lease_s)], caller)

    async def close_read_handles(self, pairs: list[tuple[int, bytes]], *, caller: Caller | None = None) -> None:
        """Drop read handles (unknown ones are fine), one request per shard, in parallel."""
        await self._per_shard(Op.CLOSEREAD, pairs, [], caller)

    async def _per_shard(self, op: Op, pairs: list[tuple[int, bytes]], extra: list,
                         caller: Caller | None) -> list[tuple[int, bytes]]:
        """``op [[ino, handle]...] *extra`` on each pairs' shard at once; the pairs answered non-zero."""
        by_shard: dict[int, list[list]] = defaultdict(list)
        for ino, h in pairs:
            by_shard[shard_of(ino)].append([ino, h])

        async def one(shard: int, group: list[list]):
            res = await self._call(shard, op, [group, *extra], caller, op == Op.RENEW)
            return [(ino, h) for (ino, h), e in zip(group, res or ()) if e]

        gone: list[tuple[int, bytes]] = []
        for g in await asyncio.gather(*(one(s, g) for s, g in by_shard.items())):
            gone.extend(g)
        return gone

    async def renew_handles(self, pairs: list[tuple[int, bytes]], lease_s: float = DEFAULT_LEASE_S, *,
                            caller: Caller | None = None) -> list[tuple[int, bytes]]:
        """Extend handles ``(ino, handle)`` to now + ``lease_s`` (one request per shard, in
        parallel). Returns the pairs that are gone (closed or expired): a file that still has a
        name can be opened again (``open_handle(ino, handle=h)``); one that does not is lost."""
        return await self._per_shard(Op.RENEW, pairs, [float(lease_s)], caller)

    async def close_handle(self, ino: int, handle: bytes, *, caller: Caller | None = None) -> bool:
        """Drop a handle (a gone one is fine). The last handle of a file without a name
        deletes it; returns whether this close did."""
        return bool(await self._call(shard_of(ino), Op.CLOSE, [ino, handle], caller, True))

    async def close_handles(self, pairs: list[tuple[int, bytes]], *, caller: Caller | None = None) -> None:
        """``close_handle`` for many handles: one batch request per shard, in parallel."""
        c = caller or self.caller
        by_shard: dict[int, list] = defaultdict(list)
        for ino, h in pairs:
            by_shard[shard_of(ino)].append((Op.CLOSE, c, [ino, h], _rid()))
        for res in await asyncio.gather(*(self.t.call_many(s, ops) for s, ops in by_shard.items())):
            for r in res:
                if isinstance(r, err.DfsError) and r.errno != E.ENOENT:
                    raise r

    # ------------------------------------------------------------------ batches
    async def create_many(self, parent: int, names: list[str | bytes], mode: int = 0o644, *,
                          caller: Caller | None = None) -> list[Attr | err.DfsError]:
        """Create many files in one directory with one request (one shard)."""
        c = caller or self.caller
        ops = [(Op.CREATE, c, [parent, _enc(n), stat.S_IFREG | mode, 0, True, 0, None], _rid()) for n in names]
        res = await self.t.call_many(shard_of(parent), ops)
        return [r if isinstance(r, err.DfsError) else Attr.from_wire(r[0]) for r in res]

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
