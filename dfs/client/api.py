"""The client library: paths, files and the POSIX-like API (docs/design/client.md).

    import dfs
    with dfs.connect() as fs:                     # the local `dfs cluster up` cluster
        fs.makedirs("/data/x", exist_ok=True)
        with fs.open("/data/x/a.txt", "w") as f:
            f.write("hello\\n")
        print(fs.stat("/data/x/a.txt").st_size, fs.listdir("/data/x"))

Layers:

* ``AsyncClient`` is the one client core (asyncio): it resolves paths
  component by component from the root (symlinks, ``..``, trailing slashes),
  keeps the entry and attribute caches that its ``Mode`` allows, and opens
  files as ``FileHandle``s (dfs/client/file.py) over a ``MetaClient`` and a
  ``ChunkIO`` (the ``DataClient`` of the data plane, or ``MemoryChunks``).
* ``Client`` is the synchronous facade: the same operations, each run on one
  private event-loop thread; its ``open`` returns real ``io`` objects
  (``RawFile`` under ``io.Buffered*`` and ``io.TextIOWrapper``, as
  ``builtins.open`` builds them) usable from the calling thread.
* ``Mode`` is the consistency policy the core asks before trusting a cached
  entry or attribute. ``StrictMode`` (the only one today): caches live at most
  a short TTL (1 s by default, 0 disables), this client's own mutations
  invalidate what they touch, and ``open`` revalidates the file (close-to-open).
  The lazy and snapshot modes are to be further ``Mode`` subclasses.

Errors are ``dfs.common.errors.DfsError``: ``OSError`` subclasses with the
errno a local file system would give (``FileNotFoundError``, ...).
Imports: dfs.common, dfs.rpc and this package only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno as E
import io
import os
import stat as S
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from dfs.client.file import ChunkIO, FileHandle
from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.ids import ROOT_INO
from dfs.common.records import Attr, Caller, DirEntry

T = TypeVar("T")

__all__ = [
    "AsyncClient", "AsyncFile", "Client", "Mode", "StrictMode", "RawFile", "ScandirEntry",
    "connect", "aconnect", "find_cluster", "find_credentials", "default_caller", "DEFAULT_DATA", "MAXSYMLINKS",
]

DEFAULT_DATA = os.path.expanduser("~/.local/share/dfs/local")  # `dfs cluster up`'s default folder
MAXSYMLINKS = 40
DEFAULT_BUFFER = 1 << 20  # the io.Buffered* buffer: one RPC-sized piece, not 8 KiB

PathLike = str | bytes | os.PathLike


def _oserror(code: int, path: Any = None) -> err.DfsError:
    e = err.error_for(code)
    e.filename = path
    return e


def default_caller() -> Caller:
    """The identity of this process (uid, gid, supplementary groups)."""
    return Caller(os.getuid(), os.getgid(), tuple(g for g in os.getgroups() if g != os.getgid()))


# ---------------------------------------------------------------------- consistency modes
class Mode:
    """A consistency policy: what the client core may answer from memory.

    The core calls ``entry``/``attr`` before asking the metadata service and
    ``remember*``/``forget*`` with what it learned or changed. A mode decides
    how long (if at all) a remembered entry or attribute stays usable and
    whether ``open`` must revalidate (``revalidate_on_open``). The base class
    caches nothing (every lookup goes to the service)."""

    name = "uncached"
    revalidate_on_open = True

    def entry(self, parent: int, name: bytes) -> int | None:
        return None

    def attr(self, ino: int) -> Attr | None:
        return None

    def walk_attr(self, ino: int) -> Attr | None:
        """Attributes good enough to walk through ``ino`` as a directory of a path (its
        type and number, which never change): may be older than ``attr`` allows."""
        return self.attr(ino)

    def remember(self, parent: int, name: bytes, attr: Attr) -> None:
        pass

    def remember_attr(self, attr: Attr) -> None:
        pass

    def forget_entry(self, parent: int, name: bytes) -> None:
        pass

    def forget_attr(self, ino: int) -> None:
        pass

    def clear(self) -> None:
        pass


class StrictMode(Mode):
    """Close-to-open consistency with TTL-bounded caches.

    * a name -> inode entry and an inode's attributes are reused for at most
      ``entry_ttl`` / ``attr_ttl`` seconds after they were fetched (0: never
      cached); another client's change is seen at the latest after that;
    * this client's own mutations drop (or replace) the entries and attributes
      they change, so it always sees its own writes;
    * ``open`` looks the last component up and fetches the attributes afresh,
      and ``close`` (and ``flush``/``fsync``) publishes the size: a file opened
      after another client closed it shows all of that client's writes.
    """

    name = "strict"

    def __init__(self, ttl: float = 1.0, *, entry_ttl: float | None = None, max_entries: int = 100_000) -> None:
        self.attr_ttl = float(ttl)
        self.entry_ttl = float(ttl if entry_ttl is None else entry_ttl)
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, bytes], tuple[float, int]] = OrderedDict()
        self._attrs: OrderedDict[int, tuple[float, Attr]] = OrderedDict()
        # directories whose attributes this client's own change made stale (their mtime):
        # still fine for walking paths through them until they would have expired
        self._walk: OrderedDict[int, tuple[float, Attr]] = OrderedDict()

    def _put(self, d: OrderedDict, key, value, ttl: float) -> None:
        if ttl <= 0:
            return
        d[key] = (time.monotonic() + ttl, value)
        d.move_to_end(key)
        while len(d) > self.max_entries:
            d.popitem(last=False)

    @staticmethod
    def _get(d: OrderedDict, key):
        v = d.get(key)
        if v is None:
            return None
        if v[0] < time.monotonic():
            del d[key]
            return None
        return v[1]

    def entry(self, parent, name):
        return self._get(self._entries, (parent, name))

    def attr(self, ino):
        return self._get(self._attrs, ino)

    def remember(self, parent, name, attr):
        self._put(self._entries, (parent, name), attr.ino, self.entry_ttl)
        self._put(self._attrs, attr.ino, attr, self.attr_ttl)

    def remember_attr(self, attr):
        self._put(self._attrs, attr.ino, attr, self.attr_ttl)

    def forget_entry(self, parent, name):
        self._entries.pop((parent, name), None)

    def walk_attr(self, ino):
        a = self.attr(ino)
        return a if a is not None else self._get(self._walk, ino)

    def forget_attr(self, ino):
        v = self._attrs.pop(ino, None)
        if v is not None and v[1].is_dir():
            self._walk[ino] = v
            self._walk.move_to_end(ino)
            while len(self._walk) > self.max_entries:
                self._walk.popitem(last=False)

    def clear(self):
        self._entries.clear()
        self._attrs.clear()
        self._walk.clear()


# ---------------------------------------------------------------------- helpers
def _fs(path: PathLike) -> bytes:
    p = os.fspath(path)
    return os.fsencode(p) if isinstance(p, str) else p


def _name_out(name: bytes, like: Any) -> str | bytes:
    """Names come back as the caller gave the path: str for str, bytes for bytes."""
    return name if isinstance(os.fspath(like), bytes) else os.fsdecode(name)


def _stat_result(a: Attr) -> os.stat_result:
    blocks = (a.size + 511) // 512
    return os.stat_result(
        (a.mode, a.ino, 0, a.nlink, a.uid, a.gid, a.size, a.atime_ns // 10**9, a.mtime_ns // 10**9,
         a.ctime_ns // 10**9),
        {"st_atime": a.atime_ns / 1e9, "st_mtime": a.mtime_ns / 1e9, "st_ctime": a.ctime_ns / 1e9,
         "st_atime_ns": a.atime_ns, "st_mtime_ns": a.mtime_ns, "st_ctime_ns": a.ctime_ns,
         "st_blksize": 1 << 20, "st_blocks": blocks, "st_rdev": a.rdev})


def parse_mode(mode: str) -> tuple[int, bool, bool]:
    """builtins.open's mode string -> (os.O_* flags, binary, the '+' flag)."""
    chars = set(mode)
    if len(chars) != len(mode) or chars - set("rwaxbt+") or len(chars & set("rwax")) != 1 \
            or {"b", "t"} <= chars:
        raise ValueError(f"invalid mode: {mode!r}")
    plus = "+" in chars
    if "r" in chars:
        flags = os.O_RDWR if plus else os.O_RDONLY
    else:
        flags = (os.O_RDWR if plus else os.O_WRONLY) | os.O_CREAT
        if "w" in chars:
            flags |= os.O_TRUNC
        elif "a" in chars:
            flags |= os.O_APPEND
        else:
            flags |= os.O_EXCL
    return flags, "b" in chars, plus


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
            return _stat_result(self._attr)
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
        return _stat_result(a)


