"""The inode-level client core: one implementation under the FUSE mount and the library.

Both faces are thin layers over a ``Core`` (JuiceFS's pkg/vfs idea): the FUSE
adapter (dfs/fuse/ops.py) converts each kernel request's arguments, calls the
core and converts the reply; the library (dfs/client/paths.py) resolves paths
and builds the io objects on it. The core works on inode ids and takes the
caller of each request (the mount serves many uids, the library has one;
None is the MetaClient's own identity). It owns:

* the open-file table: one ``OpenFile`` per open inode with one shared
  ``FileHandle`` (dfs/client/file.py: write-behind, readahead, inline files),
  so all opens of an inode in this client see one size and each other's
  writes; calls on it are serialised. Each open is a ``FileRef`` (what a file
  descriptor names: the inode's OpenFile and this open's flags). The last
  release flushes and closes the FileHandle; an open of an inode whose last
  close is still flushing waits for it (a reopen sees those writes);
* server open handles (dfs/client/leases.py: one renewer, one background
  close batcher), which is also the one mechanism for files unlinked while
  open: the service keeps such a file until its handles close;
* what this client sees of its own unflushed writes: attributes the core
  returns carry the size of an open file's unpublished writes;
* the ``Mode`` (dfs/client/mode.py), consulted before and told after every
  request: the entry and attribute caches, what open and close do, the
  wrapping of the data path, barriers, the kernel's cache timeouts;
* the ``ChunkIO`` (the data plane's ``DataClient`` or ``MemoryChunks``).

It never sees paths or FUSE types. Imports: dfs.common and this package only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno as E
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from dfs.client.file import ChunkIO, FileHandle
from dfs.client.leases import Leases
from dfs.client.mode import Change, Mode, Mutation, OpenPlan, StrictMode
from dfs.common import errors as err
from dfs.common.ops import DEFAULT_LEASE_S
from dfs.common.records import Attr, Caller, DirEntry, StatFs
from dfs.common.tasks import Supervisor

log = logging.getLogger("dfs.client")

T = TypeVar("T")

__all__ = ["Core", "DirStream", "FileRef", "OpenFile", "open_access"]


def open_access(flags: int) -> int:
    """The access (os.R_OK | os.W_OK) an open with os.O_* ``flags`` needs (O_TRUNC writes).
    Server opens always ask the service to check it (the kernel's check through a mount
    notwithstanding): the handle then records what it may do, and the data-plane
    capabilities it gets follow the open after a chmod (dfs.common.caps)."""
    acc = flags & os.O_ACCMODE
    return (os.R_OK if acc in (os.O_RDONLY, os.O_RDWR) else 0) | \
        (os.W_OK if acc in (os.O_WRONLY, os.O_RDWR) or flags & os.O_TRUNC else 0)


def _writes(flags: int) -> bool:
    """Whether an open with os.O_* ``flags`` may change the file (O_TRUNC does, whatever
    the access mode, as on Linux)."""
    return flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)


def _name(n: str | bytes) -> bytes:
    return os.fsencode(n) if isinstance(n, str) else n


class OpenFile:
    """An inode open in this core: one FileHandle shared by all its opens."""

    __slots__ = ("ino", "fh", "refs", "lock", "handle", "read", "closed", "granted")

    def __init__(self, ino: int, fh: FileHandle, handle: bytes | None, read: bool) -> None:
        self.ino = ino
        self.fh = fh
        self.refs = 0
        self.lock = asyncio.Lock()  # the FileHandle is not re-entrant
        self.handle = handle  # the service's open handle (None: the mode took none)
        self.read = read  # ... a read handle (open_read) rather than a durable one
        self.granted = 0  # the os.R_OK | os.W_OK the service checked for that handle (its capabilities')
        self.closed = False

    def dirty(self) -> bool:
        return self.fh.dirty()


class FileRef:
    """One open of a file: what a file descriptor names. ``attr``: the file's attributes at
    the open (after its O_TRUNC). Reads and writes go to the inode's shared FileHandle,
    one call at a time; ``append`` (O_APPEND) writes at the end whatever the offset."""

    __slots__ = ("core", "of", "flags", "attr", "append", "readable", "writable", "waits", "_open")

    def __init__(self, core: Core, of: OpenFile, flags: int, attr: Attr, waits: bool = True) -> None:
        self.core = core
        self.of = of
        self.flags = flags
        self.attr = attr
        acc = flags & os.O_ACCMODE
        self.readable = acc != os.O_WRONLY
        self.writable = acc != os.O_RDONLY
        self.append = bool(flags & os.O_APPEND)
        self.waits = waits  # OpenPlan.close_waits
        self._open = True

    @property
    def ino(self) -> int:
        return self.of.ino

    @property
    def handle(self) -> FileHandle:
        return self.of.fh

    @property
    def size(self) -> int:
        """The file's size as this client sees it (at the open, grown by its writes)."""
        return self.of.fh.size

    def dirty(self) -> bool:
        return self.of.fh.dirty()

    async def pread(self, offset: int, size: int) -> bytes | bytearray:
        of = self.of
        async with of.lock:
            return await of.fh.pread(offset, size)

    async def preadinto(self, offset: int, buf) -> int:
        of = self.of
        async with of.lock:
            return await of.fh.preadinto(offset, buf)

    async def pwrite(self, offset: int, data) -> int:
        if not self.writable:
            raise err.DfsError("not open for writing", code=E.EBADF)
        of = self.of
        async with of.lock:
            if self.append:
                offset = of.fh.size
            return await of.fh.pwrite(offset, data)

    async def truncate(self, size: int) -> Attr:
        self.attr = await self.core._truncate_open(self.of, size)
        return self.attr

    async def flush(self, *, closing: bool = False) -> None:
        """Send every buffered write and publish size and mtime (close-to-open). ``closing``:
        this is a close of the file (FUSE FLUSH, the library's close): unless the open's
        plan says its close waits, the flush goes to the background; an error of an
        earlier background flush of the file is raised, and the mode may report one."""
        of, core = self.of, self.core
        if closing and not self.waits and not of.fh.inline and of.fh.pending_bytes():
            # bytes for the data servers: they go in the background (the size follows them)
            held = of.fh.pending_bytes() if core.budget is not None else 0
            if held:  # back-pressure: the write-behind of closes that do not wait is bounded
                await core.budget.take(held)
            core._later(of.ino, self._flush(), release=held)
        else:
            # nothing for the data servers (an inline file, or its bytes are sent): a mode that
            # does not wait only queues its size now, in the order of this client's changes
            await self._flush()
        if closing:
            core._raise_later(of.ino)
            await core.mode.check_close(of.ino)

    async def _flush(self) -> None:
        of = self.of
        if of.fh.idle() and not of.lock.locked():
            return  # nothing to send or report
        async with of.lock:
            dirty = of.fh.dirty()
            await of.fh.flush()
        if dirty:
            self.core.mode.wrote(of.ino)

    async def propagate(self) -> None:
        """lazyio (CephFS's ``ceph_lazyio_propagate``): this open's writes reach the data
        servers and the file's size the service, without waiting for the client's other
        changes (a barrier does); others see them at their next open or ``synchronize``."""
        of, core = self.of, self.core
        async with of.lock:
            dirty = of.fh.dirty()
            await of.fh.flush()
        if dirty:
            core.mode.wrote(of.ino)
        settle = getattr(core.mode, "propagate", None)  # a mode that queues the size: wait for it
        if settle is not None:
            await settle(of.ino)

    async def synchronize(self) -> None:
        """lazyio (``ceph_lazyio_synchronize``): see what other clients propagated to this
        file: its size from the service, nothing read of an older version kept."""
        of, core = self.of, self.core
        core.mode.forget_attr(of.ino)
        a = await core.meta.getattr(of.ino)
        async with of.lock:
            of.fh.refresh(a)

    async def fsync(self) -> None:
        of, core = self.of, self.core
        await core.wait_background()
        core._raise_later(of.ino)
        async with of.lock:
            dirty = of.fh.dirty()
            await of.fh.fsync()
        if dirty:
            core.mode.wrote(of.ino)
        await core.mode.barrier(of.ino)

    async def release(self) -> None:
        """Drop this open (idempotent). The last one of the inode flushes and closes the
        FileHandle (errors are logged: nobody waits for them) and closes the server
        handle in the background. Unless the open's close waits, all of it runs in the
        background."""
        if self._open:
            self._open = False
            if self.waits:
                await self.core._unref(self.of)
            else:
                self.core._later(self.of.ino, self.core._unref(self.of))

    async def close(self) -> None:
        """``flush(closing=True)`` (its errors are the caller's), then ``release``."""
        try:
            if self._open:
                await self.flush(closing=True)
        finally:
            await self.release()


