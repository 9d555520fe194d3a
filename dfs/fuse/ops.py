"""DfsOperations: the kernel's FUSE requests mapped 1:1 onto MetaClient and FileHandle.

* Inode numbers are dfs inode ids (ROOT_INO is FUSE's root, 1); generation 0
  (ids are never reused).
* Permissions: the mount uses ``default_permissions`` (the kernel checks mode
  bits against the attributes it caches, for every caller, including the data
  path which the metadata service never sees), and every namespace request
  also carries the caller (uid, gid, supplementary groups) so the metadata
  service checks it again with fresh attributes.
* Files: one shared ``FileHandle`` per open inode (all opens of an inode in
  this mount see each other's writes, and size is one number); FUSE file
  handles map to (inode, open flags). ``flush`` (every close(2)) publishes
  data and size: close-to-open consistency. Operations on one handle are
  serialised (the FileHandle is not re-entrant).
* Open-unlinked files: when unlink or rename-over would remove the last link
  of an inode this mount has open, the entry is renamed to
  ``.dfs-unlinked-<ino>`` in the same directory instead and unlinked at the
  last release (NFS "silly rename"); readdir hides those names.
* xattrs: ``security.*`` and ``system.*`` (capabilities, SELinux labels, POSIX
  ACLs) are not supported and answered locally with EOPNOTSUPP, as a file
  system without those namespaces does: the kernel asks for
  ``security.capability`` on writes, and ``ls -l`` asks for the SELinux label
  and the ACL of every entry, two round trips per entry, unless the answer is
  EOPNOTSUPP: ls then remembers the device has neither and stops asking
  (ENODATA would not; 2,000 entries: 0.35 s against 0.05 s). ENOSYS is never
  answered (it would turn off all xattrs of the mount, ``user.*`` included).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import itertools
import logging
import os
import stat
import time
from dataclasses import dataclass, field

import pyfuse3

from dfs.client.file import FileHandle
from dfs.common import errors as err
from dfs.common import logs
from dfs.common.ids import ROOT_INO
from dfs.common.records import ROOT, Attr, Caller, DirEntry

log = logging.getLogger("dfs.fuse")

HIDDEN_PREFIX = b".dfs-unlinked-"
LOCAL_XATTR_PREFIXES = (b"security.", b"system.")
# readdir offsets after "." and "..": above every entry cookie (name hash + 1 < 2**62 + 1)
DOT_COOKIE, DOTDOT_COOKIE = (1 << 62) + 1, (1 << 62) + 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_GROUPS_TTL = 1.0


_request_ids = itertools.count(1)


def _fuse_errors(fn):
    """DfsError/OSError -> FUSEError(errno); anything else is logged and becomes EIO."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        token = logs.set_op(f"{fn.__name__}.{next(_request_ids)}")  # names this request in the log
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            no = e.errno if isinstance(e.errno, int) and 0 < e.errno < 4096 else errno.EIO
            if no == errno.EIO:
                log.warning("%s%r: %s", fn.__name__, args[:3], e)
            raise pyfuse3.FUSEError(no) from None
        except Exception:
            log.exception("%s%r failed", fn.__name__, args[:3])
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            logs.reset_op(token)

    return wrapper


@dataclass
class _Open:
    """An inode open in this mount: one FileHandle shared by all its FUSE handles."""

    handle: FileHandle
    refs: int = 0
    sh: bytes | None = None  # the metadata service's open handle (keeps the inode alive)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def dirty(self) -> bool:
        h = self.handle
        return bool(h._bufs or h._tasks or h._dirty_size)


@dataclass
class _Dir:
    ino: int
    caller: Caller
    start: int = -1  # the cookie the buffered page was read after
    entries: list[DirEntry] = field(default_factory=list)
    pos: dict[int, int] = field(default_factory=dict)  # cookie -> index in entries
    eof: bool = False
    ahead: tuple[int, asyncio.Task] | None = None  # the next page, being fetched after this cookie


class DfsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_acl = False

    def __init__(self, meta, data, *, entry_timeout: float = 1.0, attr_timeout: float = 1.0,
                 negative_timeout: float = 1.0, writeback_cache: bool = False, direct_io: bool = False,
                 readdir_page: int = 1024, blksize: int = 128 << 10) -> None:
        super().__init__()
        self.meta = meta
        self.data = data
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.negative_timeout = negative_timeout
        self.enable_writeback_cache = writeback_cache
        self.direct_io = direct_io
        self.readdir_page = readdir_page
        self.blksize = blksize
        self.nlookup: dict[int, int] = {}
        self.files: dict[int, _Open] = {}  # ino -> shared handle
        self.closing: dict[int, asyncio.Future] = {}  # ino -> the last close still flushing
        self.fhs: dict[int, tuple[int, int]] = {}  # fh -> (ino, open flags)
        self.dirs: dict[int, _Dir] = {}
        self.hidden: dict[int, tuple[int, bytes]] = {}  # open-unlinked ino -> (parent, hidden name)
        self._fh_ids = itertools.count(1)
        self._groups: dict[int, tuple[float, int, tuple[int, ...]]] = {}
        self.held: dict[int, bytes] = {}  # ino -> server open handle (MetaClient.open_handle)
        self.reading: set[int] = set()  # the inos in held whose handle is a read handle (open_read)
        self.lease_s = 30.0
        self._server_handles = hasattr(meta, "open_handle")
        self._renewer: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._fresh_dirs: dict[int, tuple[float, Attr]] = {}  # see _fresh_dir
        self.parents: dict[int, int] = {ROOT_INO: ROOT_INO}  # directory -> its parent, as last seen (for "..")
        self.told: dict[int, tuple[int, int]] = {}  # ino -> (size, mtime) last given to the kernel
        # ino -> (size, mtime, ctime) of the file when an open last let the kernel fill its page
        # cache: an open that finds the same lets it keep the pages (see open)
        self.pages: dict[int, tuple[int, int, int]] = {}

    # ------------------------------------------------------------------ helpers
    def _caller(self, ctx) -> Caller:
        uid, gid, pid = ctx.uid, ctx.gid, ctx.pid
        if uid == 0:
            return Caller(0, gid, ())
        now = time.monotonic()
        hit = self._groups.get(pid)
        if hit is not None and hit[0] > now and hit[1] == uid:
            return Caller(uid, gid, hit[2])
        groups: tuple[int, ...] = ()
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Groups:"):
                        groups = tuple(int(g) for g in line.split()[1:])
                        break
        except (OSError, ValueError):
            pass
        if len(self._groups) > 4096:
            self._groups.clear()
        self._groups[pid] = (now + _GROUPS_TTL, uid, groups)
        return Caller(uid, gid, groups)

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = a.ino
        e.generation = 0
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = a.mode
        nlink = a.nlink
        if a.ino in self.hidden:
            nlink = max(0, nlink - 1)  # the hidden name is not a link the user made
        e.st_nlink = nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        size = a.size
        o = self.files.get(a.ino)
        if o is not None and o.dirty():
            size = max(size, o.handle.size)  # unflushed writes of this mount
        e.st_size = size
        self.told[a.ino] = (size, a.mtime_ns)
        e.st_blksize = self.blksize
        e.st_blocks = (size + 511) // 512
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = a.mtime_ns
        e.st_ctime_ns = a.ctime_ns
        return e

    @staticmethod
    def _dot(ino: int) -> pyfuse3.EntryAttributes:
        """The entry of "." or "..": the kernel takes only the inode number and the type
        from it (readdirplus never links them, so they are no lookups)."""
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.st_mode = stat.S_IFDIR
        return e

    def _count(self, ino: int, n: int = 1) -> None:
        self.nlookup[ino] = self.nlookup.get(ino, 0) + n

    def _new_entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        self._count(a.ino)
        return self._entry(a)

    async def _lookup_or_none(self, parent: int, name: bytes, caller: Caller) -> Attr | None:
        try:
            return await self.meta.lookup(parent, name, caller=caller)
        except err.DfsError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    def _needs_hiding(self, a: Attr | None) -> bool:
        return (a is not None and a.is_reg() and a.nlink <= 1 and a.ino not in self.hidden
                and a.ino not in self.held  # the metadata service keeps it alive
                and (a.ino in self.files or a.ino in self.closing))

    async def _hide(self, parent: int, name: bytes, ino: int, caller: Caller) -> None:
        hname = HIDDEN_PREFIX + str(ino).encode()
        await self.meta.rename(parent, name, parent, hname, 0, caller=caller)
        self.hidden[ino] = (parent, hname)
        log.debug("open-unlinked %d kept as %r in %d", ino, hname, parent)

    async def _unhide(self, ino: int) -> None:
        parent, hname = self.hidden.pop(ino)
        try:
            await self.meta.unlink(parent, hname)
        except err.DfsError as e:
            log.warning("removing open-unlinked %r in %d: %s", hname, parent, e)

    # ------------------------------------------------------------------ lookups
    @_fuse_errors
    async def lookup(self, parent_inode, name, ctx):
        a = await self._lookup_or_none(parent_inode, name, self._caller(ctx))
        if a is None:
            if self.negative_timeout > 0:
                e = pyfuse3.EntryAttributes()
                e.st_ino = 0
                e.entry_timeout = self.negative_timeout
                return e
            raise pyfuse3.FUSEError(errno.ENOENT)
        if a.is_dir():
            self.parents[a.ino] = parent_inode
        return self._new_entry(a)

    async def forget(self, inode_list):
        for ino, n in inode_list:
            left = self.nlookup.get(ino, 0) - n
            if left > 0:
                self.nlookup[ino] = left
            else:
                self.nlookup.pop(ino, None)
                self.parents.pop(ino, None)
                self.told.pop(ino, None)
                self.pages.pop(ino, None)

    @_fuse_errors
    async def getattr(self, inode, ctx):
        fresh = self._fresh_dirs.pop(inode, None)
        if fresh is not None and fresh[0] > time.monotonic():
            return self._entry(fresh[1])
        return self._entry(await self.meta.getattr(inode, caller=self._caller(ctx)))

    def _fresh_dir(self, a: Attr) -> None:
        """Keep a directory's attributes from a reply for the kernel's next GETATTR of it:
        the kernel drops a directory's attributes whenever an entry is created in it and
        asks again at the next permission check there (default_permissions). Answered once,
        within the attribute timeout; any change this mount makes to it drops them."""
        old = self._fresh_dirs.get(a.ino)
        if old is None or old[1].ctime_ns <= a.ctime_ns:
            self._fresh_dirs[a.ino] = (time.monotonic() + self.attr_timeout, a)

    def _stale(self, *inos: int) -> None:
        for ino in inos:
            self._fresh_dirs.pop(ino, None)

    @_fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        self._stale(inode)
        caller = self._caller(ctx)
        if fields.update_size:
            await self._truncate(inode, attr.st_size)
        kw: dict = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode & 0o7777
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if not kw:
            return self._entry(await self.meta.getattr(inode, caller=caller))
        o = self.files.get(inode)
        if o is not None and ("mtime_ns" in kw or "atime_ns" in kw) and o.dirty():
            # Send pending writes first, or their publish would overwrite the mtime set
            # here (cp -a, tar), and publish their size in the same command.
            async with o.lock:
                grow = await o.handle.flush_data()
            if grow is not None:
                try:
                    return self._entry(await self.meta.setattr(inode, caller=caller, grow=grow, **kw))
                except BaseException as e:
                    o.handle.unpublished()  # the close publishes it, if nothing here does
                    if not isinstance(e, err.DfsError):
                        raise
                    async with o.lock:
                        await o.handle.flush()
        try:
            a = await self.meta.setattr(inode, caller=caller, **kw)
        except err.DfsError as e:
            if e.errno == errno.EPERM and set(kw) == {"mode"} and await self._kills_privs(inode, kw["mode"]):
                # The kernel clears setuid/setgid before a write by a non-owner (who may
                # write: the kernel checked) with a plain chmod on the writer's behalf.
                return self._entry(await self.meta.setattr(inode, caller=ROOT, mode=kw["mode"]))
            # pyfuse3 turns UTIME_NOW into a timestamp; a non-owner with write permission
            # may set "now" (the kernel checked that), so ask the service for "now" instead.
            now = time.time_ns()
            times = {k for k in kw if k.endswith("time_ns")}
            if e.errno != errno.EPERM or not times or set(kw) != times or \
                    any(abs(kw[k] - now) > 5_000_000_000 for k in times):
                raise
            a = await self.meta.setattr(inode, caller=caller, atime_now="atime_ns" in kw,
                                        mtime_now="mtime_ns" in kw)
        return self._entry(a)

    async def _kills_privs(self, ino: int, mode: int) -> bool:
        """Whether ``mode`` is the file's mode with only setuid and/or setgid taken away."""
        a = await self.meta.getattr(ino)
        cur = a.mode & 0o7777
        kill = stat.S_ISUID | stat.S_ISGID
        return not a.is_dir() and mode != cur and mode | (cur & kill) == cur

    async def _truncate(self, ino: int, size: int) -> None:
        o = self.files.get(ino)
        if o is not None:
            async with o.lock:
                await o.handle.truncate(size)
            return
        h = FileHandle(self.meta, self.data, await self.meta.getattr(ino))
        try:
            await h.truncate(size)
        finally:
            await h.close()

    @_fuse_errors
    async def readlink(self, inode, ctx):
        return await self.meta.readlink(inode, caller=self._caller(ctx))

    # ------------------------------------------------------------------ namespace
    @_fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._stale(parent_inode)
        a = await self.meta.mknod(parent_inode, name, mode, rdev, umask=ctx.umask, caller=self._caller(ctx))
        return self._new_entry(a)

    @_fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._stale(parent_inode)
        a = await self.meta.mkdir(parent_inode, name, mode & 0o7777, umask=ctx.umask, caller=self._caller(ctx))
        self.parents[a.ino] = parent_inode
        return self._new_entry(a)

    @_fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        self._stale(parent_inode)
        return self._new_entry(await self.meta.symlink(parent_inode, name, target, caller=self._caller(ctx)))

    @_fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._stale(inode, new_parent_inode)
        return self._new_entry(await self.meta.link(inode, new_parent_inode, new_name, caller=self._caller(ctx)))

    @_fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        self._stale(parent_inode)
        caller = self._caller(ctx)
        if self.files or self.closing:
            a = await self._lookup_or_none(parent_inode, name, caller)
            if self._needs_hiding(a):
                await self._hide(parent_inode, name, a.ino, caller)
                return
        await self.meta.unlink(parent_inode, name, caller=caller)

    @_fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        self._stale(parent_inode)
        await self.meta.rmdir(parent_inode, name, caller=self._caller(ctx))

    @_fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._stale(parent_inode_old, parent_inode_new)
        caller = self._caller(ctx)
        hidden_ino = None
        if (self.files or self.closing) and not flags & (RENAME_EXCHANGE | RENAME_NOREPLACE):
            t = await self._lookup_or_none(parent_inode_new, name_new, caller)
            if self._needs_hiding(t):
                s = await self._lookup_or_none(parent_inode_old, name_old, caller)
                if s is None:
                    raise pyfuse3.FUSEError(errno.ENOENT)
                if s.ino != t.ino:
                    if s.is_dir():
                        raise pyfuse3.FUSEError(errno.ENOTDIR)  # rename(dir, file)
                    await self._hide(parent_inode_new, name_new, t.ino, caller)
                    hidden_ino = t.ino
        try:
            await self.meta.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, caller=caller)
        except BaseException:
            if hidden_ino is not None:  # put the target back
                p, hname = self.hidden.pop(hidden_ino)
                try:
                    await self.meta.rename(p, hname, parent_inode_new, name_new, 0, caller=caller)
                except err.DfsError as e:
                    log.error("restoring %r after a failed rename: %s", name_new, e)
                    self.hidden[hidden_ino] = (p, hname)
            raise

    # ------------------------------------------------------------------ files
    async def _open_ino(self, a: Attr, sh: bytes | None = None, read: bool = False) -> _Open:
        """The shared open state of ``a.ino`` with one more reference. ``sh``: a server open
        handle the caller already registered (CREATE or OPEN with the attributes; ``read``:
        a read handle, open_read)."""
        o = self.files.get(a.ino)
        if o is None:
            o = self.files[a.ino] = _Open(FileHandle(self.meta, self.data, a))
            if sh is not None:
                self._held(a.ino, o, sh, read)
            elif self._server_handles and a.is_reg():
                await self._hold(a.ino, o)
        else:
            if sh is not None:  # a concurrent open of the same file won: one handle is enough
                self._spawn(self._close_server_handle(a.ino, sh, read))
            if not o.dirty() and a.size != o.handle.size:
                o.handle.size = a.size  # changed elsewhere since (close-to-open)
        o.refs += 1
        return o

    async def _settled(self, ino: int) -> None:
        """Wait for the last close of ``ino`` still flushing (a reopen sees its writes)."""
        pending = self.closing.get(ino)
        if pending is not None:
            await asyncio.shield(pending)

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    def _held(self, ino: int, o: _Open, sh: bytes, read: bool = False) -> None:
        o.sh = sh
        self.held[ino] = sh
        if read:
            self.reading.add(ino)
        else:
            self.reading.discard(ino)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _hold(self, ino: int, o: _Open) -> None:
        """Register the open with the metadata service (it keeps an unlinked file until
        the handle closes); without that (an older service) unlink falls back to hiding."""
        try:
            sh = await self.meta.open_handle(ino, self.lease_s)
        except err.DfsError as e:
            if e.errno in (errno.ENOENT, errno.EISDIR):
                raise
            log.warning("open handles unavailable (%s): open-unlinked files are renamed instead", e)
            self._server_handles = False
            return
        self._held(ino, o, sh)

    async def _close_server_handle(self, ino: int, sh: bytes, read: bool) -> None:
        if read:
            await self.meta.close_read_handles([(ino, sh)])
        else:
            await self.meta.close_handle(ino, sh)

    async def _upgrade(self, ino: int, o: _Open, caller: Caller) -> None:
        """A write open of a file held with a read handle: make the handle durable (an
        OPEN of the same handle id), then drop the read one."""
        sh = o.sh
        await self.meta.open_file(ino, self.lease_s, handle=sh, caller=caller)
        if self.held.get(ino) == sh and ino in self.reading:
            self.reading.discard(ino)
            self._spawn(self.meta.close_read_handles([(ino, sh)]))

    async def _renew_loop(self) -> None:
        while self.held:
            await asyncio.sleep(self.lease_s / 3)
            pairs = list(self.held.items())
            reads = [(ino, h) for ino, h in pairs if ino in self.reading]
            pairs = [(ino, h) for ino, h in pairs if ino not in self.reading]
            try:
                if reads and await self.meta.renew_read_handles(reads, self.lease_s):
                    log.error("read handles lost (the files were deleted and freed): %s", reads)
                gone = await self.meta.renew_handles(pairs, self.lease_s) if pairs else []
            except err.DfsError as e:
                log.warning("renewing %d open handles: %s", len(pairs) + len(reads), e)
                continue
            for ino, h in gone:
                if self.held.get(ino) != h:
                    continue  # closed meanwhile
                try:
                    await self.meta.open_handle(ino, self.lease_s, handle=h)
                except err.DfsError as e:
                    log.error("open handle of inode %d lost: %s", ino, e)

    def _file_info(self, ino: int, flags: int, keep_cache: bool = False) -> pyfuse3.FileInfo:
        fh = next(self._fh_ids)
        self.fhs[fh] = (ino, flags)
        return pyfuse3.FileInfo(fh=fh, direct_io=self.direct_io, keep_cache=keep_cache)

    def _keep_pages(self, ino: int, a: Attr, o: _Open, flags: int) -> bool:
        """Whether this open may keep the kernel's cached pages of ``ino``: the file is as
        it was when an earlier open let the kernel fill them (size, mtime and ctime, fresh
        from the service; ctime too because a writer may set mtime back, as rsync and tar
        do, and every change moves ctime), and this open changes nothing. Otherwise the
        kernel drops them (close-to-open: another client's writes, published at its
        close, are seen) and the pages it fills now belong to this version. Warm reads of
        unchanged files then come from the page cache, as on a local disk."""
        version = (a.size, a.mtime_ns, a.ctime_ns)
        keep = (self.pages.get(ino) == version and not o.dirty() and not self.enable_writeback_cache
                and not (flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY))
        self.pages[ino] = version
        return keep

    @_fuse_errors
    async def open(self, inode, flags, ctx):
        caller = self._caller(ctx)
        await self._settled(inode)
        if inode not in self.files and self._server_handles:
            # the attributes (fresh: close-to-open) and the server handle in one command;
            # reading only: a read handle, no Raft round
            if flags & os.O_ACCMODE == os.O_RDONLY:
                a, sh, durable = await self.meta.open_read(inode, self.lease_s, caller=caller)
                o = await self._open_ino(a, sh, read=not durable)
            else:
                a, sh = await self.meta.open_file(inode, self.lease_s, caller=caller)
                o = await self._open_ino(a, sh)
        else:
            a = await self.meta.getattr(inode, caller=caller)
            o = await self._open_ino(a)
            if flags & os.O_ACCMODE != os.O_RDONLY and inode in self.reading and o.sh is not None:
                try:
                    await self._upgrade(inode, o, caller)
                except BaseException:
                    await self._drop_ref(inode, o)
                    raise
        told = self.told.get(inode)
        if told is not None and told != (a.size, a.mtime_ns) and not o.dirty():
            # Changed elsewhere since the kernel cached its attributes: close-to-open says
            # this open sees it, so the kernel must drop them (its i_size caps page-cache
            # reads). Attributes only: no page lock is taken, safe inside a request.
            self.told.pop(inode, None)
            pyfuse3.invalidate_inode(inode, attr_only=True)
        keep = self._keep_pages(inode, a, o, flags)
        try:
            if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
                async with o.lock:
                    await o.handle.truncate(0)
        except BaseException:
            await self._drop_ref(inode, o)
            raise
        return self._file_info(inode, flags, keep)

    @_fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        caller = self._caller(ctx)
        excl = bool(flags & os.O_EXCL)
        if self._server_handles:  # create and open: one command
            a, created, sh, parent = await self.meta.create_open(parent_inode, name, mode, excl=excl,
                                                                 umask=ctx.umask, lease_s=self.lease_s, caller=caller)
            if created:
                self._fresh_dir(parent)
            elif sh is None:  # appeared meanwhile, and not as a regular file
                raise pyfuse3.FUSEError(errno.EISDIR if a.is_dir() else errno.EEXIST)
            await self._settled(a.ino)
        else:
            self._stale(parent_inode)
            a, created = await self.meta.create(parent_inode, name, mode, excl=excl, umask=ctx.umask,
                                                caller=caller)
            sh = None
            await self._settled(a.ino)
        o = await self._open_ino(a, sh)
        try:
            if not created and flags & os.O_TRUNC:
                async with o.lock:
                    await o.handle.truncate(0)
                a = await self.meta.getattr(a.ino)
        except BaseException:
            await self._drop_ref(a.ino, o)
            raise
        return self._file_info(a.ino, flags), self._new_entry(a)

    def _handle(self, fh: int) -> tuple[_Open, int]:
        ino, flags = self.fhs[fh]
        return self.files[ino], flags

    @_fuse_errors
    async def read(self, fh, off, size):
        o, _ = self._handle(fh)
        async with o.lock:
            return await o.handle.pread(off, size)

    @_fuse_errors
    async def write(self, fh, off, buf):
        o, flags = self._handle(fh)
        async with o.lock:
            if flags & os.O_APPEND and not self.enable_writeback_cache:
                off = o.handle.size
            return await o.handle.pwrite(off, buf)

    @_fuse_errors
    async def flush(self, fh):
        o, _ = self._handle(fh)
        async with o.lock:
            await o.handle.flush()

    @_fuse_errors
    async def fsync(self, fh, datasync):
        o, _ = self._handle(fh)
        async with o.lock:
            await o.handle.fsync()

    @_fuse_errors
    async def release(self, fh):
        ino, _ = self.fhs.pop(fh)
        await self._drop_ref(ino, self.files[ino])

    async def _drop_ref(self, ino: int, o: _Open) -> None:
        o.refs -= 1
        if o.refs > 0:
            return
        del self.files[ino]
        done = self.closing[ino] = asyncio.get_running_loop().create_future()
        try:
            async with o.lock:
                try:
                    await o.handle.close()
                except err.DfsError as e:
                    log.warning("closing inode %d: %s", ino, e)
            if o.sh is not None:
                try:
                    await self._close_server_handle(ino, o.sh, ino in self.reading)
                except err.DfsError as e:
                    log.warning("closing the open handle of inode %d: %s", ino, e)
                finally:
                    if self.held.get(ino) == o.sh:
                        del self.held[ino]
                        self.reading.discard(ino)
            if ino in self.hidden and ino not in self.files:
                await self._unhide(ino)
        finally:
            del self.closing[ino]
            done.set_result(None)

    async def close_all(self) -> None:
        """Flush and close every open file (at unmount)."""
        for fh in list(self.fhs):
            try:
                await self.release(fh)
            except pyfuse3.FUSEError:
                pass
        if self._renewer is not None:
            self._renewer.cancel()

    # ------------------------------------------------------------------ directories
    @_fuse_errors
    async def opendir(self, inode, ctx):
        fh = next(self._fh_ids)
        self.dirs[fh] = _Dir(inode, self._caller(ctx))
        return fh

    async def _fill(self, d: _Dir, cookie: int) -> None:
        """Make the page after ``cookie`` current, and start fetching the one after it: the
        service reads page k+1 while the kernel takes page k (a big listing is then bound
        by the slower of the two, not their sum)."""
        if d.ahead is not None and d.ahead[0] == cookie:
            entries, eof = await d.ahead[1]
        else:
            entries, eof = await self._page(d, cookie)
        if d.ahead is not None:
            d.ahead[1].cancel()
            d.ahead = None
        d.start = cookie
        d.entries = entries
        d.pos = {e.cookie: i for i, e in enumerate(entries)}
        d.eof = eof or not entries
        if not d.eof:
            nxt = entries[-1].cookie
            t = asyncio.get_running_loop().create_task(self._page(d, nxt))
            t.add_done_callback(lambda t: t.cancelled() or t.exception())  # an unused failure is no warning
            d.ahead = (nxt, t)

    async def _page(self, d: _Dir, cookie: int):
        return await self.meta.readdir(d.ino, cookie, self.readdir_page, plus=True, caller=d.caller)

    @_fuse_errors
    async def readdir(self, fh, start_id, token):
        d = self.dirs[fh]
        if start_id == 0:  # from the start (opendir, rewinddir): "." and "..", then a fresh first page
            d.start = -1
            if not pyfuse3.readdir_reply(token, b".", self._dot(d.ino), DOT_COOKIE):
                return
            start_id = DOT_COOKIE
        if start_id == DOT_COOKIE:
            if not pyfuse3.readdir_reply(token, b"..", self._dot(self.parents.get(d.ino, d.ino)), DOTDOT_COOKIE):
                return
            start_id = DOTDOT_COOKIE
        cookie = 0 if start_id == DOTDOT_COOKIE else start_id
        if cookie == d.start:
            i = 0
        elif cookie != 0 and cookie in d.pos:
            i = d.pos[cookie] + 1
        else:
            await self._fill(d, cookie)
            i = 0
        while True:
            for e in itertools.islice(d.entries, i, None):
                if e.attr is None or e.name.startswith(HIDDEN_PREFIX):
                    continue  # gone meanwhile, or an open-unlinked file
                if not pyfuse3.readdir_reply(token, e.name, self._entry(e.attr), e.cookie):
                    return
                self._count(e.ino)  # readdirplus entries count as lookups
                if e.attr.is_dir():
                    self.parents[e.ino] = d.ino
            if d.eof:
                return
            await self._fill(d, d.entries[-1].cookie)
            i = 0

    async def releasedir(self, fh):
        d = self.dirs.pop(fh, None)
        if d is not None and d.ahead is not None:
            d.ahead[1].cancel()

    async def fsyncdir(self, fh, datasync):
        return None  # namespace changes are durable when they return

    @_fuse_errors
    async def statfs(self, ctx):
        s = await self.meta.statfs(caller=self._caller(ctx))
        v = pyfuse3.StatvfsData()
        v.f_bsize = s.block_size
        v.f_frsize = s.block_size
        v.f_blocks = s.blocks
        v.f_bfree = s.blocks_free
        v.f_bavail = s.blocks_free
        v.f_files = s.files
        v.f_ffree = s.files_free
        v.f_favail = s.files_free
        v.f_namemax = s.name_max
        return v

    # ------------------------------------------------------------------ xattrs
    @_fuse_errors
    async def getxattr(self, inode, name, ctx):
        if name.startswith(LOCAL_XATTR_PREFIXES):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        return await self.meta.getxattr(inode, name, caller=self._caller(ctx))

    @_fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        self._stale(inode)
        if name.startswith(LOCAL_XATTR_PREFIXES):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        await self.meta.setxattr(inode, name, value, caller=self._caller(ctx))

    @_fuse_errors
    async def listxattr(self, inode, ctx):
        return await self.meta.listxattr(inode, caller=self._caller(ctx))

    @_fuse_errors
    async def removexattr(self, inode, name, ctx):
        self._stale(inode)
        if name.startswith(LOCAL_XATTR_PREFIXES):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        await self.meta.removexattr(inode, name, caller=self._caller(ctx))