# ---------------------------------------------------------------------- the async core
class _Leases:
    """Server-side open handles of this client's open files (see MetaClient.open_handle):
    a file unlinked while open here stays alive until it is closed here, in any
    other client too. Opens for reading take read handles (``open_read``: kept in
    the shard leader's memory, no Raft round), the others durable ones. Renewed in
    the background every third of the lease; a client that dies stops renewing and
    its handles expire. Closes go out in the background, batched per shard (a
    file's close does not wait for the service); ``drain`` waits for them."""

    def __init__(self, meta: MetaClient, lease_s: float = 30.0) -> None:
        self.meta = meta
        self.lease = lease_s
        self.held: dict[bytes, int] = {}
        self.reading: set[bytes] = set()  # the read handles among held
        self._task: asyncio.Task | None = None
        self._closing: list[tuple[int, bytes, bool]] = []
        self._closer: asyncio.Task | None = None

    async def open(self, ino: int, access: int = 0) -> tuple[Attr, bytes]:
        """Open ``ino`` (checking ``access`` on the service): its fresh attributes and the handle."""
        if access & os.W_OK:
            attr, h = await self.meta.open_file(ino, self.lease, access=access)
            self.adopt(ino, h)
        else:
            attr, h, durable = await self.meta.open_read(ino, self.lease, access=access)
            self.adopt(ino, h, read=not durable)
        return attr, h

    def adopt(self, ino: int, h: bytes, read: bool = False) -> None:
        """Track (renew, close) a handle registered elsewhere, e.g. by create_open."""
        self.held[h] = ino
        if read:
            self.reading.add(h)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._renew())

    def release(self, ino: int, h: bytes) -> None:
        """Close the handle, in the background."""
        self.held.pop(h, None)
        read = h in self.reading
        self.reading.discard(h)
        self._closing.append((ino, h, read))
        if self._closer is None or self._closer.done():
            self._closer = asyncio.get_running_loop().create_task(self._close_pending())

    async def _close_pending(self) -> None:
        while self._closing:
            batch, self._closing = self._closing, []
            reads = [(ino, h) for ino, h, r in batch if r]
            durable = [(ino, h) for ino, h, r in batch if not r]
            try:
                await asyncio.gather(*([self.meta.close_handles(durable)] if durable else []),
                                     *([self.meta.close_read_handles(reads)] if reads else []))
            except err.DfsError:
                pass  # expired or the cluster is unreachable: the lease ends it anyway

    async def drain(self) -> None:
        """Wait until every released handle is closed on the service."""
        while self._closer is not None and not self._closer.done():
            await asyncio.shield(self._closer)

    async def _renew(self) -> None:
        while self.held:
            await asyncio.sleep(self.lease / 3)
            pairs = [(ino, h) for h, ino in list(self.held.items())]
            reads = [p for p in pairs if p[1] in self.reading]
            durable = [p for p in pairs if p[1] not in self.reading]
            try:
                if durable:
                    await self.meta.renew_handles(durable, self.lease)
                if reads:
                    await self.meta.renew_read_handles(reads, self.lease)
            except err.DfsError:
                pass  # tried again at the next tick, well before the lease ends

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for h, ino in list(self.held.items()):
            self.release(ino, h)
        await self.drain()


