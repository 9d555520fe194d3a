"""Key schema of a metadata shard: every key prefix is registered here.

All integers are big-endian so that keys sort numerically. One shard's RocksDB
holds:

    I <ino:8>                       -> inode record (INODE struct below)
    D <parent:8> <hash:8> <name>    -> <child ino:8><child type:1>   (entries, in readdir order)
    L <ino:8>                       -> symlink target
    X <ino:8> <name>                -> xattr value
    R <request id>                  -> idempotency record: <ts:8><result>
    Y <ts:8> <request id>           -> expiry index of the R records
    P <op id>                       -> cross-shard operation record (prepared / coordinator intent)
    K <lock key>                    -> lock held by prepared cross-shard operations
    O <ino:8>                       -> orphan: a deleted regular file whose chunks are still to free,
                                       msgpack [layout, size, attr] (attr: its wire attributes at
                                       deletion, for a reader that still holds it open; records
                                       written before that field are [layout, size])
    B <ino:8>                       -> inline data of a FLAG_INLINE file: <high water:4><bytes>; the
                                       file's content is the bytes, then zeros up to its size; high
                                       water = the longest the bytes ever were (absent: never written)
    H <ino:8> <handle>              -> an open handle of a regular file: msgpack [expiry ns, access]
                                       (access: the R_OK | W_OK the open checked or created with;
                                       records without it are from before it was kept)
    J <expiry:8> <ino:8> <handle>   -> expiry index of the H records (empty value)
    G <session:16>                  -> a client session's delegation: <expiry ns:8> (DELEGATE)
    G <session:16> <block:8>        -> one delegated block of DELEGATION_BLOCK inode ids (local ids
                                       block * DELEGATION_BLOCK ...): a bitmap of the ids used
    W <expiry:8> <session:16>       -> expiry index of the G headers (empty value)
    M <name>                        -> shard bookkeeping (applied index, id counter, counts, epochs)
    V <escaped key> 00 00 <~epoch:8> -> history: an older value of a versioned key that a live
                                       snapshot still reads (dfs/kv/versioned.py)

**Versioned keys** (snapshots, docs/design/snapshots.md): the values of the
I, D, L, X and B keys start with the epoch they were written in (a varint);
``MetaStore`` reads and writes them through ``dfs.kv.versioned.Versioned``,
which keeps what live snapshots read in the V history. Store format 2 (``M
format``) is the one with epoch tags; a format-1 store is tagged at epoch 1
when it opens.

A directory's entries and its inode live on the directory's home shard; a
file's inode lives on the shard of the directory it was created in.
"""

from __future__ import annotations

import enum
import stat
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from dfs.common.ids import name_hash
from dfs.common.records import FLAG_INLINE, FLAG_LAZY, Attr

P_INODE = b"I"
P_DENTRY = b"D"
P_SYMLINK = b"L"
P_XATTR = b"X"
P_REQUEST = b"R"
P_EXPIRY = b"Y"
P_OP = b"P"
P_LOCK = b"K"
P_ORPHAN = b"O"
P_INLINE = b"B"
P_HANDLE = b"H"
P_HANDLE_EXPIRY = b"J"
P_GRANT = b"G"
P_GRANT_EXPIRY = b"W"
P_META = b"M"
P_HISTORY = b"V"
VERSIONED = (P_INODE, P_DENTRY, P_SYMLINK, P_XATTR, P_INLINE)  # what a snapshot holds

K_APPLIED = P_META + b"applied"
K_NEXT_INO = P_META + b"next_ino"
K_NINODES = P_META + b"ninodes"
K_SHARD = P_META + b"shard"
K_RENAME_EPOCH = P_META + b"rename_epoch"  # bumped each time a directory rename completes
# + u64 epoch: msgpack [inodes] the directory rename that took the epoch there re-parented
K_RENAMED = P_META + b"renamed/"
RENAMED_KEPT = 1024  # epochs whose re-parented directories shard 0 remembers
# msgpack [last term, until ns of that term, until ns of every earlier term]: how long read
# handles granted by a leader (in its memory, see OPENREAD) may live (READMARK)
K_READ_MARK = P_META + b"read_mark"
K_FORMAT = P_META + b"format"          # 2: versioned values carry their epoch
K_EPOCHS = P_META + b"epochs"          # dfs.kv.versioned.Epochs: write epoch, live snapshots
K_SNAP_FENCE = P_META + b"snap_fence"  # msgpack [snapshot, until ns]: 2PC PREPAREs wait (Locked)
FORMAT = 2

