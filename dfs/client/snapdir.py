"""Snapshots through a path: ``PATH/.snap/NAME/...`` for the core, under both faces.

A snapshot object is an inode of the tree as snapshot ``S`` holds it; the
service addresses it as ``(S, ino)`` (a read with ``snap=S``), but the core's
open-file table, its mode's caches and the kernel key by one inode number. So
this layer sits under the ``Core`` in the ``MetaClient``'s place and gives
each ``(S, ino)`` a client-local id: ``SNAP_BIT`` (the top bit, which no
inode id has: ids carry their shard in the top 16 bits, and shards are far
fewer than 2**15) plus a table. ``(0, D)`` names the virtual directory
``D/.snap`` itself (epoch 0 is the live tree, which has no ``.snap`` of its
own). Both faces go through the same ``Core``, so they see the same ids.

* a LOOKUP of ``.snap`` (``snapdir``, a client option) in a directory answers
  the virtual directory without asking the service; it is not listed by
  readdir of the directory (the service never stored it);
* ``D/.snap`` lists the ready snapshots whose root is ``D`` (the cluster
  map's registry); each entry is ``D`` as that snapshot holds it;
* reads of a snapshot object go to the service with its epoch; what they
  answer never changes, so attributes and names are kept (bounded LRU)
  without expiry: an open in a snapshot sends nothing more than its walk;
* opens of a snapshot file register no server handle (its data never
  changes, nothing can delete it under the reader but a snapshot delete,
  after which reads answer ESTALE); the access check is done here, on the
  snapshot's mode bits, since the service is not asked;
* every change naming a snapshot object, or the name ``.snap``, answers EROFS
  before anything is sent.

``SnapChunks`` does the same for the chunk side: a read of a snapshot file's
chunk is a read of the real inode's chunk at the snapshot's epoch.

Imports: dfs.common and this package only.
"""

from __future__ import annotations

import dataclasses
import errno as E
import os
import stat as S
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from dfs.common import errors as err
from dfs.common.ids import name_hash
from dfs.common.records import Attr, Caller, DirEntry

__all__ = ["SNAP_BIT", "SNAPDIR", "SnapChunks", "SnapIds", "SnapMeta", "check_access", "is_snap", "readonly"]

SNAP_BIT = 1 << 63
SNAPDIR = b".snap"

# () -> {S: SnapshotInfo}: the registry as the cluster map has it (``fresh``: fetch it anew)
Registry = Callable[[bool], Awaitable[dict]]


def is_snap(ino: int) -> bool:
    return bool(ino & SNAP_BIT)


def readonly(what: str = "a snapshot is read-only") -> err.DfsError:
    return err.error_for(E.EROFS, what)


def check_access(a: Attr, caller: Caller | None, access: int) -> None:
    """The mode-bit check the service would do (``access``: os.R_OK | os.W_OK | os.X_OK; X on
    a directory: searching it)."""
    if not access or caller is None or caller.uid == 0:
        return
    if a.uid == caller.uid:
        bits = (a.mode >> 6) & 7
    elif caller.in_group(a.gid):
        bits = (a.mode >> 3) & 7
    else:
        bits = a.mode & 7
    need = (4 if access & os.R_OK else 0) | (2 if access & os.W_OK else 0) | (1 if access & os.X_OK else 0)
    if bits & need != need:
        raise err.PermissionDenied("permission denied")


