"""CAPS: a data-plane capability (dfs.common.caps) for a client, signed by the shard leader.

Served from the leader's applied state and memory, never logged (a capability
is a signature, not state). The leader grants, in this order:

* for an open handle of the caller's on ``ino``: the rights that handle was
  granted (a durable handle records the R_OK | W_OK its open checked, or
  both for the file's creator; a read handle is for reading). An open file
  stays readable and writable after a chmod, as POSIX has it, and a file
  created with mode 0444 can be written through the descriptor that made it
  (tar and git do both);
* for an id delegated to lazy ``session`` in a live grant: reading and writing
  the whole delegated block (the session creates files there before the shard
  has heard of them);
* else what the caller's access to the inode allows now (``truncate(path)``,
  a lazy client's write to a file it opened without a server handle);
* ``snap``: reads at that snapshot of every file, for a caller who may read
  and search directory ``ino`` now (snapshot mode reads files by the
  thousand and cannot ask per file; it checks each file's mode itself).

A cluster without ``[security] data_capabilities`` answers an empty list.

The ``serve`` handler gets the ShardService (``svc``): its store, its read
handles, its clock and its signer. May import dfs.common, dfs.meta.schema and
dfs.meta.ops.base, .delegate only.
"""

from __future__ import annotations

import errno as E
import stat

from dfs.common import caps as C
from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import LOCAL_MASK, shard_of
from dfs.common.ops import DELEGATION_BLOCK, SESSION_BYTES
from dfs.common.records import Caller
from dfs.meta import schema as S
from dfs.meta.ops.base import R_OK, W_OK, X_OK, check_access, check_handle, serve


def _access(rights: int) -> int:
    return (R_OK if rights & C.READ else 0) | (W_OK if rights & C.WRITE else 0)


def _delegated_block(svc, session, ino: int) -> tuple[int, int] | None:
    """The block of ids ``ino`` lies in, if a live grant of ``session`` here holds it."""
    if not isinstance(session, bytes) or len(session) != SESSION_BYTES:
        raise err.InvalidArgument(f"a session id is {SESSION_BYTES} bytes")
    kv = svc.store.kv
    exp = kv.get(S.grant_key(session))
    if exp is None or S.from_u64(exp) < svc.clock():
        return None
    block = (ino & LOCAL_MASK) // DELEGATION_BLOCK
    if kv.get(S.grant_block_key(session, block)) is None:
        return None
    lo = ino - (ino & LOCAL_MASK) % DELEGATION_BLOCK
    return lo, lo + DELEGATION_BLOCK


def _by_handle(svc, ino: int, handle: bytes, rights: int) -> bool:
    if rights == C.READ and svc.reads.live_handle(ino, handle, svc.clock()):
        return True
    v = svc.store.kv.get(S.handle_key(ino, handle))
    if v is None or S.handle_expiry(v) < svc.clock():
        return False
    need = _access(rights)
    return S.handle_access(v) & need == need


@serve(m.Caps)
async def caps(svc, rid: bytes, caller: Caller, req: m.Caps) -> m.CapsReply:
    signer = getattr(svc, "signer", None)
    rights = req.rights
    if isinstance(rights, bool) or rights not in (C.READ, C.WRITE, C.READ | C.WRITE):
        raise err.InvalidArgument("rights: READ, WRITE or both")
    if signer is None:
        return m.CapsReply([])
    svc.store.check_owned(req.ino)
    ctx = svc.store.reader(caller)
    if req.snap:
        if rights != C.READ:
            raise err.DfsError("a snapshot is read-only", code=E.EROFS)
        d = ctx.inode(req.ino)
        if not d.is_dir():
            raise err.NotADirectory("a snapshot capability is asked with the snapshot's directory")
        check_access(d, caller, R_OK | X_OK)
        return m.CapsReply([signer.snapshot(req.snap)])
    if req.handle is not None:
        check_handle(req.handle)
        if _by_handle(svc, req.ino, req.handle, rights):
            return m.CapsReply([signer.inodes(req.ino, req.ino + 1, rights)])
    if req.session is not None and shard_of(req.ino) == svc.shard:
        block = _delegated_block(svc, req.session, req.ino)
        if block is not None:
            return m.CapsReply([signer.inodes(*block, C.READ | C.WRITE)])
    i = ctx.inode(req.ino)
    if i.is_dir():
        raise err.IsADirectory()
    if not stat.S_ISREG(i.mode):
        raise err.InvalidArgument("capabilities are for regular files")
    check_access(i, caller, _access(rights))
    return m.CapsReply([signer.inodes(req.ino, req.ino + 1, rights)])


def granted_with(signer, req: m.Request, reply) -> list[bytes]:
    """The capabilities an open's reply carries (``OpReply.caps``), so that the client's first
    chunk request needs no CAPS round trip: what the open checked (``access``), or reading
    and writing for the creator of a new file."""
    if isinstance(req, m.Open):
        rights = _rights(req.access)
        ino = req.ino
    elif isinstance(req, m.OpenRead):
        rights, ino = _rights(req.access) & C.READ, req.ino
    elif isinstance(req, m.LookupOpen):
        if reply.opened == m.Opened.NO:
            return []
        rights, ino = _rights(req.access) & C.READ, reply.ino
    elif isinstance(req, m.Create):
        if not reply.opened:
            return []
        rights, ino = (C.READ | C.WRITE) if reply.created else _rights(req.access), reply.ino
    else:
        return []
    return [signer.inodes(ino, ino + 1, rights)] if rights else []


def _rights(access: int) -> int:
    return (C.READ if access & R_OK else 0) | (C.WRITE if access & W_OK else 0)