_Q = struct.Struct(">Q")


def u64(n: int) -> bytes:
    return _Q.pack(n)


def from_u64(b: bytes) -> int:
    return _Q.unpack(b)[0]


def _unpackb(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False, use_list=True, strict_map_key=False)


def inode_key(ino: int) -> bytes:
    return P_INODE + _Q.pack(ino)


def dentry_prefix(parent: int) -> bytes:
    return P_DENTRY + _Q.pack(parent)


def dentry_key(parent: int, name: bytes) -> bytes:
    return P_DENTRY + _Q.pack(parent) + _Q.pack(name_hash(name)) + name


def dentry_cookie_key(parent: int, cookie: int) -> bytes:
    return P_DENTRY + _Q.pack(parent) + _Q.pack(cookie)


def split_dentry_key(key: bytes) -> tuple[int, int, bytes]:
    """(parent, hash, name) of a dentry key."""
    return _Q.unpack_from(key, 1)[0], _Q.unpack_from(key, 9)[0], key[17:]


_DENT = struct.Struct(">QB")


def dentry_value(ino: int, mode: int) -> bytes:
    return _DENT.pack(ino, stat.S_IFMT(mode) >> 12)


def split_dentry_value(v: bytes) -> tuple[int, int]:
    ino, t = _DENT.unpack(v)
    return ino, t << 12


def symlink_key(ino: int) -> bytes:
    return P_SYMLINK + _Q.pack(ino)


def xattr_prefix(ino: int) -> bytes:
    return P_XATTR + _Q.pack(ino)


def xattr_key(ino: int, name: bytes) -> bytes:
    return P_XATTR + _Q.pack(ino) + name


def xattr_name(key: bytes) -> bytes:
    """The name in an X key."""
    return key[9:]


def orphan_key(ino: int) -> bytes:
    return P_ORPHAN + _Q.pack(ino)


def orphan_value(layout: int, size: int, attr: list) -> bytes:
    return msgpack.packb([layout, size, attr])


def split_orphan(key: bytes, value: bytes) -> tuple[int, int, int, list | None]:
    """(ino, layout, size, wire attributes or None) of an O record (records written before the
    attributes were kept have none)."""
    rec = _unpackb(value)
    return _Q.unpack_from(key, 1)[0], rec[0], rec[1], (rec[2] if len(rec) > 2 else None)


# idempotency records (R) and their expiry index (Y)

def request_key(rid: bytes) -> bytes:
    return P_REQUEST + rid


def request_value(ts: int, result: bytes) -> bytes:
    return _Q.pack(ts) + result


def request_result(value: bytes) -> bytes:
    """The packed result kept in an R record."""
    return value[8:]


def pack_result(status: int, payload: Any) -> bytes:
    """A command's result as the state machine answers and records it: [0, reply] or [errno, message]."""
    return msgpack.packb([status, payload])


def unpack(b: bytes) -> Any:
    """msgpack as every record here is written (str as str, lists as lists)."""
    return _unpackb(b)


def expiry_key(ts: int, rid: bytes) -> bytes:
    return P_EXPIRY + _Q.pack(ts) + rid


def expiry_end(ts: int) -> bytes:
    """Every Y key of a record stamped before ``ts`` sorts before this."""
    return P_EXPIRY + _Q.pack(ts)


def request_key_of_expiry(key: bytes) -> bytes:
    """The R key a Y key indexes."""
    return P_REQUEST + key[9:]


def inline_key(ino: int) -> bytes:
    return P_INLINE + _Q.pack(ino)


def handle_prefix(ino: int) -> bytes:
    return P_HANDLE + _Q.pack(ino)


def handle_key(ino: int, handle: bytes) -> bytes:
    return P_HANDLE + _Q.pack(ino) + handle


def split_handle_key(key: bytes) -> tuple[int, bytes]:
    """(ino, handle) of an H key."""
    return _Q.unpack_from(key, 1)[0], key[9:]


def handle_value(expiry: int, access: int = 0) -> bytes:
    return msgpack.packb([expiry, access])


def handle_expiry(value: bytes) -> int:
    return _unpackb(value)[0]


def handle_access(value: bytes) -> int:
    """The R_OK | W_OK an open handle was granted (0: unchecked, or a record from before)."""
    v = _unpackb(value)
    return v[1] if len(v) > 1 else 0


def handle_expiry_key(expiry: int, ino: int, handle: bytes) -> bytes:
    return P_HANDLE_EXPIRY + _Q.pack(expiry) + _Q.pack(ino) + handle