class SnapIds:
    """(S, ino) <-> client-local ids. Ids are handed out once and kept for the client's life
    (a dict entry each): the kernel may hold any of them as long as it likes."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, int], int] = {}
        self._keys: list[tuple[int, int]] = [(0, 0)]  # local id 0 is no object

    def local(self, snap: int, ino: int) -> int:
        key = (snap, ino)
        i = self._ids.get(key)
        if i is None:
            i = self._ids[key] = SNAP_BIT | len(self._keys)
            self._keys.append(key)
        return i

    def real(self, local: int) -> tuple[int, int]:
        """(S, ino) of a local id (S = 0: the ``.snap`` directory of ``ino``); ESTALE if unknown."""
        n = local & ~SNAP_BIT
        if not local & SNAP_BIT or not 0 < n < len(self._keys):
            raise err.Stale(f"no snapshot object {local:#x}")
        return self._keys[n]

    def __len__(self) -> int:
        return len(self._keys) - 1


class _Lru(OrderedDict):
    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def put(self, k, v) -> None:
        self[k] = v
        self.move_to_end(k)
        if len(self) > self.cap:
            self.popitem(last=False)


class SnapMeta:
    """A MetaClient with snapshot addressing: what the core and its FileHandles talk to.

    ``inner``: the MetaClient (its reads take ``snap=``); ``registry``: the snapshot
    registry; ``snapdir``: the name of the virtual directory. Every method it does not
    define is the inner client's."""

    def __init__(self, inner, registry: Registry, *, snapdir: bytes | str = SNAPDIR, cache: int = 100_000) -> None:
        self.inner = inner
        self.registry = registry
        self.snapdir = os.fsencode(snapdir) if isinstance(snapdir, str) else snapdir
        if not self.snapdir or b"/" in self.snapdir or self.snapdir in (b".", b".."):
            raise err.InvalidArgument(f"bad snapshot directory name {self.snapdir!r}")
        self.ids = SnapIds()
        self._roots: set[int] = set()  # local ids of snapshot roots (NAME in .snap: may be deleted)
        self._attrs = _Lru(cache)  # (S, ino) -> Attr (real ids): a snapshot never changes
        self._entries = _Lru(cache)  # (S, parent, name) -> ino

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def immutable(self, ino: int) -> bool:
        """Whether what the kernel is told of ``ino`` (its attributes, its name) holds for ever:
        any snapshot object but a ``.snap`` directory (it lists what is created and deleted)
        and a snapshot's root (its name there goes when the snapshot is deleted)."""
        return bool(ino & SNAP_BIT) and ino not in self._roots and self.ids.real(ino)[0] != 0

    # ------------------------------------------------------------------ conversions
    def _out(self, snap: int, a: Attr) -> Attr:
        return dataclasses.replace(a, ino=self.ids.local(snap, a.ino))

    def _entry_out(self, snap: int, e: DirEntry) -> DirEntry:
        return dataclasses.replace(e, ino=self.ids.local(snap, e.ino),
                                   attr=None if e.attr is None else self._out(snap, e.attr))

    async def _snap_attr(self, snap: int, ino: int, caller: Caller | None) -> Attr:
        a = self._attrs.get((snap, ino))
        if a is None:
            a = await self.inner.getattr(ino, caller=caller, snap=snap)
            self._attrs.put((snap, ino), a)
        return a

    async def _snapdir_attr(self, d: int, caller: Caller | None) -> Attr:
        """``d/.snap``: read-only, owned as ``d`` is, its times ``d``'s."""
        a = await self.inner.getattr(d, caller=caller)
        if not a.is_dir():
            raise err.NotFound(f"{self.snapdir.decode(errors='replace')}: not a directory")
        mode = S.S_IFDIR | (a.mode & 0o555)
        return dataclasses.replace(a, ino=self.ids.local(0, d), mode=mode, nlink=2, size=0, layout=0, flags=0)

    async def _snapshots_of(self, d: int, fresh: bool) -> dict[bytes, int]:
        """name -> S of the ready snapshots rooted at ``d``."""
        reg = await self.registry(fresh)
        return {os.fsencode(i.name): s for s, i in reg.items() if i.root == d and i.state == "ready"}

    async def _snapshot_named(self, d: int, name: bytes) -> int:
        snaps = await self._snapshots_of(d, False)
        if name not in snaps:
            snaps = await self._snapshots_of(d, True)  # made since the map was fetched?
        s = snaps.get(name)
        if s is None:
            raise err.NotFound(f"no snapshot {name.decode(errors='replace')!r}")
        return s

    # ------------------------------------------------------------------ reads
    async def lookup(self, parent: int, name: str | bytes, *, caller: Caller | None = None) -> Attr:
        name = os.fsencode(name)
        if not parent & SNAP_BIT:
            if name == self.snapdir:
                return await self._snapdir_attr(parent, caller)
            return await self.inner.lookup(parent, name, caller=caller)
        snap, d = self.ids.real(parent)
        if snap == 0:
            s = await self._snapshot_named(d, name)
            a = self._out(s, await self._snap_attr(s, d, caller))
            self._roots.add(a.ino)
            return a
        ino = self._entries.get((snap, d, name))
        if ino is not None:
            a = self._attrs.get((snap, ino))
            if a is not None:
                return self._out(snap, a)
        a = await self.inner.lookup(d, name, caller=caller, snap=snap)
        self._entries.put((snap, d, name), a.ino)
        self._attrs.put((snap, a.ino), a)
        return self._out(snap, a)

    async def getattr(self, ino: int, *, caller: Caller | None = None) -> Attr:
        if not ino & SNAP_BIT:
            return await self.inner.getattr(ino, caller=caller)
        snap, d = self.ids.real(ino)
        if snap == 0:
            return await self._snapdir_attr(d, caller)
        return self._out(snap, await self._snap_attr(snap, d, caller))

    async def getattrs(self, inos: list[int], *, caller: Caller | None = None) -> dict:
        live = [i for i in inos if not i & SNAP_BIT]
        out = await self.inner.getattrs(live, caller=caller) if live else {}
        for i in inos:
            if i & SNAP_BIT:
                try:
                    out[i] = await self.getattr(i, caller=caller)
                except err.DfsError as e:
                    out[i] = e
        return out

    async def readdir(self, ino: int, cookie: int = 0, limit: int = 1000, *, plus: bool = True,
                      caller: Caller | None = None) -> tuple[list[DirEntry], bool]:
        if not ino & SNAP_BIT:
            return await self.inner.readdir(ino, cookie, limit, plus=plus, caller=caller)
        snap, d = self.ids.real(ino)
        if snap == 0:
            return await self._list_snapshots(d, cookie, limit, plus, caller)
        entries, eof = await self.inner.readdir(d, cookie, limit, plus=plus, caller=caller, snap=snap)
        for e in entries:
            if e.attr is not None:
                self._entries.put((snap, d, e.name), e.ino)
                self._attrs.put((snap, e.ino), e.attr)
        return [self._entry_out(snap, e) for e in entries], eof

    async def _list_snapshots(self, d: int, cookie: int, limit: int, plus: bool,
                              caller: Caller | None) -> tuple[list[DirEntry], bool]:
        """``d/.snap``: one entry per ready snapshot of ``d``, in the service's readdir order
        (name hash; the cookie resumes after an entry)."""
        if cookie == 0:
            await self._snapdir_attr(d, caller)  # d must (still) be a directory
        snaps = await self._snapshots_of(d, cookie == 0)
        rows = sorted((name_hash(n) + 1, n, s) for n, s in snaps.items())
        rows = [r for r in rows if r[0] > cookie]
        page = rows[:limit]
        out = []
        for c, n, s in page:
            try:
                a = self._out(s, await self._snap_attr(s, d, caller)) if plus else None
            except err.Stale:
                continue  # deleted meanwhile
            i = self.ids.local(s, d)
            self._roots.add(i)
            out.append(DirEntry(n, i, S.S_IFDIR, c, a))
        return out, len(page) == len(rows)

    async def readlink(self, ino: int, *, caller: Caller | None = None) -> bytes:
        if not ino & SNAP_BIT:
            return await self.inner.readlink(ino, caller=caller)
        snap, d = self._object(ino)
        return await self.inner.readlink(d, caller=caller, snap=snap)

    async def getxattr(self, ino: int, name: str | bytes, *, caller: Caller | None = None) -> bytes:
        if not ino & SNAP_BIT:
            return await self.inner.getxattr(ino, name, caller=caller)
        snap, d = self.ids.real(ino)
        if snap == 0:
            raise err.NoData("no such attribute")
        return await self.inner.getxattr(d, name, caller=caller, snap=snap)

    async def listxattr(self, ino: int, *, caller: Caller | None = None) -> list[bytes]:
        if not ino & SNAP_BIT:
            return await self.inner.listxattr(ino, caller=caller)
        snap, d = self.ids.real(ino)
        if snap == 0:
            return []
        return await self.inner.listxattr(d, caller=caller, snap=snap)

    async def read_inline(self, ino: int, *, caller: Caller | None = None) -> tuple[bytes, int]:
        if not ino & SNAP_BIT:
            return await self.inner.read_inline(ino, caller=caller)
        snap, d = self._object(ino)
        return await self.inner.read_inline(d, caller=caller, snap=snap)

    def _object(self, ino: int) -> tuple[int, int]:
        snap, d = self.ids.real(ino)
        if snap == 0:
            raise err.IsADirectory("a snapshot directory")
        return snap, d

    # ------------------------------------------------------------------ opens
    async def open_read(self, ino: int, lease_s: float = 0, *, access: int = 0, handle: bytes | None = None,
                        caller: Caller | None = None, inline: bool = False):
        if not ino & SNAP_BIT:
            return await self.inner.open_read(ino, lease_s, access=access, handle=handle, caller=caller,
                                              inline=inline)
        a = await self.getattr(ino, caller=caller)
        check_access(a, caller or self.inner.caller, access)
        return (a, None, True, None) if inline else (a, None, True)  # no server handle: the data never changes

    async def open_file(self, ino: int, lease_s: float = 0, *, access: int = 0, handle: bytes | None = None,
                        caller: Caller | None = None):
        if ino & SNAP_BIT:
            raise readonly()
        return await self.inner.open_file(ino, lease_s, access=access, handle=handle, caller=caller)

    async def lookup_open(self, parent: int, name: str | bytes, lease_s: float = 0, *, access: int = 0,
                          caller: Caller | None = None, inline: bool = False):
        name = os.fsencode(name)
        if parent & SNAP_BIT or name == self.snapdir:
            a = await self.lookup(parent, name, caller=caller)
            if a.is_reg():
                check_access(a, caller or self.inner.caller, access)
            return (a, None, True, None) if inline else (a, None, True)  # the core then opens it by inode
        return await self.inner.lookup_open(parent, name, lease_s, access=access, caller=caller, inline=inline)

    # ------------------------------------------------------------------ changes: none in a snapshot
    def _refuse(self, *inos: int, names: tuple[bytes, ...] = ()) -> None:
        if any(i & SNAP_BIT for i in inos) or any(os.fsencode(n) == self.snapdir for n in names):
            raise readonly()

    async def create(self, parent, name, *a, **kw):
        self._refuse(parent, names=(name,))
        return await self.inner.create(parent, name, *a, **kw)

    async def create_open(self, parent, name, *a, **kw):
        self._refuse(parent, names=(name,))
        return await self.inner.create_open(parent, name, *a, **kw)

    async def mknod(self, parent, name, *a, **kw):
        self._refuse(parent, names=(name,))
        return await self.inner.mknod(parent, name, *a, **kw)

    async def symlink(self, parent, name, *a, **kw):
        self._refuse(parent, names=(name,))
        return await self.inner.symlink(parent, name, *a, **kw)

    async def mkdir(self, parent, name, *a, **kw):
        self._refuse(parent, names=(name,))
        return await self.inner.mkdir(parent, name, *a, **kw)

    async def unlink(self, parent, name, *a, **kw):
        self._refuse(parent, names=(name,))
        return await self.inner.unlink(parent, name, *a, **kw)

    async def rmdir(self, parent, name, *a, **kw):
        self._refuse(parent, names=(name,))
        return await self.inner.rmdir(parent, name, *a, **kw)

    async def rename(self, sparent, sname, dparent, dname, *a, **kw):
        self._refuse(sparent, dparent, names=(sname, dname))
        return await self.inner.rename(sparent, sname, dparent, dname, *a, **kw)

    async def link(self, ino, parent, name, *a, **kw):
        self._refuse(ino, parent, names=(name,))
        return await self.inner.link(ino, parent, name, *a, **kw)

    async def setattr(self, ino, *a, **kw):
        self._refuse(ino)
        return await self.inner.setattr(ino, *a, **kw)

    async def extend(self, ino, *a, **kw):
        self._refuse(ino)
        return await self.inner.extend(ino, *a, **kw)

    async def write_inline(self, ino, *a, **kw):
        self._refuse(ino)
        return await self.inner.write_inline(ino, *a, **kw)

    async def migrate_inline(self, ino, *a, **kw):
        self._refuse(ino)
        return await self.inner.migrate_inline(ino, *a, **kw)

    async def setxattr(self, ino, *a, **kw):
        self._refuse(ino)
        return await self.inner.setxattr(ino, *a, **kw)

    async def removexattr(self, ino, *a, **kw):
        self._refuse(ino)
        return await self.inner.removexattr(ino, *a, **kw)

    async def setlayout(self, ino, *a, **kw):
        self._refuse(ino)
        return await self.inner.setlayout(ino, *a, **kw)


