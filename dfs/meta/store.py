"""The metadata shard's state machine: namespace rules over a KV engine.

``MetaStore.apply`` is the only writer. It is deterministic (time, caller and
request id come inside each command), applies one Raft entry of many commands
in one atomic write batch together with the entry's index, answers repeated
request ids from their idempotency records, and never raises: every command
gets a result, ``[0, payload]`` or ``[errno, message]``.

Reads (``MetaStore.read``) run on the leader against applied state.

Cross-shard operations reach a shard as *actions* (see ``_validate_action``)
inside PREPARE / COMMIT / ABORT / ONEPHASE commands; ``dfs.meta.coordinator``
decides which actions go where. This module may not import grpc, pysyncobj or
anything above ``dfs.kv``.
"""

from __future__ import annotations

import errno as E
import logging
import os
import shutil
import stat
from collections.abc import Callable

import msgpack

from dfs.common import errors as err
from dfs.common.ids import LOCAL_MASK, ROOT_INO, make_ino, shard_of
from dfs.common.layout import DEFAULT_LAYOUT, Layout
from dfs.common.limits import (
    INLINE_MAX,
    LINK_MAX,
    NAME_MAX,
    SYMLINK_MAX,
    XATTR_NAME_MAX,
    XATTR_SIZE_MAX,
)
from dfs.common.ops import (
    HANDLE_MAX,
    MAX_LEASE_S,
    SET_ATIME,
    SET_ATIME_NOW,
    SET_CTIME,
    SET_GID,
    SET_MODE,
    SET_MTIME,
    SET_MTIME_NOW,
    SET_SIZE,
    SET_UID,
    XATTR_CREATE,
    XATTR_REPLACE,
    Op,
    inline_digest,
)
from dfs.common.perm import check_mode
from dfs.common.records import Caller
from dfs.consensus.api import StateMachine
from dfs.kv import KV
from dfs.kv.overlay import Overlay
from dfs.meta import schema as S
from dfs.meta.schema import Inode

log = logging.getLogger(__name__)

packb = msgpack.packb


def unpackb(b: bytes):
    return msgpack.unpackb(b, raw=False, use_list=True, strict_map_key=False)


IDEMPOTENCY_TTL_NS = 15 * 60 * 10**9  # a retry older than this is a new request
PRUNE_PER_ENTRY = 64

R_OK, R_W, R_X = 4, 2, 1
R_R = R_OK


def encode_command(op: int, rid: bytes, ts: int, caller: Caller, args: list) -> bytes:
    return packb([int(op), rid, ts, caller.uid, caller.gid, list(caller.groups), args])


def ok(payload=None) -> bytes:
    return packb([0, payload])


def fail(code: int, message: str = "") -> bytes:
    return packb([code, message])


# ------------------------------------------------------------------ checks

def check_name(name: bytes) -> None:
    if not isinstance(name, bytes) or not name or name in (b".", b".."):
        raise err.InvalidArgument("bad name")
    if len(name) > NAME_MAX:
        raise err.NameTooLong()
    if b"/" in name or b"\0" in name:
        raise err.InvalidArgument("name contains '/' or NUL")


def check_access(ino: Inode, caller: Caller, mask: int) -> None:
    check_mode(ino.mode, ino.uid, ino.gid, caller, mask)


def check_sticky(parent: Inode, child_uid: int, caller: Caller) -> None:
    if parent.mode & stat.S_ISVTX and caller.uid not in (0, parent.uid, child_uid):
        raise err.NotPermitted("sticky directory")


class Ctx:
    """One command's view: its overlay, time, caller."""

    __slots__ = ("ov", "ts", "caller", "rid", "store")

    def __init__(self, store: MetaStore, ov: Overlay, ts: int, caller: Caller, rid: bytes) -> None:
        self.store = store
        self.ov = ov
        self.ts = ts
        self.caller = caller
        self.rid = rid

    # inodes
    def inode(self, ino: int) -> Inode:
        self.store.check_owned(ino)
        b = self.ov.get(S.inode_key(ino))
        if b is None:
            raise err.NotFound(f"inode {ino:#x}")
        return Inode.unpack(b)

    def maybe_inode(self, ino: int) -> Inode | None:
        b = self.ov.get(S.inode_key(ino))
        return None if b is None else Inode.unpack(b)

    def dir(self, ino: int) -> Inode:
        i = self.inode(ino)
        if not i.is_dir():
            raise err.NotADirectory()
        return i

    def put(self, i: Inode) -> None:
        self.ov.put(S.inode_key(i.ino), i.pack())

    def alloc_ino(self) -> int:
        ov = self.ov
        b = ov.get(S.K_NEXT_INO)
        n = S.from_u64(b) if b else (2 if self.store.shard == 0 else 1)
        ov.put(S.K_NEXT_INO, S.u64(n + 1))
        return make_ino(self.store.shard, n & LOCAL_MASK)

    def count_inodes(self, delta: int) -> None:
        b = self.ov.get(S.K_NINODES)
        self.ov.put(S.K_NINODES, S.u64((S.from_u64(b) if b else 0) + delta))

    def delete_inode(self, i: Inode) -> None:
        ov = self.ov
        ov.delete(S.inode_key(i.ino))
        if i.flags & S.FLAG_INLINE:
            # Its bytes go with it; it has no chunks (a copy a failed migration left
            # on the data servers is the data servers' orphan scan's to remove).
            ov.delete(S.inline_key(i.ino))
        elif stat.S_ISREG(i.mode) and i.size > 0:
            # Its chunks are freed later, by the orphan task of the leader. A file of size 0
            # has none, but for bytes a writer sent without publishing a size yet: those are
            # the data servers' orphan scan's (after its grace), not worth a record here.
            ov.put(S.orphan_key(i.ino), packb([i.layout, i.size, i.wire()]))
        if stat.S_ISLNK(i.mode):
            ov.delete(S.symlink_key(i.ino))
        if i.flags & S.FLAG_XATTRS:
            for k, _ in list(ov.scan_prefix(S.xattr_prefix(i.ino))):
                ov.delete(k)
        self.count_inodes(-1)

    def has_handles(self, ino: int) -> bool:
        """Whether some client holds ``ino`` open: an H record (one past its expiry counts until EXPIREHANDLES drops it)."""
        return next(iter(self.ov.scan_prefix(S.handle_prefix(ino), 1)), None) is not None

    def reap_unlinked(self, i: Inode, op_id: bytes | None = None) -> bool:
        """The one way a file whose last link went is deleted (unlink, rename over it,
        a released lock, the last CLOSE, an expired handle): delete it (and write its orphan
        record) unless it is still open (H records) or another operation holds a lock on
        it (whose release comes back here). Returns whether it was deleted; a kept inode
        stays with nlink 0, reachable by inode number only."""
        if i.nlink > 0 or i.is_dir():
            return False
        _, holders = self.lock_holders(S.lock_key_inode(i.ino))
        if any(h != op_id for h in holders):
            return False
        if self.has_handles(i.ino):
            return False
        self.delete_inode(i)
        return True

    # entries
    def dentry(self, parent: int, name: bytes) -> tuple[int, int] | None:
        v = self.ov.get(S.dentry_key(parent, name))
        return None if v is None else S.split_dentry_value(v)

    def touch_dir(self, parent: Inode, nlink_delta: int = 0) -> None:
        parent.mtime = parent.ctime = self.ts
        parent.nlink += nlink_delta
        self.put(parent)

    # locks
    def lock_holders(self, key: bytes) -> tuple[str, list[bytes]]:
        v = self.ov.get(S.P_LOCK + key)
        if v is None:
            return "", []
        mode, holders = unpackb(v)
        return mode, holders

    def check_lock(self, key: bytes, mode: str, op_id: bytes | None = None) -> None:
        if not self.store._locks_present:
            return  # no cross-shard operation holds anything on this shard
        held, holders = self.lock_holders(key)
        others = [h for h in holders if h != op_id]
        if others and (mode == "X" or held == "X"):
            raise err.Locked()

    def take_lock(self, key: bytes, mode: str, op_id: bytes) -> None:
        self.store._locks_present = True
        held, holders = self.lock_holders(key)
        if op_id in holders:
            mode = "X" if "X" in (mode, held) else "S"
        else:
            holders.append(op_id)
            if held == "X":
                mode = "X"
        self.ov.put(S.P_LOCK + key, packb([mode, holders]))

    def release_lock(self, key: bytes, op_id: bytes) -> None:
        held, holders = self.lock_holders(key)
        if op_id not in holders:
            return
        holders.remove(op_id)
        if holders:
            self.ov.put(S.P_LOCK + key, packb([held, holders]))
        else:
            self.ov.delete(S.P_LOCK + key)
            if key[:1] == b"i":  # an inode whose last link went while it was held
                i = self.maybe_inode(S.from_u64(key[1:9]))
                if i is not None and i.nlink <= 0 and not i.is_dir():
                    self.reap_unlinked(i)