def handle_expiry_end(ts: int) -> bytes:
    """Every J key of an expiry before ``ts`` sorts before this."""
    return P_HANDLE_EXPIRY + _Q.pack(max(0, ts))


def split_handle_expiry_key(key: bytes) -> tuple[int, int, bytes]:
    """(expiry, ino, handle) of a J key."""
    return _Q.unpack_from(key, 1)[0], _Q.unpack_from(key, 9)[0], key[17:]


_HW = struct.Struct(">I")


def inline_value(data: bytes, high_water: int) -> bytes:
    return _HW.pack(max(high_water, len(data))) + data


def split_inline_value(v: bytes) -> tuple[bytes, int]:
    """(data, high water) of a B record."""
    return v[4:], _HW.unpack_from(v)[0]


def read_mark_value(last: int, mine: int, earlier: int) -> bytes:
    return msgpack.packb([last, mine, earlier])


def split_read_mark(value: bytes | None) -> tuple[int, int, int]:
    """(last term, until ns of that term's read handles, until ns of earlier terms')."""
    return (0, 0, 0) if value is None else tuple(_unpackb(value))  # type: ignore[return-value]



# delegated inode ids (G, W): see dfs.meta.ops.delegate

def grant_key(session: bytes) -> bytes:
    """The header of a session's delegation (its expiry)."""
    return P_GRANT + session


def grant_block_key(session: bytes, block: int) -> bytes:
    return P_GRANT + session + _Q.pack(block)


def split_grant_key(key: bytes, session_len: int) -> int | None:
    """The block of a G key (None: the session's header)."""
    rest = key[1 + session_len:]
    return _Q.unpack(rest)[0] if rest else None


def grant_expiry_key(expiry: int, session: bytes) -> bytes:
    return P_GRANT_EXPIRY + _Q.pack(max(0, expiry)) + session


def grant_expiry_end(ts: int) -> bytes:
    """Where the W keys of delegations expired before ``ts`` end."""
    return P_GRANT_EXPIRY + _Q.pack(max(0, ts))


def split_grant_expiry_key(key: bytes) -> tuple[int, bytes]:
    """(expiry ns, session) of a W key."""
    return _Q.unpack_from(key, 1)[0], key[9:]


# locks (K) held by prepared cross-shard operations

class LockMode(enum.StrEnum):
    SHARED = "S"
    EXCLUSIVE = "X"


_LOCK_INODE = b"i"
_LOCK_DENTRY = b"d"


def lock_key_inode(ino: int) -> bytes:
    return _LOCK_INODE + _Q.pack(ino)


def lock_key_dentry(parent: int, name: bytes) -> bytes:
    return _LOCK_DENTRY + _Q.pack(parent) + name


def inode_of_lock_key(key: bytes) -> int | None:
    """The inode an inode lock key names (None for other lock keys)."""
    return _Q.unpack_from(key, 1)[0] if key[:1] == _LOCK_INODE else None


LOCK_RENAME = b"g:rename"  # the cluster-wide ordering point of directory renames (shard 0)


def lock_record_key(key: bytes) -> bytes:
    return P_LOCK + key


def lock_value(mode: LockMode, holders: list[bytes]) -> bytes:
    return msgpack.packb([str(mode), holders])


def split_lock_value(value: bytes | None) -> tuple[LockMode | None, list[bytes]]:
    """(mode, holding operation ids) of a K record (None, []: no lock)."""
    if value is None:
        return None, []
    mode, holders = _unpackb(value)
    return LockMode(mode), holders


# cross-shard operation records (P)

class OpState(enum.StrEnum):
    """Where a cross-shard operation stands on a shard (OPSTATUS, ABORT answer these)."""

    NONE = ""  # no record: never prepared here, or finished and forgotten
    PREPARED = "P"
    COMMITTED = "C"
    ABORTED = "A"  # ABORT's answer: undone (or there was nothing to undo)


def op_key(op_id: bytes) -> bytes:
    return P_OP + op_id


def op_id_of(key: bytes) -> bytes:
    return key[1:]


