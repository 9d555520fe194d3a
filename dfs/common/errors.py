"""Errors of dfs, and the one table that maps them to errno values.

Every error that crosses a process boundary is an errno number; every error a
Python caller sees is a ``DfsError`` that is also the matching built-in
``OSError`` subclass, so ``except FileNotFoundError`` works on dfs as on a
local disk.

    OSError
     +-- DfsError                      (errno set, .strerror from os.strerror)
          +-- NotFound                 ENOENT   (also FileNotFoundError)
          +-- Exists                   EEXIST   (also FileExistsError)
          +-- NotADirectory            ENOTDIR  (also NotADirectoryError)
          +-- IsADirectory             EISDIR   (also IsADirectoryError)
          +-- PermissionDenied         EACCES   (also PermissionError)
          +-- NotPermitted             EPERM    (also PermissionError)
          +-- NotEmpty                 ENOTEMPTY
          +-- InvalidArgument          EINVAL
          +-- NameTooLong              ENAMETOOLONG
          +-- NoData                   ENODATA  (missing xattr)
          +-- NoSpace                  ENOSPC
          +-- Stale                    ESTALE   (stale chain version: refresh the map)
          +-- ChecksumError            EIO      (a block failed its CRC)
          +-- CrossDevice, Busy, NoSpace, TooManyLinks, ...
          +-- Conflict                 internal: a PREPARE met a held key or a snapshot
          |                            fence; its coordinator aborts and starts over
          +-- Retryable                internal: EAGAIN-class, retried by clients
               +-- NotLeader           carries the leader hint
               +-- Locked              a key is held by a cross-shard operation
               +-- Unavailable         no answer before the deadline
"""

from __future__ import annotations

import errno as E
import os

__all__ = [
    "DfsError",
    "NotFound",
    "Exists",
    "NotADirectory",
    "IsADirectory",
    "PermissionDenied",
    "NotPermitted",
    "NotEmpty",
    "InvalidArgument",
    "NameTooLong",
    "NoData",
    "NoSpace",
    "Stale",
    "ChecksumError",
    "Retryable",
    "NotLeader",
    "Locked",
    "Unavailable",
    "StaleEpoch",
    "WrongShard",
    "Conflict",
    "error_for",
    "LOCKED",
    "NOT_LEADER",
    "STALE_EPOCH",
    "WRONG_SHARD",
]

# Internal status codes above the errno range; they never reach a POSIX caller.
NOT_LEADER = 10001
LOCKED = 10002
STALE_EPOCH = 10003
WRONG_SHARD = 10004
UNAVAILABLE = 10005
CONFLICT = 10006


class DfsError(OSError):
    """Base of every dfs error; ``.errno`` is the POSIX errno."""

    errno_value: int = E.EIO

    def __init__(self, message: str | None = None, *, code: int | None = None):
        code = self.errno_value if code is None else code
        text = os.strerror(code) if code < 4096 else type(self).__name__
        super().__init__(code, f"{text}: {message}" if message else text)
        self.detail = message


def _cls(name: str, code: int, *bases: type) -> type[DfsError]:
    return type(name, (DfsError, *bases), {"errno_value": code, "__module__": __name__})


NotFound = _cls("NotFound", E.ENOENT, FileNotFoundError)
Exists = _cls("Exists", E.EEXIST, FileExistsError)
NotADirectory = _cls("NotADirectory", E.ENOTDIR, NotADirectoryError)
IsADirectory = _cls("IsADirectory", E.EISDIR, IsADirectoryError)
PermissionDenied = _cls("PermissionDenied", E.EACCES, PermissionError)
NotPermitted = _cls("NotPermitted", E.EPERM, PermissionError)
NotEmpty = _cls("NotEmpty", E.ENOTEMPTY)
InvalidArgument = _cls("InvalidArgument", E.EINVAL)
NameTooLong = _cls("NameTooLong", E.ENAMETOOLONG)
NoData = _cls("NoData", E.ENODATA)
NoSpace = _cls("NoSpace", E.ENOSPC)
Stale = _cls("Stale", E.ESTALE)


class ChecksumError(DfsError):
    """Stored data does not match its checksum (a bad block on a target)."""

    errno_value = E.EIO

    def __init__(self, message: str | None = None, *, block: int = -1, code: int | None = None):
        super().__init__(message, code=code)
        self.block = block


class Retryable(DfsError):
    """A condition that goes away by itself: the caller retries."""

    errno_value = E.EAGAIN


class NotLeader(Retryable):
    errno_value = NOT_LEADER

    def __init__(self, message: str | None = None, *, leader: str = "", code: int | None = None):
        super().__init__(message, code=code)
        self.leader = leader


class Locked(Retryable):
    errno_value = LOCKED


class Unavailable(Retryable):
    errno_value = UNAVAILABLE


class StaleEpoch(Retryable):
    errno_value = STALE_EPOCH


class WrongShard(DfsError):
    errno_value = WRONG_SHARD


class Conflict(DfsError):
    """A PREPARE could not take its locks (a key held by another operation, a snapshot's
    fence up). Not retried where it is received: the coordinator that sent it holds locks
    on other shards, so waiting there could wait on itself (two operations each holding
    what the other prepares, or a fence whose cut waits for this operation to end). The
    coordinator aborts what it prepared and runs the operation again from its reads."""

    errno_value = CONFLICT


_BY_CODE: dict[int, type[DfsError]] = {
    cls.errno_value: cls
    for cls in (
        NotFound, Exists, NotADirectory, IsADirectory, PermissionDenied, NotPermitted,
        NotEmpty, InvalidArgument, NameTooLong, NoData, NoSpace, Stale, NotLeader, Locked, Unavailable,
        StaleEpoch, WrongShard, Conflict,
    )
}
_BY_CODE[E.EAGAIN] = Retryable


def error_for(code: int, message: str | None = None) -> DfsError:
    """The exception for an errno (or internal status) received from the wire."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return DfsError(message, code=code)
    return cls(message)
