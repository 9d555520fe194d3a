"""Op codes of the metadata protocol and the layout of their msgpack bodies.

A request body is ``[arg, ...]`` in the order given here; a reply body is
the op's result. The same command bytes travel client -> leader -> Raft log,
with the leader prefixing the header (request id, timestamp, caller).

    reads (served by the shard leader, never logged)
      LOOKUP      parent, name                      -> attr
      GETATTR     ino                               -> attr
      READDIR     ino, cookie, limit, plus          -> [[name, ino, type, next_cookie, attr|nil]...], eof
      READLINK    ino                               -> target
      GETXATTR    ino, name                         -> value
      LISTXATTR   ino                               -> [name...]
      STATFS                                        -> [files, ...]
      GETATTRS    [ino...][, scan]                  -> [attr|errno ...]   (batch getattr, one shard;
                                                       scan: a deleted file whose chunks the leader
                                                       has still to free answers EBUSY, not ENOENT)
      OPSTATUS    op_id                             -> "P" | "C" | ""     (internal, 2PC recovery)
      DIRPARENT   ino                               -> parent ino         (internal, lock-aware)
      RENAMEEPOCH                                   -> n                  (internal, shard 0)
      REQSTATUS   request_id                        -> [status, result] | nil (internal)
      ORPHANS     limit                             -> [[ino, layout, size]...] (internal: deleted
                                                       files whose chunks are still to free)
      READINLINE  ino                               -> [data, high_water] (an inline file's bytes:
                                                       data, then zeros up to its size; ENOTSUP if
                                                       the file is not inline; owner, root or r)
    single-shard mutations (group-committed through Raft)
      CREATE      parent, name, mode, rdev, excl, umask, target[, inline] -> attr, created
                                                    (a new regular file is inline (FLAG_INLINE) if
                                                     inline, or, without it, if its directory is)
      SETATTR     ino, valid, mode, uid, gid, size, atime, mtime -> attr
      SETXATTR    ino, name, value, flags           -> nil
      REMOVEXATTR ino, name                         -> nil
      SETLAYOUT   ino, layout[, inline]             -> attr  (directories; owner or root; packed
                                                       dfs.common.layout.Layout, 0 = default;
                                                       inline: the directory's small-files policy,
                                                       FLAG_INLINE, inherited by new files/subdirs)
      ORPHANDONE  ino                               -> nil   (internal: the orphan's chunks are freed)
      EXTEND      ino, size                         -> attr  (a writer's close/fsync: size = max(size, n),
                                                       mtime = ctime = now; regular files; the writer's
                                                       open already checked its access)
      OPEN        ino, handle, lease_s              -> attr  (regular files: records open handle
                                                       `handle` (client-chosen, 16 random bytes) until
                                                       ts + lease; a repeat extends it; EISDIR,
                                                       EINVAL other types, ENOENT no such inode)
      RENEW       [[ino, handle]...], lease_s       -> [errno...]  (per pair: 0 = extended to
                                                       ts + lease, ENOENT = the handle is gone)
      CLOSE       ino, handle                       -> deleted (bool: this close freed the inode:
                                                       it had no link and no other handle)
      EXPIREHANDLES [limit]                         -> [expired, freed]  (internal: drops handles
                                                       whose expiry < the command's ts, then frees
                                                       link-less inodes left without handles)
      READMARK    term, until_ns                    -> nil   (internal: read handles granted in
                                                       Raft term `term` live until at most until_ns;
                                                       a later leader frees no orphan before that)
    read handles (served by the shard leader from its memory, never logged)
      OPENREAD    ino, handle, lease_s[, access]    -> [attr, durable]  (as OPEN, for reading: the
                                                       handle lives in the leader's memory, no Raft
                                                       round; durable = the leader logged an OPEN
                                                       instead (inline files), so the client
                                                       renews and closes it with RENEW / CLOSE)
      RENEWREAD   [[ino, handle]...], lease_s       -> [errno...]  (extends, or adopts after a
                                                       failover while the file or its orphan exists)
      CLOSEREAD   [[ino, handle]...]                -> nil
      LOOKUPOPEN  parent, name, handle, lease_s[, access] -> [ino, mode, attr|nil, opened]  (LOOKUP,
                                                       then OPENREAD of a regular file on this shard,
                                                       in one round trip: opened 0 = not opened (not a
                                                       regular file, or on another shard), 1 = a read
                                                       handle, 2 = a durable one)
    namespace operations that may span shards (run by the coordinator)
      MKDIR       parent, name, mode, umask         -> attr
      RMDIR       parent, name                      -> nil
      UNLINK      parent, name                      -> nil
      RENAME      sparent, sname, dparent, dname, flags -> nil
      LINK        ino, parent, name                 -> attr
    two-phase primitives (internal, shard to shard)
      ONEPHASE    op_id, actions                    -> result
      PREPARE     op_id, coord, actions, parts      -> prepare result
      COMMIT      op_id, reply                      -> result
      ABORT       op_id                             -> nil
      FORGET      op_id                             -> nil
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


READS = frozenset({Op.LOOKUP, Op.GETATTR, Op.READDIR, Op.READLINK, Op.GETXATTR, Op.LISTXATTR,
                   Op.STATFS, Op.GETATTRS, Op.OPSTATUS, Op.DIRPARENT, Op.RENAMEEPOCH,
                   Op.REQSTATUS, Op.ORPHANS, Op.READINLINE})
LOGGED = frozenset({Op.CREATE, Op.SETATTR, Op.SETXATTR, Op.REMOVEXATTR, Op.SETLAYOUT, Op.ORPHANDONE, Op.EXTEND,
                    Op.WRITEINLINE, Op.MIGRATE, Op.OPEN, Op.RENEW, Op.CLOSE, Op.EXPIREHANDLES, Op.READMARK,
                    Op.ONEPHASE, Op.PREPARE, Op.COMMIT, Op.ABORT, Op.FORGET})
READ_HANDLES = frozenset({Op.OPENREAD, Op.RENEWREAD, Op.CLOSEREAD, Op.LOOKUPOPEN})
COORDINATED = frozenset({Op.MKDIR, Op.RMDIR, Op.UNLINK, Op.RENAME, Op.LINK})
INTERNAL = frozenset({Op.OPSTATUS, Op.DIRPARENT, Op.RENAMEEPOCH, Op.REQSTATUS, Op.ONEPHASE, Op.PREPARE, Op.COMMIT, Op.ABORT,
                      Op.FORGET, Op.ORPHANS, Op.ORPHANDONE, Op.EXPIREHANDLES, Op.READMARK})



def inline_digest(data: bytes) -> bytes:
    """What MIGRATE compares: the inline bytes a migrating writer copied."""
    return hashlib.blake2b(bytes(data), digest_size=16).digest()


# open handles (OPEN / RENEW): the default lease and the longest one a shard grants
DEFAULT_LEASE_S = 30.0
MAX_LEASE_S = 3600.0
HANDLE_MAX = 64  # bytes of a handle id (clients use 16 random bytes)


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
