"""Chunk reads at a snapshot for the in-process engine, for the client's unit tests.

``FrozenChunks`` is ``MemoryChunks`` with ``read(..., at=S)``, copy-on-write as
the data servers do it (dfs/data/store.py): the first mutation after a
snapshot became live keeps the chunks as they were for it; a read at a
snapshot that is not live (deleted, never made) answers ESTALE. The live
snapshots are those of the in-process registry (dfs/testing/registry.py)
the metadata side uses (``LocalEngine(registry=...)``).

``snapshot_client`` puts the three together under a library client whose
metadata requests are counted, as the snapshot tests of the library and of
the FUSE adapter start.

Imports: dfs.common, dfs.client, dfs.meta.local (the in-process engine) and
dfs.testing only.
"""

from __future__ import annotations

import copy

from dfs.client.file import MemoryChunks
from dfs.client.meta import MetaClient
from dfs.client.mode import StrictMode
from dfs.client.paths import AsyncClient
from dfs.common import errors as err
from dfs.common.records import ROOT
from dfs.meta.local import LocalEngine
from dfs.testing.counting import CountingTransport
from dfs.testing.registry import MemoryRegistry

__all__ = ["FrozenChunks", "snapshot_client"]


class FrozenChunks(MemoryChunks):
    def __init__(self, registry) -> None:
        super().__init__()
        self.registry = registry  # a dfs.testing.registry.MemoryRegistry
        self.frozen: dict[int, dict] = {}
        self.reads = 0

    def _live(self) -> tuple[int, ...]:
        return self.registry.map().live_snapshots

    def _cow(self) -> None:
        live = self._live()
        for s in live:
            if s not in self.frozen:
                self.frozen[s] = copy.deepcopy(self.chunks)
        for s in [s for s in self.frozen if s not in live]:
            del self.frozen[s]

    async def write(self, ino, index, offset, data, layout) -> None:
        self._cow()
        await super().write(ino, index, offset, data, layout)

    async def truncate(self, ino, index, length, layout) -> None:
        self._cow()
        await super().truncate(ino, index, length, layout)

    async def remove_inode(self, ino, layout, size) -> None:
        self._cow()
        await super().remove_inode(ino, layout, size)

    async def read(self, ino, index, offset, length, layout, at: int | None = None) -> bytes:
        self.reads += 1
        if not at:
            return await super().read(ino, index, offset, length, layout)
        if at not in self._live():
            raise err.Stale(f"snapshot {at} deleted")
        c = self.frozen.get(at, self.chunks).get((ino, index))
        return b"" if c is None else bytes(c[offset:offset + length])



def snapshot_client(ttl: float, **kw):
    """``(client, transport, meta, chunks, registry)``: a strict-mode (``ttl``) AsyncClient on
    the in-process engine (2 shards) with the in-process snapshot registry and FrozenChunks;
    ``transport`` counts its metadata requests, ``meta`` is the MetaClient under it,
    ``registry`` the callable it reads the snapshots through; ``kw`` go to AsyncClient."""
    reg = MemoryRegistry()
    t = CountingTransport(LocalEngine(2, registry=reg))
    chunks = FrozenChunks(reg)
    meta = MetaClient(t, ROOT)

    async def registry(fresh=False):
        return await reg.snapshots()
    c = AsyncClient(meta, chunks, mode=StrictMode(ttl), registry=registry, **kw)
    return c, t, meta, chunks, registry
