"""The op registry of a shard, and the checks the op modules share.

Each op module registers the shard side of its ops against their request
classes (``dfs.common.messages``) with one of four decorators, one per
``Kind``:

    @apply(m.Create)       def create(ctx, req) -> reply       LOGGED: MetaStore.apply runs it
    @read(m.Lookup)        def lookup(ctx, req) -> reply       READ: MetaStore.read runs it
    @serve(m.OpenRead)     async def open_read(svc, rid, caller, req) -> reply
                                                               READ_HANDLE: ShardService runs it
    @coordinate(m.Mkdir, answer)  async def mkdir(coord, rid, caller, req) -> ActionResult | None
                                                               COORDINATED: the Coordinator runs it
    @lead(m.SnapCreate)    async def create(svc, rid, caller, req) -> reply
                                                               LEADER: ShardService runs it

``HANDLERS`` (op code -> ``Handler``) is what MetaStore's dispatch,
ShardService's routing and the protocol table read; ``dfs.meta.ops`` checks
that every registered request class has exactly one handler.

May import dfs.common, dfs.meta.schema and dfs.meta.readhandles; not the store,
the service or the coordinator (they import the registry).
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from typing import Any

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.limits import NAME_MAX
from dfs.common.ops import HANDLE_MAX, MAX_LEASE_S, Op
from dfs.common.perm import check_mode
from dfs.common.records import Caller
from dfs.meta.schema import Inode

R_OK, W_OK, X_OK = 4, 2, 1  # access mask bits (as os.R_OK ...)


class Handler:
    """An op's shard side: its request class, its function and what the kind needs."""

    __slots__ = ("request", "fn", "answer", "admit", "op", "kind", "internal", "decode")

    def __init__(self, request: type[m.Request], fn: Callable[..., Any],
                 answer: Callable[[Any, m.ActionResult | None], Any] | None = None,
                 admit: Callable[[Any, Any], None] | None = None) -> None:
        self.request = request
        self.fn = fn
        self.answer = answer  # COORDINATED: the client's reply of the plan's result
        self.admit = admit  # LOGGED: the leader's check before logging
        self.op: Op = request.OP
        self.kind: m.Kind = request.KIND
        self.internal: bool = request.INTERNAL
        # the request's generated decoder (untrusted input: InvalidArgument unless well-formed)
        self.decode: Callable[[Any], Any] = m.codec(request).strict

    @property
    def module(self) -> str:
        return self.fn.__module__


HANDLERS: dict[Op, Handler] = {}


def _register(req: type[m.Request], kind: m.Kind, **kw) -> Callable:
    if req.KIND is not kind:
        raise TypeError(f"{req.__name__} is served as {req.KIND}, not {kind}")

    def deco(fn: Callable) -> Callable:
        if req.OP in HANDLERS:
            raise TypeError(f"{req.OP!r} has two handlers")
        HANDLERS[req.OP] = Handler(req, fn, **kw)
        return fn
    return deco


def apply(req: type[m.Request], *, admit: Callable[[Any, Any], None] | None = None) -> Callable:
    """A logged op: ``fn(ctx, req)`` runs inside MetaStore.apply (deterministic, no I/O but ctx)."""
    return _register(req, m.Kind.LOGGED, admit=admit)


def read(req: type[m.Request]) -> Callable:
    """A read: ``fn(ctx, req)`` against the leader's applied state (ctx never writes)."""
    return _register(req, m.Kind.READ)


def serve(req: type[m.Request]) -> Callable:
    """A read-handle op: ``async fn(svc, rid, caller, req)`` on the leader."""
    return _register(req, m.Kind.READ_HANDLE)


def lead(req: type[m.Request]) -> Callable:
    """An op the leader runs as a task of its own: ``async fn(svc, rid, caller, req)``."""
    return _register(req, m.Kind.LEADER)


def coordinate(req: type[m.Request], answer: Callable[[Any, m.ActionResult | None], Any]) -> Callable:
    """A cross-shard op: ``async fn(coord, rid, caller, req)`` plans and executes it and returns
    the ActionResult; ``answer(req, result)`` makes the client's reply of it (also of a result
    recorded by an earlier attempt)."""
    return _register(req, m.Kind.COORDINATED, answer=answer)


def handler(op: int) -> Handler:
    """The handler of op code ``op``; InvalidArgument for an unknown one."""
    h = HANDLERS.get(op)  # type: ignore[call-overload]
    if h is None:
        raise err.InvalidArgument(f"unknown op {op}")
    return h


# ------------------------------------------------------------------ shared checks

def check_name(name: bytes) -> None:
    if not isinstance(name, bytes) or not name or name in (b".", b".."):
        raise err.InvalidArgument("bad name")
    if len(name) > NAME_MAX:
        raise err.NameTooLong()
    if b"/" in name or b"\0" in name:
        raise err.InvalidArgument("name contains '/' or NUL")


def check_access(ino: Inode, caller: Caller, mask: int) -> None:
    check_mode(ino.mode, ino.uid, ino.gid, caller, mask)


def check_access_wire(attr: Any, caller: Caller, mask: int) -> None:
    """``check_access`` on client-visible attributes (an ``Attr``)."""
    check_mode(attr.mode, attr.uid, attr.gid, caller, mask)


def check_sticky(parent: Inode, child_uid: int, caller: Caller) -> None:
    if parent.mode & stat.S_ISVTX and caller.uid not in (0, parent.uid, child_uid):
        raise err.NotPermitted("sticky directory")


def lease_ns(lease_s: Any) -> int:
    if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or not 0 < lease_s <= MAX_LEASE_S:
        raise err.InvalidArgument(f"lease must be in (0, {MAX_LEASE_S}] seconds")
    return int(lease_s * 1_000_000_000)


def check_handle(handle: Any) -> None:
    if not isinstance(handle, bytes) or not 0 < len(handle) <= HANDLE_MAX:
        raise err.InvalidArgument("handle id: 1 to 64 bytes")


def check_open_access(access: Any, allowed: int) -> None:
    """An open's ``access`` mask: only the bits ``allowed`` (R_OK | W_OK, or R_OK for read handles)."""
    if not isinstance(access, int) or access & ~allowed:
        raise err.InvalidArgument("access: R_OK | W_OK" if allowed & W_OK else "access: R_OK (read handles)")
