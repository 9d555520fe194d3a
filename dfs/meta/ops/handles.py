"""OPEN, RENEW, CLOSE, EXPIREHANDLES: open handles of regular files, with leases.

``H <ino> <handle> -> [expiry]`` records a handle, ``J <expiry> <ino>
<handle>`` indexes them by expiry. Expiries are command timestamps plus the
lease, so every replica computes the same; EXPIREHANDLES compares them with
its own command's timestamp, never a replica's clock. A file whose last link
goes while a handle holds it stays (nlink 0) until the last CLOSE or the
handle's expiry (``Ctx.reap_unlinked``). See docs/design/metadata.md "Open files".

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base only.
"""

from __future__ import annotations

import errno as E
import stat

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.meta import schema as S
from dfs.meta.ops.base import R_OK, W_OK, apply, check_access, check_handle, check_open_access, lease_ns

EXPIRE_MAX = 10000  # handles one EXPIREHANDLES drops at most


def set_handle(ctx, ino: int, handle: bytes, expiry: int, access: int = 0) -> None:
    """Record (or extend: never shorten) a handle's expiry, and add ``access`` (R_OK | W_OK
    checked at an open of it, or granted by its create) to what it was granted."""
    expiry = max(0, expiry)
    access &= R_OK | W_OK
    key = S.handle_key(ino, handle)
    v = ctx.ov.get(key)
    if v is not None:
        old, had = S.handle_expiry(v), S.handle_access(v)
        if old >= expiry and had | access == had:
            return
        ctx.ov.delete(S.handle_expiry_key(old, ino, handle))
        expiry, access = max(old, expiry), had | access
    ctx.ov.put(key, S.handle_value(expiry, access))
    ctx.ov.put(S.handle_expiry_key(expiry, ino, handle), b"")


def write_opened(ctx, i):
    """A handle that may write inode ``i`` was granted (or its writer vanished): its bytes may
    change from now on, so they get a new data version (a reader who cached them under the
    old one reads them afresh). ``i``, as stored."""
    i.bump_data()
    ctx.put(i)
    return i


@apply(m.Open)
def open_(ctx, req: m.Open):
    """A client opened regular file ``ino``: keep it alive until ts + lease (renewable),
    even if its last link goes. The same handle again extends it (a retry). ``access``
    (R_OK | W_OK) is checked against the caller first. Answers the attributes."""
    check_handle(req.handle)
    lease = lease_ns(req.lease_s)
    i = ctx.inode(req.ino)
    ctx.check_lock(S.lock_key_inode(req.ino), S.LockMode.SHARED)
    if i.is_dir():
        raise err.IsADirectory()
    if not stat.S_ISREG(i.mode):
        raise err.InvalidArgument("open handles are for regular files")
    if req.access:
        check_open_access(req.access, R_OK | W_OK)
        check_access(i, ctx.caller, req.access)
    set_handle(ctx, req.ino, req.handle, ctx.ts + lease, req.access)
    if req.access & W_OK:
        return write_opened(ctx, i)
    return i


@apply(m.Renew)
def renew(ctx, req: m.Renew) -> m.Errnos:
    """Extend many handles to ts + lease; per pair 0, or ENOENT if the handle is gone
    (closed or expired: the client may OPEN it again while the file has a link)."""
    lease = lease_ns(req.lease_s)
    out = []
    for p in req.pairs:
        check_handle(p.handle)
        ctx.store.check_owned(p.ino)
        if ctx.ov.get(S.handle_key(p.ino, p.handle)) is None:
            out.append(E.ENOENT)
            continue
        set_handle(ctx, p.ino, p.handle, ctx.ts + lease)
        out.append(0)
    return m.Errnos(out)


@apply(m.Close)
def close(ctx, req: m.Close) -> m.Closed:
    """Drop a handle (a missing one is not an error: closed before, or expired); the
    last handle of a link-less file deletes it."""
    check_handle(req.handle)
    ctx.store.check_owned(req.ino)
    key = S.handle_key(req.ino, req.handle)
    v = ctx.ov.get(key)
    if v is None:
        return m.Closed(False)
    ctx.ov.delete(key)
    ctx.ov.delete(S.handle_expiry_key(S.handle_expiry(v), req.ino, req.handle))
    i = ctx.maybe_inode(req.ino)
    return m.Closed(i is not None and ctx.reap_unlinked(i))


@apply(m.ExpireHandles)
def expire_handles(ctx, req: m.ExpireHandles) -> m.Expired:
    """Internal (the leader's handle task): drop up to ``limit`` handles whose expiry is
    before this command's ts, then delete the link-less files left without a handle."""
    limit = max(1, min(req.limit, EXPIRE_MAX))
    expired = 0
    inos: dict[int, bool] = {}  # ino -> a handle that could write it expired
    for k, _ in list(ctx.ov.scan(S.P_HANDLE_EXPIRY, S.handle_expiry_end(ctx.ts), limit)):
        expiry, ino, handle = S.split_handle_expiry_key(k)
        ctx.ov.delete(k)
        hk = S.handle_key(ino, handle)
        v = ctx.ov.get(hk)
        wrote = False
        if v is not None and S.handle_expiry(v) == expiry:
            ctx.ov.delete(hk)
            wrote = bool(S.handle_access(v) & W_OK)
        expired += 1
        inos[ino] = inos.get(ino, False) or wrote
    freed = 0
    for ino, wrote in inos.items():
        i = ctx.maybe_inode(ino)
        if i is not None and ctx.reap_unlinked(i):
            freed += 1
        elif i is not None and wrote:
            # its writer vanished mid-write: what it sent to the data servers (and never
            # published) may differ from what a reader cached under the current version
            write_opened(ctx, i)
    return m.Expired(expired, freed)
