"""An in-process stand-in for the service's snapshot reads, for the client's unit tests.

``FrozenMeta`` is a ``MetaClient`` whose reads take ``snap=`` as the real one's
do: ``snapshot_create`` walks the live tree once and keeps a frozen copy
(attributes, entries in the service's readdir order, symlink targets, xattrs,
inline bytes); a read at ``S`` answers from that copy, ESTALE for a snapshot
not live. ``FrozenChunks`` does the same for the chunk side (``read(...,
at=S)``). The registry is theirs (``registry(fresh)``, what the cluster map's
``snapshots`` would say). This is not the service's implementation (versioned
keys, dfs/kv/versioned.py): it only gives the same answers, so that the
client's addressing, snapshot mode and the manifest can be tested in process.

Imports: dfs.common and dfs.client only.
"""

from __future__ import annotations

import copy
import errno as E
import os
import time

from dfs.client.file import MemoryChunks
from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.clustermap import SnapshotInfo
from dfs.common.limits import NAME_MAX
from dfs.common.records import FLAG_INLINE, Attr, DirEntry

__all__ = ["FrozenChunks", "FrozenMeta"]


class _Tree:
    def __init__(self) -> None:
        self.attrs: dict[int, Attr] = {}
        self.entries: dict[int, list[DirEntry]] = {}
        self.links: dict[int, bytes] = {}
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.inline: dict[int, tuple[bytes, int]] = {}


