"""The library's asyncio face: a POSIX-like API on paths over the inode-level core.

``AsyncClient`` resolves paths component by component from the root
(symlinks, ``..``, trailing slashes; docs/design/client.md "Path
resolution") into inode ids and calls the ``Core`` (dfs/client/core.py) with
them: caches, open files, server handles and consistency live there. It adds
what only paths have: the current directory, errors carrying the path, the
one-round-trip opens by name (LOOKUPOPEN, CREATE-and-OPEN when the name is
not cached), ``os``-style results (``os.stat_result``, names as ``str`` for
``str`` paths and ``bytes`` for ``bytes`` paths), ``walk``/``scandir``.

Imports: dfs.common and this package only.
"""

from __future__ import annotations

import errno as E
import os
import stat as S
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from dfs.client.core import Core, FileRef, open_access
from dfs.client.fileio import AsyncFile, parse_mode
from dfs.client.leases import Leases
from dfs.client.meta import NAME_RACES
from dfs.client.mode import Mode
from dfs.client.prefetch import DEFAULT_AHEAD, DEFAULT_MAX_BYTES, read_many
from dfs.client.snapdir import SNAPDIR, SnapChunks, SnapMeta
from dfs.client.snapshots import SnapshotAPI
from dfs.client.warmup import DEFAULT_PARALLEL as DEFAULT_PARALLEL_WARMUP
from dfs.common import errors as err
from dfs.common.ids import ROOT_INO
from dfs.common.layout import Layout
from dfs.common.records import FLAG_INLINE, Attr, Caller, DirEntry

__all__ = ["AsyncClient", "DirLayout", "ScandirEntry", "MAXSYMLINKS", "PathLike"]

MAXSYMLINKS = 40

PathLike = str | bytes | os.PathLike


WALKED_DIRS = 4096  # directory paths whose walk an immutable mode keeps (AsyncClient._last_step)


def _oserror(code: int, path: Any = None) -> err.DfsError:
    e = err.error_for(code)
    e.filename = path
    return e


def _fs(path: PathLike) -> bytes:
    p = os.fspath(path)
    return os.fsencode(p) if isinstance(p, str) else p


def _name_out(name: bytes, like: Any) -> str | bytes:
    """Names come back as the caller gave the path: str for str, bytes for bytes."""
    return name if isinstance(os.fspath(like), bytes) else os.fsdecode(name)


