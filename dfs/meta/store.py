"""The metadata shard's state machine: the apply loop over a KV engine.

``MetaStore.apply`` is the only writer. It is deterministic (time, caller and
request id come inside each command), applies one Raft entry of many commands
in one atomic write batch together with the entry's index, answers repeated
request ids from their idempotency records, and never raises: every command
gets a result, ``[0, payload]`` or ``[errno, message]``. What a command does
is its op's module in ``dfs.meta.ops`` (the registry ``HANDLERS``); this
module decodes the command, runs the handler in a ``Ctx`` and keeps the
records around it (applied index, idempotency records and their pruning),
snapshots and restore.

Reads (``MetaStore.read``) run on the leader against applied state, through
the same registry and the same ``Ctx`` accessors (which never write there).

``Ctx`` is how an op touches state: every inode, entry and lock goes through
its accessors and the key builders of ``dfs.meta.schema``, so that one place
can change how they are stored. This module may not import grpc, pysyncobj
or anything above ``dfs.kv``.
"""

from __future__ import annotations

import errno as E
import logging
import os
import shutil
import stat
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from dfs.common import errors as err
from dfs.common.ids import LOCAL_MASK, ROOT_INO, make_ino, shard_of
from dfs.common.layout import DEFAULT_LAYOUT
from dfs.common.messages import Kind, to_wire
from dfs.common.records import Caller
from dfs.consensus.api import StateMachine
from dfs.kv import KV
from dfs.kv.overlay import Overlay
from dfs.kv.versioned import Epochs, Versioned, tag
from dfs.meta import schema as S
from dfs.meta.ops import HANDLERS
from dfs.meta.schema import Inode, LockMode, OpRecord

log = logging.getLogger(__name__)

packb = msgpack.packb


def unpackb(b: bytes):
    return msgpack.unpackb(b, raw=False, use_list=True, strict_map_key=False)


IDEMPOTENCY_TTL_NS = 15 * 60 * 10**9  # a retry older than this is a new request
PRUNE_PER_ENTRY = 64


def encode_command(op: int, rid: bytes, ts: int, caller: Caller, args: list) -> bytes:
    """A Raft command: the op, the header the leader stamps, and the request's wire fields."""
    return packb([int(op), rid, ts, caller.uid, caller.gid, list(caller.groups), args])


def ok(payload=None) -> bytes:
    return S.pack_result(0, payload)


def fail(code: int, message: str = "") -> bytes:
    return S.pack_result(code, message)


_BAD_ARGS = (TypeError, ValueError, KeyError, IndexError, OverflowError, struct.error)  # struct: an id out of 64 bits