class AsyncClient:
    """The client core: a namespace on paths over a MetaClient and a ChunkIO."""

    def __init__(self, meta: MetaClient, data: ChunkIO, *, mode: Mode | None = None, umask: int = 0o022,
                 on_close=None) -> None:
        self.meta = meta
        self.data = data
        self.mode = mode if mode is not None else StrictMode()
        self.umask = umask
        self.cwd = b"/"
        self._on_close = on_close
        self._links: OrderedDict[int, bytes] = OrderedDict()  # symlink targets never change
        self.leases = _Leases(meta)

    @property
    def caller(self) -> Caller:
        return self.meta.caller

    @classmethod
    async def connect(cls, cluster: str | None = None, *, data: str | None = None, mgmt: list[str] | str | None = None,
                      caller: Caller | None = None, uid: int | None = None, gid: int | None = None,
                      groups: tuple[int, ...] | None = None, mode: Mode | None = None, ttl: float = 1.0,
                      umask: int = 0o022, deadline: float = 30.0, token: str | None = None,
                      token_file: str | None = None) -> AsyncClient:
        from dfs.rpc.data import DataClient
        from dfs.rpc.transport import GrpcTransport

        addrs = find_cluster(cluster, data=data, mgmt=mgmt)
        creds = find_credentials(cluster, data=data, mgmt=mgmt, token=token, token_file=token_file)
        if caller is None:
            me = default_caller()
            caller = Caller(me.uid if uid is None else uid, me.gid if gid is None else gid,
                            me.groups if groups is None else tuple(groups))
        t = GrpcTransport(addrs, deadline=deadline, auth=creds)
        try:
            await t.connect()
        except BaseException:
            await t.close()
            raise
        dc = DataClient(t.map, t.refresh_map, auth=creds)

        async def close_data():
            await dc.close()

        return cls(MetaClient(t, caller), dc, mode=mode if mode is not None else StrictMode(ttl), umask=umask,
                   on_close=close_data)

    async def close(self) -> None:
        try:
            await self.leases.close()
            if self._on_close is not None:
                await self._on_close()
        finally:
            await self.meta.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------------ cached reads
    async def _lookup(self, parent: int, name: bytes, *, fresh: bool = False, walk: bool = False) -> Attr:
        """``walk``: only to go through it to the next component (see Mode.walk_attr)."""
        if not fresh:
            ino = self.mode.entry(parent, name)
            if ino is not None:
                a = self.mode.walk_attr(ino) if walk else self.mode.attr(ino)
                if a is not None:
                    return a
        try:
            a = await self.meta.lookup(parent, name)
        except err.NotFound:
            self.mode.forget_entry(parent, name)
            raise
        self.mode.remember(parent, name, a)
        return a

    async def _getattr(self, ino: int, *, fresh: bool = False) -> Attr:
        if not fresh:
            a = self.mode.attr(ino)
            if a is not None:
                return a
        a = await self.meta.getattr(ino)
        self.mode.remember_attr(a)
        return a

    async def _readlink_ino(self, ino: int) -> bytes:
        t = self._links.get(ino)
        if t is None:
            t = await self.meta.readlink(ino)
            self._links[ino] = t
            if len(self._links) > 10_000:
                self._links.popitem(last=False)
        return t

    # ------------------------------------------------------------------ path resolution
    def _abs(self, path: PathLike) -> bytes:
        p = _fs(path)
        if not p:
            raise _oserror(E.ENOENT, path)
        if b"\0" in p:
            raise ValueError("embedded null byte")
        return p if p.startswith(b"/") else self.cwd.rstrip(b"/") + b"/" + p

    async def _namei(self, path: PathLike, *, follow: bool = True, fresh_last: bool = False) -> _Resolved:
        """Walk ``path`` from the root. Intermediate symlinks are always followed,
        the last one if ``follow`` (or the path ends in '/'); '..' goes back along
        the walk (the physical parent); ENOENT/ENOTDIR for a missing or non-directory
        intermediate component, ELOOP after MAXSYMLINKS symlinks. A missing last
        component is not an error (attr None: the caller may create it)."""
        p = self._abs(path)
        trailing = p.endswith(b"/") or p.endswith(b"/.")
        root = await self._getattr(ROOT_INO)
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
                a = await self._lookup(parent.ino, c, fresh=last and fresh_last, walk=not last)
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
                target = await self._readlink_ino(a.ino)
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

    # ------------------------------------------------------------------ reads
    async def stat(self, path: PathLike, *, follow_symlinks: bool = True) -> os.stat_result:
        return _stat_result(await self._existing(path, follow_symlinks))

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

    async def readdir(self, path: PathLike = ".", *, plus: bool = True) -> list[DirEntry]:
        """The raw entries of a directory (one readdirplus per page); remembers their attributes."""
        d = await self._dir(path)
        out = await self.meta.listdir(d.ino, plus=plus)
        for e in out:
            if e.attr is not None:
                self.mode.remember(d.ino, e.name, e.attr)
        return out

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
        t = await self._readlink_ino(a.ino)
        return _name_out(t, path)

    async def statfs(self, path: PathLike = "/") -> os.statvfs_result:
        s = await self.meta.statfs()
        return os.statvfs_result((s.block_size, s.block_size, s.blocks, s.blocks_free, s.blocks_free, s.files,
                                  s.files_free, s.files_free, 0, s.name_max))

    statvfs = statfs

    async def getxattr(self, path: PathLike, attribute: str | bytes, *, follow_symlinks: bool = True) -> bytes:
        a = await self._existing(path, follow_symlinks)
        return await self.meta.getxattr(a.ino, attribute)

    async def listxattr(self, path: PathLike, *, follow_symlinks: bool = True) -> list[str]:
        a = await self._existing(path, follow_symlinks)
        return [os.fsdecode(n) for n in await self.meta.listxattr(a.ino)]

    # ------------------------------------------------------------------ mutations
    def _changed(self, parent: int, name: bytes | None = None, *inos: int) -> None:
        self.mode.forget_attr(parent)
        if name is not None:
            self.mode.forget_entry(parent, name)
        for i in inos:
            self.mode.forget_attr(i)

    async def mkdir(self, path: PathLike, mode: int = 0o777) -> None:
        r = await self._parent_of_new(path)
        if r.attr is not None:
            raise _oserror(E.EEXIST, path)
        try:
            a = await self.meta.mkdir(r.parent.ino, r.name, mode & 0o7777, umask=self.umask)
        finally:
            self._changed(r.parent.ino, r.name)
        self.mode.remember(r.parent.ino, r.name, a)

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
            # The cached attributes of the inode go if this client knows which it was.
            parent = await self._namei(head or b"/", follow=True)
            if parent.attr is not None and parent.attr.is_dir():
                ino = self.mode.entry(parent.attr.ino, last)
                try:
                    await self.meta.unlink(parent.attr.ino, last)
                except err.DfsError as e:
                    e.filename = path
                    raise
                finally:
                    self._changed(parent.attr.ino, last, *([ino] if ino else []))
                return
        r = await self._parent_of_new(path)
        if r.attr is not None and r.attr.is_dir():
            raise _oserror(E.EISDIR, path)
        try:
            await self.meta.unlink(r.parent.ino, r.name)
        finally:
            self._changed(r.parent.ino, r.name, *([r.attr.ino] if r.attr else []))

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
        try:
            await self.meta.rmdir(r.parent.ino, r.name)
        finally:
            self._changed(r.parent.ino, r.name, r.attr.ino)

    async def rename(self, src: PathLike, dst: PathLike) -> None:
        """POSIX rename: replaces an existing ``dst`` (a file by a file, an empty directory by a directory)."""
        s = await self._parent_of_new(_fs(src).rstrip(b"/") or b"/")
        if s.attr is None:
            raise _oserror(E.ENOENT, src)
        d = await self._parent_of_new(_fs(dst).rstrip(b"/") or b"/")
        try:
            await self.meta.rename(s.parent.ino, s.name, d.parent.ino, d.name)
        finally:
            self._changed(s.parent.ino, s.name, s.attr.ino)
            self._changed(d.parent.ino, d.name, *([d.attr.ino] if d.attr else []))

    replace = rename

    async def link(self, src: PathLike, dst: PathLike, *, follow_symlinks: bool = True) -> None:
        a = await self._existing(src, follow_symlinks)
        if a.is_dir():
            raise _oserror(E.EPERM, src)
        d = await self._parent_of_new(dst)
        if d.attr is not None:
            raise _oserror(E.EEXIST, dst)
        try:
            na = await self.meta.link(a.ino, d.parent.ino, d.name)
        finally:
            self._changed(d.parent.ino, d.name, a.ino)
        self.mode.remember(d.parent.ino, d.name, na)

    async def symlink(self, src: PathLike, dst: PathLike) -> None:
        """Create symlink ``dst`` pointing to ``src`` (os.symlink's order)."""
        d = await self._parent_of_new(dst)
        if d.attr is not None:
            raise _oserror(E.EEXIST, dst)
        try:
            await self.meta.symlink(d.parent.ino, d.name, _fs(src))
        finally:
            self._changed(d.parent.ino, d.name)

    async def _setattr(self, path: PathLike, follow: bool, **kw) -> Attr:
        a = await self._existing(path, follow)
        try:
            na = await self.meta.setattr(a.ino, **kw)
        except BaseException:
            self.mode.forget_attr(a.ino)
            raise
        self.mode.remember_attr(na)
        return na

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
        fh, _ = await self.open_handle(path, os.O_WRONLY)
        try:
            await fh.truncate(length)
        finally:
            try:
                await fh.close()
            finally:
                self.mode.forget_attr(fh.ino)

    async def setxattr(self, path: PathLike, attribute: str | bytes, value: bytes, flags: int = 0, *,
                       follow_symlinks: bool = True) -> None:
        a = await self._existing(path, follow_symlinks)
        await self.meta.setxattr(a.ino, attribute, value, flags)
        self.mode.forget_attr(a.ino)

    async def removexattr(self, path: PathLike, attribute: str | bytes, *, follow_symlinks: bool = True) -> None:
        a = await self._existing(path, follow_symlinks)
        await self.meta.removexattr(a.ino, attribute)
        self.mode.forget_attr(a.ino)

    # ------------------------------------------------------------------ files
    async def open_handle(self, path: PathLike, flags: int = os.O_RDONLY, mode: int = 0o666) -> tuple[FileHandle, Attr]:
        """open(2): a FileHandle for ``path`` with os.O_* ``flags``. Close-to-open: the last
        component and the attributes are fetched afresh (the mode permitting)."""
        acc = flags & os.O_ACCMODE
        readable = acc in (os.O_RDONLY, os.O_RDWR)
        writable = acc in (os.O_WRONLY, os.O_RDWR)
        fresh = self.mode.revalidate_on_open
        access = (4 if readable else 0) | (2 if writable or flags & os.O_TRUNC else 0)
        if flags & os.O_CREAT:
            got = await self._create_open(path, flags, mode, access)
        elif not access & 2 and not flags & os.O_NOFOLLOW:
            got = await self._read_open(path, access)
        else:
            got = None
        if got is not None:
            attr, created, lease = got
            r = None
        else:
            r = await self._namei(path, follow=not flags & os.O_NOFOLLOW, fresh_last=fresh)
            created = False
        if r is None:
            pass
        elif r.attr is None:
            if not flags & os.O_CREAT:
                raise _oserror(E.ENOENT, path)
            if _fs(path).endswith(b"/"):
                raise _oserror(E.EISDIR, path)
            try:  # create and open: one command
                attr, created, lease, parent = await self.meta.create_open(
                    r.parent.ino, r.name, mode & 0o7777, excl=bool(flags & os.O_EXCL), umask=self.umask,
                    lease_s=self.leases.lease)
            except err.DfsError as e:
                e.filename = path
                raise
            finally:
                self._changed(r.parent.ino, r.name)
            self.mode.remember_attr(parent)  # the directory as this create left it
            self.leases.adopt(attr.ino, lease)
            self.mode.remember(r.parent.ino, r.name, attr)
        else:
            attr = r.attr
            if flags & os.O_CREAT and flags & os.O_EXCL:
                raise _oserror(E.EEXIST, path)
            if attr.is_dir():
                raise _oserror(E.EISDIR, path)
            if attr.is_lnk():
                raise _oserror(E.ELOOP, path)  # O_NOFOLLOW on a symlink
            if not attr.is_reg():
                raise _oserror(E.ENXIO, path)
            # The service checks the access and answers the attributes as of the open
            # (fresh: close-to-open) with the handle, in one command.
            try:
                attr, lease = await self.leases.open(attr.ino, access)
            except err.DfsError as e:
                e.filename = path
                raise
            self.mode.remember_attr(attr)
        fh = FileHandle(self.meta, self.data, attr, writable=writable, append=bool(flags & os.O_APPEND))
        fh.lease = lease
        if flags & os.O_TRUNC and writable and not created:
            try:
                await fh.truncate(0)
            except BaseException:
                await fh.close()
                self.leases.release(attr.ino, fh.lease)
                raise
            finally:
                self.mode.forget_attr(attr.ino)
        return fh, attr

    async def _last_step(self, path: PathLike) -> tuple[_Resolved, bytes] | None:
        """(the resolved parent directory, the last name) for the one-round-trip opens; None
        when the slow path must decide (a last name of '', '.' or '..', a parent that is
        missing or not a directory: the slow path names the error)."""
        head, _, last = self._abs(path).rpartition(b"/")
        if not last or last in (b".", b".."):
            return None
        parent = await self._namei(head or b"/", follow=True)
        if parent.attr is None or not parent.attr.is_dir():
            return None
        return parent, last

    async def _create_open(self, path: PathLike, flags: int, mode: int, access: int):
        """open(O_CREAT) in one round trip when the name is not cached: CREATE-and-OPEN on
        the parent (which the service answers for an existing regular file too, after the
        access check). (attr, created, handle), or None when the slow path must decide: the
        name is cached, ends in '/', '.' or '..', or is not a regular file (a directory,
        a symlink to follow, a device)."""
        step = await self._last_step(path)
        if step is None:
            return None
        parent, last = step
        if self.mode.entry(parent.attr.ino, last) is not None:
            return None
        try:
            attr, created, lease, pattr = await self.meta.create_open(
                parent.attr.ino, last, mode & 0o7777, excl=bool(flags & os.O_EXCL), umask=self.umask,
                lease_s=self.leases.lease, access=access)
        except err.DfsError as e:
            e.filename = path
            raise
        finally:
            self._changed(parent.attr.ino, last)
        if lease is None:
            return None
        if created:
            self.mode.remember_attr(pattr)  # the directory as this create left it
        self.leases.adopt(attr.ino, lease)
        self.mode.remember(parent.attr.ino, last, attr)
        return attr, created, lease

    async def _read_open(self, path: PathLike, access: int):
        """open() for reading in one round trip: the last step of the walk and the open
        (LOOKUPOPEN on the parent). (attr, False, handle), or None when the slow path must
        decide: the name ends in '/', '.' or '..', is missing, or is not a regular file
        on the directory's shard (a symlink to follow, a directory, a hard link elsewhere)."""
        step = await self._last_step(path)
        if step is None:
            return None
        parent, last = step
        try:
            attr, lease, durable = await self.meta.lookup_open(parent.attr.ino, last, self.leases.lease,
                                                               access=access)
        except err.NotFound:
            self.mode.forget_entry(parent.attr.ino, last)
            return None
        except err.DfsError as e:
            e.filename = path
            raise
        self.mode.remember(parent.attr.ino, last, attr)
        if lease is None:
            return None
        self.leases.adopt(attr.ino, lease, read=not durable)
        return attr, False, lease

    async def open(self, path: PathLike, mode: str = "rb", perm: int = 0o666) -> AsyncFile:
        """A binary file object for asyncio code (text mode is the sync Client's)."""
        flags, binary, _ = parse_mode(mode)
        if not binary:
            raise ValueError("AsyncClient.open is binary only (use 'b'); Client.open has text mode")
        fh, _ = await self.open_handle(path, flags, perm)
        return AsyncFile(self, fh, path, mode, flags)

    def _closed_file(self, ino: int, wrote: bool) -> None:
        if wrote:
            self.mode.forget_attr(ino)

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