@dataclass(slots=True)
class OpRecord:
    """A P record: a cross-shard operation prepared on this shard. On its coordinator it is
    the intent (``parts`` set) and, once committed, the decision with the client's reply.
    Kept as a msgpack map with the short keys of its first format."""

    coord: int  # the coordinator shard
    actions: list  # the wire actions (dfs.meta.ops.actions) prepared here
    ts: int  # when it was prepared
    state: OpState
    res: list  # PREPARE's answer, for a repeated PREPARE
    st: dict  # the actions' shared state (new_ino, op_id)
    locks: list[tuple[bytes, LockMode]]
    rid: bytes = b""  # the client's request id (coordinator)
    parts: list[int] | None = None  # the other participants (coordinator only)
    reply: Any = None  # the decided reply (coordinator, once committed)
    has_reply: bool = field(default=False)

    def pack(self) -> bytes:
        rec: dict[str, Any] = {"c": self.coord, "a": self.actions, "t": self.ts, "s": str(self.state),
                               "res": self.res, "st": self.st,
                               "l": [[k, str(m)] for k, m in self.locks], "rid": self.rid}
        if self.parts is not None:
            rec["parts"] = self.parts
        if self.has_reply:
            rec["reply"] = self.reply
        return msgpack.packb(rec)

    @classmethod
    def unpack(cls, value: bytes) -> OpRecord:
        rec = _unpackb(value)
        return cls(rec["c"], rec["a"], rec["t"], OpState(rec["s"]), rec["res"], rec["st"],
                   [(k, LockMode(m)) for k, m in rec["l"]], rec.get("rid") or b"", rec.get("parts"),
                   rec.get("reply"), "reply" in rec)

    @property
    def is_coordinator(self) -> bool:
        return self.parts is not None


FLAG_XATTRS = 1  # the inode has (or had) extended attributes
# FLAG_INLINE = 2 (from dfs.common.records): a regular file whose bytes are in its B record
# FLAG_LAZY = 4 (from dfs.common.records): a directory whose tree clients change lazily (SETLAZY)
CLIENT_FLAGS = FLAG_INLINE | FLAG_LAZY  # the bits Attr.flags shows
INHERITED_FLAGS = FLAG_INLINE | FLAG_LAZY  # the directory policies a new subdirectory takes


class Inode:
    """A mutable inode record, used inside the state machine only."""

    __slots__ = ("ino", "mode", "nlink", "uid", "gid", "rdev", "size",
                 "atime", "mtime", "ctime", "parent", "flags", "layout", "dver")

    _S = struct.Struct(">QIIIIQQqqqQIIQ")
    _S_V2 = struct.Struct(">QIIIIQQqqqQII")  # before the data version (read as 0)
    _S_V1 = struct.Struct(">QIIIIQQqqqQI")  # before the layout field (read as layout 0)

    def __init__(self, ino: int, mode: int, nlink: int, uid: int, gid: int, rdev: int, size: int,
                 atime: int, mtime: int, ctime: int, parent: int = 0, flags: int = 0, layout: int = 0,
                 dver: int = 0) -> None:
        self.ino = ino
        self.mode = mode
        self.nlink = nlink
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.size = size
        self.atime = atime
        self.mtime = mtime
        self.ctime = ctime
        self.parent = parent  # directories: the parent directory (for '..' and cycle checks)
        self.flags = flags  # FLAG_* bits; reserved: snapshot bits in later versions
        # The packed dfs.common.layout.Layout (0 = the default). Files: fixed at
        # create (the parent's); directories: the default their new children inherit.
        self.layout = layout
        # Regular files: the data version, bumped by everything that may change the bytes
        # (a write open, EXTEND, a size change, inline writes, a write handle's expiry):
        # bytes read at one version may be cached under it (docs/design/data.md).
        self.dver = dver

    def bump_data(self) -> None:
        """The bytes may change: a new data version."""
        self.dver += 1

    def pack(self) -> bytes:
        return self._S.pack(self.ino, self.mode, self.nlink, self.uid, self.gid, self.rdev,
                            self.size, self.atime, self.mtime, self.ctime, self.parent, self.flags, self.layout,
                            self.dver)

    @classmethod
    def unpack(cls, b: bytes) -> Inode:
        if len(b) == cls._S_V2.size:
            return cls(*cls._S_V2.unpack(b))
        if len(b) == cls._S_V1.size:
            return cls(*cls._S_V1.unpack(b))
        return cls(*cls._S.unpack(b))

    def wire(self) -> list:
        """The client-visible attributes: the fields of ``Attr``, in order (the data version
        only where there is one)."""
        w = [self.ino, self.mode, self.nlink, self.uid, self.gid, self.rdev, self.size,
             self.atime, self.mtime, self.ctime, self.layout, self.flags & CLIENT_FLAGS]
        if self.dver:
            w.append(self.dver)
        return w

    # what a reply's Attr field may hold on the shard: encoded as Attr, without building one
    __wire__ = wire

    def attr(self) -> Attr:
        return Attr(*self.wire())

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)