def stat_result(a: Attr) -> os.stat_result:
    blocks = (a.size + 511) // 512
    return os.stat_result(
        (a.mode, a.ino, 0, a.nlink, a.uid, a.gid, a.size, a.atime_ns // 10**9, a.mtime_ns // 10**9,
         a.ctime_ns // 10**9),
        {"st_atime": a.atime_ns / 1e9, "st_mtime": a.mtime_ns / 1e9, "st_ctime": a.ctime_ns / 1e9,
         "st_atime_ns": a.atime_ns, "st_mtime_ns": a.mtime_ns, "st_ctime_ns": a.ctime_ns,
         "st_blksize": 1 << 20, "st_blocks": blocks, "st_rdev": a.rdev})


class _Resolved:
    """A path walk's result: the directory holding the last component, its name
    (None when the path ends at the root or in '..'), and its attributes (None: missing)."""

    __slots__ = ("parent", "name", "attr")

    def __init__(self, parent: Attr | None, name: bytes | None, attr: Attr | None) -> None:
        self.parent = parent
        self.name = name
        self.attr = attr


class ScandirEntry:
    """An entry of ``scandir``: like ``os.DirEntry``, its attributes come from the one
    readdirplus that listed it (``stat()`` of a symlink with follow_symlinks asks again)."""

    __slots__ = ("name", "path", "_attr", "_ino", "_type", "_client")

    def __init__(self, name, path, e: DirEntry, client) -> None:
        self.name = name
        self.path = path
        self._attr = e.attr
        self._ino = e.ino
        self._type = e.type
        self._client = client

    def inode(self) -> int:
        return self._ino

    def is_symlink(self) -> bool:
        return S.S_ISLNK(self._type)

    def _target_fmt(self, follow: bool) -> int:
        if follow and self.is_symlink():
            try:
                return S.S_IFMT(self._client.stat(self.path).st_mode)
            except OSError:
                return 0
        return S.S_IFMT(self._type)

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._target_fmt(follow_symlinks) == S.S_IFDIR

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self._target_fmt(follow_symlinks) == S.S_IFREG

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        if self._attr is not None and not (follow_symlinks and self.is_symlink()):
            return stat_result(self._attr)
        return self._client.stat(self.path, follow_symlinks=follow_symlinks)

    @property
    def attr(self) -> Attr | None:
        return self._attr

    def __fspath__(self):
        return self.path

    def __repr__(self) -> str:
        return f"<ScandirEntry {self.name!r}>"


class _SyncView:
    """What a ScandirEntry of the async API calls for a symlink's target: nothing
    synchronous is available there, so it reports what readdirplus gave."""

    def __init__(self, attrs: dict) -> None:
        self.attrs = attrs

    def stat(self, path, follow_symlinks=True):
        a = self.attrs.get(path)
        if a is None:
            raise _oserror(E.ENOENT, path)
        return stat_result(a)


@dataclass(frozen=True)
class DirLayout:
    """A directory's layout for new files (a file's own, for a file) and its inline policy."""

    layout: Layout
    inline: bool

    @classmethod
    def of(cls, a: Attr) -> DirLayout:
        return cls(Layout.unpack(a.layout), bool(a.flags & FLAG_INLINE))

    def __str__(self) -> str:
        lay = self.layout
        return (f"chunk_size={lay.chunk_size} stripe={lay.stripe} replicas={lay.replicas} "
                f"inline={'on' if self.inline else 'off'}")


class AsyncClient(SnapshotAPI):
    """The library's asyncio client: paths over a ``Core`` (built from ``meta``, ``data`` and
    ``mode`` unless one is given). ``umask`` applies to created modes. ``registry``
    (``async (fresh) -> {S: SnapshotInfo}``, the cluster map's snapshots): snapshots are
    reachable as ``PATH/<snapdir>/NAME`` and the snapshot commands work (dfs/client/snapdir.py)."""

    def __init__(self, meta=None, data=None, *, mode: Mode | None = None, umask: int = 0o022, on_close=None,
                 core: Core | None = None, registry=None, snapdir: str | bytes = SNAPDIR) -> None:
        if core is None and registry is not None:
            meta = SnapMeta(meta, registry, snapdir=snapdir)
            data = SnapChunks(data, meta.ids)
        self.core = core if core is not None else Core(meta, data, mode)
        self.meta = self.core.meta
        self.data = self.core.data
        self.umask = umask
        self.cwd = b"/"
        self._on_close = on_close
        # under an immutable mode (a snapshot), the walks of directory paths, as made (_last_step)
        self._walked: tuple[tuple | None, dict[bytes, _Resolved]] = (None, {})  # ((mode, caller), walks)
        self._root: Attr | None = None  # the root's attributes as last fetched (_walk_root)

    @property
    def mode(self) -> Mode:
        return self.core.mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        self.core.mode = mode
        self._root = None  # another mode's root (a snapshot's is its directory)

    @property
    def leases(self) -> Leases:
        return self.core.leases

    @property
    def caller(self) -> Caller:
        return self.meta.caller

    @classmethod
    async def connect(cls, cluster: str | None = None, **kw) -> AsyncClient:
        """``dfs.aconnect``."""
        from dfs.client.connect import aconnect

        return await aconnect(cluster, **kw)

    async def sync(self) -> None:
        """Publish every open file's writes and wait for everything this client still sends
        in the background (server-handle closes; a lazy mode's changes)."""
        await self.core.sync()

    async def close(self) -> None:
        try:
            try:
                await self.core.close()
            finally:
                if self._on_close is not None:
                    await self._on_close()
        finally:
            await self.meta.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------------ path resolution
    def _abs(self, path: PathLike) -> bytes:
        p = _fs(path)
        if not p:
            raise _oserror(E.ENOENT, path)
        if b"\0" in p:
            raise ValueError("embedded null byte")
        return p if p.startswith(b"/") else self.cwd.rstrip(b"/") + b"/" + p

    async def _walk_root(self) -> tuple[Attr, bool]:
        """The root to start a walk from, and whether its attributes may be older than the
        mode keeps them. A walk needs only the root's number (the shard that holds a name
        checks search permission on its lookup), so a mode that does not check walks itself
        is not sent to shard 0, every client's common point, each TTL to refresh them: the
        root's GETATTR was half of a strict client's load on shard 0."""
        mode = self.mode
        if (self._root is not None and not mode.checks_walks and mode.own_attr(ROOT_INO) is None
                and mode.attr(ROOT_INO) is None):
            return self._root, True
        self._root = await self.core.getattr(ROOT_INO)
        return self._root, False

    async def _namei(self, path: PathLike, *, follow: bool = True, fresh_last: bool = False,
                     through: bool = False) -> _Resolved:
        """Walk ``path`` from the root. Intermediate symlinks are always followed,
        the last one if ``follow`` (or the path ends in '/'); '..' goes back along
        the walk (the physical parent); ENOENT/ENOTDIR for a missing or non-directory
        intermediate component, ELOOP after MAXSYMLINKS symlinks. A missing last
        component is not an error (attr None: the caller may create it). ``through``: the
        caller only goes through the result, a directory (its number and type suffice)."""
        core = self.core
        mode, caller = self.mode, getattr(self.meta, "caller", None)
        p = self._abs(path)
        trailing = p.endswith(b"/") or p.endswith(b"/.")
        root, old_root = await self._walk_root()
        dirs: list[Attr] = [root]
        todo = deque(c for c in p.split(b"/") if c and c != b".")
        links = 0
        res = _Resolved(None, None, root)
        while todo:
            c = todo.popleft()
            if c == b"..":
                if len(dirs) > 1:
                    dirs.pop()
                res = _Resolved(None, None, dirs[-1])
                continue
            parent = dirs[-1]
            last = not todo
            try:
                mode.check_walk(parent, caller)
                a = await core.lookup(parent.ino, c, fresh=last and fresh_last, walk=not last)
            except err.NotFound:
                if last:
                    return _Resolved(parent, c, None)
                raise _oserror(E.ENOENT, path) from None
            except err.DfsError as e:
                e.filename = path
                raise
            if a.is_lnk() and (not last or follow or trailing):
                links += 1
                if links > MAXSYMLINKS:
                    raise _oserror(E.ELOOP, path)
                target = await core.readlink(a.ino)
                if target.startswith(b"/"):
                    del dirs[1:]
                    res = _Resolved(None, None, root)
                todo.extendleft(reversed([t for t in target.split(b"/") if t and t != b"."]))
                continue
            if last:
                res = _Resolved(parent, c, a)
            elif a.is_dir():
                dirs.append(a)
            else:
                raise _oserror(E.ENOTDIR, path)
        if trailing and res.attr is not None and not res.attr.is_dir():
            raise _oserror(E.ENOTDIR, path)
        if old_root and res.attr is root and not through:  # the root itself: fresh attributes
            self._root = await core.getattr(ROOT_INO)
            res = _Resolved(res.parent, res.name, self._root)
        return res

    async def _existing(self, path: PathLike, follow: bool = True) -> Attr:
        r = await self._namei(path, follow=follow)
        if r.attr is None:
            raise _oserror(E.ENOENT, path)
        return r.attr

    async def _parent_of_new(self, path: PathLike) -> _Resolved:
        """For operations that name a last component: the walk without following it."""
        r = await self._namei(path, follow=False)
        if r.name is None:
            raise _oserror(E.EEXIST if r.attr is not None else E.ENOENT, path)
        return r

    async def _last_step(self, path: PathLike) -> tuple[_Resolved, bytes] | None:
        """(the resolved parent directory, the last name) for the one-round-trip opens; None
        when the slow path must decide (a last name of '', '.' or '..', a parent that is
        missing or not a directory: the slow path names the error)."""
        head, _, last = self._abs(path).rpartition(b"/")
        if not last or last in (b".", b".."):
            return None
        head = head or b"/"
        mode, caller = self.mode, getattr(self.meta, "caller", None)
        try:
            if mode.immutable:  # a shuffled epoch walks the same few directories every time
                of, walked = self._walked
                if of != (mode, caller):  # the walk checked this caller's permissions
                    walked = {}
                    self._walked = ((mode, caller), walked)
                parent = walked.get(head)
                if parent is None:
                    parent = await self._namei(head, follow=True, through=True)
                    if len(walked) < WALKED_DIRS:
                        walked[head] = parent
            else:
                parent = await self._namei(head, follow=True, through=True)
            if parent.attr is None or not parent.attr.is_dir():
                return None
            mode.check_walk(parent.attr, caller)
        except err.DfsError as e:
            e.filename = path  # the caller's path, not its directory's
            raise
        return parent, last

    # ------------------------------------------------------------------ reads
    async def stat(self, path: PathLike, *, follow_symlinks: bool = True) -> os.stat_result:
        return stat_result(await self._existing(path, follow_symlinks))

    async def lstat(self, path: PathLike) -> os.stat_result:
        return await self.stat(path, follow_symlinks=False)

    async def getattr(self, path: PathLike, *, follow_symlinks: bool = True) -> Attr:
        """The raw ``Attr`` record of a path (layout, flags included)."""
        return await self._existing(path, follow_symlinks)

    async def exists(self, path: PathLike) -> bool:
        try:
            await self._existing(path)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    async def isdir(self, path: PathLike) -> bool:
        try:
            return (await self._existing(path)).is_dir()
        except (FileNotFoundError, NotADirectoryError):
            return False

    async def isfile(self, path: PathLike) -> bool:
        try:
            return (await self._existing(path)).is_reg()
        except (FileNotFoundError, NotADirectoryError):
            return False

    async def islink(self, path: PathLike) -> bool:
        try:
            return (await self._existing(path, False)).is_lnk()
        except (FileNotFoundError, NotADirectoryError):
            return False

    async def _dir(self, path: PathLike) -> Attr:
        a = await self._existing(path)
        if not a.is_dir():
            raise _oserror(E.ENOTDIR, path)
        return a

    async def set_lazy(self, path: PathLike, lazy: bool = True) -> None:
        """Mark directory ``path`` lazy (``lazy=False``: strict again) for every client: in its
        tree, clients in the default mode write their changes back lazily (docs/design/client.md,
        "Lazy mode"); its new subdirectories inherit the mark. Its owner or root."""
        d = await self._dir(path)
        mode = self.core.mode
        if hasattr(mode, "set_lazy"):  # a mode with lazy scopes keeps its own view in step
            await mode.set_lazy(d.ino, lazy)
        else:
            await self.core.meta.setlazy(d.ino, lazy)
            mode.forget_attr(d.ino)

    async def layout(self, path: PathLike) -> DirLayout:
        """What new files in directory ``path`` get (``set_layout``), or a file's own layout."""
        a = await self._existing(path)
        return DirLayout.of(a)

    async def set_layout(self, path: PathLike, *, chunk_size: int | None = None, stripe: int | None = None,
                         replicas: int | None = None, inline: bool | None = None) -> DirLayout:
        """Change what new regular files in directory ``path`` (and its new subdirectories,
        which inherit it) get: chunk size (a power of two, 64 KiB-64 MiB), stripe width
        (chains a file spreads over), replicas per chunk, and whether small files keep their
        bytes in the metadata shard (``inline``: one metadata request opens and reads such a
        file in strict mode). Fields left None keep their value; existing files keep theirs.
        The directory's owner or root; EINVAL for a bad value, ENOTDIR for a file; the
        result as ``layout`` reads it."""
        d = await self._dir(path)
        old = DirLayout.of(d).layout
        try:
            new = Layout(chunk_size if chunk_size is not None else old.chunk_size,
                         stripe if stripe is not None else old.stripe,
                         replicas if replicas is not None else old.replicas)
        except err.DfsError as e:
            e.filename = path
            raise
        a = await self.core.meta.setlayout(d.ino, new.pack(), inline=inline)
        self.core.mode.forget_attr(d.ino)
        return DirLayout.of(a)

    async def readdir(self, path: PathLike = ".", *, plus: bool = True) -> list[DirEntry]:
        """The raw entries of a directory (one readdirplus per page, the next prefetched)."""
        d = await self._dir(path)
        try:
            self.mode.check_list(d, getattr(self.meta, "caller", None))
        except err.DfsError as e:
            e.filename = path
            raise
        return await self.core.listdir(d.ino, plus=plus)

    async def listdir(self, path: PathLike = ".") -> list:
        return [_name_out(e.name, path) for e in await self.readdir(path, plus=False)]

    async def scandir(self, path: PathLike = ".", *, _client=None) -> list[ScandirEntry]:
        entries = await self.readdir(path, plus=True)
        base = os.fspath(path)
        out = []
        attrs = {}
        for e in entries:
            name = _name_out(e.name, path)
            full = os.path.join(base, name)
            attrs[full] = e.attr
            out.append(ScandirEntry(name, full, e, _client))
        if _client is None:
            view = _SyncView(attrs)
            for s in out:
                s._client = view
        return out

    async def walk(self, top: PathLike, topdown: bool = True, onerror=None,
                   followlinks: bool = False) -> AsyncIterator[tuple[Any, list, list]]:
        """os.walk over the namespace; the entries' types come from readdirplus."""
        try:
            entries = await self.readdir(top, plus=True)
        except OSError as e:
            if onerror is not None:
                onerror(e)
            return
        dirs, files, links = [], [], []
        for e in entries:
            name = _name_out(e.name, top)
            if S.S_ISDIR(e.type):
                dirs.append(name)
            elif S.S_ISLNK(e.type) and followlinks:
                links.append(name)
            else:
                files.append(name)
        for name in links:  # a followed symlink counts as a directory if it points to one
            (dirs if await self.isdir(os.path.join(top, name)) else files).append(name)
        if topdown:
            yield top, dirs, files
        for name in dirs:
            async for x in self.walk(os.path.join(top, name), topdown, onerror, followlinks):
                yield x
        if not topdown:
            yield top, dirs, files

    async def readlink(self, path: PathLike) -> str | bytes:
        a = await self._existing(path, follow=False)
        if not a.is_lnk():
            raise _oserror(E.EINVAL, path)
        return _name_out(await self.core.readlink(a.ino), path)

    async def statfs(self, path: PathLike = "/") -> os.statvfs_result:
        s = await self.core.statfs()
        return os.statvfs_result((s.block_size, s.block_size, s.blocks, s.blocks_free, s.blocks_free, s.files,
                                  s.files_free, s.files_free, 0, s.name_max))

    statvfs = statfs

    async def getxattr(self, path: PathLike, attribute: str | bytes, *, follow_symlinks: bool = True) -> bytes:
        a = await self._existing(path, follow_symlinks)
        return await self.core.getxattr(a.ino, attribute)

    async def listxattr(self, path: PathLike, *, follow_symlinks: bool = True) -> list[str]:
        a = await self._existing(path, follow_symlinks)
        return [os.fsdecode(n) for n in await self.core.listxattr(a.ino)]

    # ------------------------------------------------------------------ mutations
    async def mkdir(self, path: PathLike, mode: int = 0o777) -> None:
        r = await self._parent_of_new(path)
        if r.attr is not None:
            raise _oserror(E.EEXIST, path)
        await self.core.mkdir(r.parent.ino, r.name, mode & 0o7777, umask=self.umask)

    async def makedirs(self, path: PathLike, mode: int = 0o777, exist_ok: bool = False) -> None:
        p = self._abs(path).rstrip(b"/")
        if not p:
            if exist_ok:
                return
            raise _oserror(E.EEXIST, path)
        head = p.rpartition(b"/")[0] or b"/"
        if head != b"/" and not await self.exists(head):
            try:
                await self.makedirs(head, mode, exist_ok=True)
            except FileExistsError:
                pass
        try:
            await self.mkdir(p, mode)
        except FileExistsError:
            if not exist_ok or not await self.isdir(p):
                raise

    async def remove(self, path: PathLike) -> None:
        p = self._abs(path)
        head, _, last = p.rpartition(b"/")
        if last and last not in (b".", b".."):
            # One round trip: UNLINK by name (EISDIR for a directory, ENOENT for none).
            parent = await self._namei(head or b"/", follow=True, through=True)
            if parent.attr is not None and parent.attr.is_dir():
                try:
                    await self.core.unlink(parent.attr.ino, last)
                except err.DfsError as e:
                    e.filename = path
                    raise
                return
        r = await self._parent_of_new(path)
        if r.attr is not None and r.attr.is_dir():
            raise _oserror(E.EISDIR, path)
        await self.core.unlink(r.parent.ino, r.name, ino=r.attr.ino if r.attr else 0)

    unlink = remove

    async def rmdir(self, path: PathLike) -> None:
        p = self._abs(path)
        if p.rstrip(b"/").endswith(b"/.") or p.rstrip(b"/") in (b"", b"."):
            raise _oserror(E.EINVAL if p.rstrip(b"/") else E.EBUSY, path)
        r = await self._namei(p.rstrip(b"/") or b"/", follow=False)
        if r.name is None:
            raise _oserror(E.EBUSY if r.attr and r.attr.ino == ROOT_INO else E.ENOTEMPTY, path)
        if r.attr is None:
            raise _oserror(E.ENOENT, path)
        if not r.attr.is_dir():
            raise _oserror(E.ENOTDIR, path)
        await self.core.rmdir(r.parent.ino, r.name, ino=r.attr.ino)

    async def rename(self, src: PathLike, dst: PathLike) -> None:
        """POSIX rename: replaces an existing ``dst`` (a file by a file, an empty directory by a directory)."""
        s = await self._parent_of_new(_fs(src).rstrip(b"/") or b"/")
        if s.attr is None:
            raise _oserror(E.ENOENT, src)
        d = await self._parent_of_new(_fs(dst).rstrip(b"/") or b"/")
        await self.core.rename(s.parent.ino, s.name, d.parent.ino, d.name,
                               inos=(s.attr.ino, d.attr.ino if d.attr else 0))

    replace = rename

    async def link(self, src: PathLike, dst: PathLike, *, follow_symlinks: bool = True) -> None:
        a = await self._existing(src, follow_symlinks)
        if a.is_dir():
            raise _oserror(E.EPERM, src)
        d = await self._parent_of_new(dst)
        if d.attr is not None:
            raise _oserror(E.EEXIST, dst)
        await self.core.link(a.ino, d.parent.ino, d.name)

    async def symlink(self, src: PathLike, dst: PathLike) -> None:
        """Create symlink ``dst`` pointing to ``src`` (os.symlink's order)."""
        d = await self._parent_of_new(dst)
        if d.attr is not None:
            raise _oserror(E.EEXIST, dst)
        await self.core.symlink(d.parent.ino, d.name, _fs(src))

    async def _setattr(self, path: PathLike, follow: bool, **kw) -> Attr:
        a = await self._existing(path, follow)
        return await self.core.setattr(a.ino, **kw)

    async def chmod(self, path: PathLike, mode: int, *, follow_symlinks: bool = True) -> None:
        await self._setattr(path, follow_symlinks, mode=mode & 0o7777)

    async def chown(self, path: PathLike, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        await self._setattr(path, follow_symlinks, uid=None if uid == -1 else uid, gid=None if gid == -1 else gid)

    async def utime(self, path: PathLike, times: tuple[float, float] | None = None, *,
                    ns: tuple[int, int] | None = None, follow_symlinks: bool = True) -> None:
        if times is not None and ns is not None:
            raise ValueError("utime: you may specify either 'times' or 'ns' but not both")
        if times is None and ns is None:
            await self._setattr(path, follow_symlinks, atime_now=True, mtime_now=True)
            return
        if ns is None:
            ns = (int(times[0] * 1e9), int(times[1] * 1e9))
        await self._setattr(path, follow_symlinks, atime_ns=int(ns[0]), mtime_ns=int(ns[1]))

    async def truncate(self, path: PathLike, length: int) -> None:
        a = await self._existing(path)
        if a.is_dir():
            raise _oserror(E.EISDIR, path)
        ref = await self.open_handle(path, os.O_WRONLY)  # the service checks write access
        try:
            await ref.truncate(length)
        finally:
            await ref.close()

    async def setxattr(self, path: PathLike, attribute: str | bytes, value: bytes, flags: int = 0, *,
                       follow_symlinks: bool = True) -> None:
        a = await self._existing(path, follow_symlinks)
        await self.core.setxattr(a.ino, attribute, value, flags)

    async def removexattr(self, path: PathLike, attribute: str | bytes, *, follow_symlinks: bool = True) -> None:
        a = await self._existing(path, follow_symlinks)
        await self.core.removexattr(a.ino, attribute)

    # ------------------------------------------------------------------ files
    async def open_handle(self, path: PathLike, flags: int = os.O_RDONLY, mode: int = 0o666) -> FileRef:
        """open(2): the open (a ``FileRef``) of ``path`` with os.O_* ``flags``. Close-to-open:
        the last component and the attributes are fetched afresh (the mode permitting);
        the service checks the access wanted."""
        access = open_access(flags)
        if flags & os.O_CREAT:
            ref = await self._create_open(path, flags, mode, access)
        elif not access & os.W_OK and not flags & os.O_NOFOLLOW:
            ref = await self._read_open(path, flags, access)
        else:
            ref = None
        if ref is not None:
            return ref
        for attempt in range(NAME_RACES):
            ref = await self._open_slow(path, flags, mode, access, attempt)
            if ref is not None:
                return ref
        raise AssertionError("unreachable")

    async def _open_slow(self, path: PathLike, flags: int, mode: int, access: int, attempt: int) -> FileRef | None:
        """open_handle by a walk of the path, then a create or an open of the inode found. None:
        that inode went between the walk and the open, i.e. the name changed meanwhile (a
        rename replaced it): the caller walks again, the last name fresh from the service
        (after NAME_RACES attempts: ENOENT)."""
        fresh = self.mode.open_plan(None, flags).revalidate or attempt > 0
        r = await self._namei(path, follow=not flags & os.O_NOFOLLOW, fresh_last=fresh)
        try:
            if r.attr is None:
                if not flags & os.O_CREAT:
                    raise _oserror(E.ENOENT, path)
                if _fs(path).endswith(b"/"):
                    raise _oserror(E.EISDIR, path)
                ref, attr, _ = await self.core.create(r.parent.ino, r.name, mode & 0o7777, flags, umask=self.umask,
                                                      access=access)
                if ref is None:  # appeared meanwhile, and not as a regular file
                    raise _oserror(E.EISDIR if attr.is_dir() else E.EEXIST, path)
                return ref
            attr = r.attr
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise _oserror(E.EEXIST, path)
            if attr.is_dir():
                raise _oserror(E.EISDIR, path)
            if attr.is_lnk():
                raise _oserror(E.ELOOP, path)  # O_NOFOLLOW on a symlink
            if not attr.is_reg():
                raise _oserror(E.ENXIO, path)
            try:
                return await self.core.open(attr.ino, flags, access=access)
            except err.NotFound:
                if attempt == NAME_RACES - 1:
                    raise
                return None
        except err.DfsError as e:
            e.filename = path
            raise

    async def _create_open(self, path: PathLike, flags: int, mode: int, access: int) -> FileRef | None:
        """open(O_CREAT) in one round trip when the name is not cached: CREATE-and-OPEN on
        the parent (which the service answers for an existing regular file too, after the
        access check). None when the slow path must decide: the name is cached, ends in
        '/', '.' or '..', or is not a regular file (a directory, a symlink to follow, a device)."""
        step = await self._last_step(path)
        if step is None:
            return None
        parent, last = step
        try:
            if self.mode.entry(parent.attr.ino, last) is not None:
                return None
        except err.NotFound:
            pass  # known missing: create it
        try:
            ref, _, _ = await self.core.create(parent.attr.ino, last, mode & 0o7777, flags, umask=self.umask,
                                               access=access)
        except err.DfsError as e:
            e.filename = path
            raise
        return ref

    async def _read_open(self, path: PathLike, flags: int, access: int) -> FileRef | None:
        """open() for reading in one round trip: the last step of the walk and the open
        (LOOKUPOPEN on the parent). None when the slow path must decide: the name ends in
        '/', '.' or '..', is missing, or is not a regular file on the directory's shard (a
        symlink to follow, a directory, a hard link elsewhere)."""
        if not self.mode.open_plan(None, flags).server_handle:
            # a mode without server handles (snapshot mode): the last step and an open by
            # inode, both answered by the mode, rather than a second walk
            a = await self._last_file(path)
            if a is None:
                return None
            try:
                return await self.core.open(a.ino, flags, access=access)
            except err.DfsError as e:
                e.filename = path
                raise
        step = await self._last_step(path)
        if step is None:
            return None
        parent, last = step
        try:
            return await self.core.lookup_open(parent.attr.ino, last, flags, access=access)
        except err.DfsError as e:
            e.filename = path
            raise

    async def _last_file(self, path: PathLike) -> Attr | None:
        """The attributes of regular file ``path`` from the last step of the walk (a lookup in
        its parent, which a mode may answer itself). None when the slow path must decide, as
        ``_read_open`` says."""
        step = await self._last_step(path)
        if step is None:
            return None
        parent, last = step
        try:
            a = await self.core.lookup(parent.attr.ino, last)
        except err.NotFound:
            return None
        except err.DfsError as e:
            e.filename = path
            raise
        return a if a.is_reg() else None

    async def open(self, path: PathLike, mode: str = "rb", perm: int = 0o666) -> AsyncFile:
        """A binary file object for asyncio code (text mode is the sync Client's)."""
        flags, binary, _ = parse_mode(mode)
        if not binary:
            raise ValueError("AsyncClient.open is binary only (use 'b'); Client.open has text mode")
        return AsyncFile(await self.open_handle(path, flags, perm), path, mode, flags)

    async def read_now(self, path: PathLike) -> bytearray | None:
        """``read_bytes`` of ``path`` when the mode has the file's bytes at hand (``read_now``:
        snapshot mode's packed files in the machine's cache), never waiting: the sync client
        runs it on the caller's thread. None: read it the usual way (which also names any
        error: a missing name, a directory, a symlink to follow)."""
        read = getattr(self.mode, "read_now", None)
        if read is None:
            return None
        a = await self._last_file(path)
        if a is None:
            return None
        try:
            self.mode.check_open(a, os.R_OK, self.caller)
        except err.DfsError as e:
            e.filename = path
            raise
        return read(a)

    async def read_bytes(self, path: PathLike) -> bytes:
        f = await self.open(path, "rb")
        try:
            return await f.read()
        finally:
            await f.close()

    async def write_bytes(self, path: PathLike, data: bytes) -> int:
        f = await self.open(path, "wb")
        try:
            return await f.write(data)
        finally:
            await f.close()

    def read_many(self, paths, *, ahead: int = DEFAULT_AHEAD, max_bytes: int = DEFAULT_MAX_BYTES):
        """An async iterator of ``(path, contents)`` in the order of ``paths``, up to ``ahead``
        files and ``max_bytes`` fetched ahead concurrently (dfs/client/prefetch.py); an error
        is raised at its file's turn, carrying its path."""
        return read_many(self, paths, ahead=ahead, max_bytes=max_bytes)

    # ------------------------------------------------------------------ the node cache
    node_cache = None  # the CachedChunks in front of the data path (connect(cache_size=...)), or None

    async def warmup(self, paths, *, snapshot: str | None = None, evict: bool = False,
                     parallel: int = DEFAULT_PARALLEL_WARMUP, progress=None):
        """Fetch every regular file under ``paths`` into the node-local cache (``evict``: drop
        them from it) ahead of a job; a ``WarmupResult`` (dfs/client/warmup.py). The paths are
        inside a snapshot-mode client, under ``PATH/.snap/NAME/``, each ``PATH``'s snapshot
        ``snapshot`` (``PATH/.snap/NAME``), or live files (cached under their data version:
        strict-mode reads of that version hit them). Errors are per path
        (``result.errors``), the rest goes on."""
        from dfs.client.warmup import warmup

        if isinstance(paths, (str, bytes, os.PathLike)):
            paths = [paths]
        if snapshot is not None:
            sd = getattr(self.meta, "snapdir", None)
            if not isinstance(sd, bytes):  # a snapshot-mode client (its paths are a snapshot's already)
                raise err.InvalidArgument("warmup: this client has no snapshot directories (snapshot=)")
            paths = [os.path.join(os.fsencode(p), sd, os.fsencode(snapshot)) for p in paths]
        return await warmup(self, paths, parallel=parallel, evict=evict, progress=progress)

    def cache_stats(self) -> dict[str, int] | None:
        """The node cache's counters in this process (hits, misses, hit_bytes, stored,
        stored_bytes, evictions, corrupt, store_errors) and its ``capacity``; None without one."""
        if self.node_cache is None:
            return None
        return {**self.node_cache.stats.as_dict(), "capacity": self.node_cache.cache.capacity}