class _FileCore:
    """Position and mode of one open file over a FileHandle (shared by the sync and async objects)."""

    def __init__(self, client: AsyncClient, fh: FileHandle, path, mode: str, flags: int) -> None:
        self.client = client
        self.fh = fh
        self.name = path
        self.mode = mode
        self.flags = flags
        acc = flags & os.O_ACCMODE
        self.can_read = acc in (os.O_RDONLY, os.O_RDWR)
        self.can_write = acc in (os.O_WRONLY, os.O_RDWR)
        self.pos = fh.size if flags & os.O_APPEND else 0
        self.wrote = False

    async def readinto(self, b) -> int:
        if not self.can_read:
            raise io.UnsupportedOperation("not readable")
        n = await self.fh.preadinto(self.pos, b)
        self.pos += n
        return n

    async def write(self, b) -> int:
        if not self.can_write:
            raise io.UnsupportedOperation("not writable")
        n = await self.fh.pwrite(self.pos, b)
        self.pos = self.fh.size if self.fh.append else self.pos + n
        self.wrote = True
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self.pos + offset
        elif whence == io.SEEK_END:
            pos = self.fh.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise _oserror(E.EINVAL, self.name)
        self.pos = pos
        return pos

    async def truncate(self, size: int | None) -> int:
        if not self.can_write:
            raise io.UnsupportedOperation("not writable")
        size = self.pos if size is None else size
        await self.fh.truncate(size)
        self.wrote = True
        return size

    async def flush(self) -> None:
        await self.fh.flush()

    async def close(self) -> None:
        try:
            await self.fh.close()
        finally:
            lease = getattr(self.fh, "lease", None)
            if lease is not None:
                self.fh.lease = None
                self.client.leases.release(self.fh.ino, lease)
            self.client._closed_file(self.fh.ino, self.wrote)


