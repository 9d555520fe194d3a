"""Op codes and flag constants of the metadata protocol.

What each op takes and answers is typed in ``dfs.common.messages`` (one request
and one reply record per op, registered by op code); the table of all of
them, with their wire layout, is docs/protocol.md, generated from that
registry by scripts/gen_protocol.py. The shard side of each op is its module
in ``dfs.meta.ops``.

Imports nothing from dfs.
"""

from __future__ import annotations

import enum
import hashlib


class Op(enum.IntEnum):
    LOOKUP = 1
    GETATTR = 2
    READDIR = 3
    READLINK = 4
    GETXATTR = 5
    LISTXATTR = 6
    STATFS = 7
    GETATTRS = 8
    OPSTATUS = 9
    DIRPARENT = 10
    RENAMEEPOCH = 11
    REQSTATUS = 12
    ORPHANS = 13
    READINLINE = 14
    OPENREAD = 15
    RENEWREAD = 16
    CLOSEREAD = 17
    LOOKUPOPEN = 18

    CREATE = 20
    SETATTR = 21
    SETXATTR = 22
    REMOVEXATTR = 23
    SETLAYOUT = 24
    ORPHANDONE = 25
    EXTEND = 26
    WRITEINLINE = 27
    MIGRATE = 28
    OPEN = 29
    RENEW = 30
    CLOSE = 31
    EXPIREHANDLES = 32
    READMARK = 33

    MKDIR = 40
    RMDIR = 41
    UNLINK = 42
    RENAME = 43
    LINK = 44

    ONEPHASE = 60
    PREPARE = 61
    COMMIT = 62
    ABORT = 63
    FORGET = 64

    SNAPCREATE = 70
    SNAPDELETE = 71
    SNAPFENCE = 72
    SNAPBEGIN = 73
    SNAPEND = 74
    SNAPPRUNE = 75
    SNAPSTATUS = 76

    # write-back (lazy mode, docs/design/writeback.md): delegated inode ids, ordered batches
    DELEGATE = 80
    RENEWDELEGATION = 81
    EXPIREDELEGATIONS = 82
    SETLAZY = 83
    BATCH = 84

    # data-plane capabilities (dfs.common.caps, docs/design/security.md)
    CAPS = 90


def inline_digest(data: bytes) -> bytes:
    """What MIGRATE compares: the inline bytes a migrating writer copied."""
    return hashlib.blake2b(bytes(data), digest_size=16).digest()


# open handles (OPEN / RENEW): the default lease and the longest one a shard grants
DEFAULT_LEASE_S = 30.0
MAX_LEASE_S = 3600.0
HANDLE_MAX = 64  # bytes of a handle id (clients use 16 random bytes)


# delegated inode ids (DELEGATE): granted in aligned blocks of this many ids; a client
# session id is this many bytes; the longest grant a shard gives at once
DELEGATION_BLOCK = 1024
SESSION_BYTES = 16
DELEGATE_MAX = 64 * DELEGATION_BLOCK
DEFAULT_DELEGATION_LEASE_S = 60.0


# setattr 'valid' bits (as FUSE's SETATTR_*)
SET_MODE = 1 << 0
SET_UID = 1 << 1
SET_GID = 1 << 2
SET_SIZE = 1 << 3
SET_ATIME = 1 << 4
SET_MTIME = 1 << 5
SET_ATIME_NOW = 1 << 7
SET_MTIME_NOW = 1 << 8
SET_CTIME = 1 << 10

# rename flags (as Linux renameat2)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

# setxattr flags
XATTR_CREATE = 1
XATTR_REPLACE = 2