class DirStream:
    """A directory's entries page by page; the next page is fetched while the caller takes
    this one (a big listing is then bound by the slower of the two, not their sum)."""

    __slots__ = ("core", "ino", "caller", "limit", "plus", "_ahead")

    def __init__(self, core: Core, ino: int, caller: Caller | None, limit: int, plus: bool) -> None:
        self.core = core
        self.ino = ino
        self.caller = caller
        self.limit = limit
        self.plus = plus
        self._ahead: tuple[int, asyncio.Task] | None = None

    def _fetch(self, cookie: int):
        return self.core.readdir(self.ino, cookie, self.limit, caller=self.caller, plus=self.plus)

    async def page(self, cookie: int = 0) -> tuple[list[DirEntry], bool]:
        """The entries after ``cookie`` and whether they are the last."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == cookie:
            entries, eof = await ahead[1]
        else:
            if ahead is not None:
                ahead[1].cancel()
            entries, eof = await self._fetch(cookie)
        eof = eof or not entries
        if not eof:
            nxt = entries[-1].cookie
            t = asyncio.get_running_loop().create_task(self._fetch(nxt))
            t.add_done_callback(lambda t: t.cancelled() or t.exception())  # an unused failure is no warning
            self._ahead = (nxt, t)
        return entries, eof

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead[1].cancel()
            self._ahead = None


STATFS_TTL = 1.0  # seconds a STATFS answer is reused


async def _nothing() -> None:
    return None


class Core:
    """The client core over a MetaClient and a ChunkIO, with a Mode (default StrictMode())."""

    def __init__(self, meta, data: ChunkIO, mode: Mode | None = None, *, lease_s: float = DEFAULT_LEASE_S,
                 readdir_page: int = 1000) -> None:
        self.meta = meta
        self.data = data
        self.mode = mode if mode is not None else StrictMode()
        self.readdir_page = readdir_page
        self.files: dict[int, OpenFile] = {}
        self._closing: dict[int, asyncio.Future] = {}  # ino -> its last close, still flushing
        self.tasks = Supervisor()  # the core's long-running tasks (dfs/common/tasks.py): none dies silently
        self.leases = Leases(meta, lease_s, on_lost=self._lost, tasks=self.tasks)
        self._background: set[asyncio.Task] = set()  # closes that do not wait (OpenPlan.close_waits)
        self._failed: dict[int, BaseException] = {}  # ino -> the first error of its background work
        # bytes the closes that do not wait still hold (a write-back mode's budget, or None)
        self.budget = None
        self._statfs: tuple[float, StatFs] | None = None  # (valid until, the answer)
        self.mode.bind(self)
        hints = getattr(data, "add_cap_hints", None)  # a DataClient (or a wrapper of one)
        if hints is not None:
            # a capability a data server asks for is asked with this core's open handle of
            # the inode, or its lazy session (dfs.common.caps)
            hints(self)

    def cap_handle(self, ino: int) -> bytes | None:
        """The server handle this core holds for ``ino`` (what a capability is asked with)."""
        of = self.files.get(ino)
        return None if of is None else of.handle

    def cap_session(self) -> bytes | None:
        """This core's lazy session, if its mode has one (its delegated ids' capabilities)."""
        return getattr(self.mode, "session", None)

    # ------------------------------------------------------------------ what this client sees
    def _seen(self, a: Attr) -> Attr:
        """``a`` with the size of this client's unpublished writes, if it has any."""
        of = self.files.get(a.ino) if self.files else None
        if of is not None and of.fh.dirty() and of.fh.size > a.size:
            return dataclasses.replace(a, size=of.fh.size)
        return a

    def _seen_entries(self, entries: list[DirEntry]) -> list[DirEntry]:
        if not self.files:
            return entries
        out = None
        for i, e in enumerate(entries):
            if e.attr is not None and e.ino in self.files:
                a = self._seen(e.attr)
                if a is not e.attr:
                    out = out if out is not None else list(entries)
                    out[i] = dataclasses.replace(e, attr=a)
        return entries if out is None else out

    # ------------------------------------------------------------------ metadata reads
    async def lookup(self, parent: int, name: bytes, *, caller: Caller | None = None, fresh: bool = False,
                     walk: bool = False) -> Attr:
        """The attributes of ``name`` in ``parent`` (NotFound if none). ``fresh``: from the
        service, never a cache; ``walk``: only to go through it to a path's next component
        (see Mode.walk_attr)."""
        mode = self.mode
        own = mode.own(parent, name)  # this client's unflushed change: authoritative even fresh
        if own is not None:
            return self._seen(own) if self.files else own
        if not fresh:
            ino = mode.entry(parent, name)
            if ino is not None:
                a = mode.walk_attr(ino) if walk else mode.attr(ino)
                if a is not None:
                    return self._seen(a) if self.files else a
                # The name is still cached, only the inode's attributes are not (a change
                # under a directory drops its attributes): ask the inode's shard, not the
                # parent's. Asked of the parent, every change under a top-level directory
                # would cost a lookup on the root's shard (shard 0), every client's hot spot.
                try:
                    return await self.getattr(ino, caller=caller)
                except err.NotFound:
                    mode.forget_entry(parent, name)  # gone meanwhile: the name decides
        try:
            a = await self.meta.lookup(parent, name, caller=caller)
        except err.NotFound:
            mode.forget_entry(parent, name)
            raise
        mode.remember(parent, name, a)
        mine = mode.own_attr(a.ino)  # the name is the service's, the inode's attributes this client's
        if mine is not None:
            a = mine
        return self._seen(a) if self.files else a

    async def getattr(self, ino: int, *, caller: Caller | None = None, fresh: bool = False) -> Attr:
        a = self.mode.own_attr(ino)  # this client's unflushed change: authoritative even fresh
        if a is not None:
            return self._seen(a) if self.files else a
        if not fresh:
            a = self.mode.attr(ino)
            if a is not None:
                return self._seen(a) if self.files else a
        a = await self.meta.getattr(ino, caller=caller)
        self.mode.remember_attr(a)
        return self._seen(a) if self.files else a

    async def readlink(self, ino: int, *, caller: Caller | None = None) -> bytes:
        t = self.mode.link_target(ino)
        if t is None:
            t = await self.meta.readlink(ino, caller=caller)
            self.mode.remember_link(ino, t)
        return t

    async def readdir(self, ino: int, cookie: int = 0, limit: int | None = None, *, caller: Caller | None = None,
                      plus: bool = True) -> tuple[list[DirEntry], bool]:
        """One page of directory ``ino`` after ``cookie`` (readdirplus with ``plus``)."""
        limit = limit or self.readdir_page
        got = self.mode.listing(ino, cookie, limit, plus)
        while got is None:
            entries, eof = await self.meta.readdir(ino, cookie, limit, plus=plus, caller=caller)
            self.mode.listed(ino, entries)
            got = self.mode.merge(ino, cookie, entries, eof)
            if not got[0] and not got[1] and entries:  # all of it removed here: the next page
                got, cookie = None, entries[-1].cookie
        entries, eof = got
        return self._seen_entries(entries), eof

    def opendir(self, ino: int, *, caller: Caller | None = None, limit: int | None = None,
                plus: bool = True) -> DirStream:
        return DirStream(self, ino, caller, limit or self.readdir_page, plus)

    async def listdir(self, ino: int, *, caller: Caller | None = None, plus: bool = True) -> list[DirEntry]:
        """Every entry of directory ``ino`` (pages prefetched)."""
        d = self.opendir(ino, caller=caller, plus=plus)
        out: list[DirEntry] = []
        cookie = 0
        try:
            while True:
                entries, eof = await d.page(cookie)
                out.extend(entries)
                if eof:
                    return out
                cookie = entries[-1].cookie
        finally:
            d.close()

    async def getxattr(self, ino: int, name: str | bytes, *, caller: Caller | None = None) -> bytes:
        name = _name(name)
        v = self.mode.xattr(ino, name)
        return v if v is not None else await self.meta.getxattr(ino, name, caller=caller)

    async def listxattr(self, ino: int, *, caller: Caller | None = None) -> list[bytes]:
        v = self.mode.xattr_names(ino)
        return v if v is not None else await self.meta.listxattr(ino, caller=caller)

    async def statfs(self, *, caller: Caller | None = None) -> StatFs:
        """The file counts of every shard and the space of the data servers (their last
        heartbeats, in the cluster map), kept for ``STATFS_TTL``: `df`, and programs that check
        free space before each file, do not cost a request to every shard each time."""
        v = self.mode.statfs()
        if v is not None:
            return v
        now = time.monotonic()
        if self._statfs is not None and now < self._statfs[0]:
            return self._statfs[1]
        space = getattr(self.data, "capacity", None)
        s, room = await asyncio.gather(self.meta.statfs(caller=caller),
                                       space() if space is not None else _nothing())
        if room is not None:
            total, free = room
            s = dataclasses.replace(s, blocks=max(1, total // s.block_size),
                                    blocks_free=min(free, total) // s.block_size)
        self._statfs = (now + STATFS_TTL, s)
        return s

    # ------------------------------------------------------------------ namespace changes
    async def _change(self, m: Mutation, send: Callable[[], Awaitable[T]]) -> T:
        return await self.mode.mutate(m, send)

    async def mknod(self, parent: int, name: bytes, mode: int, rdev: int = 0, *, caller: Caller | None = None,
                    umask: int = 0) -> Attr:
        m = Mutation(Change.MKNOD, caller, parent, name, args={"mode": mode, "rdev": rdev, "umask": umask})
        return await self._change(m, lambda: self.meta.mknod(parent, name, mode, rdev, umask=umask, caller=caller))

    async def mkdir(self, parent: int, name: bytes, mode: int = 0o777, *, caller: Caller | None = None,
                    umask: int = 0) -> Attr:
        m = Mutation(Change.MKDIR, caller, parent, name, args={"mode": mode, "umask": umask})
        return await self._change(m, lambda: self.meta.mkdir(parent, name, mode, umask=umask, caller=caller))

    async def symlink(self, parent: int, name: bytes, target: bytes, *, caller: Caller | None = None) -> Attr:
        m = Mutation(Change.SYMLINK, caller, parent, name, args={"target": target})
        return await self._change(m, lambda: self.meta.symlink(parent, name, target, caller=caller))

    async def link(self, ino: int, parent: int, name: bytes, *, caller: Caller | None = None) -> Attr:
        m = Mutation(Change.LINK, caller, parent, name, inos=(ino,))
        return self._seen(await self._change(m, lambda: self.meta.link(ino, parent, name, caller=caller)))

    async def unlink(self, parent: int, name: bytes, *, caller: Caller | None = None, ino: int = 0) -> None:
        """Remove a non-directory entry (EISDIR for a directory). ``ino``: the inode it names,
        if known. A file open anywhere stays until its last close (server handles)."""
        m = Mutation(Change.UNLINK, caller, parent, name, inos=(ino,) if ino else ())
        await self._change(m, lambda: self.meta.unlink(parent, name, caller=caller))

    async def rmdir(self, parent: int, name: bytes, *, caller: Caller | None = None, ino: int = 0) -> None:
        m = Mutation(Change.RMDIR, caller, parent, name, inos=(ino,) if ino else ())
        await self._change(m, lambda: self.meta.rmdir(parent, name, caller=caller))

    async def rename(self, sparent: int, sname: bytes, dparent: int, dname: bytes, flags: int = 0, *,
                     caller: Caller | None = None, inos: tuple[int, ...] = ()) -> None:
        """rename(2) (``flags``: RENAME_NOREPLACE, RENAME_EXCHANGE); ``inos``: the source's and
        the replaced target's inodes, if known."""
        m = Mutation(Change.RENAME, caller, sparent, sname, dparent, dname, inos=tuple(i for i in inos if i),
                     args={"flags": flags})
        await self._change(m, lambda: self.meta.rename(sparent, sname, dparent, dname, flags, caller=caller))

    async def setattr(self, ino: int, *, caller: Caller | None = None, size: int | None = None, **fields) -> Attr:
        """Change attributes: ``size`` (through a file handle, see ``truncate``), then any of
        MetaClient.setattr's ``mode uid gid atime_ns mtime_ns atime_now mtime_now``. An explicit
        time on a file with unflushed writes here flushes them first and publishes their size
        in the same command, so the later publish does not overwrite the time set (cp -a, tar)."""
        a = None
        if size is not None:
            a = await self.truncate(ino, size)
        if not fields:
            return a if a is not None else await self.getattr(ino, caller=caller, fresh=True)
        m = Mutation(Change.SETATTR, caller, inos=(ino,), args=fields)
        of = self.files.get(ino)
        if of is not None and ("mtime_ns" in fields or "atime_ns" in fields) and of.dirty():
            async with of.lock:
                grow = await of.fh.flush_data()
            if grow is not None:
                try:
                    return self._seen(await self._change(
                        Mutation(Change.SETATTR, caller, inos=(ino,), args={**fields, "grow": grow}),
                        lambda: self.meta.setattr(ino, caller=caller, grow=grow, **fields)))
                except BaseException as e:
                    of.fh.unpublished()  # the close publishes it, if nothing here does
                    if not isinstance(e, err.DfsError):
                        raise
                    async with of.lock:
                        await of.fh.flush()
        return self._seen(await self._change(m, lambda: self.meta.setattr(ino, caller=caller, **fields)))

    async def truncate(self, ino: int, size: int) -> Attr:
        """Set a file's size and cut its chunks: through its open FileHandle if it is open here,
        else a temporary one. Runs as the core's own identity (the kernel or an open checked
        the caller's right to)."""
        of = self.files.get(ino)
        if of is not None:
            return await self._truncate_open(of, size)

        async def send() -> Attr:
            h = self._file_handle(await self.meta.getattr(ino))
            try:
                return await h.truncate(size)
            finally:
                await h.close()

        return await self._change(Mutation(Change.TRUNCATE, inos=(ino,), args={"size": size}), send)

    async def _truncate_open(self, of: OpenFile, size: int) -> Attr:
        async def send() -> Attr:
            async with of.lock:
                return await of.fh.truncate(size)

        return self._seen(await self._change(Mutation(Change.TRUNCATE, inos=(of.ino,), args={"size": size}), send))

    async def setxattr(self, ino: int, name: str | bytes, value: bytes, flags: int = 0, *,
                       caller: Caller | None = None) -> None:
        name = _name(name)
        m = Mutation(Change.SETXATTR, caller, inos=(ino,), args={"name": name, "value": value, "flags": flags})
        await self._change(m, lambda: self.meta.setxattr(ino, name, value, flags, caller=caller))

    async def removexattr(self, ino: int, name: str | bytes, *, caller: Caller | None = None) -> None:
        name = _name(name)
        m = Mutation(Change.REMOVEXATTR, caller, inos=(ino,), args={"name": name})
        await self._change(m, lambda: self.meta.removexattr(ino, name, caller=caller))

    # ------------------------------------------------------------------ files
    def _file_handle(self, attr: Attr) -> FileHandle:
        sizes, chunks = self.mode.file_io(self.meta, self.data)
        return FileHandle(sizes, chunks, attr)

    async def open(self, ino: int, flags: int, *, caller: Caller | None = None, access: int = 0) -> FileRef:
        """open(2) of regular file ``ino`` with os.O_* ``flags``. ``access`` (os.R_OK | os.W_OK):
        what the service checks for the caller (0: what ``flags`` need, for a server handle;
        nothing more where the kernel checked). Strict mode:
        the attributes come fresh from the service with the server handle, in one command
        (a read handle for reading only: no Raft round); O_TRUNC truncates."""
        plan = self.mode.open_plan(ino, flags)
        writing = _writes(flags)
        await self._settled(ino)
        of = self.files.get(ino)
        if of is not None:
            of.refs += 1  # pinned while its attributes are fetched
            try:
                a, data = await self._reopen(of, plan, writing, access, open_access(flags), caller)
                self.mode.remember_attr(a)
                return await self._ref(of, a, flags, truncate=True, waits=plan.close_waits, inline=data)
            except BaseException:
                await self._unref(of)
                raise
        if not plan.server_handle:
            a = await self.getattr(ino, caller=caller, fresh=plan.revalidate)
            if access:
                self.mode.check_open(a, access, caller or getattr(self.meta, "caller", None))
            return await self._install(a, None, False, flags, caller=caller, waits=plan.close_waits)
        lease = self.leases.lease
        access = access or open_access(flags)
        data = None
        if writing:
            a, h = await self.meta.open_file(ino, lease, access=access, caller=caller)
            read = False
        else:
            a, h, durable, data = await self.meta.open_read(ino, lease, access=access, caller=caller, inline=True)
            read = not durable
        self.mode.remember_attr(a)
        return await self._install(a, h, read, flags, caller=caller, waits=plan.close_waits, granted=access,
                                   inline=data)

    async def _reopen(self, of: OpenFile, plan: OpenPlan, writing: bool, access: int, want: int,
                      caller: Caller | None) -> tuple[Attr, bytes | None]:
        """The attributes for another open of an inode open here (one request), and an inline
        file's bytes if they came with them. ``want``: what the open's flags need; asked of
        the service (the same handle id, extended) when the handle was not granted it yet,
        so that its capabilities cover this open too. An inode held without a handle (an
        inline file read whole at its open) gets one for a write open (OPEN) and is opened
        for reading again as at a first open (its bytes, or a handle)."""
        h, lease = of.handle, self.leases.lease
        ask = access or want
        if h is None and plan.server_handle and not of.fh.failed():
            if writing:
                a, h = await self.meta.open_file(of.ino, lease, access=ask, caller=caller)
                self._adopt(of, h, False, ask)
                return a, None
            a, h, durable, data = await self.meta.open_read(of.ino, lease, access=ask, caller=caller, inline=True)
            if h is not None:
                self._adopt(of, h, not durable, ask)
            return a, data
        if h is not None and writing and of.read:
            # a write open of a file held with a read handle: make the handle durable (an
            # OPEN of the same id, which brings the attributes), then drop the read one
            a, _ = await self.meta.open_file(of.ino, lease, access=ask, handle=h, caller=caller)
            if of.handle == h and of.read:
                of.read = False
                self.leases.made_durable(of.ino, h)
            of.granted |= ask
            return a, None
        if h is not None and (access or want & ~of.granted):
            return await self._extend(of, h, ask, caller), None
        return await self.getattr(of.ino, caller=caller, fresh=plan.revalidate), None

    async def _extend(self, of: OpenFile, h: bytes, ask: int, caller: Caller | None) -> Attr:
        """Ask the service for ``ask`` on ``of``'s handle ``h`` (the same handle id: it only
        extends the handle, after checking the access), so that the capabilities asked
        with the handle cover it. The attributes as of that open."""
        lease = self.leases.lease
        if of.read:
            a = (await self.meta.open_read(of.ino, lease, access=ask, handle=h, caller=caller))[0]
        else:
            a = (await self.meta.open_file(of.ino, lease, access=ask, handle=h, caller=caller))[0]
        if of.handle == h:
            of.granted |= ask
        return a

    def _adopt(self, of: OpenFile, h: bytes, read: bool, granted: int) -> None:
        """Handle ``h`` of an inode open here without one: its handle from now on (a handle
        another open installed meanwhile stays, and ``h`` is released)."""
        if of.handle is None and not of.closed:
            of.handle, of.read, of.granted = h, read, granted
            self.leases.hold(of.ino, h, read)
        else:
            self.leases.release(of.ino, h, read)

    async def lookup_open(self, parent: int, name: bytes, flags: int, *, caller: Caller | None = None,
                          access: int = 0) -> FileRef | None:
        """A read-only open by name in one round trip (LOOKUPOPEN). None when the caller must
        look up and open separately: the name is missing or not a regular file on the
        directory's shard, or the mode takes no server handles."""
        plan = self.mode.open_plan(None, flags)
        if _writes(flags) or not plan.server_handle:
            return None
        try:
            if self.mode.own(parent, name) is not None:
                return None  # this client's own unflushed name: the service does not know it yet
        except err.NotFound:
            return None
        try:
            a, h, durable, data = await self.meta.lookup_open(parent, name, self.leases.lease,
                                                              access=access or os.R_OK, caller=caller, inline=True)
        except err.NotFound:
            self.mode.forget_entry(parent, name)
            return None
        self.mode.remember(parent, name, a)
        if h is None and data is None:
            return None
        return await self._install(a, h, not durable, flags, caller=caller, waits=plan.close_waits,
                                   granted=access or os.R_OK, inline=data)

    async def create(self, parent: int, name: bytes, mode: int, flags: int, *, caller: Caller | None = None,
                     umask: int = 0, access: int = 0) -> tuple[FileRef | None, Attr, bool]:
        """open(O_CREAT) of ``name`` in ``parent``: create and open in one command (O_EXCL:
        EEXIST if it exists; an existing regular file is opened after the ``access`` check,
        and truncated for O_TRUNC). Returns (the open, its attributes, created); the open
        is None when the name exists as something else than a regular file."""
        plan = self.mode.open_plan(None, flags)  # may refuse before anything is sent
        m = Mutation(Change.CREATE, caller, parent, name, args={"mode": mode, "flags": flags, "umask": umask})
        a, created, h, _ = await self._change(m, lambda: self.meta.create_open(
            parent, name, mode & 0o7777, excl=bool(flags & os.O_EXCL), umask=umask,
            lease_s=self.leases.lease, access=access or open_access(flags), caller=caller))
        if not a.is_reg():
            return None, a, created
        plan = self.mode.open_plan(a.ino, flags)  # the inode's own (a mode may decide by its directory)
        granted = os.R_OK | os.W_OK if created else access or open_access(flags)  # the creator: both
        ref = await self._install(a, h, False, flags, caller=caller, truncate=not created,
                                  waits=plan.close_waits, granted=granted)
        return ref, ref.attr, created

    async def _install(self, a: Attr, h: bytes | None, read: bool, flags: int, *, caller: Caller | None,
                       truncate: bool = True, waits: bool = True, granted: int = 0,
                       inline: bytes | None = None) -> FileRef:
        """A fresh open of ``a.ino`` that brought handle ``h`` (the service checked ``granted``
        for it), or the bytes of an inline file (``inline``, no handle): into the table."""
        if a.ino in self._closing:  # its last close is still flushing: see what it publishes
            await self._settled(a.ino)
            a = self.mode.own_attr(a.ino) or await self.meta.getattr(a.ino, caller=caller)
            inline = None
        of = self.files.get(a.ino)
        if of is None:
            of = self.files[a.ino] = OpenFile(a.ino, self._file_handle(a), h, read)
            if h is not None:
                of.granted = granted
                self.leases.hold(a.ino, h, read)
        elif h is not None:  # a concurrent open of the same file won: one handle is enough
            if of.handle is None or (of.read and not read):  # keep the durable one
                old = of.handle
                of.handle, of.read, of.granted = h, read, granted
                self.leases.hold(a.ino, h, read)
                if old is not None:
                    self.leases.release(a.ino, old)
            else:
                self.leases.release(a.ino, h, read)
        of.refs += 1
        try:
            if h is not None and of.handle is not None and of.handle != h and granted & ~of.granted:
                # the kept handle must carry what this open was granted (a read by path while
                # a write open holds the file): capabilities are asked with it
                await self._extend(of, of.handle, granted, caller)
            return await self._ref(of, a, flags, truncate=truncate, waits=waits, inline=inline)
        except BaseException:
            await self._unref(of)
            raise

    async def _ref(self, of: OpenFile, a: Attr, flags: int, *, truncate: bool, waits: bool,
                   inline: bytes | None = None) -> FileRef:
        """The FileRef of an open that already holds one reference to ``of``; ``inline``: the
        file's bytes as of ``a`` (an inline file opened without a handle)."""
        of.fh.refresh(a, inline)  # close-to-open: a file changed elsewhere drops what was read of it
        ref = FileRef(self, of, flags, self._seen(a), waits)
        if truncate and flags & os.O_TRUNC:
            await ref.truncate(0)
        return ref

    async def _settled(self, ino: int) -> None:
        """Wait for the last close of ``ino`` still flushing (a reopen sees its writes)."""
        pending = self._closing.get(ino)
        if pending is not None:
            await asyncio.shield(pending)

    async def _unref(self, of: OpenFile) -> None:
        of.refs -= 1
        if of.refs <= 0 and not of.closed:
            await self._last_close(of)

    async def _last_close(self, of: OpenFile) -> None:
        of.closed = True
        ino = of.ino
        if self.files.get(ino) is of:
            del self.files[ino]
        done = self._closing[ino] = asyncio.get_running_loop().create_future()
        try:
            async with of.lock:  # after any call still running on it
                dirty = await self._close_handle(of)
            if dirty:
                self.mode.wrote(ino)
            if of.handle is not None:
                self.leases.release(ino, of.handle)
        finally:
            if self._closing.get(ino) is done:
                del self._closing[ino]
            done.set_result(None)

    @staticmethod
    async def _close_handle(of: OpenFile) -> bool:
        """Close ``of``'s FileHandle (its errors are logged: nobody waits for them); whether
        it had unpublished writes."""
        dirty = of.fh.dirty()
        try:
            await of.fh.close()
        except err.DfsError as e:
            log.warning("closing inode %d: %s", of.ino, e)
        return dirty

    def _lost(self, ino: int, h: bytes, e: err.DfsError) -> None:
        of = self.files.get(ino)
        if of is not None and of.handle == h:
            of.handle = None
            of.fh.fail(err.Stale(f"the open of inode {ino} was lost: {e}"))

    # ------------------------------------------------------------------ background work and barriers
    def _later(self, ino: int, coro, release: int = 0) -> None:
        """Run ``coro`` (a close's flush or release of ``ino``) in the background; its error is
        kept for the next barrier and the file's next close. ``release``: bytes of the budget
        it holds, given back when it is done."""
        async def run() -> None:
            try:
                await coro
            except Exception as e:  # noqa: BLE001 - reported at the next barrier
                log.warning("background flush of inode %d: %s", ino, e)
                self._failed.setdefault(ino, e)
            finally:
                if release:
                    self.budget.give(release)

        t = asyncio.get_running_loop().create_task(run())
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    def _raise_later(self, ino: int | None = None) -> None:
        """Raise (once) the error of background work on ``ino`` (None: any)."""
        if not self._failed:
            return
        if ino is None:
            ino = next(iter(self._failed))
        e = self._failed.pop(ino, None)
        if e is not None:
            raise e

    async def wait_background(self) -> None:
        """Wait until the closes running in the background are done (errors are kept)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def fsyncdir(self, ino: int) -> None:
        await self.wait_background()
        await self.mode.barrier(ino)

    async def sync(self) -> None:
        """syncfs: publish every open file's writes, wait for the background work (and raise
        the first error it had), pass the mode's barrier."""
        await self.wait_background()
        for of in list(self.files.values()):
            if of.dirty():
                async with of.lock:
                    await of.fh.flush()
                self.mode.wrote(of.ino)
        await self.leases.drain()
        await self.mode.barrier(None)
        self._raise_later()

    async def close(self) -> None:
        """Flush and close every open file, close the server handles, pass the barrier (and
        raise the first error of background work)."""
        await self.wait_background()
        for of in list(self.files.values()):
            of.refs = 0
            await self._last_close(of)
        await self.leases.close()
        try:
            await self.mode.barrier(None)
        finally:
            await self.mode.close()
        self._raise_later()