class SnapChunks:
    """The chunk side under snapshot addressing: a snapshot file's chunks are its real
    inode's at the snapshot's epoch; nothing of a snapshot is written."""

    def __init__(self, inner, ids: SnapIds) -> None:
        self.inner = inner
        self.ids = ids

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _at(self, ino: int) -> tuple[int, int]:
        snap, real = self.ids.real(ino)
        if snap == 0:
            raise err.IsADirectory("a snapshot directory")
        return snap, real

    async def read(self, ino, index, offset, length, layout):
        if not ino & SNAP_BIT:
            return await self.inner.read(ino, index, offset, length, layout)
        snap, real = self._at(ino)
        return await self.inner.read(real, index, offset, length, layout, at=snap)

    async def read_into(self, ino, index, offset, buf, layout):
        if not ino & SNAP_BIT:
            rd = getattr(self.inner, "read_into", None)
            if rd is not None:
                return await rd(ino, index, offset, buf, layout)
            got = await self.inner.read(ino, index, offset, len(buf), layout)
            buf[:len(got)] = got
            return len(got)
        snap, real = self._at(ino)
        rd = getattr(self.inner, "read_into", None)
        if rd is not None:
            return await rd(real, index, offset, buf, layout, at=snap)
        got = await self.inner.read(real, index, offset, len(buf), layout, at=snap)
        buf[:len(got)] = got
        return len(got)

    async def read_versioned(self, ino, index, offset, length, layout, ver):
        if ino & SNAP_BIT:  # cached by its snapshot's key instead
            return await self.read(ino, index, offset, length, layout)
        return await self.inner.read_versioned(ino, index, offset, length, layout, ver)

    async def read_versioned_into(self, ino, index, offset, buf, layout, ver):
        if ino & SNAP_BIT:
            return await self.read_into(ino, index, offset, buf, layout)
        return await self.inner.read_versioned_into(ino, index, offset, buf, layout, ver)

    async def write(self, ino, index, offset, data, layout):
        if ino & SNAP_BIT:
            raise readonly()
        return await self.inner.write(ino, index, offset, data, layout)

    async def truncate(self, ino, index, length, layout):
        if ino & SNAP_BIT:
            raise readonly()
        return await self.inner.truncate(ino, index, length, layout)
