"""The library's snapshot commands: create, list, delete and diff snapshots of a directory.

``SnapshotAPI`` is mixed into ``AsyncClient`` (dfs/client/paths.py); the sync
``Client`` runs the same coroutines. A snapshot is named by the directory it
is of (``path``) and its name; it is made and deleted by the metadata
service (``MetaClient.snapshot_create/delete``, the coordinator on shard 0's
leader) and listed from the cluster map's registry. Reading one is
``PATH/.snap/NAME/...`` (dfs/client/snapdir.py) or a snapshot-mode client
(dfs/client/snapmode.py).

Bad input is refused here, before anything is sent, with the error a caller
can act on: a name that is empty, ``.``, ``..``, holds ``/`` or NUL (EINVAL)
or is longer than NAME_MAX bytes (ENAMETOOLONG); a path that is not a
directory (ENOTDIR) or is inside a snapshot (EROFS); a name already used
under that directory (EEXIST); an unknown snapshot (ENOENT). The service
checks the same again (two clients at once).

Imports: dfs.common and this package only.
"""

from __future__ import annotations

import errno as E
import logging
import os
import stat as S
from dataclasses import dataclass, field
from typing import Any

from dfs.client.snapdir import SNAP_BIT, SnapMeta, readonly
from dfs.common import errors as err
from dfs.common.clustermap import SnapshotInfo
from dfs.common.limits import NAME_MAX
from dfs.common.records import Attr

log = logging.getLogger("dfs.client")

__all__ = ["SnapshotAPI", "SnapshotDiff", "check_snapshot_name", "parse_spec"]


def check_snapshot_name(name: str | bytes) -> str:
    """``name`` if it can name a snapshot; else EINVAL / ENAMETOOLONG."""
    b = os.fsencode(name)
    if not b or b in (b".", b"..") or b"/" in b or b"\0" in b:
        raise err.InvalidArgument(f"bad snapshot name {os.fsdecode(b)!r}: not empty, '.', '..', no '/' or NUL")
    if len(b) > NAME_MAX:
        raise err.NameTooLong(f"snapshot name longer than {NAME_MAX} bytes")
    return os.fsdecode(b)


def parse_spec(spec: str) -> tuple[str, str]:
    """``PATH@NAME`` -> (PATH, NAME); the last ``@`` separates them (a path may hold one)."""
    path, at, name = spec.rpartition("@")
    if not at or not path:
        raise err.InvalidArgument(f"snapshot {spec!r}: expected PATH@NAME")
    return path, check_snapshot_name(name)


