"""The registry of metadata requests: ``Kind``, the ``Request`` base, ``@request`` and the
table ``REQUESTS`` (op code -> request class) that the store, the service, the client and
scripts/gen_protocol.py are driven by. The request and reply records themselves are in
``dfs.common.messages``, which re-exports all of this.

Imports dfs.common only.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar

from dfs.common import errors as err
from dfs.common.ids import shard_of
from dfs.common.ops import Op
from dfs.common.wire import codec, register

__all__ = ["Kind", "Request", "REQUESTS", "request", "request_class", "is_internal"]


class Kind(enum.Enum):
    """How a shard serves an op (``ShardService`` routes by it)."""

    READ = "read"  # the leader, from applied state; never logged
    LOGGED = "logged"  # a command through Raft (group-committed), applied by MetaStore
    READ_HANDLE = "read handle"  # the leader, from its memory (dfs.meta.readhandles); never logged
    COORDINATED = "coordinated"  # may span shards: the coordinator plans it into 2PC actions
    LEADER = "leader"  # the leader runs it as a task of its own (snapshot coordination), itself unlogged


class Request:
    """Base of the request records: wire codec and routing."""

    __slots__ = ()
    OP: ClassVar[Op]
    KIND: ClassVar[Kind]
    REPLY: ClassVar[type]
    INTERNAL: ClassVar[bool]  # shard to shard only: the server refuses it from clients

    def to_wire(self) -> list:
        return codec(type(self)).encode(self)

    @classmethod
    def from_wire(cls, v: Any) -> Any:
        """Decode an untrusted body: InvalidArgument unless every field has its type."""
        return codec(cls).strict(v)

    @classmethod
    def reply_from_wire(cls, v: Any) -> Any:
        return codec(cls.REPLY).loose(v)

    def shard(self, nshards: int) -> int:
        """The shard a client sends this request to."""
        return shard_of(self.ino)  # type: ignore[attr-defined]


REQUESTS: dict[Op, type[Request]] = {}


def request(code: Op, kind: Kind, reply: type, *, internal: bool = False):
    """Register a request class for op ``code``, served as ``kind``, answered with ``reply``."""
    def deco(cls: type) -> type:
        if code in REQUESTS:
            raise TypeError(f"{code!r} registered twice")
        cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
        register(cls, trim=True)
        codec(reply)
        cls.OP, cls.KIND, cls.REPLY, cls.INTERNAL = code, kind, reply, internal
        REQUESTS[code] = cls
        return cls
    return deco


def request_class(op: int) -> type[Request]:
    """The request class of op code ``op``; InvalidArgument for an unknown code."""
    try:
        return REQUESTS[Op(op)]
    except (ValueError, KeyError):
        raise err.InvalidArgument(f"unknown op {op}") from None


def is_internal(op: int) -> bool:
    cls = REQUESTS.get(op)  # type: ignore[call-overload]
    return cls is not None and cls.INTERNAL