class Ctx:
    """One command's view of a shard: its overlay (or, for a read, the applied state), time,
    caller. Inode and entry access goes through these accessors."""

    __slots__ = ("ov", "ts", "caller", "rid", "store", "_dkey")

    def __init__(self, store: MetaStore, ov: Any, ts: int, caller: Caller, rid: bytes) -> None:
        self._dkey: tuple[int, bytes, bytes] | None = None
        self.store = store
        self.ov = ov  # an Overlay (commands) or the KV itself (reads, which never write)
        self.ts = ts
        self.caller = caller
        self.rid = rid

    @property
    def shard(self) -> int:
        return self.store.shard

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

    def inode_count(self) -> int:
        b = self.ov.get(S.K_NINODES)
        return S.from_u64(b) if b else 0

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
            ov.put(S.orphan_key(i.ino), S.orphan_value(i.layout, i.size, i.wire()))
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
    def _dentry_key(self, parent: int, name: bytes) -> bytes:
        # a lookup and then a write of the same entry (create, dput) hash the name once
        last = self._dkey
        if last is not None and last[0] == parent and last[1] == name:
            return last[2]
        key = S.dentry_key(parent, name)
        self._dkey = (parent, name, key)
        return key

    def dentry(self, parent: int, name: bytes) -> tuple[int, int] | None:
        """(ino, S_IFMT mode bits) of entry ``name`` of ``parent``, or None."""
        v = self.ov.get(self._dentry_key(parent, name))
        return None if v is None else S.split_dentry_value(v)

    def put_dentry(self, parent: int, name: bytes, ino: int, mode: int) -> None:
        self.ov.put(self._dentry_key(parent, name), S.dentry_value(ino, mode))

    def delete_dentry(self, parent: int, name: bytes) -> None:
        self.ov.delete(self._dentry_key(parent, name))

    def has_entries(self, parent: int) -> bool:
        return next(iter(self.ov.scan_prefix(S.dentry_prefix(parent), 1)), None) is not None

    def entries(self, parent: int, cookie: int):
        """(hash, name, ino, mode) of ``parent``'s entries from ``cookie`` on, in readdir order."""
        for k, v in self.ov.scan(S.dentry_cookie_key(parent, cookie), S.dentry_prefix(parent + 1)):
            _, h, name = S.split_dentry_key(k)
            ino, mode = S.split_dentry_value(v)
            yield h, name, ino, mode

    def touch_dir(self, parent: Inode, nlink_delta: int = 0) -> None:
        parent.mtime = parent.ctime = self.ts
        parent.nlink += nlink_delta
        self.put(parent)

    # locks
    def lock_holders(self, key: bytes) -> tuple[LockMode | None, list[bytes]]:
        return S.split_lock_value(self.ov.get(S.lock_record_key(key)))

    def check_lock(self, key: bytes, mode: LockMode, op_id: bytes | None = None) -> None:
        """Locked (retryable) if an operation other than ``op_id`` holds ``key`` in a mode
        that conflicts with ``mode``. For a read: SHARED, no op id."""
        if not self.store._locks_present:
            return  # no cross-shard operation holds anything on this shard
        held, holders = self.lock_holders(key)
        others = [h for h in holders if h != op_id]
        if others and (mode is LockMode.EXCLUSIVE or held is LockMode.EXCLUSIVE):
            raise err.Locked()

    def check_entry_locks(self, parent: int) -> None:
        """Locked (retryable) if an operation holds an entry of directory ``parent``
        exclusively: a name a prepared cross-shard operation adds, removes or changes."""
        if not self.store._locks_present:
            return
        for _, v in self.ov.scan_prefix(S.lock_record_key(S.lock_key_dentry(parent, b""))):
            held, holders = S.split_lock_value(v)
            if holders and held is LockMode.EXCLUSIVE:
                raise err.Locked()

    def take_lock(self, key: bytes, mode: LockMode, op_id: bytes) -> None:
        self.store._locks_present = True
        held, holders = self.lock_holders(key)
        if op_id in holders:
            mode = LockMode.EXCLUSIVE if LockMode.EXCLUSIVE in (mode, held) else LockMode.SHARED
        else:
            holders.append(op_id)
            if held is LockMode.EXCLUSIVE:
                mode = LockMode.EXCLUSIVE
        self.ov.put(S.lock_record_key(key), S.lock_value(mode, holders))

    def release_lock(self, key: bytes, op_id: bytes) -> None:
        held, holders = self.lock_holders(key)
        if op_id not in holders:
            return
        holders.remove(op_id)
        if holders:
            self.ov.put(S.lock_record_key(key), S.lock_value(held, holders))
        else:
            self.ov.delete(S.lock_record_key(key))
            ino = S.inode_of_lock_key(key)
            if ino is not None:  # an inode whose last link went while it was held
                i = self.maybe_inode(ino)
                if i is not None and i.nlink <= 0 and not i.is_dir():
                    self.reap_unlinked(i)

    def release_all(self, op_id: bytes, locks: list) -> None:
        """Release an operation's locks; the rename ordering lock's release completes a
        directory rename (the epoch moves on)."""
        for k, _ in locks:
            self.release_lock(k, op_id)
            if k == S.LOCK_RENAME:
                self.bump_rename_epoch()

    # the directory-rename epoch (shard 0)
    def rename_epoch(self) -> int:
        b = self.ov.get(S.K_RENAME_EPOCH)
        return S.from_u64(b) if b else 0

    def bump_rename_epoch(self) -> None:
        self.ov.put(S.K_RENAME_EPOCH, S.u64(self.rename_epoch() + 1))

    def record_renamed(self, epoch: int, inos: list[int]) -> None:
        """The directories the rename completing at ``epoch`` re-parents (the oldest record
        beyond ``RENAMED_KEPT`` goes)."""
        self.ov.put(S.K_RENAMED + S.u64(epoch), msgpack.packb(list(inos)))
        if epoch > S.RENAMED_KEPT:
            self.ov.delete(S.K_RENAMED + S.u64(epoch - S.RENAMED_KEPT))

    def renamed(self, epoch: int) -> list[int] | None:
        """What the rename completing at ``epoch`` re-parented; None: not known (aborted,
        forgotten, or of a build that recorded nothing)."""
        b = self.ov.get(S.K_RENAMED + S.u64(epoch))
        return None if b is None else msgpack.unpackb(b)

    # cross-shard operation records
    def op_record(self, op_id: bytes) -> OpRecord | None:
        v = self.ov.get(S.op_key(op_id))
        return None if v is None else OpRecord.unpack(v)

    def put_op_record(self, op_id: bytes, rec: OpRecord) -> None:
        self.ov.put(S.op_key(op_id), rec.pack())

    def delete_op_record(self, op_id: bytes) -> None:
        self.ov.delete(S.op_key(op_id))

    # idempotency records
    def remember(self, rid: bytes, result: bytes) -> None:
        """Record ``result`` (a packed ``[status, payload]``) as the answer to request ``rid``."""
        self.store.remember(self.ov, rid, self.ts, result)

    def recorded(self, rid: bytes) -> bytes | None:
        v = self.ov.get(S.request_key(rid))
        return None if v is None else S.request_result(v)


