"""DfsOperations: the kernel's FUSE requests, each translated onto the client core.

Each handler converts the request's arguments (the FUSE context into a
``Caller``, pyfuse3's attributes into the core's fields), calls the
inode-level ``Core`` (dfs/client/core.py) and converts its reply (an ``Attr``
into ``EntryAttributes``, a ``FileRef`` into a FUSE file handle). Open files,
server open handles (hence files unlinked while open), caches and consistency
are the core's and its ``Mode``'s, shared with the library. What stays here is
what the kernel protocol itself needs:

* inode numbers are dfs inode ids (ROOT_INO is FUSE's root, 1), generation 0
  (ids are never reused); lookup counts for ``forget``; each directory's
  parent as last seen, for "..";
* the caller of each request: uid, gid and the supplementary groups from
  /proc/<pid>/status (cached 1 s per pid). The mount uses
  ``default_permissions``: the kernel checks mode bits against the attributes
  it caches for every caller, the data path included; the service checks
  every namespace request again with fresh attributes;
* the kernel's caches: timeouts from the mode (``kernel_cache``); what the
  kernel was told of each inode's size and mtime, so that an open finding them
  changed elsewhere drops its attributes (close-to-open: its i_size caps
  page-cache reads); each file's version when an open let the kernel fill its
  page cache, for the mode's ``keep_cache``;
* FUSE file handle numbers for the core's opens, and each open directory's
  buffered page (the kernel takes ~4 KiB of entries at a time) over the core's
  ``DirStream`` (the next page is fetched meanwhile);
* the kernel's quirks: ``security.*`` and ``system.*`` xattrs (capabilities,
  SELinux labels, POSIX ACLs) are answered locally with EOPNOTSUPP, as a file
  system without those namespaces does: the kernel asks for
  ``security.capability`` on writes, and ``ls -l`` asks for the SELinux label
  and the ACL of every entry, two round trips per entry, unless the answer is
  EOPNOTSUPP, after which it remembers and stops asking (ENODATA would not;
  2,000 entries: 0.35 s against 0.05 s); ENOSYS is never answered for an xattr
  (it would turn off all xattrs of the mount, ``user.*`` included), only for
  FLUSH in a read-only mode (snapshot mode), where it stops the kernel's
  FLUSHes for good, as wanted. The chmod the kernel
  sends on a non-owner's behalf to clear setuid/setgid before a write, and
  UTIME_NOW arriving as a timestamp, are what the kernel meant when the
  service refuses them as sent.

Imports: pyfuse3, dfs.common and dfs.client only.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
import time

import pyfuse3

from dfs.client.core import Core, DirStream, FileRef, open_access
from dfs.client.snapdir import SNAP_BIT
from dfs.common import errors as err
from dfs.common import logs
from dfs.common.ids import ROOT_INO
from dfs.common.records import ROOT, Attr, Caller, DirEntry

log = logging.getLogger("dfs.fuse")

LOCAL_XATTR_PREFIXES = (b"security.", b"system.")
# readdir offsets after "." and "..": above every entry cookie (name hash + 1 < 2**62 + 1)
DOT_COOKIE, DOTDOT_COOKIE = (1 << 62) + 1, (1 << 62) + 2
_GROUPS_TTL = 1.0
FOREVER = 365 * 86400.0  # a kernel cache timeout for what never changes (snapshot objects)


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


def _setattr_fields(attr, fields) -> dict:
    """pyfuse3's setattr arguments (all but the size) as Core.setattr's keywords."""
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
    return kw


class _Dir:
    """An open directory: the page the kernel is taking, over the core's DirStream."""

    __slots__ = ("ino", "stream", "start", "entries", "pos", "eof")

    def __init__(self, ino: int, stream: DirStream) -> None:
        self.ino = ino
        self.stream = stream
        self.start = -1  # the cookie the buffered page was read after
        self.entries: list[DirEntry] = []
        self.pos: dict[int, int] = {}  # cookie -> index in entries
        self.eof = False


class DfsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_acl = False

    def __init__(self, core: Core, *, writeback_cache: bool = False, direct_io: bool = False,
                 readdir_page: int = 1024, blksize: int = 128 << 10) -> None:
        super().__init__()
        self.core = core
        k = core.mode.kernel_cache()
        self.entry_timeout = k.entry_timeout
        self.attr_timeout = k.attr_timeout
        self.negative_timeout = k.negative_timeout
        self.enable_writeback_cache = writeback_cache
        self.direct_io = direct_io
        self.readdir_page = readdir_page
        self.blksize = blksize
        self.nlookup: dict[int, int] = {}
        self.fhs: dict[int, FileRef] = {}  # FUSE file handle -> the core's open
        self.dirs: dict[int, _Dir] = {}
        self._fh_ids = itertools.count(1)
        self._groups: dict[int, tuple[float, int, tuple[int, ...]]] = {}
        self.parents: dict[int, int] = {ROOT_INO: ROOT_INO}  # directory -> its parent, as last seen (for "..")
        self.told: dict[int, tuple[int, int]] = {}  # ino -> (size, mtime) last given to the kernel
        # ino -> (size, mtime, ctime) of the file when an open last let the kernel fill its page cache
        self.pages: dict[int, tuple[int, int, int]] = {}
        # snapshot objects under PATH/.snap (dfs/client/snapdir.py): names and attributes that never change
        self._immutable = getattr(core.meta, "immutable", None)
        # a mode that can never have anything to flush (snapshot mode): the first FLUSH answers
        # ENOSYS, after which the kernel sends none (one round trip less per close(2))
        self._no_flush = bool(getattr(core.mode, "read_only", False))

    # ------------------------------------------------------------------ conversions
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
        if a.ino & SNAP_BIT and self._immutable is not None and self._immutable(a.ino):
            e.entry_timeout = e.attr_timeout = FOREVER
        else:
            e.entry_timeout = self.entry_timeout
            e.attr_timeout = self.attr_timeout
        e.st_mode = a.mode
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = a.size  # the core's: with this client's unflushed writes
        self.told[a.ino] = (a.size, a.mtime_ns)
        e.st_blksize = self.blksize
        e.st_blocks = (a.size + 511) // 512
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

    def _negative(self) -> pyfuse3.EntryAttributes:
        if self.negative_timeout <= 0:
            raise pyfuse3.FUSEError(errno.ENOENT)
        e = pyfuse3.EntryAttributes()
        e.st_ino = 0
        e.entry_timeout = self.negative_timeout
        return e

    def _file_info(self, ref: FileRef, keep_cache: bool = False) -> pyfuse3.FileInfo:
        if self.enable_writeback_cache:
            ref.append = False  # the kernel places O_APPEND writes itself
        fh = next(self._fh_ids)
        self.fhs[fh] = ref
        return pyfuse3.FileInfo(fh=fh, direct_io=self.direct_io, keep_cache=keep_cache)

    # ------------------------------------------------------------------ lookups and attributes
    @_fuse_errors
    async def lookup(self, parent_inode, name, ctx):
        try:
            a = await self.core.lookup(parent_inode, name, caller=self._caller(ctx))
        except err.NotFound:
            return self._negative()
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
        return self._entry(await self.core.getattr(inode, caller=self._caller(ctx)))

    @_fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        kw = _setattr_fields(attr, fields)
        if fields.update_size:
            a = await self.core.truncate(inode, attr.st_size)
            if not kw:
                return self._entry(a)
        elif not kw:
            return self._entry(await self.core.getattr(inode, caller=self._caller(ctx), fresh=True))
        return self._entry(await self._setattr(inode, kw, self._caller(ctx)))

    async def _setattr(self, ino: int, kw: dict, caller: Caller) -> Attr:
        """Core.setattr; where the service refuses what the kernel sent, what the kernel meant."""
        try:
            return await self.core.setattr(ino, caller=caller, **kw)
        except err.DfsError as e:
            if e.errno != errno.EPERM:
                raise
            if set(kw) == {"mode"} and await self._kills_privs(ino, kw["mode"]):
                # The kernel clears setuid/setgid before a write by a non-owner (who may
                # write: the kernel checked) with a plain chmod on the writer's behalf.
                return await self.core.setattr(ino, caller=ROOT, mode=kw["mode"])
            # pyfuse3 turns UTIME_NOW into a timestamp; a non-owner with write permission
            # may set "now" (the kernel checked that), so ask the service for "now" instead.
            now = time.time_ns()
            times = {k for k in kw if k.endswith("time_ns")}
            if not times or set(kw) != times or any(abs(kw[k] - now) > 5_000_000_000 for k in times):
                raise
            return await self.core.setattr(ino, caller=caller, atime_now="atime_ns" in kw,
                                           mtime_now="mtime_ns" in kw)

    async def _kills_privs(self, ino: int, mode: int) -> bool:
        """Whether ``mode`` is the file's mode with only setuid and/or setgid taken away."""
        a = await self.core.getattr(ino, fresh=True)
        cur = a.mode & 0o7777
        kill = stat.S_ISUID | stat.S_ISGID
        return not a.is_dir() and mode != cur and mode | (cur & kill) == cur

    @_fuse_errors
    async def readlink(self, inode, ctx):
        return await self.core.readlink(inode, caller=self._caller(ctx))

    # ------------------------------------------------------------------ namespace
    @_fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._new_entry(await self.core.mknod(parent_inode, name, mode, rdev, caller=self._caller(ctx),
                                                     umask=ctx.umask))

    @_fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        a = await self.core.mkdir(parent_inode, name, mode & 0o7777, caller=self._caller(ctx), umask=ctx.umask)
        self.parents[a.ino] = parent_inode
        return self._new_entry(a)

    @_fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        return self._new_entry(await self.core.symlink(parent_inode, name, target, caller=self._caller(ctx)))

    @_fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._new_entry(await self.core.link(inode, new_parent_inode, new_name, caller=self._caller(ctx)))

    @_fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        await self.core.unlink(parent_inode, name, caller=self._caller(ctx))

    @_fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        await self.core.rmdir(parent_inode, name, caller=self._caller(ctx))

    @_fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.core.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags,
                               caller=self._caller(ctx))

    # ------------------------------------------------------------------ files
    @_fuse_errors
    async def open(self, inode, flags, ctx):
        # The kernel checked the open's access (default_permissions), except root's: it lets
        # root past every mode bit (CAP_DAC_OVERRIDE). The service checks root's, in the same
        # request, so that under root squashing root opens only what nobody may.
        access = open_access(flags) if ctx.uid == 0 else 0
        ref = await self.core.open(inode, flags, caller=self._caller(ctx), access=access)
        a = ref.attr
        told = self.told.get(inode)
        if told is not None and told != (a.size, a.mtime_ns) and not ref.dirty():
            # Changed elsewhere since the kernel cached its attributes: close-to-open says
            # this open sees it, so the kernel must drop them (its i_size caps page-cache
            # reads). Attributes only: no page lock is taken, safe inside a request.
            self.told.pop(inode, None)
            pyfuse3.invalidate_inode(inode, attr_only=True)
        return self._file_info(ref, self._keep_pages(ref))

    def _keep_pages(self, ref: FileRef) -> bool:
        """Whether this open may keep the kernel's cached pages of the file (the mode decides,
        from the file's version when an open last let the kernel fill them and now: size,
        mtime and ctime, fresh from the open). The pages the kernel fills now belong to
        this version. Warm reads of unchanged files then come from the page cache."""
        a = ref.attr
        version = (a.size, a.mtime_ns, a.ctime_ns)
        changing = ref.dirty() or self.enable_writeback_cache or bool(ref.flags & os.O_TRUNC)
        keep = self.core.mode.keep_cache(self.pages.get(a.ino), version, changing)
        self.pages[a.ino] = version
        return keep

    @_fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        ref, a, _ = await self.core.create(parent_inode, name, mode, flags, caller=self._caller(ctx),
                                           umask=ctx.umask)
        if ref is None:  # appeared meanwhile, and not as a regular file
            raise pyfuse3.FUSEError(errno.EISDIR if a.is_dir() else errno.EEXIST)
        return self._file_info(ref), self._new_entry(a)

    @_fuse_errors
    async def read(self, fh, off, size):
        return await self.fhs[fh].pread(off, size)

    @_fuse_errors
    async def write(self, fh, off, buf):
        return await self.fhs[fh].pwrite(off, buf)

    @_fuse_errors
    async def flush(self, fh):
        if self._no_flush:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        await self.fhs[fh].flush(closing=True)  # every close(2): close-to-open

    @_fuse_errors
    async def fsync(self, fh, datasync):
        await self.fhs[fh].fsync()

    @_fuse_errors
    async def release(self, fh):
        await self.fhs.pop(fh).release()

    async def close_all(self) -> None:
        """At unmount: flush and close every open file, close the server handles."""
        self.fhs.clear()
        for d in self.dirs.values():
            d.stream.close()
        self.dirs.clear()
        await self.core.close()

    # ------------------------------------------------------------------ directories
    @_fuse_errors
    async def opendir(self, inode, ctx):
        fh = next(self._fh_ids)
        self.dirs[fh] = _Dir(inode, self.core.opendir(inode, caller=self._caller(ctx), limit=self.readdir_page))
        return fh

    async def _fill(self, d: _Dir, cookie: int) -> None:
        """Make the page after ``cookie`` current (the stream fetches the next meanwhile)."""
        entries, eof = await d.stream.page(cookie)
        d.start = cookie
        d.entries = entries
        d.pos = {e.cookie: i for i, e in enumerate(entries)}
        d.eof = eof

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
                if e.attr is None:
                    continue  # gone meanwhile
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
        if d is not None:
            d.stream.close()

    @_fuse_errors
    async def fsyncdir(self, fh, datasync):
        d = self.dirs.get(fh)
        if d is not None:
            await self.core.fsyncdir(d.ino)

    @_fuse_errors
    async def statfs(self, ctx):
        s = await self.core.statfs(caller=self._caller(ctx))
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
        return await self.core.getxattr(inode, name, caller=self._caller(ctx))

    @_fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        if name.startswith(LOCAL_XATTR_PREFIXES):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        await self.core.setxattr(inode, name, value, caller=self._caller(ctx))

    @_fuse_errors
    async def listxattr(self, inode, ctx):
        return await self.core.listxattr(inode, caller=self._caller(ctx))

    @_fuse_errors
    async def removexattr(self, inode, name, ctx):
        if name.startswith(LOCAL_XATTR_PREFIXES):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        await self.core.removexattr(inode, name, caller=self._caller(ctx))