class AsyncFile:
    """A binary file for asyncio code: read/readinto/write/seek/tell/truncate/flush/fsync/close,
    pread/pwrite at explicit offsets, ``async with``."""

    def __init__(self, client: AsyncClient, fh: FileHandle, path, mode: str, flags: int) -> None:
        self._c = _FileCore(client, fh, path, mode, flags)
        self.closed = False

    @property
    def name(self):
        return self._c.name

    @property
    def mode(self) -> str:
        return self._c.mode

    @property
    def handle(self) -> FileHandle:
        return self._c.fh

    async def read(self, size: int = -1) -> bytes:
        c = self._c
        if size is None or size < 0:
            size = max(0, c.fh.size - c.pos)
        buf = bytearray(size)
        n = await c.readinto(buf)
        del buf[n:]
        return bytes(buf)

    async def readinto(self, b) -> int:
        return await self._c.readinto(b)

    async def write(self, b) -> int:
        return await self._c.write(b)

    async def pread(self, offset: int, size: int) -> bytes:
        return bytes(await self._c.fh.pread(offset, size))

    async def pwrite(self, offset: int, b) -> int:
        self._c.wrote = True
        return await self._c.fh.pwrite(offset, b)

    async def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._c.seek(offset, whence)

    async def tell(self) -> int:
        return self._c.pos

    async def truncate(self, size: int | None = None) -> int:
        return await self._c.truncate(size)

    async def flush(self) -> None:
        await self._c.flush()

    async def fsync(self) -> None:
        await self._c.fh.fsync()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self._c.close()

    async def __aenter__(self) -> AsyncFile:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