@dataclass
class SnapshotDiff:
    """What changed from one tree to another, as sorted lists of paths (relative to the
    snapshot's directory, with a leading '/'). ``modified``: the same path with another
    type, size, mtime, mode, owner, symlink target or inode."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)


def _same(a: Attr, b: Attr) -> bool:
    return (a.ino, a.mode, a.uid, a.gid, a.size, a.mtime_ns) == (b.ino, b.mode, b.uid, b.gid, b.size, b.mtime_ns)


class SnapshotAPI:
    """Snapshot commands on paths (mixed into AsyncClient: ``self._existing``, ``self.core``)."""

    core: Any

    def _snapmeta(self) -> SnapMeta:
        m = self.core.meta
        if not isinstance(m, SnapMeta) or not hasattr(m.inner, "snapshot_create"):
            raise err.DfsError("no snapshots here (a snapshot-mode client, or a service without them)",
                               code=E.ENOTSUP)
        return m

    async def _snap_root(self, path) -> Attr:
        a = await self._existing(path)  # type: ignore[attr-defined]
        if a.ino & SNAP_BIT:
            raise readonly("a snapshot is read-only: no snapshot of a snapshot")
        if not a.is_dir():
            e = err.NotADirectory("a snapshot is of a directory")
            e.filename = path
            raise e
        return a

    async def _normpath(self, path) -> str:
        return os.fsdecode(os.path.normpath(self._abs(path)))  # type: ignore[attr-defined]

    async def snapshot_list(self, path=None, *, fresh: bool = True) -> list[SnapshotInfo]:
        """The snapshots of directory ``path`` (None: every snapshot), oldest first."""
        sm = self._snapmeta()
        reg = await sm.registry(fresh)
        if path is None:
            return [reg[s] for s in sorted(reg)]
        a = await self._snap_root(path)
        return [reg[s] for s in sorted(reg) if reg[s].root == a.ino]

    async def snapshot_info(self, path, name: str) -> SnapshotInfo:
        """The ready snapshot ``name`` of directory ``path`` (ENOENT if none)."""
        name = check_snapshot_name(name)
        for i in await self.snapshot_list(path):
            if i.name == name:
                if i.state != "ready":
                    raise err.NotFound(f"snapshot {name!r} is {i.state}")
                return i
        e = err.NotFound(f"no snapshot {name!r} of {os.fsdecode(path)}")
        e.filename = path
        raise e

    async def snapshot_create(self, path, name: str, *, manifest: bool = False) -> SnapshotInfo:
        """Snapshot directory ``path`` as ``name``: every change acknowledged before this call
        is in it, none made after it returns. Returns its registry entry. ``manifest``: also
        build and store the manifest snapshot-mode clients load (else the first one builds it)."""
        name = check_snapshot_name(name)
        sm = self._snapmeta()
        a = await self._snap_root(path)
        if any(i.root == a.ino and i.name == name for i in (await sm.registry(True)).values()):
            e = err.Exists(f"snapshot {name!r} exists")
            e.filename = path
            raise e
        s = await sm.inner.snapshot_create(a.ino, name, await self._normpath(path))
        reg = await sm.registry(True)
        info = reg.get(s) or SnapshotInfo(s, name, a.ino, await self._normpath(path), "ready")
        if manifest:
            from dfs.client.snapmode import build_and_store

            await build_and_store(sm.inner, self._chunks(), info)
        return info

    def _chunks(self):
        d = self.core.data
        return getattr(d, "inner", d)  # under SnapChunks: the data client itself

    async def snapshot_delete(self, path, name: str) -> None:
        """Delete snapshot ``name`` of ``path``. A snapshot-mode client reading it keeps what it
        has loaded (its manifest, cached bytes); its reads of what the data servers no longer
        keep answer ESTALE ("snapshot deleted")."""
        name = check_snapshot_name(name)
        sm = self._snapmeta()
        a = await self._snap_root(path)
        if not any(i.root == a.ino and i.name == name for i in (await sm.registry(True)).values()):
            e = err.NotFound(f"no snapshot {name!r}")
            e.filename = path
            raise e
        snaps = [s for s, i in (await sm.registry(False)).items() if i.root == a.ino and i.name == name]
        await sm.inner.snapshot_delete(a.ino, name)
        from dfs.client.snapmode import remove_manifest

        for s in snaps:  # its manifest and packs, if one was built
            try:
                await remove_manifest(sm.inner, self._chunks(), s)
            except err.DfsError as e:
                log.warning("snapshot %d deleted; its manifest not removed: %s", s, e)

    async def _tree(self, snap: int, root: int) -> dict[str, tuple[Attr, bytes | None]]:
        """path -> (attributes, symlink target) of every object of ``root`` at ``snap`` (0: now)."""
        inner = self._snapmeta().inner
        kw = {"snap": snap} if snap else {}
        out: dict[str, tuple[Attr, bytes | None]] = {}
        todo = [("", root)]
        while todo:
            base, d = todo.pop()
            async for e in inner.iterdir(d, plus=True, **kw):
                if e.attr is None:
                    continue
                p = f"{base}/{os.fsdecode(e.name)}"
                t = await inner.readlink(e.ino, **kw) if S.S_ISLNK(e.type) else None
                out[p] = (e.attr, t)
                if S.S_ISDIR(e.type):
                    todo.append((p, e.ino))
        return out

    async def snapshot_diff(self, path, a: str, b: str | None = None) -> SnapshotDiff:
        """What changed under ``path`` from snapshot ``a`` to snapshot ``b`` (None: now)."""
        root = await self._snap_root(path)
        sa = (await self.snapshot_info(path, a)).epoch
        sb = (await self.snapshot_info(path, b)).epoch if b is not None else 0
        ta, tb = await self._tree(sa, root.ino), await self._tree(sb, root.ino)
        d = SnapshotDiff()
        d.added = sorted(p for p in tb if p not in ta)
        d.removed = sorted(p for p in ta if p not in tb)
        d.modified = sorted(p for p in ta if p in tb and (not _same(ta[p][0], tb[p][0]) or ta[p][1] != tb[p][1]))
        return d
