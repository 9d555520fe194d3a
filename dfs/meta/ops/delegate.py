"""DELEGATE, RENEWDELEGATION, EXPIREDELEGATIONS: inode ids a shard hands to a client session.

A lazy client (docs/design/writeback.md) gives a file or directory it creates
its final inode id at once, before the shard has heard of it: the id comes
from a range the shard delegated to the client's session (a random id the
client makes at start, never shared). DELEGATE advances the shard's id
counter past whole aligned blocks of ``DELEGATION_BLOCK`` ids and records
them for the session (``G session block`` -> a bitmap of the ids used), with
one expiry per session (``G session``, indexed by ``W expiry session``);
DELEGATE and RENEWDELEGATION move it to ts + lease. CREATE and MKDIR that
carry an id go through ``check_delegated`` (the id lies in a live grant of the
caller's session, is unused and names no inode) and ``use_delegated`` (its bit
is set: an id is used once, ever). The leader's task submits
EXPIREDELEGATIONS when the earliest expiry has passed; it drops the session's
records, so its unused ids are never used: ids are never reused at all, a
crashed client leaves a gap in the numbering and nothing else. Every decision
uses the command's ts (the leader's clock), never a replica's.

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base only.
"""

from __future__ import annotations

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import LOCAL_MASK, make_ino, shard_of
from dfs.common.ops import DELEGATE_MAX, DELEGATION_BLOCK, SESSION_BYTES
from dfs.meta import schema as S
from dfs.meta.ops.base import apply, lease_ns

_BITMAP = DELEGATION_BLOCK // 8


def _session(session) -> bytes:
    if not isinstance(session, bytes) or len(session) != SESSION_BYTES:
        raise err.InvalidArgument(f"a session id is {SESSION_BYTES} bytes")
    return session


def _expiry(ctx, session: bytes) -> int | None:
    v = ctx.ov.get(S.grant_key(session))
    return None if v is None else S.from_u64(v)


def _set_expiry(ctx, session: bytes, expiry: int) -> None:
    old = _expiry(ctx, session)
    if old is not None:
        ctx.ov.delete(S.grant_expiry_key(old, session))
    ctx.ov.put(S.grant_key(session), S.u64(expiry))
    ctx.ov.put(S.grant_expiry_key(expiry, session), b"")


def _drop(ctx, session: bytes) -> None:
    old = _expiry(ctx, session)
    if old is not None:
        ctx.ov.delete(S.grant_expiry_key(old, session))
    for k, _ in list(ctx.ov.scan_prefix(S.grant_key(session))):
        ctx.ov.delete(k)


@apply(m.Delegate)
def delegate(ctx, req: m.Delegate) -> m.Grant:
    session = _session(req.session)
    count = req.count
    if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= DELEGATE_MAX:
        raise err.InvalidArgument(f"count: 1 to {DELEGATE_MAX} ids")
    expiry = ctx.ts + lease_ns(req.lease_s)
    blocks = -(-count // DELEGATION_BLOCK)
    b = ctx.ov.get(S.K_NEXT_INO)
    n = S.from_u64(b) if b else (2 if ctx.shard == 0 else 1)
    first = -(-n // DELEGATION_BLOCK)  # the next whole block: ids below it stay the counter's
    if (first + blocks) * DELEGATION_BLOCK > LOCAL_MASK:
        raise err.NoSpace("inode ids of this shard exhausted")
    ctx.ov.put(S.K_NEXT_INO, S.u64((first + blocks) * DELEGATION_BLOCK))
    for blk in range(first, first + blocks):
        ctx.ov.put(S.grant_block_key(session, blk), bytes(_BITMAP))
    _set_expiry(ctx, session, expiry)
    lo = make_ino(ctx.shard, first * DELEGATION_BLOCK)
    return m.Grant(lo, lo + blocks * DELEGATION_BLOCK, expiry)


@apply(m.RenewDelegation)
def renew(ctx, req: m.RenewDelegation) -> m.Expiry:
    session = _session(req.session)
    lease = lease_ns(req.lease_s)
    old = _expiry(ctx, session)
    if old is None or old < ctx.ts:
        if old is not None:
            _drop(ctx, session)  # ran out before the expiry task saw it
        raise err.NotFound("no live delegation for this session")
    if req.release:
        _drop(ctx, session)
        return m.Expiry(0)
    expiry = max(old, ctx.ts + lease)
    _set_expiry(ctx, session, expiry)
    return m.Expiry(expiry)


@apply(m.ExpireDelegations)
def expire(ctx, req: m.ExpireDelegations) -> m.Expired:
    limit = max(1, int(req.limit))
    gone = [S.split_grant_expiry_key(k)[1]
            for k, _ in ctx.ov.scan(S.P_GRANT_EXPIRY, S.grant_expiry_end(ctx.ts), limit)]
    for session in gone:
        _drop(ctx, session)
    return m.Expired(len(gone), 0)


def _bit(ctx, session, ino: int) -> tuple[bytes, bytearray, int]:
    """The block record of ``ino`` in ``session``'s live grant here, and the id's bit; ESTALE if
    none covers it."""
    if shard_of(ino) != ctx.shard:
        raise err.WrongShard(f"inode {ino:#x} belongs to shard {shard_of(ino)}")
    session = _session(session)
    exp = _expiry(ctx, session)
    if exp is None or exp < ctx.ts:
        raise err.Stale(f"inode id {ino:#x}: no live delegation of this session (expired?)")
    local = ino & LOCAL_MASK
    key = S.grant_block_key(session, local // DELEGATION_BLOCK)
    v = ctx.ov.get(key)
    if v is None:
        raise err.Stale(f"inode id {ino:#x} was not delegated to this session")
    return key, bytearray(v), local % DELEGATION_BLOCK


def check_delegated(ctx, session, ino: int) -> None:
    """Refuse (ESTALE) an id outside the caller's live grants or used before; EEXIST if an inode
    has it (cannot happen through grants; kept as the last guard of ids never shared)."""
    _, bits, k = _bit(ctx, session, ino)
    if bits[k >> 3] & (1 << (k & 7)):
        raise err.Stale(f"inode id {ino:#x} was used before")
    if ctx.maybe_inode(ino) is not None:
        raise err.Exists(f"inode {ino:#x} exists")


def use_delegated(ctx, session, ino: int) -> None:
    """Mark a checked id used (in the command that creates its inode). A grant that ran out
    since the check (a two-phase MKDIR's commit) has nothing left to mark: its other ids die
    with it, this one lives in its inode."""
    try:
        key, bits, k = _bit(ctx, session, ino)
    except err.DfsError:
        return
    bits[k >> 3] |= 1 << (k & 7)
    ctx.ov.put(key, bytes(bits))


def next_expiry(kv) -> int | None:
    """The earliest delegation expiry on a shard (None: no grants): the leader's task asks."""
    first = next(iter(kv.scan_prefix(S.P_GRANT_EXPIRY, 1)), None)
    return None if first is None else S.split_grant_expiry_key(first[0])[0]