class MetaStore(StateMachine):
    def __init__(self, shard: int, nshards: int, path: str | None = None,
                 kv_factory: Callable[[str | None], KV] | None = None) -> None:
        from dfs.kv import open_kv

        self.shard = shard
        self.nshards = nshards
        self.path = path  # directory holding db-<n> generations, or None for memory
        self._open = kv_factory or open_kv
        self.kv = self._open(self._current_db_path())
        self._last_ts = 0
        self._locks_present = True  # until the first entry looks
        self._applied = self._read_applied()
        self._prune_from: bytes | None = None  # see _note_expiry
        if self._applied == 0 and self.kv.get(S.K_SHARD) is None:
            self._bootstrap()

    # ----------------------------------------------------------- lifecycle
    def _current_db_path(self) -> str | None:
        if self.path is None:
            return None
        os.makedirs(self.path, exist_ok=True)
        cur = os.path.join(self.path, "CURRENT_DB")
        name = open(cur).read().strip() if os.path.exists(cur) else "db-0"
        return os.path.join(self.path, name)

    @staticmethod
    def _any_lock(kv) -> bool:
        return next(iter(kv.scan_prefix(S.P_LOCK, 1)), None) is not None

    def _read_applied(self) -> int:
        b = self.kv.get(S.K_APPLIED)
        return S.from_u64(b) if b else 0

    def _bootstrap(self) -> None:
        """Shard 0 holds the root directory from its first moment."""
        from dfs.kv import WriteBatch

        b = WriteBatch()
        b.put(S.K_SHARD, S.u64(self.shard))
        if self.shard == 0:
            root = Inode(ROOT_INO, stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, 0, 0, 0, ROOT_INO,
                         layout=DEFAULT_LAYOUT.pack())
            b.put(S.inode_key(ROOT_INO), root.pack())
            b.put(S.K_NINODES, S.u64(1))
        self.kv.write(b, sync=True)

    def close(self) -> None:
        self.kv.close()

    def check_owned(self, ino: int) -> None:
        if shard_of(ino) != self.shard:
            raise err.WrongShard(f"inode {ino:#x} belongs to shard {shard_of(ino)}, not {self.shard}")

    # ----------------------------------------------------------- snapshots
    def snapshot(self, path: str) -> None:
        self.kv.checkpoint(path)

    def restore(self, path: str) -> None:
        if self.path is None:
            old = self.kv
            self.kv = self._open(None)
            from dfs.kv import MemoryKV, WriteBatch

            src = MemoryKV(path)
            b = WriteBatch()
            b.ops.extend(src.items())
            self.kv.write(b)
            old.close()
        else:
            cur = self._current_db_path()
            gen = int(os.path.basename(cur).split("-")[1]) + 1
            new = os.path.join(self.path, f"db-{gen}")
            shutil.rmtree(new, ignore_errors=True)
            shutil.copytree(path, new)
            newkv = self._open(new)
            tmp = os.path.join(self.path, "CURRENT_DB.tmp")
            with open(tmp, "w") as f:
                f.write(f"db-{gen}")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(self.path, "CURRENT_DB"))
            old, self.kv = self.kv, newkv
            old.close()
            shutil.rmtree(cur, ignore_errors=True)
        self._applied = self._read_applied()
        self._prune_from: bytes | None = None  # see _note_expiry

    # ----------------------------------------------------------- apply
    def applied_index(self) -> int:
        return self._applied

    def apply(self, index: int, commands: list[bytes]) -> list[bytes]:
        entry = Overlay(self.kv)
        self._last_ts = 0
        self._locks_present = self._any_lock(self.kv)
        results = [self._apply_one(entry, raw) for raw in commands]
        # prune expired idempotency records, a bounded number per entry
        min_ts = self._last_ts - IDEMPOTENCY_TTL_NS
        if min_ts > 0:
            last = None
            start = self._prune_from or S.P_EXPIRY
            for k, _ in list(entry.scan(start, S.P_EXPIRY + S.u64(min_ts), PRUNE_PER_ENTRY)):
                entry.delete(k)
                entry.delete(S.P_REQUEST + k[9:])
                last = k
            if last is not None:
                self._prune_from = last
        entry.put(S.K_APPLIED, S.u64(index))
        self.kv.write(entry.to_batch())
        self._applied = index
        if self._locks_present:
            self._locks_present = self._any_lock(self.kv)
        return results

    def _apply_one(self, entry: Overlay, raw: bytes) -> bytes:
        try:
            op, rid, ts, uid, gid, groups, args = unpackb(raw)
        except Exception:
            return fail(E.EINVAL, "malformed command")
        if isinstance(ts, int) and ts > self._last_ts:
            self._last_ts = ts
        if rid:
            prev = entry.get(S.P_REQUEST + rid)
            if prev is not None:
                return prev[8:]
        entry.savepoint()
        ctx = Ctx(self, entry, ts, Caller(uid, gid, tuple(groups)), rid)
        failed = True
        try:
            fn = self._MUTATIONS.get(op)
            if fn is None:
                raise err.InvalidArgument(f"unknown op {op}")
            res = ok(fn(self, ctx, *args))
            failed = False
        except err.Retryable as e:
            entry.rollback()
            return fail(e.errno, str(e))  # not remembered: a retry must run again
        except err.DfsError as e:
            res = fail(e.errno, e.detail or "")
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
            res = fail(E.EINVAL, f"bad arguments: {e}")
        except Exception as e:  # a bug: deterministic on every replica, so still consistent
            log.exception("op %s failed", op)
            res = fail(E.EIO, repr(e))
        if failed:
            entry.rollback()
        else:
            entry.release()
        if rid:
            entry.put(S.P_REQUEST + rid, S.u64(ts) + res)
            self._note_expiry(entry, S.P_EXPIRY + S.u64(ts) + rid)
        return res

    def _note_expiry(self, ov: Overlay, key: bytes) -> None:
        """Index an idempotency record by its time (``Y``). The pruning in ``apply`` deletes
        these from the oldest up and resumes its scan where it stopped (``_prune_from``):
        seeking from the range's start every entry would walk the tombstones of every
        record pruned since RocksDB last compacted them, a cost growing with the shard's
        history (the unlink phase of a 100k-file run slowed 3.4x). Every key before the
        cursor is deleted, on every replica; a record stamped earlier than the cursor (a
        new leader's clock behind the old one's) moves the cursor back, so the keys each
        replica prunes stay the same whatever its cursor."""
        if self._prune_from is not None and key < self._prune_from:
            self._prune_from = None
        ov.put(key, b"")

    # ----------------------------------------------------------- single-shard mutations
    def _create(self, ctx: Ctx, parent: int, name: bytes, mode: int, rdev: int, excl: bool,
                umask: int, target: bytes | None, inline: bool | None = None,
                handle: bytes | None = None, lease_s=None, access: int = 0):
        """CREATE (regular files, symlinks, nodes). With ``handle`` (regular files only) the
        file is opened in the same command: create-and-open is one Raft round; an existing
        regular file (``excl`` false) is opened after an ``access`` check (R_OK 4 | W_OK 2),
        an existing entry of another type is answered, not opened. Returns
        [wire attr | None, created, ino, opened, parent's wire attr]; an existing file on
        another shard (a hard link) comes back unopened (None, the caller OPENs it there).
        The parent's attributes after the command let a FUSE client answer the kernel's
        next GETATTR of the directory (the kernel drops them on every create) without a
        round trip."""
        if handle is not None:
            self._check_handle(handle)
            lease = self._lease_ns(lease_s)
        res = self._create_entry(ctx, parent, name, mode, rdev, excl, umask, target, inline)
        opened = handle is not None and res[0] is not None and stat.S_ISREG(res[0][1])
        if opened:
            if not res[1] and access:
                if not isinstance(access, int) or access & ~6:
                    raise err.InvalidArgument("access: R_OK | W_OK")
                check_access(ctx.inode(res[2]), ctx.caller, access)
            ctx.check_lock(S.lock_key_inode(res[2]), "S")
            self._set_handle(ctx, res[2], handle, ctx.ts + lease)
        return [*res, opened, ctx.dir(parent).wire()]

    def _create_entry(self, ctx: Ctx, parent: int, name: bytes, mode: int, rdev: int, excl: bool,
                      umask: int, target: bytes | None, inline: bool | None):
        check_name(name)
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt == stat.S_IFDIR:
            raise err.InvalidArgument("use MKDIR for directories")
        if fmt not in (stat.S_IFREG, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise err.InvalidArgument("bad file type")
        p = ctx.dir(parent)
        ctx.check_lock(S.lock_key_dentry(parent, name), "X")
        ctx.check_lock(S.lock_key_inode(parent), "S")
        dkey = S.dentry_key(parent, name)
        v = ctx.ov.get(dkey)
        existing = None if v is None else S.split_dentry_value(v)
        if existing is not None:
            if excl or fmt != stat.S_IFREG:
                raise err.Exists()
            ino, _ = existing
            if shard_of(ino) != self.shard:
                return [None, False, ino]  # the caller fetches the remote inode
            return [ctx.inode(ino).wire(), False, ino]
        check_access(p, ctx.caller, R_W | R_X)
        if fmt in (stat.S_IFCHR, stat.S_IFBLK) and ctx.caller.uid != 0:
            raise err.NotPermitted("mknod of a device needs root")
        perm = 0o777 if fmt == stat.S_IFLNK else (mode & 0o7777 & ~umask)
        if fmt == stat.S_IFLNK:
            if not target or len(target) > SYMLINK_MAX or b"\0" in target:
                raise err.NameTooLong() if target and len(target) > SYMLINK_MAX else err.InvalidArgument()
        gid = ctx.caller.gid
        if p.mode & stat.S_ISGID:
            gid = p.gid
        if perm & stat.S_ISGID and ctx.caller.uid != 0 and not ctx.caller.in_group(gid):
            perm &= ~stat.S_ISGID
        ino = ctx.alloc_ino()
        size = len(target) if fmt == stat.S_IFLNK else 0
        # a regular file's layout is fixed here: the parent's default, made explicit
        layout = (p.layout or DEFAULT_LAYOUT.pack()) if fmt == stat.S_IFREG else 0
        # A new regular file keeps its bytes inline until they reach past INLINE_MAX when
        # its directory says so (FLAG_INLINE on a directory: the policy), or the caller asks.
        if inline is None:
            inline = bool(p.flags & S.FLAG_INLINE)
        flags = S.FLAG_INLINE if fmt == stat.S_IFREG and inline else 0
        i = Inode(ino, fmt | perm, 1, ctx.caller.uid, gid, rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0,
                  size, ctx.ts, ctx.ts, ctx.ts, flags=flags, layout=layout)
        ctx.put(i)
        if fmt == stat.S_IFLNK:
            ctx.ov.put(S.symlink_key(ino), target)
        ctx.ov.put(dkey, S.dentry_value(ino, i.mode))
        ctx.touch_dir(p)
        ctx.count_inodes(1)
        return [i.wire(), True, ino]

    def _setattr(self, ctx: Ctx, ino: int, valid: int, mode: int, uid: int, gid: int, size: int,
                 atime: int, mtime: int, grow: int | None = None):
        """``grow``: an EXTEND in the same command, before the rest (a writer that sets
        the times of its open file publishes its size with them: tar, cp -a)."""
        if grow is not None:
            self._extend(ctx, ino, grow)
        i = ctx.inode(ino)
        ctx.check_lock(S.lock_key_inode(ino), "S")
        c = ctx.caller
        root = c.uid == 0
        owner = root or c.uid == i.uid
        changed = False
        if valid & (SET_UID | SET_GID):
            new_uid = uid if valid & SET_UID else i.uid
            new_gid = gid if valid & SET_GID else i.gid
            if not root:
                if new_uid != i.uid or c.uid != i.uid:
                    if new_uid != i.uid or not owner:
                        raise err.NotPermitted("chown")
                if new_gid != i.gid and not c.in_group(new_gid):
                    raise err.NotPermitted("chgrp to a group the caller is not in")
            if new_uid != i.uid or new_gid != i.gid or not root:
                if not i.is_dir():
                    # Linux: chown clears set-user-id, and set-group-id if group-executable
                    if i.mode & stat.S_ISUID:
                        i.mode &= ~stat.S_ISUID
                    if i.mode & stat.S_ISGID and i.mode & stat.S_IXGRP:
                        i.mode &= ~stat.S_ISGID
            i.uid, i.gid = new_uid, new_gid
            changed = True
        if valid & SET_MODE:
            if not owner:
                raise err.NotPermitted("chmod")
            new = mode & 0o7777
            if not root and new & stat.S_ISGID and not c.in_group(i.gid):
                new &= ~stat.S_ISGID
            i.mode = stat.S_IFMT(i.mode) | new
            changed = True
        if valid & SET_SIZE:
            if i.is_dir():
                raise err.IsADirectory()
            if not stat.S_ISREG(i.mode):
                raise err.InvalidArgument("truncate of a special file")
            if size < 0 or size > (1 << 62):
                raise err.InvalidArgument("size")
            check_access(i, c, R_W)
            if i.flags & S.FLAG_INLINE and size < i.size:
                self._cut_inline(ctx, ino, size)
            i.size = size
            i.mtime = ctx.ts
            if not root:
                i.mode &= ~stat.S_ISUID
                if i.mode & stat.S_IXGRP:
                    i.mode &= ~stat.S_ISGID
            changed = True
        if valid & (SET_ATIME | SET_MTIME | SET_ATIME_NOW | SET_MTIME_NOW):
            explicit = (valid & SET_ATIME and not valid & SET_ATIME_NOW) or (
                valid & SET_MTIME and not valid & SET_MTIME_NOW)
            if not owner:
                if explicit:
                    raise err.NotPermitted("utimes")
                check_access(i, c, R_W)
            if valid & SET_ATIME_NOW:
                i.atime = ctx.ts
            elif valid & SET_ATIME:
                i.atime = atime
            if valid & SET_MTIME_NOW:
                i.mtime = ctx.ts
            elif valid & SET_MTIME:
                i.mtime = mtime
            changed = True
        if changed or valid & SET_CTIME:
            i.ctime = ctx.ts
        ctx.put(i)
        return i.wire()

    def _xattr_check(self, ctx: Ctx, i: Inode, name: bytes, write: bool) -> None:
        if not name or len(name) > XATTR_NAME_MAX or b"\0" in name:
            raise err.DfsError("xattr name", code=E.ERANGE if name else E.EINVAL)
        ns = name.split(b".", 1)[0]
        if b"." not in name:
            raise err.DfsError("xattr namespace", code=E.EOPNOTSUPP)
        if ns == b"user":
            if not (stat.S_ISREG(i.mode) or stat.S_ISDIR(i.mode)):
                raise err.NotPermitted("user xattrs only on files and directories") if write else err.NoData()
            if write and i.is_dir() and i.mode & stat.S_ISVTX and ctx.caller.uid not in (0, i.uid):
                raise err.NotPermitted()
            check_access(i, ctx.caller, R_W if write else R_R)
        elif ns == b"trusted":
            if ctx.caller.uid != 0:
                raise err.NotPermitted() if write else err.NoData()
        elif ns == b"security":
            if write and ctx.caller.uid != 0:
                raise err.NotPermitted()
        else:
            raise err.DfsError("xattr namespace", code=E.EOPNOTSUPP)

    def _setxattr(self, ctx: Ctx, ino: int, name: bytes, value: bytes, flags: int):
        i = ctx.inode(ino)
        ctx.check_lock(S.lock_key_inode(ino), "S")
        self._xattr_check(ctx, i, name, True)
        if len(value) > XATTR_SIZE_MAX:
            raise err.DfsError("xattr value", code=E.E2BIG)
        if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
            raise err.InvalidArgument("xattr flags")
        k = S.xattr_key(ino, name)
        exists = ctx.ov.get(k) is not None
        if flags & XATTR_CREATE and exists:
            raise err.Exists()
        if flags & XATTR_REPLACE and not exists:
            raise err.NoData()
        ctx.ov.put(k, value)
        i.ctime = ctx.ts
        i.flags |= S.FLAG_XATTRS
        ctx.put(i)
        return None

    def _removexattr(self, ctx: Ctx, ino: int, name: bytes):
        i = ctx.inode(ino)
        ctx.check_lock(S.lock_key_inode(ino), "S")
        self._xattr_check(ctx, i, name, True)
        k = S.xattr_key(ino, name)
        if ctx.ov.get(k) is None:
            raise err.NoData()
        ctx.ov.delete(k)
        i.ctime = ctx.ts
        ctx.put(i)
        return None

    def _setlayout(self, ctx: Ctx, ino: int, layout: int, inline: bool | None = None):
        """The default layout new files and subdirectories of directory ``ino`` inherit;
        ``inline`` (if given): whether its new regular files keep small contents inline."""
        i = ctx.inode(ino)
        ctx.check_lock(S.lock_key_inode(ino), "S")
        if not i.is_dir():
            raise err.NotADirectory("a layout is set on directories")
        if ctx.caller.uid not in (0, i.uid):
            raise err.NotPermitted("setlayout: owner or root only")
        Layout.unpack(layout)  # EINVAL if malformed
        i.layout = layout
        if inline is not None:
            i.flags = (i.flags | S.FLAG_INLINE) if inline else (i.flags & ~S.FLAG_INLINE)
        i.ctime = ctx.ts
        ctx.put(i)
        return i.wire()

    def _extend(self, ctx: Ctx, ino: int, size: int):
        """Publish a writer's size on close/fsync: never shrinks (two writers of one
        file each publish what they wrote; truncation is SETATTR's job)."""
        i = ctx.inode(ino)
        ctx.check_lock(S.lock_key_inode(ino), "S")
        if not stat.S_ISREG(i.mode):
            raise err.InvalidArgument("extend of a non-regular file")
        if not isinstance(size, int) or size < 0 or size > (1 << 62):
            raise err.InvalidArgument("size")
        if size > i.size:
            i.size = size
        i.mtime = i.ctime = ctx.ts
        if ctx.caller.uid != 0:  # a write by a non-root caller clears set-user-id (and set-group-id if g+x)
            i.mode &= ~stat.S_ISUID
            if i.mode & stat.S_IXGRP:
                i.mode &= ~stat.S_ISGID
        ctx.put(i)
        return i.wire()

    # ----------------------------------------------------------- inline data (Data-on-MDT)
    @staticmethod
    def _inline_access(i: Inode, caller: Caller, mask: int) -> None:
        """Owner and root always (a writer's open checked, like EXTEND; a file created
        0444 stays writable through its creator's descriptor); others need the mode bits."""
        if caller.uid in (0, i.uid):
            return
        check_access(i, caller, mask)

    def _inline_inode(self, i: Inode) -> None:
        if i.is_dir():
            raise err.IsADirectory()
        if not stat.S_ISREG(i.mode):
            raise err.InvalidArgument("inline data of a non-regular file")
        if not i.flags & S.FLAG_INLINE:
            raise err.DfsError("not inline", code=E.ENOTSUP)

    def _cut_inline(self, ctx: Ctx, ino: int, size: int) -> None:
        v = ctx.ov.get(S.inline_key(ino))
        if v is not None:
            data, hw = S.split_inline_value(v)
            if len(data) > size:
                ctx.ov.put(S.inline_key(ino), S.inline_value(data[:size], hw))

    def _writeinline(self, ctx: Ctx, ino: int, runs: list, size: int):
        """An inline file's writer flushes: its runs and its size in one command."""
        i = ctx.inode(ino)
        ctx.check_lock(S.lock_key_inode(ino), "S")
        self._inline_inode(i)
        self._inline_access(i, ctx.caller, R_W)
        if not isinstance(size, int) or size < 0 or size > (1 << 62):
            raise err.InvalidArgument("size")
        key = S.inline_key(ino)
        v = ctx.ov.get(key)
        data, hw = (b"", 0) if v is None else S.split_inline_value(v)
        if runs:
            buf = bytearray(data)
            for off, b in runs:
                if not isinstance(off, int) or off < 0 or not isinstance(b, bytes):
                    raise err.InvalidArgument("inline run")
                end = off + len(b)
                if end > INLINE_MAX:
                    raise err.DfsError(f"inline data ends at {end} > {INLINE_MAX}", code=E.EFBIG)
                if len(buf) < off:
                    buf.extend(bytes(off - len(buf)))
                buf[off:end] = b
                size = max(size, end)
            # bytes past the size (a concurrent truncate) are not part of the file
            keep = max(size, i.size)
            ctx.ov.put(key, S.inline_value(bytes(buf[:keep]), hw))
        if size > i.size:
            i.size = size
        i.mtime = i.ctime = ctx.ts
        if ctx.caller.uid != 0:  # as EXTEND: a write clears set-user-id (and set-group-id if g+x)
            i.mode &= ~stat.S_ISUID
            if i.mode & stat.S_IXGRP:
                i.mode &= ~stat.S_ISGID
        ctx.put(i)
        return i.wire()

    def _migrate(self, ctx: Ctx, ino: int, expect: bytes | None):
        """The writer copied the inline bytes to the data servers: they are the file's now."""
        i = ctx.inode(ino)
        ctx.check_lock(S.lock_key_inode(ino), "S")
        if not stat.S_ISREG(i.mode):
            raise err.InvalidArgument("migrate of a non-regular file")
        self._inline_access(i, ctx.caller, R_W)
        if not i.flags & S.FLAG_INLINE:
            return i.wire()  # another writer migrated it first
        key = S.inline_key(ino)
        v = ctx.ov.get(key)
        have = None
        if v is not None:
            data, hw = S.split_inline_value(v)
            have = inline_digest(data) if hw else None
        if have != expect:
            raise err.DfsError("inline data changed since it was copied", code=E.ECANCELED)
        if v is not None:
            ctx.ov.delete(key)
        i.flags &= ~S.FLAG_INLINE
        i.ctime = ctx.ts
        ctx.put(i)
        return i.wire()

    def _readmark(self, ctx: Ctx, term: int, until: int):
        """Internal (the leader, before it hands out read handles): read handles granted in
        ``term`` live until at most ``until`` ns. Kept per the last term and for all earlier
        ones, so a new leader knows how long another leader's handles may live."""
        if not isinstance(term, int) or not isinstance(until, int) or term < 0:
            raise err.InvalidArgument("term, until")
        v = ctx.ov.get(S.K_READ_MARK)
        last, mine, earlier = (0, 0, 0) if v is None else unpackb(v)
        if term > last:
            last, mine, earlier = term, until, max(earlier, mine)
        elif term == last:
            mine = max(mine, until)
        else:
            earlier = max(earlier, until)
        ctx.ov.put(S.K_READ_MARK, packb([last, mine, earlier]))

    def _orphandone(self, ctx: Ctx, ino: int):
        """The orphan's chunks are gone: forget it (internal)."""
        ctx.ov.delete(S.orphan_key(ino))
        return None

    # ----------------------------------------------------------- open handles
    #
    # H <ino> <handle> -> [expiry]; J <expiry> <ino> <handle> indexes them by expiry.
    # Expiries are command timestamps plus the lease: every replica computes the same.

    @staticmethod
    def _lease_ns(lease_s) -> int:
        if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or not 0 < lease_s <= MAX_LEASE_S:
            raise err.InvalidArgument(f"lease must be in (0, {MAX_LEASE_S}] seconds")
        return int(lease_s * 1_000_000_000)

    @staticmethod
    def _check_handle(handle) -> None:
        if not isinstance(handle, bytes) or not 0 < len(handle) <= HANDLE_MAX:
            raise err.InvalidArgument("handle id: 1 to 64 bytes")

    @staticmethod
    def _set_handle(ctx: Ctx, ino: int, handle: bytes, expiry: int) -> None:
        """Record (or extend: never shorten) a handle's expiry."""
        expiry = max(0, expiry)
        key = S.handle_key(ino, handle)
        v = ctx.ov.get(key)
        if v is not None:
            old = unpackb(v)[0]
            if old >= expiry:
                return
            ctx.ov.delete(S.handle_expiry_key(old, ino, handle))
        ctx.ov.put(key, packb([expiry]))
        ctx.ov.put(S.handle_expiry_key(expiry, ino, handle), b"")

    def _open(self, ctx: Ctx, ino: int, handle: bytes, lease_s, access: int = 0):
        """A client opened regular file ``ino``: keep it alive until ts + lease (renewable),
        even if its last link goes. The same handle again extends it (a retry). ``access``
        (R_OK 4 | W_OK 2) is checked against the caller first. Returns the attributes."""
        self._check_handle(handle)
        lease = self._lease_ns(lease_s)
        i = ctx.inode(ino)
        ctx.check_lock(S.lock_key_inode(ino), "S")
        if i.is_dir():
            raise err.IsADirectory()
        if not stat.S_ISREG(i.mode):
            raise err.InvalidArgument("open handles are for regular files")
        if access:
            if not isinstance(access, int) or access & ~6:
                raise err.InvalidArgument("access: R_OK | W_OK")
            check_access(i, ctx.caller, access)
        self._set_handle(ctx, ino, handle, ctx.ts + lease)
        return i.wire()

    def _renew(self, ctx: Ctx, pairs: list, lease_s):
        """Extend many handles to ts + lease; per pair 0, or ENOENT if the handle is gone
        (closed or expired: the client may OPEN it again while the file has a link)."""
        lease = self._lease_ns(lease_s)
        if not isinstance(pairs, list):
            raise err.InvalidArgument("pairs")
        out = []
        for ino, handle in pairs:
            self._check_handle(handle)
            self.check_owned(ino)
            if ctx.ov.get(S.handle_key(ino, handle)) is None:
                out.append(E.ENOENT)
                continue
            self._set_handle(ctx, ino, handle, ctx.ts + lease)
            out.append(0)
        return out

    def _close(self, ctx: Ctx, ino: int, handle: bytes):
        """Drop a handle (a missing one is not an error: closed before, or expired); the
        last handle of a link-less file deletes it. Returns whether this close deleted it."""
        self._check_handle(handle)
        self.check_owned(ino)
        key = S.handle_key(ino, handle)
        v = ctx.ov.get(key)
        if v is None:
            return False
        ctx.ov.delete(key)
        ctx.ov.delete(S.handle_expiry_key(unpackb(v)[0], ino, handle))
        i = ctx.maybe_inode(ino)
        return i is not None and ctx.reap_unlinked(i)

    def _expirehandles(self, ctx: Ctx, limit: int = 1000):
        """Internal (the leader's handle task): drop up to ``limit`` handles whose expiry is
        before this command's ts, then delete the link-less files left without a handle."""
        limit = max(1, min(int(limit), 10000))
        end = S.P_HANDLE_EXPIRY + S.u64(max(0, ctx.ts))  # every J key with expiry < ts sorts before
        expired = 0
        inos: dict[int, None] = {}
        for k, _ in list(ctx.ov.scan(S.P_HANDLE_EXPIRY, end, limit)):
            expiry, ino, handle = S.split_handle_expiry_key(k)
            ctx.ov.delete(k)
            hk = S.handle_key(ino, handle)
            v = ctx.ov.get(hk)
            if v is not None and unpackb(v)[0] == expiry:
                ctx.ov.delete(hk)
            expired += 1
            inos[ino] = None
        freed = 0
        for ino in inos:
            i = ctx.maybe_inode(ino)
            if i is not None and ctx.reap_unlinked(i):
                freed += 1
        return [expired, freed]

    # ----------------------------------------------------------- actions (cross-shard building blocks)
    #
    # An action is [kind, args...]. _validate_action checks its preconditions
    # against current state and names the locks it needs; _commit_action makes
    # its change. A prepared action's locks keep its preconditions true until
    # commit or abort.

    def _validate_action(self, ctx: Ctx, a: list, op_id: bytes | None, state: dict) -> list[tuple[bytes, str]]:
        kind = a[0]
        c = ctx.caller
        if kind == "dir":  # ino is a directory the caller may (mask) use; it stays alive
            _, ino, mask = a
            d = ctx.dir(ino)
            check_access(d, c, mask)
            return [(S.lock_key_inode(ino), "S")]
        if kind == "sticky":
            _, dino, child_uid = a
            check_sticky(ctx.dir(dino), child_uid, c)
            return []
        if kind == "dput":  # entry parent/name -> ino; expect: ino it must map to now, 0 = absent
            _, parent, name, ino, mode, expect = a
            check_name(name)
            ctx.dir(parent)
            cur = ctx.dentry(parent, name)
            if expect == 0 and cur is not None:
                raise err.Exists()
            if expect != 0 and (cur is None or cur[0] != expect):
                raise err.Locked("entry changed")  # the coordinator re-reads and retries
            return [(S.lock_key_dentry(parent, name), "X"), (S.lock_key_inode(parent), "S")]
        if kind == "ddel":
            _, parent, name, expect = a
            ctx.dir(parent)
            cur = ctx.dentry(parent, name)
            if cur is None or cur[0] != expect:
                raise err.Locked("entry changed")
            return [(S.lock_key_dentry(parent, name), "X"), (S.lock_key_inode(parent), "S")]
        if kind == "nlink":  # ino's link count changes by delta (a file losing/gaining a name)
            _, ino, delta, forbid_dir = a
            i = ctx.inode(ino)
            if forbid_dir and i.is_dir():
                raise err.NotPermitted("hard link to a directory")
            if delta > 0 and i.nlink + delta > LINK_MAX:
                raise err.DfsError(code=E.EMLINK)
            if delta > 0 and i.nlink <= 0 and not i.is_dir():
                raise err.NotFound("no link to an unlinked (open) file")  # as Linux linkat
            last = delta < 0 and i.nlink + delta <= 0
            return [(S.lock_key_inode(ino), "X" if last else "S")]
        if kind == "dirnlink":  # a parent directory gains or loses a subdirectory
            _, ino, delta = a
            ctx.dir(ino)
            return [(S.lock_key_inode(ino), "S")]
        if kind == "mkdir":  # [mkdir, ino, mode, uid, gid, parent, layout, flags] (layout, flags optional)
            ino = a[1]
            if ino == 0:
                ino = state.get("new_ino") or ctx.alloc_ino()
                state["new_ino"] = ino
            else:
                self.check_owned(ino)
            return [(S.lock_key_inode(ino), "X")]
        if kind == "rmdir":
            _, ino = a
            if ino == ROOT_INO:
                raise err.DfsError("root", code=E.EBUSY)
            d = ctx.dir(ino)
            if next(iter(ctx.ov.scan_prefix(S.dentry_prefix(ino), 1)), None) is not None:
                raise err.NotEmpty()
            del d
            return [(S.lock_key_inode(ino), "X")]
        if kind == "reparent":
            _, ino, parent = a
            ctx.dir(ino)
            return [(S.lock_key_inode(ino), "X")]
        if kind == "touch":
            _, ino = a
            ctx.inode(ino)
            return [(S.lock_key_inode(ino), "S")]
        if kind == "renlock":  # the directory-rename ordering point (shard 0)
            _, epoch = a
            if self.shard != 0:
                raise err.InvalidArgument("renlock outside shard 0")
            if self._rename_epoch(ctx.ov) != epoch:
                raise err.Locked("a directory rename finished since the ancestry walk")
            return [(S.LOCK_RENAME, "X")]
        raise err.InvalidArgument(f"unknown action {kind!r}")

    def _commit_action(self, ctx: Ctx, a: list, state: dict, touched: dict) -> None:
        kind = a[0]
        ts = ctx.ts
        if kind == "dput":
            _, parent, name, ino, mode, expect = a
            if ino == 0:
                ino = state["new_ino"]
            ctx.ov.put(S.dentry_key(parent, name), S.dentry_value(ino, mode))
            p = ctx.inode(parent)
            ctx.touch_dir(p)
            touched[parent] = p
        elif kind == "ddel":
            _, parent, name, expect = a
            ctx.ov.delete(S.dentry_key(parent, name))
            p = ctx.inode(parent)
            ctx.touch_dir(p)
            touched[parent] = p
        elif kind == "nlink":
            _, ino, delta, forbid_dir = a
            i = ctx.maybe_inode(ino)
            if i is None:
                return
            i.nlink += delta
            i.ctime = ts
            if i.nlink <= 0 and not i.is_dir() and ctx.reap_unlinked(i, state.get("op_id")):
                touched.pop(ino, None)
                return
            ctx.put(i)  # alive, or link-less but still open / locked by another operation
            touched[ino] = i
        elif kind == "dirnlink":
            _, ino, delta = a
            i = ctx.inode(ino)
            i.nlink += delta
            i.mtime = i.ctime = ts
            ctx.put(i)
            touched[ino] = i
        elif kind == "mkdir":
            _, ino, mode, uid, gid, parent = a[:6]
            layout = a[6] if len(a) > 6 else 0
            flags = (a[7] if len(a) > 7 else 0) & S.FLAG_INLINE  # inherited policies
            ino = ino or state["new_ino"]
            i = Inode(ino, stat.S_IFDIR | (mode & 0o7777), 2, uid, gid, 0, 0, ts, ts, ts, parent, flags=flags,
                      layout=layout)
            ctx.put(i)
            ctx.count_inodes(1)
            touched[ino] = i
        elif kind == "rmdir":
            _, ino = a
            i = ctx.maybe_inode(ino)
            if i is not None:
                ctx.delete_inode(i)
        elif kind == "reparent":
            _, ino, parent = a
            i = ctx.inode(ino)
            i.parent = parent
            i.ctime = ts
            ctx.put(i)
            touched[ino] = i
        elif kind == "renlock":
            if state.get("mode") == "onephase":
                self._bump_rename_epoch(ctx.ov)
        elif kind == "touch":
            _, ino = a
            i = ctx.maybe_inode(ino)
            if i is not None:
                i.ctime = ts
                ctx.put(i)
                touched[ino] = i

    def _run_validation(self, ctx: Ctx, actions: list, op_id: bytes | None, state: dict) -> list:
        locks = []
        for a in actions:
            locks.extend(self._validate_action(ctx, a, op_id, state))
        for key, mode in locks:
            ctx.check_lock(key, mode, op_id)
        return locks

    def _commit_actions(self, ctx: Ctx, actions: list, state: dict) -> list:
        touched: dict[int, Inode] = {}
        for a in actions:
            self._commit_action(ctx, a, state, touched)
        return [i.wire() for i in touched.values()]

    @staticmethod
    def _rename_epoch(ov) -> int:
        b = ov.get(S.K_RENAME_EPOCH)
        return S.from_u64(b) if b else 0

    def _bump_rename_epoch(self, ov) -> None:
        ov.put(S.K_RENAME_EPOCH, S.u64(self._rename_epoch(ov) + 1))

    def _release_all(self, ctx: Ctx, op_id: bytes, locks: list) -> None:
        for k, _ in locks:
            ctx.release_lock(k, op_id)
            if k == S.LOCK_RENAME:
                self._bump_rename_epoch(ctx.ov)

    def _onephase(self, ctx: Ctx, op_id: bytes, actions: list):
        state: dict = {"op_id": op_id, "mode": "onephase"}
        self._run_validation(ctx, actions, op_id, state)
        return [state.get("new_ino", 0), self._commit_actions(ctx, actions, state)]

    def _prepare(self, ctx: Ctx, op_id: bytes, coord: int, actions: list, parts: list, rid: bytes = b""):
        key = S.P_OP + op_id
        prev = ctx.ov.get(key)
        if prev is not None:
            rec = unpackb(prev)
            return rec["res"]
        state: dict = {"op_id": op_id}
        locks = self._run_validation(ctx, actions, op_id, state)
        for k, mode in locks:
            ctx.take_lock(k, mode, op_id)
        res = [state.get("new_ino", 0)]
        rec = {"c": coord, "a": actions, "t": ctx.ts, "s": "P", "res": res, "st": state,
               "l": [[k, m] for k, m in locks], "rid": rid}
        if coord == self.shard:
            rec["parts"] = parts
        ctx.ov.put(key, packb(rec))
        return res

    def _commit(self, ctx: Ctx, op_id: bytes, reply):
        key = S.P_OP + op_id
        prev = ctx.ov.get(key)
        if prev is None:
            return None  # committed (and forgotten) before: a repeat
        rec = unpackb(prev)
        if rec["s"] == "C":
            return None
        state = rec["st"]
        state["op_id"] = op_id
        res = self._commit_actions(ctx, rec["a"], state)
        if "parts" in rec:
            # The coordinator keeps the rename lock until FORGET, i.e. until
            # every participant has committed; its other locks go now.
            keep = [[k, m] for k, m in rec["l"] if k == S.LOCK_RENAME]
            self._release_all(ctx, op_id, [x for x in rec["l"] if x[0] != S.LOCK_RENAME])
        else:
            # Participants commit with shard 0 last, so shard 0 releasing the
            # rename lock here means every other participant has committed.
            self._release_all(ctx, op_id, rec["l"])
        if "parts" in rec:  # the coordinator remembers the decision until FORGET
            rec["s"] = "C"
            rec["l"] = keep
            rec["reply"] = reply
            ctx.ov.put(key, packb(rec))
            # The client's request id (the operation id: the coordinator's own
            # PREPARE carries no request id of its command): a retry gets the
            # decided reply, also after FORGET.
            rid = rec.get("rid") or op_id
            ctx.ov.put(S.P_REQUEST + rid, S.u64(ctx.ts) + ok(reply))
            self._note_expiry(ctx.ov, S.P_EXPIRY + S.u64(ctx.ts) + rid)
        else:
            ctx.ov.delete(key)
        return res

    def _abort(self, ctx: Ctx, op_id: bytes):
        key = S.P_OP + op_id
        prev = ctx.ov.get(key)
        if prev is None:
            return "A"
        rec = unpackb(prev)
        if rec["s"] == "C":
            return "C"  # decided: too late to abort
        self._release_all(ctx, op_id, rec["l"])
        ctx.ov.delete(key)
        return "A"

    def _forget(self, ctx: Ctx, op_id: bytes):
        key = S.P_OP + op_id
        prev = ctx.ov.get(key)
        if prev is None:
            return None
        rec = unpackb(prev)
        self._release_all(ctx, op_id, rec["l"])
        ctx.ov.delete(key)
        return None

    _MUTATIONS = {
        Op.CREATE: _create,
        Op.SETATTR: _setattr,
        Op.SETXATTR: _setxattr,
        Op.REMOVEXATTR: _removexattr,
        Op.SETLAYOUT: _setlayout,
        Op.ORPHANDONE: _orphandone,
        Op.EXTEND: _extend,
        Op.WRITEINLINE: _writeinline,
        Op.MIGRATE: _migrate,
        Op.OPEN: _open,
        Op.RENEW: _renew,
        Op.CLOSE: _close,
        Op.EXPIREHANDLES: _expirehandles,
        Op.READMARK: _readmark,
        Op.ONEPHASE: _onephase,
        Op.PREPARE: _prepare,
        Op.COMMIT: _commit,
        Op.ABORT: _abort,
        Op.FORGET: _forget,
    }

    # ----------------------------------------------------------- reads
    def read(self, op: int, caller: Caller, args: list):
        """Serve a read against applied state; raises DfsError."""
        fn = self._READS.get(op)
        if fn is None:
            raise err.InvalidArgument(f"unknown read op {op}")
        try:
            return fn(self, caller, *args)
        except err.DfsError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as e:
            raise err.InvalidArgument(f"bad arguments: {e}") from None

    def _r_inode(self, ino: int) -> Inode:
        self.check_owned(ino)
        b = self.kv.get(S.inode_key(ino))
        if b is None:
            raise err.NotFound(f"inode {ino:#x}")
        return Inode.unpack(b)

    def _r_locked(self, key: bytes) -> bool:
        if not self._locks_present:
            return False
        v = self.kv.get(S.P_LOCK + key)
        return v is not None and unpackb(v)[0] == "X"

    def _lookup(self, caller: Caller, parent: int, name: bytes):
        check_name(name)
        p = self._r_inode(parent)
        if not p.is_dir():
            raise err.NotADirectory()
        check_access(p, caller, R_X)
        if self._r_locked(S.lock_key_dentry(parent, name)):
            raise err.Locked()
        v = self.kv.get(S.dentry_key(parent, name))
        if v is None:
            raise err.NotFound()
        ino, mode = S.split_dentry_value(v)
        if shard_of(ino) != self.shard:
            return [ino, mode, None]
        b = self.kv.get(S.inode_key(ino))
        return [ino, mode, None if b is None else Inode.unpack(b).wire()]

    def _getattr(self, caller: Caller, ino: int):
        if self._r_locked(S.lock_key_inode(ino)):
            raise err.Locked()
        return self._r_inode(ino).wire()

    def _getattrs(self, caller: Caller, inos: list, scan: bool = False):
        out = []
        for ino in inos:
            try:
                out.append(self._r_inode(ino).wire())
            except err.DfsError as e:
                if scan and e.errno == E.ENOENT and isinstance(ino, int) and self.is_orphan(ino):
                    out.append(E.EBUSY)  # the leader frees its chunks (maybe after a reader)
                else:
                    out.append(e.errno)
        return out

    def _readdir(self, caller: Caller, ino: int, cookie: int, limit: int, plus: bool):
        d = self._r_inode(ino)
        if not d.is_dir():
            raise err.NotADirectory()
        check_access(d, caller, R_R)
        limit = max(1, min(int(limit), 10000))
        start = S.dentry_cookie_key(ino, cookie)
        end = S.dentry_prefix(ino + 1)
        out = []
        last_hash = -1
        eof = True
        kv = self.kv
        for k, v in kv.scan(start, end):
            _, h, name = S.split_dentry_key(k)
            if len(out) >= limit and h != last_hash:
                eof = False
                break
            cino, mode = S.split_dentry_value(v)
            attr = None
            if plus and shard_of(cino) == self.shard:
                b = kv.get(S.inode_key(cino))
                attr = None if b is None else Inode.unpack(b).wire()
            out.append([name, cino, mode, h + 1, attr])
            last_hash = h
        return [out, eof]

    def _readlink(self, caller: Caller, ino: int):
        i = self._r_inode(ino)
        if not stat.S_ISLNK(i.mode):
            raise err.InvalidArgument("not a symlink")
        return self.kv.get(S.symlink_key(ino))

    def _getxattr(self, caller: Caller, ino: int, name: bytes):
        i = self._r_inode(ino)
        ctx = Ctx(self, Overlay(self.kv), 0, caller, b"")
        self._xattr_check(ctx, i, name, False)
        v = self.kv.get(S.xattr_key(ino, name))
        if v is None:
            raise err.NoData()
        return v

    def _listxattr(self, caller: Caller, ino: int):
        self._r_inode(ino)
        p = S.xattr_prefix(ino)
        names = [k[len(p):] for k, _ in self.kv.scan_prefix(p)]
        if caller.uid != 0:
            names = [n for n in names if not n.startswith(b"trusted.")]
        return names

    def _statfs(self, caller: Caller):
        b = self.kv.get(S.K_NINODES)
        return [S.from_u64(b) if b else 0]

    def _renameepoch(self, caller: Caller):
        return self._rename_epoch(self.kv)

    def _reqstatus(self, caller: Caller, rid: bytes):
        v = self.kv.get(S.P_REQUEST + rid)
        return None if v is None else unpackb(v[8:])

    def _opstatus(self, caller: Caller, op_id: bytes):
        v = self.kv.get(S.P_OP + op_id)
        if v is None:
            return ""
        return unpackb(v)["s"]

    def _dirparent(self, caller: Caller, ino: int):
        if self._r_locked(S.lock_key_inode(ino)):
            raise err.Locked()
        i = self._r_inode(ino)
        if not i.is_dir():
            raise err.NotADirectory()
        return i.parent

    def _readinline(self, caller: Caller, ino: int):
        i = self._r_inode(ino)
        self._inline_inode(i)
        self._inline_access(i, caller, R_R)
        v = self.kv.get(S.inline_key(ino))
        if v is None:
            return [b"", 0]
        data, hw = S.split_inline_value(v)
        return [data[:i.size], hw]

    def _orphans(self, caller: Caller, limit: int = 1000):
        return [[ino, layout, size] for ino, layout, size in self.orphans(limit)]

    _READS = {
        Op.LOOKUP: _lookup,
        Op.GETATTR: _getattr,
        Op.GETATTRS: _getattrs,
        Op.READDIR: _readdir,
        Op.READLINK: _readlink,
        Op.GETXATTR: _getxattr,
        Op.LISTXATTR: _listxattr,
        Op.STATFS: _statfs,
        Op.OPSTATUS: _opstatus,
        Op.DIRPARENT: _dirparent,
        Op.RENAMEEPOCH: _renameepoch,
        Op.REQSTATUS: _reqstatus,
        Op.ORPHANS: _orphans,
        Op.READINLINE: _readinline,
    }

    # ----------------------------------------------------------- orphans
    def orphans(self, limit: int = 1000) -> list[tuple[int, int, int]]:
        """(ino, packed layout, size) of deleted regular files whose chunks are still to free."""
        out = []
        for k, v in self.kv.scan_prefix(S.P_ORPHAN, max(1, int(limit))):
            rec = unpackb(v)
            out.append((S.from_u64(k[1:9]), rec[0], rec[1]))
        return out

    def orphan_attr(self, ino: int) -> list | None:
        """The wire attributes a deleted file had, while its orphan record lasts (None: no
        record, or one from before records kept them)."""
        v = self.kv.get(S.orphan_key(ino))
        if v is None:
            return None
        rec = unpackb(v)
        return rec[2] if len(rec) > 2 else None

    def inode_exists(self, ino: int) -> bool:
        return self.kv.get(S.inode_key(ino)) is not None

    def is_orphan(self, ino: int) -> bool:
        return self.kv.get(S.orphan_key(ino)) is not None

    def read_mark(self) -> tuple[int, int, int]:
        """(last term, until ns of that term's read handles, until ns of earlier terms'), see READMARK."""
        v = self.kv.get(S.K_READ_MARK)
        return (0, 0, 0) if v is None else tuple(unpackb(v))

    def open_for_read(self, caller: Caller, ino: int, access: int = 0) -> Inode:
        """OPENREAD's checks on applied state (as OPEN's): the inode, a regular file, ``access``."""
        if not isinstance(ino, int):
            raise err.InvalidArgument("ino")
        i = self._r_inode(ino)
        if self._r_locked(S.lock_key_inode(ino)):
            raise err.Locked()
        if i.is_dir():
            raise err.IsADirectory()
        if not stat.S_ISREG(i.mode):
            raise err.InvalidArgument("open handles are for regular files")
        if access:
            if not isinstance(access, int) or isinstance(access, bool) or access & ~4:
                raise err.InvalidArgument("access: R_OK (read handles)")
            check_access(i, caller, access)
        return i

    # ----------------------------------------------------------- open handles
    def handles(self, ino: int | None = None) -> list[tuple[int, bytes, int]]:
        """(ino, handle, expiry ns) of the open handles on this shard (of one inode)."""
        prefix = S.P_HANDLE if ino is None else S.handle_prefix(ino)
        return [(S.from_u64(k[1:9]), k[9:], unpackb(v)[0]) for k, v in self.kv.scan_prefix(prefix)]

    def next_handle_expiry(self) -> int | None:
        """The earliest expiry of an open handle on this shard (None: no handles)."""
        first = next(iter(self.kv.scan_prefix(S.P_HANDLE_EXPIRY, 1)), None)
        return None if first is None else S.split_handle_expiry_key(first[0])[0]

    # ----------------------------------------------------------- recovery support
    def pending_ops(self) -> list[tuple[bytes, dict]]:
        """Cross-shard operation records on this shard (for the recovery task)."""
        out = []
        for k, v in self.kv.scan_prefix(S.P_OP):
            out.append((k[1:], unpackb(v)))
        return out