class FrozenMeta(MetaClient):
    """A MetaClient (over any transport, e.g. the LocalEngine) with snapshot reads."""

    def __init__(self, transport, caller=None, chunks: FrozenChunks | None = None) -> None:
        if caller is None:
            super().__init__(transport)
        else:
            super().__init__(transport, caller)
        self.chunks = chunks
        self.snaps: dict[int, SnapshotInfo] = {}
        self.trees: dict[int, _Tree] = {}
        self.next_snap = 2
        self.snap_requests = 0  # reads at a snapshot answered

    async def registry(self, fresh: bool = False) -> dict[int, SnapshotInfo]:
        return dict(self.snaps)

    # ------------------------------------------------------------------ the registry
    async def snapshot_create(self, root_ino: int, name: str, path: str = "") -> int:
        b = os.fsencode(name)
        if not b or b"/" in b or b"\0" in b or b in (b".", b"..") or len(b) > NAME_MAX:
            raise err.InvalidArgument(f"bad snapshot name {name!r}")
        a = await super().getattr(root_ino)
        if not a.is_dir():
            raise err.NotADirectory("a snapshot is of a directory")
        if any(i.root == root_ino and i.name == name for i in self.snaps.values()):
            raise err.Exists(f"snapshot {name!r} exists")
        s = self.next_snap
        self.next_snap += 1
        tree = _Tree()
        await self._freeze(root_ino, tree)
        self.trees[s] = tree
        self.snaps[s] = SnapshotInfo(s, name, root_ino, path, "ready", time.time_ns())
        if self.chunks is not None:
            self.chunks.freeze(s)
        return s

    async def snapshot_delete(self, root_ino: int, name: str) -> None:
        for s, i in list(self.snaps.items()):
            if i.root == root_ino and i.name == name:
                del self.snaps[s]
                del self.trees[s]
                if self.chunks is not None:
                    self.chunks.frozen.pop(s, None)
                return
        raise err.NotFound(f"no snapshot {name!r}")

    async def _freeze(self, ino: int, tree: _Tree) -> None:
        a = await super().getattr(ino)
        tree.attrs[ino] = a
        names = await super().listxattr(ino)
        live = super()
        tree.xattrs[ino] = {}
        for n in names:
            tree.xattrs[ino][n] = await live.getxattr(ino, n)
        if a.is_lnk():
            tree.links[ino] = await super().readlink(ino)
        elif a.is_reg() and a.flags & FLAG_INLINE:
            tree.inline[ino] = await super().read_inline(ino)
        elif a.is_dir():
            out: list[DirEntry] = []
            cookie = 0
            while True:
                page, eof = await super().readdir(ino, cookie, 1000, plus=True)
                out.extend(page)
                if eof or not page:
                    break
                cookie = page[-1].cookie
            tree.entries[ino] = out
            for e in out:
                if e.ino not in tree.attrs:
                    await self._freeze(e.ino, tree)

    def _tree(self, snap: int) -> _Tree:
        t = self.trees.get(snap)
        if t is None:
            raise err.Stale(f"snapshot {snap} is not live")
        self.snap_requests += 1
        return t

    def _attr(self, t: _Tree, ino: int) -> Attr:
        a = t.attrs.get(ino)
        if a is None:
            raise err.NotFound("no such inode in the snapshot")
        return a

    # ------------------------------------------------------------------ reads at a snapshot
    async def lookup(self, parent, name, *, caller=None, snap: int = 0):
        if not snap:
            return await super().lookup(parent, name, caller=caller)
        t = self._tree(snap)
        self._attr(t, parent)
        if parent not in t.entries:
            raise err.NotADirectory()
        for e in t.entries[parent]:
            if e.name == os.fsencode(name):
                return t.attrs[e.ino]
        raise err.NotFound()

    async def getattr(self, ino, *, caller=None, snap: int = 0):
        if not snap:
            return await super().getattr(ino, caller=caller)
        return self._attr(self._tree(snap), ino)

    async def getattrs(self, inos, *, caller=None, snap: int = 0):
        if not snap:
            return await super().getattrs(inos, caller=caller)
        t = self._tree(snap)
        return {i: t.attrs.get(i, err.NotFound()) for i in inos}

    async def readdir(self, ino, cookie=0, limit=1000, *, plus=True, caller=None, snap: int = 0):
        if not snap:
            return await super().readdir(ino, cookie, limit, plus=plus, caller=caller)
        t = self._tree(snap)
        self._attr(t, ino)
        if ino not in t.entries:
            raise err.NotADirectory()
        rest = [e for e in t.entries[ino] if e.cookie > cookie]
        page = rest[:limit]
        if not plus:
            page = [DirEntry(e.name, e.ino, e.type, e.cookie, None) for e in page]
        return page, len(page) == len(rest)

    async def iterdir(self, ino, *, plus=True, page=1000, caller=None, snap: int = 0):
        cookie = 0
        while True:
            entries, eof = await self.readdir(ino, cookie, page, plus=plus, caller=caller, snap=snap)
            for e in entries:
                yield e
            if eof or not entries:
                return
            cookie = entries[-1].cookie

    async def listdir(self, ino, *, plus=False, caller=None, snap: int = 0):
        return [e async for e in self.iterdir(ino, plus=plus, caller=caller, snap=snap)]

    async def readlink(self, ino, *, caller=None, snap: int = 0):
        if not snap:
            return await super().readlink(ino, caller=caller)
        t = self._tree(snap)
        if ino not in t.links:
            raise err.InvalidArgument("not a symlink")
        return t.links[ino]

    async def getxattr(self, ino, name, *, caller=None, snap: int = 0):
        if not snap:
            return await super().getxattr(ino, name, caller=caller)
        t = self._tree(snap)
        self._attr(t, ino)
        v = t.xattrs.get(ino, {}).get(os.fsencode(name))
        if v is None:
            raise err.NoData()
        return v

    async def listxattr(self, ino, *, caller=None, snap: int = 0):
        if not snap:
            return await super().listxattr(ino, caller=caller)
        t = self._tree(snap)
        self._attr(t, ino)
        return sorted(t.xattrs.get(ino, {}))

    async def read_inline(self, ino, *, caller=None, snap: int = 0):
        if not snap:
            return await super().read_inline(ino, caller=caller)
        t = self._tree(snap)
        if ino not in t.inline:
            raise err.DfsError("not inline", code=E.ENOTSUP)
        return t.inline[ino]


class FrozenChunks(MemoryChunks):
    """MemoryChunks with reads at a snapshot (a copy of the chunks taken at its creation)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen: dict[int, dict] = {}
        self.reads = 0

    def freeze(self, snap: int) -> None:
        self.frozen[snap] = copy.deepcopy(self.chunks)

    async def read(self, ino, index, offset, length, layout, at: int | None = None) -> bytes:
        self.reads += 1
        if not at:
            return await super().read(ino, index, offset, length, layout)
        chunks = self.frozen.get(at)
        if chunks is None:
            raise err.Stale(f"snapshot {at} deleted")
        c = chunks.get((ino, index))
        return b"" if c is None else bytes(c[offset:offset + length])