# ---------------------------------------------------------------------- the sync facade
class RawFile(io.RawIOBase):
    """The unbuffered io object over a FileHandle: each call runs on the client's loop
    thread and waits. ``fileno`` raises io.UnsupportedOperation (there is no descriptor)."""

    def __init__(self, run, core: _FileCore) -> None:
        super().__init__()
        self._run = run
        self._c = core
        self.name = core.name
        self.mode = core.mode.replace("t", "").replace("b", "") + "b"

    @property
    def handle(self) -> FileHandle:
        return self._c.fh

    def readable(self) -> bool:
        return self._c.can_read

    def writable(self) -> bool:
        return self._c.can_write

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self._checkClosed()
        return self._run(self._c.readinto(b))

    def readall(self) -> bytes:
        self._checkClosed()
        c = self._c
        buf = bytearray(max(0, c.fh.size - c.pos))
        n = self._run(c.readinto(buf)) if buf else 0
        del buf[n:]
        return bytes(buf)

    def write(self, b) -> int:
        self._checkClosed()
        return self._run(self._c.write(b))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        return self._c.seek(offset, whence)

    def tell(self) -> int:
        self._checkClosed()
        return self._c.pos

    def truncate(self, size: int | None = None) -> int:
        self._checkClosed()
        return self._run(self._c.truncate(size))

    def flush(self) -> None:
        if not self.closed and self._c.can_write:
            self._run(self._c.flush())

    def fsync(self) -> None:
        self._checkClosed()
        self._run(self._c.fh.fsync())

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a dfs file has no file descriptor")

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # flushes
        finally:
            self._run(self._c.close())