class MetaStore(StateMachine):
    """One shard's namespace state over a KV engine (RocksDB, or memory for None)."""

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
        self._prune_from: bytes | None = None  # see remember
        if self._applied == 0 and self.kv.get(S.K_SHARD) is None:
            self._bootstrap()
        self._upgrade()
        self.epochs = Epochs.unpack(self.kv.get(S.K_EPOCHS))

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
        b.put(S.K_FORMAT, S.u64(S.FORMAT))
        if self.shard == 0:
            root = Inode(ROOT_INO, stat.S_IFDIR | 0o755, 2, 0, 0, 0, 0, 0, 0, 0, ROOT_INO,
                         layout=DEFAULT_LAYOUT.pack())
            b.put(S.inode_key(ROOT_INO), tag(Epochs().epoch, root.pack()))
            b.put(S.K_NINODES, S.u64(1))
        self.kv.write(b, sync=True)

    def _upgrade(self) -> None:
        """A format-1 store (before snapshots): tag every versioned value with epoch 1, in one
        batch. Every replica does the same to the same state, so they stay identical."""
        from dfs.kv import WriteBatch

        if self.kv.get(S.K_FORMAT) is not None:
            return
        b = WriteBatch()
        for p in S.VERSIONED:
            for k, v in self.kv.scan_prefix(p):
                b.put(k, tag(1, v))
        b.put(S.K_FORMAT, S.u64(S.FORMAT))
        self.kv.write(b, sync=True)
        log.info("shard %d: store upgraded to format %d (%d versioned values tagged)", self.shard, S.FORMAT,
                 len(b) - 1)

    def view(self, base, snap: int | None = None) -> Versioned:
        """``base`` (the store, or an entry's overlay) with its versioned keys resolved: the
        head (``snap`` None; writes at the current epoch), or what snapshot ``snap`` holds."""
        return Versioned(base, S.VERSIONED, S.P_HISTORY, self.epochs, snap)

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
        self._upgrade()
        self.epochs = Epochs.unpack(self.kv.get(S.K_EPOCHS))
        self._applied = self._read_applied()
        self._prune_from: bytes | None = None  # see remember

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
            for k, _ in list(entry.scan(start, S.expiry_end(min_ts), PRUNE_PER_ENTRY)):
                entry.delete(k)
                entry.delete(S.request_key_of_expiry(k))
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
            prev = entry.get(S.request_key(rid))
            if prev is not None:
                return S.request_result(prev)
        entry.savepoint()
        ctx = Ctx(self, self.view(entry), ts, Caller(uid, gid, tuple(groups)), rid)
        failed = True
        try:
            h = HANDLERS.get(op)
            if h is None or h.kind is not Kind.LOGGED:
                raise err.InvalidArgument(f"unknown op {op}")
            res = ok(to_wire(h.fn(ctx, h.decode(args))))
            failed = False
        except err.Retryable as e:
            entry.rollback()
            return fail(e.errno, str(e))  # not remembered: a retry must run again
        except err.DfsError as e:
            res = fail(e.errno, e.detail or "")
        except _BAD_ARGS as e:
            res = fail(E.EINVAL, f"bad arguments: {e}")
        except Exception as e:  # a bug: deterministic on every replica, so still consistent
            log.exception("op %s failed", op)
            res = fail(E.EIO, repr(e))
        if failed:
            entry.rollback()
        else:
            entry.release()
        if rid:
            self.remember(entry, rid, ts, res)
        return res

    def remember(self, ov: Overlay, rid: bytes, ts: int, result: bytes) -> None:
        """Write the idempotency record of request ``rid`` and index it by its time (``Y``).
        The pruning in ``apply`` deletes these from the oldest up and resumes its scan where
        it stopped (``_prune_from``): seeking from the range's start every entry would walk
        the tombstones of every record pruned since RocksDB last compacted them, a cost
        growing with the shard's history (the unlink phase of a 100k-file run slowed 3.4x).
        Every key before the cursor is deleted, on every replica; a record stamped earlier
        than the cursor (a new leader's clock behind the old one's) moves the cursor back,
        so the keys each replica prunes stay the same whatever its cursor."""
        ov.put(S.request_key(rid), S.request_value(ts, result))
        key = S.expiry_key(ts, rid)
        if self._prune_from is not None and key < self._prune_from:
            self._prune_from = None
        ov.put(key, b"")

    # ----------------------------------------------------------- reads
    def reader(self, caller: Caller, snap: int = 0) -> Ctx:
        """A Ctx over the applied state, for reads (its accessors never write): the live
        tree, or (``snap``) the tree as that snapshot holds it (ESTALE: not a live one here)."""
        if snap:
            if snap not in self.epochs.live:
                raise err.Stale(f"no snapshot {snap} on shard {self.shard}")
            return Ctx(self, self.view(self.kv, snap), 0, caller, b"")
        return Ctx(self, self.view(self.kv), 0, caller, b"")

    def read(self, op: int, caller: Caller, args: Any):
        """Serve a read against applied state: the reply's wire form; raises DfsError."""
        h = HANDLERS.get(op)  # type: ignore[call-overload]
        if h is None or h.kind is not Kind.READ:
            raise err.InvalidArgument(f"unknown read op {op}")
        return to_wire(self.read_request(h, caller, h.decode(args)))

    def read_request(self, h, caller: Caller, req: Any) -> Any:
        """Serve a decoded read request: its typed reply."""
        try:
            return h.fn(self.reader(caller, getattr(req, "snap", 0)), req)
        except err.DfsError:
            raise
        except _BAD_ARGS as e:
            raise err.InvalidArgument(f"bad arguments: {e}") from None

    # ----------------------------------------------------------- inspection (service tasks, tests)
    def orphans(self, limit: int = 1000) -> list[tuple[int, int, int]]:
        """(ino, packed layout, size) of deleted regular files whose chunks are still to free."""
        out = []
        for k, v in self.kv.scan_prefix(S.P_ORPHAN, max(1, int(limit))):
            ino, layout, size, _ = S.split_orphan(k, v)
            out.append((ino, layout, size))
        return out

    def orphan_attr(self, ino: int) -> list | None:
        """The wire attributes a deleted file had, while its orphan record lasts (None: no
        record, or one from before records kept them)."""
        k = S.orphan_key(ino)
        v = self.kv.get(k)
        return None if v is None else S.split_orphan(k, v)[3]

    def inode_exists(self, ino: int) -> bool:
        return self.kv.get(S.inode_key(ino)) is not None

    def is_orphan(self, ino: int) -> bool:
        return self.kv.get(S.orphan_key(ino)) is not None

    def read_mark(self) -> tuple[int, int, int]:
        """(last term, until ns of that term's read handles, until ns of earlier terms'), see READMARK."""
        return S.split_read_mark(self.kv.get(S.K_READ_MARK))

    def handles(self, ino: int | None = None) -> list[tuple[int, bytes, int]]:
        """(ino, handle, expiry ns) of the open handles on this shard (of one inode)."""
        prefix = S.P_HANDLE if ino is None else S.handle_prefix(ino)
        return [(*S.split_handle_key(k), S.handle_expiry(v)) for k, v in self.kv.scan_prefix(prefix)]

    def next_handle_expiry(self) -> int | None:
        """The earliest expiry of an open handle on this shard (None: no handles)."""
        first = next(iter(self.kv.scan_prefix(S.P_HANDLE_EXPIRY, 1)), None)
        return None if first is None else S.split_handle_expiry_key(first[0])[0]

    def pending_ops(self, prefix: bytes = b"") -> list[tuple[bytes, OpRecord]]:
        """Cross-shard operation records on this shard (for the recovery task); ``prefix``: only
        those whose operation id starts with it (a request id: that request's attempts)."""
        return [(S.op_id_of(k), OpRecord.unpack(v)) for k, v in self.kv.scan_prefix(S.op_key(prefix))]
