"""SETATTR as the shard applies it (dfs/meta/ops/setattr.py), for a client that applies it
first to its own view (lazy mode, dfs/client/lazy.py): ``applied_setattr`` (the result and
the permission rules, raised at the call) and ``merge_setattr`` (two queued SETATTRs as one,
when the shard's order of the parts gives the same result).

Imports: dfs.common only.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace

from dfs.common import errors as err
from dfs.common.perm import check_mode
from dfs.common.records import Attr, Caller

__all__ = ["applied_setattr", "merge_setattr"]


def applied_setattr(a: Attr, caller: Caller, f: dict, now: int, grow: int | None) -> Attr:
    """``a`` after SETATTR ``f`` by ``caller``, as the shard will apply it (dfs/meta/ops/setattr.py):
    its permission rules raise here, at the call (the mount relies on EPERM to retry what the
    kernel meant)."""
    mode, uid, gid, size = a.mode, a.uid, a.gid, a.size
    atime, mtime, ctime = a.atime_ns, a.mtime_ns, a.ctime_ns
    if grow is not None and grow > size:
        size = grow
    if grow is not None:
        mtime = ctime = now
    root = caller.uid == 0
    owner = root or caller.uid == a.uid
    new_uid = f.get("uid") if f.get("uid") not in (None, -1) else None
    new_gid = f.get("gid") if f.get("gid") not in (None, -1) else None
    if new_uid is not None or new_gid is not None:
        nu = uid if new_uid is None else new_uid
        ng = gid if new_gid is None else new_gid
        if not root:
            if (nu != uid or caller.uid != uid) and (nu != uid or not owner):
                raise err.NotPermitted("chown")
            if ng != gid and not caller.in_group(ng):
                raise err.NotPermitted("chgrp to a group the caller is not in")
        if (nu != uid or ng != gid or not root) and not stat.S_ISDIR(mode):
            if mode & stat.S_ISUID:
                mode &= ~stat.S_ISUID
            if mode & stat.S_ISGID and mode & stat.S_IXGRP:
                mode &= ~stat.S_ISGID
        uid, gid = nu, ng
        ctime = now
    if f.get("mode") is not None:
        if not owner:
            raise err.NotPermitted("chmod")
        new = f["mode"] & 0o7777
        if not root and new & stat.S_ISGID and not caller.in_group(gid):
            new &= ~stat.S_ISGID
        mode = stat.S_IFMT(mode) | new
        ctime = now
    times = [k for k in ("atime_ns", "mtime_ns") if f.get(k) is not None] + [
        k for k in ("atime_now", "mtime_now") if f.get(k)]
    if times:
        explicit = any(k.endswith("_ns") for k in times)
        if not owner:
            if explicit:
                raise err.NotPermitted("utimes")
            check_mode(a.mode, a.uid, a.gid, caller, os.W_OK)
        if f.get("atime_now"):
            atime = now
        elif f.get("atime_ns") is not None:
            atime = f["atime_ns"]
        if f.get("mtime_now"):
            mtime = now
        elif f.get("mtime_ns") is not None:
            mtime = f["mtime_ns"]
        ctime = now
    return replace(a, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime, mtime_ns=mtime, ctime_ns=ctime)


# SETATTR's parts in the order the shard applies them (dfs/meta/ops/setattr.py)
_GROW, _OWNER, _MODE, _SIZE, _TIMES = range(5)
_GROUP = {"uid": _OWNER, "gid": _OWNER, "mode": _MODE, "size": _SIZE, "atime_ns": _TIMES, "mtime_ns": _TIMES,
          "atime_now": _TIMES, "mtime_now": _TIMES}


def _groups(fields: dict, grow: int | None) -> set[int]:
    g = {_GROUP[k] for k in fields}
    if grow is not None:
        g.add(_GROW)
    return g


def merge_setattr(old: tuple[dict, int | None], fields: dict, grow: int | None) -> tuple[dict, int | None] | None:
    """SETATTR ``old`` then (``fields``, ``grow``) as one SETATTR, or None when the shard's order
    of the parts (grow, owner, mode, size, times) would give another result than the two in
    turn: a later part may come before an earlier one only where they commute (times with
    owner and mode; owner with a mode that has no set-id bits, which a chown would clear)."""
    f0, g0 = old
    a_groups, b_groups = _groups(f0, g0), _groups(fields, grow)
    for a in a_groups:
        for b in b_groups:
            if b < a and not ((a == _TIMES and b in (_OWNER, _MODE)) or
                              (a == _MODE and b == _OWNER and not f0["mode"] & (stat.S_ISUID | stat.S_ISGID))):
                return None
    merged = dict(f0)
    for t in ("atime", "mtime"):  # an explicit time and "now" of the same one: the later wins
        if f"{t}_ns" in fields or f"{t}_now" in fields:
            merged.pop(f"{t}_ns", None)
            merged.pop(f"{t}_now", None)
    merged.update(fields)
    g = g0 if grow is None else (grow if g0 is None else max(g0, grow))
    return merged, g