class _Fsync:
    """What the io stack of a dfs file adds to the builtin classes: fsync, size."""

    def _raw(self) -> RawFile:
        return self.raw if hasattr(self, "raw") else self.buffer.raw

    def fsync(self) -> None:
        self.flush()
        self._raw().fsync()

    @property
    def size(self) -> int:
        """The file's size as this open file sees it (at open, grown by its own writes)."""
        return self._raw()._c.fh.size


class BufferedReader(_Fsync, io.BufferedReader):
    pass


class BufferedWriter(_Fsync, io.BufferedWriter):
    pass


class BufferedRandom(_Fsync, io.BufferedRandom):
    pass


class TextIOWrapper(_Fsync, io.TextIOWrapper):
    pass


class Client:
    """The synchronous client: every AsyncClient operation, run on one private loop thread.

    ``open`` returns io objects (``RawFile`` wrapped like ``builtins.open`` wraps a
    descriptor); they may be used from any thread but not from the loop thread itself."""

    def __init__(self, make: Any) -> None:
        """``make``: an AsyncClient, or a callable returning one (or a coroutine of one),
        called on the loop thread."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dfs-client", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self.aio: AsyncClient = self._run(self._make(make))
        except BaseException:
            self._stop()
            raise

    @staticmethod
    async def _make(make):
        c = make() if callable(make) else make
        if asyncio.iscoroutine(c):
            c = await c
        return c

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ValueError("client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self.aio.close())
        finally:
            self._closed = True
            self._stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def mode(self) -> Mode:
        return self.aio.mode

    @property
    def caller(self) -> Caller:
        return self.aio.caller

    @property
    def meta(self) -> MetaClient:
        return self.aio.meta

    # ------------------------------------------------------------------ files
    def open(self, path: PathLike, mode: str = "r", buffering: int = -1, encoding: str | None = None,
             errors: str | None = None, newline: str | None = None, *, perm: int = 0o666):
        """builtins.open on dfs: the same modes, io stack and errors."""
        flags, binary, plus = parse_mode(mode)
        if binary and (encoding or errors or newline is not None):
            raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
        if buffering == 0 and not binary:
            raise ValueError("can't have unbuffered text I/O")
        fh, _ = self._run(self.aio.open_handle(path, flags, perm))
        raw = RawFile(self._run, _FileCore(self.aio, fh, path, mode, flags))
        try:
            line_buffering = buffering == 1
            if buffering == 0:
                return raw
            size = DEFAULT_BUFFER if buffering in (-1, 1) else buffering
            if plus:
                buf = BufferedRandom(raw, size)
            elif raw.writable():
                buf = BufferedWriter(raw, size)
            else:
                buf = BufferedReader(raw, size)
            if binary:
                return buf
            t = TextIOWrapper(buf, encoding or "utf-8", errors, newline, line_buffering)
            t.mode = mode
            return t
        except BaseException:
            raw.close()
            raise

    def read_bytes(self, path: PathLike) -> bytes:
        return self._run(self.aio.read_bytes(path))

    def write_bytes(self, path: PathLike, data: bytes) -> int:
        return self._run(self.aio.write_bytes(path, data))

    def read_text(self, path: PathLike, encoding: str = "utf-8") -> str:
        return self.read_bytes(path).decode(encoding)

    def write_text(self, path: PathLike, text: str, encoding: str = "utf-8") -> int:
        self.write_bytes(path, text.encode(encoding))
        return len(text)

    # ------------------------------------------------------------------ directories
    def scandir(self, path: PathLike = ".") -> _ScandirIterator:
        return _ScandirIterator(self._run(self.aio.scandir(path, _client=self)))

    def walk(self, top: PathLike, topdown: bool = True, onerror=None,
             followlinks: bool = False) -> Iterator[tuple[Any, list, list]]:
        """os.walk; with topdown, pruning ``dirnames`` in place is honoured."""
        try:
            entries = self.scandir(top)
        except OSError as e:
            if onerror is not None:
                onerror(e)
            return
        dirs, files = [], []
        with entries:
            for e in entries:
                (dirs if e.is_dir(follow_symlinks=followlinks) else files).append(e.name)
        if topdown:
            yield top, dirs, files
        for name in dirs:
            yield from self.walk(os.path.join(top, name), topdown, onerror, followlinks)
        if not topdown:
            yield top, dirs, files

    def chdir(self, path: PathLike) -> None:
        p = self.aio._abs(path)
        if not self.isdir(p):
            raise _oserror(E.ENOTDIR if self.exists(p) else E.ENOENT, path)
        self.aio.cwd = os.path.normpath(p)

    def getcwd(self) -> str:
        return os.fsdecode(self.aio.cwd)


def _sync(name: str):
    def call(self, *a, **kw):
        return self._run(getattr(self.aio, name)(*a, **kw))

    call.__name__ = name
    call.__qualname__ = f"Client.{name}"
    call.__doc__ = getattr(AsyncClient, name).__doc__
    return call


for _n in ("stat", "lstat", "getattr", "exists", "isdir", "isfile", "islink", "readdir", "listdir", "readlink",
           "statfs", "statvfs", "getxattr", "listxattr", "setxattr", "removexattr", "mkdir", "makedirs", "remove",
           "unlink", "rmdir", "rename", "replace", "link", "symlink", "chmod", "chown", "utime", "truncate"):
    setattr(Client, _n, _sync(_n))


class _ScandirIterator:
    def __init__(self, entries: list[ScandirEntry]) -> None:
        self._it = iter(entries)

    def __iter__(self):
        return self

    def __next__(self) -> ScandirEntry:
        return next(self._it)

    def close(self) -> None:
        self._it = iter(())

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------- finding a cluster
def _cluster_file(cluster, data) -> tuple[str, str | None]:
    """(what was asked for, the cluster file it names or None)."""
    if cluster is None and data is None:
        cluster = os.environ.get("DFS_CLUSTER") or None
    src = os.fspath(cluster) if cluster is not None else (data or DEFAULT_DATA)
    path = os.path.join(src, "cluster.toml") if os.path.isdir(src) else src
    return src, path if os.path.isfile(path) else None


def _addresses(mgmt) -> list[str]:
    return [a.strip() for a in (mgmt.split(",") if isinstance(mgmt, str) else mgmt) if a.strip()]


def find_cluster(cluster: str | os.PathLike | None = None, *, data: str | None = None,
                 mgmt: list[str] | str | None = None) -> list[str]:
    """The mgmt addresses to connect to, from (first that is given):
    ``mgmt`` (addresses, a list or comma-separated), ``cluster`` (a cluster file, a data
    folder holding cluster.toml, or comma-separated host:port addresses), ``data`` (a data
    folder), $DFS_MGMT, $DFS_CLUSTER, then the default folder of `dfs cluster up`.

    A client needs only the ``[[mgmt]]`` addresses, the client token and the TLS CA
    of a cluster file (``dfs.common.config.ClientConfig``): a client machine's copy
    may leave out ``raft_password`` and everything else."""
    from dfs.common.config import ClientConfig

    if mgmt:
        return _addresses(mgmt)
    if cluster is None and data is None and os.environ.get("DFS_MGMT"):
        return _addresses(os.environ["DFS_MGMT"])
    src, path = _cluster_file(cluster, data)
    if path is not None:
        return list(ClientConfig.load(path).mgmt)
    if cluster is not None and not os.path.exists(src) and ":" in src and "/" not in src:
        return _addresses(src)
    path = os.path.join(src, "cluster.toml") if os.path.isdir(src) else src
    raise FileNotFoundError(E.ENOENT, f"no dfs cluster found (no cluster file at {path}); start one with "
                                      f"`dfs cluster up` or pass mgmt=['host:port']", path)


def find_credentials(cluster: str | os.PathLike | None = None, *, data: str | None = None,
                     mgmt: list[str] | str | None = None, token: str | None = None,
                     token_file: str | None = None):
    """The ``dfs.rpc.auth.Credentials`` to show the cluster ``find_cluster`` finds.

    The client token: ``token``, else the file ``token_file``, else $DFS_TOKEN, else
    the file $DFS_TOKEN_FILE, else the cluster file's (``client_token`` or
    ``client_token_file``). TLS: the cluster file's ``[tls] ca``. Given addresses
    only (``mgmt``, $DFS_MGMT), the cluster file's part is what this process
    remembers for those addresses (``dfs.rpc.auth.known``), else nothing."""
    from dfs.common.config import ClientConfig
    from dfs.rpc import auth

    explicit = auth.client_token(token, token_file)
    path = None
    if not mgmt and not (cluster is None and data is None and os.environ.get("DFS_MGMT")):
        _, path = _cluster_file(cluster, data)
    if path is not None:
        return auth.Credentials.from_config(ClientConfig.load(path), explicit)
    base = auth.known(find_cluster(cluster, data=data, mgmt=mgmt))
    return base if explicit is None else dataclasses.replace(base, token=explicit)


async def aconnect(cluster: str | os.PathLike | None = None, **kw) -> AsyncClient:
    """The asyncio client; arguments as ``connect``."""
    return await AsyncClient.connect(cluster, **kw)


def connect(cluster: str | os.PathLike | None = None, *, data: str | None = None, mgmt: list[str] | str | None = None,
            uid: int | None = None, gid: int | None = None, groups: tuple[int, ...] | None = None,
            caller: Caller | None = None, mode: Mode | None = None, ttl: float = 1.0, umask: int = 0o022,
            deadline: float = 30.0, token: str | None = None, token_file: str | None = None) -> Client:
    """A synchronous ``Client`` of a cluster (see ``find_cluster`` for how it is found).

    ``uid``/``gid``/``groups`` (or ``caller``): the identity the service checks permissions
    against (default: this process's). ``mode``: the consistency mode (default
    ``StrictMode(ttl)``; ``ttl=0`` disables the caches). ``umask``: applied to created modes.
    ``token``/``token_file``: the client token, instead of $DFS_TOKEN or the cluster file's
    (see ``find_credentials``)."""
    kw = dict(data=data, mgmt=mgmt, uid=uid, gid=gid, groups=groups, caller=caller, mode=mode, ttl=ttl,
              umask=umask, deadline=deadline, token=token, token_file=token_file)
    find_cluster(cluster, data=data, mgmt=mgmt)  # fail fast, in the calling thread
    return Client(lambda: AsyncClient.connect(cluster, **kw))
