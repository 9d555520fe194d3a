"""Consistency modes: the one place the client's consistency policy lives.

The inode-level core (dfs/client/core.py) consults its ``Mode`` at every
request, so that a mode is one module that reaches the FUSE mount and the
library at once. The hooks, grouped by what they decide (the table of which
request asks what is in docs/design/client.md, "Mode hooks"):

(a) metadata reads, asked *before* the core sends one: ``entry``, ``attr``,
    ``walk_attr``, ``link_target``, ``listing``, ``xattr``, ``xattr_names``,
    ``statfs``. Each returns the answer, None ("ask the service"), or raises a
    ``DfsError`` that is the answer (e.g. ENOENT for a name known missing).
    Told *after* the service answered: ``remember``, ``remember_attr``,
    ``remember_link``, ``listed``, ``forget_entry`` (a lookup found nothing).
(b) mutations: ``mutate(m, send)`` wraps every namespace change; it may
    refuse (raise, e.g. EROFS, before anything is sent), take it over (return
    a result without calling ``send``) or send it and learn from the reply.
(c) open and close: ``open_plan`` (asked before: revalidate? server handle?
    does its close wait for the data? may raise), ``wrote`` (told after a file's
    data and size were published), ``check_close`` (asked at each close of a
    file: may report an error).
(d) data: ``file_io`` gives the metadata and chunk sides every FileHandle of
    the core uses (a write-back mode or a cache wraps them).
(e) barriers: ``barrier(ino)`` after fsync of a file or directory, syncfs /
    ``Client.sync()``, unmount and client close; it returns once everything
    before it is on the service.
(f) the kernel: ``kernel_cache`` (entry/attribute/negative timeouts of the
    mount) and ``keep_cache`` (may an open keep the file's cached pages).
(g) life cycle: ``bind`` (the core it serves), ``close``.

A write-back mode (lazy, dfs/client/lazy.py) also answers from its own
unflushed changes where the service cannot yet: ``own`` and ``own_attr`` are
asked before every lookup and getattr, fresh ones too, and ``merge`` adds its
own entries to a listing page the service returned.

``Mode`` itself caches nothing: every read goes to the service, every change
is sent at once. ``StrictMode`` is the default (and, today, the only other).

Imports: dfs.common and this package only.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dfs.common.records import Attr, Caller, DirEntry, StatFs

T = TypeVar("T")

__all__ = ["Change", "KernelCache", "Mode", "Mutation", "OpenPlan", "StrictMode"]


class Change(enum.StrEnum):
    """The kinds of namespace change the core hands to ``Mode.mutate``, and what ``send``
    returns for each (MetaClient's reply)."""

    CREATE = "create"        # (Attr, created, server handle | None, the parent's Attr after it)
    MKNOD = "mknod"          # Attr of the new node
    MKDIR = "mkdir"          # Attr of the new directory
    SYMLINK = "symlink"      # Attr of the new symlink
    LINK = "link"            # Attr of the linked inode (nlink + 1)
    UNLINK = "unlink"        # None
    RMDIR = "rmdir"          # None
    RENAME = "rename"        # None
    SETATTR = "setattr"      # Attr after it
    TRUNCATE = "truncate"    # Attr after it (size changes go through a file handle: chunks are cut too)
    SETXATTR = "setxattr"    # None
    REMOVEXATTR = "removexattr"  # None


@dataclass(frozen=True, slots=True)
class Mutation:
    """One namespace change this client is about to make.

    ``parent``/``name``: the entry it adds, removes or replaces (0/b"" for
    inode-only changes); ``new_parent``/``new_name``: the second entry of a
    rename; ``inos``: the inodes it changes that the core knows of (a mode may
    know more from its own entries); ``args``: the request's own arguments
    (mode bits, umask, target, flags, setattr fields, ...)."""

    op: Change
    caller: Caller | None = None
    parent: int = 0
    name: bytes = b""
    new_parent: int = 0
    new_name: bytes = b""
    inos: tuple[int, ...] = ()
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OpenPlan:
    """What an open does, and its close. ``revalidate``: fetch the attributes from the
    service, never from a cache (close-to-open). ``server_handle``: register an open
    handle with the service, which keeps a file unlinked while open alive for this
    client. ``close_waits``: a close (FUSE FLUSH and RELEASE, the library's close) waits
    until the file's data, size and mtime are on the service; False: the core sends them
    in the background, the next barrier (fsync, syncfs / Client.sync(), unmount, client
    close) waits for them, and their error is raised there and at the file's next close."""

    revalidate: bool = True
    server_handle: bool = True
    close_waits: bool = True


@dataclass(frozen=True, slots=True)
class KernelCache:
    """How long the kernel may keep what the mount tells it (seconds): names, attributes,
    and "no such name". Fixed for the mount's life."""

    entry_timeout: float = 1.0
    attr_timeout: float = 1.0
    negative_timeout: float = 1.0


# A file's version as an open saw it, for keep_cache: (size, mtime ns, ctime ns).
Version = tuple[int, int, int]


class Mode:
    """A consistency policy that caches nothing (every read asks the service).

    Subclasses override the hooks they need; each hook's doc says when the core
    calls it. Sync hooks must not block; async ones may wait (``mutate``,
    ``check_close``, ``barrier``)."""

    name = "uncached"
    revalidate_on_open = True
    # the namespace never changes under this mode (a snapshot): a path walked once is walked
    immutable = False
    # check_walk checks permissions on the client (the service never sees the walk's lookups):
    # a walk then needs every directory's attributes as fresh as the mode keeps them
    checks_walks = False

    # ------------------------------------------------------------ (a) metadata reads
    def entry(self, parent: int, name: bytes) -> int | None:
        """Before a LOOKUP: the inode ``name`` in ``parent`` is known to be."""
        return None

    def attr(self, ino: int) -> Attr | None:
        """Before a GETATTR (and after ``entry`` answered a lookup): known attributes."""
        return None

    def walk_attr(self, ino: int) -> Attr | None:
        """Attributes good enough to walk through ``ino`` as a directory of a path (its
        type and number, which never change): may be older than ``attr`` allows."""
        return self.attr(ino)

    def link_target(self, ino: int) -> bytes | None:
        """Before a READLINK."""
        return None

    def listing(self, ino: int, cookie: int, limit: int, plus: bool) -> tuple[list[DirEntry], bool] | None:
        """Before a READDIR page: (entries after ``cookie``, last page?)."""
        return None

    def xattr(self, ino: int, name: bytes) -> bytes | None:
        """Before a GETXATTR."""
        return None

    def xattr_names(self, ino: int) -> list[bytes] | None:
        """Before a LISTXATTR."""
        return None

    def statfs(self) -> StatFs | None:
        """Before a STATFS."""
        return None

    def own(self, parent: int, name: bytes) -> Attr | None:
        """Before any lookup, fresh ones too: what ``name`` in ``parent`` is by this client's own
        changes the service may not have yet (a write-back mode), else None; raises NotFound
        for a name this client removed."""
        return None

    def own_attr(self, ino: int) -> Attr | None:
        """Before any GETATTR, fresh ones too: ``ino``'s attributes by this client's own changes
        the service may not have yet (a write-back mode), else None."""
        return None

    def merge(self, ino: int, cookie: int, entries: list[DirEntry], eof: bool) -> tuple[list[DirEntry], bool]:
        """After a READDIR page of ``ino`` (after ``cookie``): the page as this client sees it
        (a write-back mode adds and removes the entries of its own changes)."""
        return entries, eof

    def remember(self, parent: int, name: bytes, attr: Attr) -> None:
        """After a lookup (or a change) found ``name`` in ``parent`` to be ``attr``."""

    def remember_attr(self, attr: Attr) -> None:
        """After a GETATTR or an open fetched ``attr``."""

    def remember_link(self, ino: int, target: bytes) -> None:
        """After a READLINK."""

    def listed(self, ino: int, entries: list[DirEntry]) -> None:
        """After a READDIR page of directory ``ino``."""

    def forget_entry(self, parent: int, name: bytes) -> None:
        """After a lookup found nothing (and whenever a name's entry is known stale)."""

    def forget_attr(self, ino: int) -> None:
        """Whenever ``ino``'s known attributes are stale."""

    def clear(self) -> None:
        """Forget everything remembered."""

    # ------------------------------------------------------------ (b) mutations
    async def mutate(self, m: Mutation, send: Callable[[], Awaitable[T]]) -> T:
        """Around every namespace change: ``send()`` sends it to the service and returns its
        reply (see ``Change`` for each kind's). Raise to refuse it before anything is sent;
        return a result without calling ``send`` to take it over."""
        return await send()

    # ------------------------------------------------------------ (c) open and close
    def open_plan(self, ino: int | None, flags: int) -> OpenPlan:
        """Before an open of ``ino`` (None: by name, LOOKUPOPEN or CREATE) with os.O_* ``flags``.
        May raise (e.g. EROFS for a write open of a read-only view)."""
        return OpenPlan(revalidate=self.revalidate_on_open)

    def check_walk(self, dir_attr: Attr, caller: Caller | None) -> None:
        """A path walk is about to look a name up in directory ``dir_attr`` on ``caller``'s
        behalf: raise if it may not search it, where the service never sees the lookup. The
        default checks nothing (the service checks its lookups)."""

    def check_list(self, dir_attr: Attr, caller: Caller | None) -> None:
        """A listing of directory ``dir_attr`` for ``caller`` (as ``check_walk``: read)."""

    def check_open(self, attr: Attr, access: int, caller: Caller | None) -> None:
        """An open without a server handle (``OpenPlan.server_handle`` False), which the
        service never sees: raise if ``caller`` may not have ``access`` (os.R_OK | os.W_OK,
        0: the kernel checked). The default checks nothing (the mode's own files)."""

    def wrote(self, ino: int) -> None:
        """After a flush, fsync or close published a file's data, size and mtime."""
        self.forget_attr(ino)

    async def check_close(self, ino: int) -> None:
        """At each close of a file, after its flush: raise to report an error of it."""

    # ------------------------------------------------------------ (d) data
    def file_io(self, meta: Any, data: Any) -> tuple[Any, Any]:
        """The metadata side (``SizeSink``) and chunk side (``ChunkIO``) of a new FileHandle."""
        return meta, data

    # ------------------------------------------------------------ (e) barriers
    async def barrier(self, ino: int | None = None) -> None:
        """After fsync (``ino``: the file or directory), syncfs / Client.sync(), unmount and
        client close (None): return once every change before it is on the service."""

    # ------------------------------------------------------------ (f) the kernel
    def kernel_cache(self) -> KernelCache:
        """The mount's kernel cache timeouts."""
        return KernelCache()

    # ------------------------------------------------------------ (g) life cycle
    def bind(self, core: Any) -> None:
        """The core this mode serves (its MetaClient, ChunkIO, open files); called once, by it."""

    async def close(self) -> None:
        """At client close and unmount, after the last barrier: stop background work."""

    def keep_cache(self, before: Version | None, now: Version, changing: bool) -> bool:
        """At an open through the mount: may the kernel keep the file's cached pages? ``before``:
        the file's version when an earlier open let the kernel fill them (None: never);
        ``now``: its version at this open; ``changing``: this open or this client changes
        it (truncation, unflushed writes, the kernel's writeback cache)."""
        return False


class StrictMode(Mode):
    """Close-to-open consistency with TTL-bounded caches.

    * a name -> inode entry and an inode's attributes are reused for at most
      ``entry_ttl`` / ``attr_ttl`` seconds after they were fetched (0: never
      cached); another client's change is seen at the latest after that;
    * this client's own mutations drop (or replace) the entries and attributes
      they change, so it always sees its own writes;
    * ``open`` looks the last component up and fetches the attributes afresh,
      and ``close`` (and ``flush``/``fsync``) publishes the size: a file opened
      after another client closed it shows all of that client's writes;
    * symlink targets are cached without TTL (a symlink never changes).

    ``kernel`` (the mount): the kernel is the cache, for the timeouts given; the
    core then caches nothing itself (``ttl=0``, see ``for_mount``) except the
    attributes a reply of this client's own change carried (CREATE answers its
    directory's), kept for the kernel's next GETATTR of that inode, once, within
    the attribute timeout (the kernel drops a directory's attributes whenever an
    entry is created in it, and asks again at its next permission check there).
    """

    name = "strict"

    def __init__(self, ttl: float = 1.0, *, entry_ttl: float | None = None, max_entries: int = 100_000,
                 kernel: KernelCache | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # seconds, monotonic (tests give a fake one)
        self.attr_ttl = float(ttl)
        self.entry_ttl = float(ttl if entry_ttl is None else entry_ttl)
        self.max_entries = max_entries
        self.kernel = kernel
        self._entries: OrderedDict[tuple[int, bytes], tuple[float, int]] = OrderedDict()
        self._attrs: OrderedDict[int, tuple[float, Attr]] = OrderedDict()
        # directories whose attributes this client's own change made stale (their mtime):
        # still fine for walking paths through them until they would have expired
        self._walk: OrderedDict[int, tuple[float, Attr]] = OrderedDict()
        self._links: OrderedDict[int, bytes] = OrderedDict()
        self._once: dict[int, tuple[float, Attr]] = {}  # replies kept for one kernel GETATTR

    @classmethod
    def for_mount(cls, entry_timeout: float = 1.0, attr_timeout: float = 1.0,
                  negative_timeout: float = 1.0) -> StrictMode:
        """Strict mode under the FUSE mount: the kernel caches, for these timeouts."""
        return cls(0, kernel=KernelCache(entry_timeout, attr_timeout, negative_timeout))

    def _put(self, d: OrderedDict, key, value, ttl: float) -> None:
        if ttl <= 0:
            return
        d[key] = (self.clock() + ttl, value)
        d.move_to_end(key)
        while len(d) > self.max_entries:
            d.popitem(last=False)

    def _get(self, d: OrderedDict, key):
        v = d.get(key)
        if v is None:
            return None
        if v[0] < self.clock():
            del d[key]
            return None
        return v[1]

    # ------------------------------------------------------------ (a)
    def entry(self, parent, name):
        return self._get(self._entries, (parent, name))

    def attr(self, ino):
        a = self._get(self._attrs, ino)
        if a is None and self._once:
            v = self._once.pop(ino, None)
            if v is not None and v[0] > self.clock():
                return v[1]
        return a

    def walk_attr(self, ino):
        a = self._get(self._attrs, ino)
        return a if a is not None else self._get(self._walk, ino)

    def link_target(self, ino):
        return self._links.get(ino)

    def remember(self, parent, name, attr):
        self._put(self._entries, (parent, name), attr.ino, self.entry_ttl)
        self._put(self._attrs, attr.ino, attr, self.attr_ttl)

    def remember_attr(self, attr):
        self._put(self._attrs, attr.ino, attr, self.attr_ttl)

    def remember_link(self, ino, target):
        self._links[ino] = target
        if len(self._links) > 10_000:
            self._links.popitem(last=False)

    def listed(self, ino, entries):
        if self.entry_ttl <= 0 and self.attr_ttl <= 0:
            return
        for e in entries:
            if e.attr is not None:
                self.remember(ino, e.name, e.attr)

    def forget_entry(self, parent, name):
        self._entries.pop((parent, name), None)

    def forget_attr(self, ino):
        self._once.pop(ino, None)
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
        self._links.clear()
        self._once.clear()

    def _reply(self, attr: Attr) -> None:
        """Attributes a reply of this client's own change carried (CREATE's directory)."""
        if self.attr_ttl > 0:
            self.remember_attr(attr)
        elif self.kernel is not None and self.kernel.attr_timeout > 0:
            old = self._once.get(attr.ino)
            if old is None or old[1].ctime_ns <= attr.ctime_ns:  # replies may arrive out of order
                self._once[attr.ino] = (self.clock() + self.kernel.attr_timeout, attr)

    # ------------------------------------------------------------ (b)
    async def mutate(self, m, send):
        inos = set(m.inos)
        for parent, name in ((m.parent, m.name), (m.new_parent, m.new_name)):
            if parent and name:
                i = self._get(self._entries, (parent, name))
                if i is not None:
                    inos.add(i)
        self._drop(m, inos)
        try:
            r = await send()
        finally:
            self._drop(m, inos)  # whatever happened, the old view may be wrong now
        op = m.op
        if op is Change.CREATE:
            attr, created, _handle, pattr = r
            if created:
                self._reply(pattr)
            self.remember(m.parent, m.name, attr)
        elif op in (Change.MKDIR, Change.MKNOD, Change.SYMLINK, Change.LINK):
            self.remember(m.parent, m.name, r)
        elif op is Change.SETATTR:
            self.remember_attr(r)
        return r

    def _drop(self, m: Mutation, inos: set[int]) -> None:
        for parent, name in ((m.parent, m.name), (m.new_parent, m.new_name)):
            if parent:
                self.forget_attr(parent)  # its mtime (and nlink) move
                if name:
                    self.forget_entry(parent, name)
        for i in inos:
            self.forget_attr(i)

    # ------------------------------------------------------------ (f)
    def kernel_cache(self):
        return self.kernel if self.kernel is not None else KernelCache()

    def keep_cache(self, before, now, changing):
        # The pages belong to the version an earlier open saw: size, mtime *and* ctime
        # (a writer may set mtime back, as rsync and tar do; every change moves ctime).
        return before == now and not changing
