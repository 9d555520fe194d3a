"""OPENREAD, RENEWREAD, CLOSEREAD, LOOKUPOPEN (served from the leader's memory) and
READMARK (logged): read handles, an open to read without a Raft round.

The handles live in the leader's table (``dfs.meta.readhandles``, where the
design is explained); a READMARK committed before a handle is handed out
bounds how long handles of a leader's term may live, so a later leader frees
no orphan a reader may still hold. An inline file, and any open when the table
is full, gets a logged OPEN instead (``durable``), except where the caller takes
an inline file's bytes in the reply (``inline``): it then holds all of the file,
needs no handle, and the open costs no Raft round (``Opened.INLINE``).

The ``serve`` handlers get the ShardService (``svc``): its store, its table
(``svc.reads``), its clock and ``svc.ensure_mark``. May import dfs.common,
dfs.meta.schema, dfs.meta.readhandles and dfs.meta.ops.base, .inline, .lookup only.
"""

from __future__ import annotations

import errno as E
import stat

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.records import Caller
from dfs.meta import schema as S
from dfs.meta.ops.base import R_OK, apply, check_access, check_handle, check_open_access, lease_ns, serve
from dfs.meta.ops.inline import inline_access
from dfs.meta.ops.lookup import lookup
from dfs.meta.readhandles import MAX_READ_HANDLES


def open_for_read(ctx, ino: int, access: int) -> S.Inode:
    """OPENREAD's checks on applied state (as OPEN's): the inode, a regular file, ``access``."""
    i = ctx.inode(ino)
    ctx.check_lock(S.lock_key_inode(ino), S.LockMode.SHARED)
    if i.is_dir():
        raise err.IsADirectory()
    if not stat.S_ISREG(i.mode):
        raise err.InvalidArgument("open handles are for regular files")
    if access:
        check_open_access(access, R_OK)
        check_access(i, ctx.caller, access)
    return i


def inline_bytes(ctx, i: S.Inode) -> bytes | None:
    """An inline file's bytes for a reader that takes them instead of a handle (it then holds
    all of the file: an unlink cannot take anything from it), under READINLINE's access rule;
    None where that rule refuses (the caller gets a handle, and the refusal at its read)."""
    try:
        inline_access(i, ctx.caller, R_OK)
    except err.DfsError:
        return None
    v = ctx.ov.get(S.inline_key(i.ino))
    return b"" if v is None else S.split_inline_value(v)[0][:i.size]


@serve(m.OpenRead)
async def open_read(svc, rid: bytes, caller: Caller, req: m.OpenRead) -> m.OpenReadReply:
    check_handle(req.handle)
    lease = lease_ns(req.lease_s)
    ctx = svc.store.reader(caller)
    i = open_for_read(ctx, req.ino, req.access)
    if req.inline and i.flags & S.FLAG_INLINE:
        data = inline_bytes(ctx, i)
        if data is not None:
            return m.OpenReadReply(i, False, data)
    if i.flags & S.FLAG_INLINE or len(svc.reads) >= MAX_READ_HANDLES:
        opened = m.Open(req.ino, req.handle, req.lease_s, req.access)
        attr = await svc.request(opened, rid, caller)
        return m.OpenReadReply(attr, True)
    expiry = svc.clock() + lease
    wire = i.wire()
    # before any await: the orphan task sees it at once; an empty file will leave no
    # orphan record to answer GETATTR from, so its attributes are kept here
    svc.reads.put(req.ino, req.handle, expiry, wire if i.size == 0 else None)
    try:
        await svc.ensure_mark(expiry)
    except BaseException:
        svc.reads.drop(req.ino, req.handle)
        raise
    return m.OpenReadReply(i, False)


@serve(m.LookupOpen)
async def lookup_open(svc, rid: bytes, caller: Caller, req: m.LookupOpen) -> m.LookupOpenReply:
    """A path's last step and its open for reading in one round trip."""
    found = lookup(svc.store.reader(caller), m.Lookup(req.parent, req.name))
    if found.attr is None or not stat.S_ISREG(found.mode):
        return m.LookupOpenReply(found.ino, found.mode, found.attr, m.Opened.NO)  # another shard's, or not a file
    r = await open_read(svc, rid, caller, m.OpenRead(found.ino, req.handle, req.lease_s, req.access, req.inline))
    if r.data is not None:
        return m.LookupOpenReply(found.ino, found.mode, r.attr, m.Opened.INLINE, r.data)
    return m.LookupOpenReply(found.ino, found.mode, r.attr, m.Opened.DURABLE if r.durable else m.Opened.READ)


@serve(m.RenewRead)
async def renew_read(svc, rid: bytes, caller: Caller, req: m.RenewRead) -> m.Errnos:
    """Per pair 0 (extended, or adopted: a failover lost it, the file or its orphan record is
    still here) or ENOENT (the file and its chunks are gone)."""
    lease = lease_ns(req.lease_s)
    now = svc.clock()
    expiry = now + lease
    out = []
    for p in req.pairs:
        check_handle(p.handle)
        svc.store.check_owned(p.ino)
        if svc.reads.live_handle(p.ino, p.handle, now) or svc.store.inode_exists(p.ino) or svc.store.is_orphan(p.ino):
            svc.reads.put(p.ino, p.handle, expiry)
            out.append(0)
        else:
            out.append(E.ENOENT)
    if any(e == 0 for e in out):
        await svc.ensure_mark(expiry)
    return m.Errnos(out)


@serve(m.CloseRead)
async def close_read(svc, rid: bytes, caller: Caller, req: m.CloseRead) -> m.Done:
    """Forget read handles (unknown ones are fine: closed, expired, another leader's)."""
    for p in req.pairs:
        check_handle(p.handle)
    for p in req.pairs:
        svc.reads.drop(p.ino, p.handle)
    return m.Done()


@apply(m.ReadMark)
def read_mark(ctx, req: m.ReadMark) -> m.Done:
    """Internal (the leader, before it hands out read handles): read handles granted in
    ``term`` live until at most ``until`` ns. Kept per the last term and for all earlier
    ones, so a new leader knows how long another leader's handles may live."""
    term, until = req.term, req.until
    if term < 0:
        raise err.InvalidArgument("term, until")
    last, mine, earlier = S.split_read_mark(ctx.ov.get(S.K_READ_MARK))
    if term > last:
        last, mine, earlier = term, until, max(earlier, mine)
    elif term == last:
        mine = max(mine, until)
    else:
        earlier = max(earlier, until)
    ctx.ov.put(S.K_READ_MARK, S.read_mark_value(last, mine, earlier))
    return m.Done()
