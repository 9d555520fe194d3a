"""The actions of cross-shard operations: typed, each with its check and its change.

The coordinator (``dfs.meta.coordinator``, with the plans in the op modules
mkdir, remove, rename, link) turns an operation into actions per shard; a
shard gets them inside ONEPHASE or PREPARE (``dfs.meta.ops.twophase``).
``validate`` checks an action's preconditions against current state and names
the locks that keep them true until commit or abort; ``commit`` makes its
change. On the wire, and in a prepared operation's record, an action is
``[kind, field...]`` (``ActionKind`` values, the format records were first
written in).

May import dfs.common, dfs.meta.schema and dfs.meta.ops.base, .delegate only.
"""

from __future__ import annotations

import enum
import errno as E
import stat
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from dfs.common import errors as err
from dfs.common.ids import ROOT_INO
from dfs.common.limits import LINK_MAX
from dfs.common.messages import codec, from_wire
from dfs.common.wire import register
from dfs.meta import schema as S
from dfs.meta.ops.base import check_access, check_name, check_sticky
from dfs.meta.ops.delegate import check_delegated, use_delegated
from dfs.meta.schema import Inode, LockMode

Locks = list[tuple[bytes, LockMode]]


class ActionKind(enum.StrEnum):
    DIR = "dir"
    STICKY = "sticky"
    DPUT = "dput"
    DDEL = "ddel"
    NLINK = "nlink"
    DIRNLINK = "dirnlink"
    MKDIR = "mkdir"
    RMDIR = "rmdir"
    REPARENT = "reparent"
    TOUCH = "touch"
    RENLOCK = "renlock"
    ENTRY = "entry"


@dataclass(slots=True)
class PlanState:
    """What a shard's actions share while they are validated and committed (kept in the
    operation's record between PREPARE and COMMIT)."""

    op_id: bytes | None = None
    new_ino: int = 0  # the inode a mkdir action allocated here
    onephase: bool = False  # validated and committed in one command (ONEPHASE)

    def to_record(self) -> dict:
        d: dict[str, Any] = {"op_id": self.op_id}
        if self.new_ino:
            d["new_ino"] = self.new_ino
        if self.onephase:
            d["mode"] = "onephase"
        return d

    @classmethod
    def from_record(cls, d: dict, op_id: bytes) -> PlanState:
        return cls(op_id, d.get("new_ino", 0), d.get("mode") == "onephase")


@dataclass(slots=True)
class Touched:
    """The inodes an operation's commit changed on a shard, in order (the reply's attributes)."""

    inodes: dict[int, Inode] = field(default_factory=dict)

    def add(self, i: Inode) -> None:
        self.inodes[i.ino] = i

    def drop(self, ino: int) -> None:
        self.inodes.pop(ino, None)

    def attrs(self) -> list:
        return [i for i in self.inodes.values()]


class Action:
    __slots__ = ()
    KIND: ClassVar[ActionKind]
    LATE_FIELDS: ClassVar[int] = 0  # trailing fields added later, left off the wire at their default

    def validate(self, ctx, state: PlanState) -> Locks:
        """Check the preconditions; the locks (key, mode) that keep them true."""
        raise NotImplementedError

    def commit(self, ctx, state: PlanState, touched: Touched) -> None:
        """Make the change (after validate, maybe in a later command, under its locks)."""

    def fill(self, new_ino: int) -> Action:
        """This action with the inode a mkdir on another shard allocated (dput of ino 0)."""
        return self


_BY_KIND: dict[str, type[Action]] = {}


def action(kind: ActionKind):
    def deco(cls):
        cls = dataclass(frozen=True, slots=True)(cls)
        cls.KIND = kind
        codec(cls)
        _BY_KIND[kind] = cls
        return cls
    return deco


def encode(actions: list[Action]) -> list[list]:
    out = []
    for a in actions:
        w = [str(a.KIND), *codec(type(a)).encode(a)]
        late = type(a).LATE_FIELDS
        if late:  # fields added after the format: left off at their default, as before them
            defaults = [f.default for f in fields(a)][-late:]
            while late and w[-1] == defaults[late - 1]:
                w.pop()
                late -= 1
        out.append(w)
    return out


def decode(wire: list) -> list[Action]:
    """Typed actions of a wire list; InvalidArgument for an unknown kind or bad fields."""
    out = []
    for w in wire:
        kind, *fields = w if isinstance(w, list) and w else [None]
        cls = _BY_KIND.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise err.InvalidArgument(f"unknown action {kind!r}")
        out.append(from_wire(cls, fields, check=True))
    return out


# ------------------------------------------------------------------ the actions

@action(ActionKind.DIR)
class DirUsable(Action):
    """``ino`` is a directory the caller may use (``mask``); it stays alive."""

    ino: int
    mask: int

    def validate(self, ctx, state):
        check_access(ctx.dir(self.ino), ctx.caller, self.mask)
        return [(S.lock_key_inode(self.ino), LockMode.SHARED)]


@action(ActionKind.STICKY)
class StickyOk(Action):
    """The caller may remove an entry owned by ``child_uid`` from directory ``dir``."""

    dir: int
    child_uid: int

    def validate(self, ctx, state):
        check_sticky(ctx.dir(self.dir), self.child_uid, ctx.caller)
        return []


@action(ActionKind.DPUT)
class PutEntry(Action):
    """Entry ``parent/name`` -> ``ino`` (0: the new inode of this operation's mkdir);
    ``expect``: the inode it must map to now, 0 = absent. ``replace``: absent was only
    what the coordinator read (a rename replaces its target): a name there now appeared
    since, and the coordinator reads again."""

    parent: int
    name: bytes
    ino: int
    mode: int
    expect: int
    replace: bool = False

    def validate(self, ctx, state):
        check_name(self.name)
        ctx.dir(self.parent)
        cur = ctx.dentry(self.parent, self.name)
        if self.expect == 0 and cur is not None:
            if self.replace:  # a PREPARE answers it as Conflict; either way the coordinator reads again
                raise err.Locked("the name appeared since it was read")
            raise err.Exists()
        if self.expect != 0 and (cur is None or cur[0] != self.expect):
            raise err.Locked("entry changed")  # the coordinator re-reads and retries
        return [(S.lock_key_dentry(self.parent, self.name), LockMode.EXCLUSIVE),
                (S.lock_key_inode(self.parent), LockMode.SHARED)]

    def commit(self, ctx, state, touched):
        ctx.put_dentry(self.parent, self.name, self.ino or state.new_ino, self.mode)
        p = ctx.inode(self.parent)
        ctx.touch_dir(p)
        touched.add(p)

    def fill(self, new_ino):
        return self if self.ino else PutEntry(self.parent, self.name, new_ino, self.mode, self.expect,
                                              self.replace)


register(PutEntry, trim=True)  # replace=False is left off: the format records were first written in


def _entry_is(ctx, parent: int, name: bytes, expect: int, mode: LockMode) -> list:
    """Entry ``parent/name`` maps to ``expect`` (else Locked: the coordinator reads again);
    the locks that keep it so: the entry's (``mode``), the directory's (shared)."""
    ctx.dir(parent)
    cur = ctx.dentry(parent, name)
    if cur is None or cur[0] != expect:
        raise err.Locked("entry changed")
    return [(S.lock_key_dentry(parent, name), mode), (S.lock_key_inode(parent), LockMode.SHARED)]


@action(ActionKind.DDEL)
class DeleteEntry(Action):
    """Remove entry ``parent/name``, which must map to ``expect``."""

    parent: int
    name: bytes
    expect: int

    def validate(self, ctx, state):
        return _entry_is(ctx, self.parent, self.name, self.expect, LockMode.EXCLUSIVE)

    def commit(self, ctx, state, touched):
        ctx.delete_dentry(self.parent, self.name)
        p = ctx.inode(self.parent)
        ctx.touch_dir(p)
        touched.add(p)


@action(ActionKind.ENTRY)
class EntryIs(Action):
    """Entry ``parent/name`` maps to ``expect``, and keeps mapping to it until the operation
    ends: a check, nothing is changed (a rename between two names of one inode)."""

    parent: int
    name: bytes
    expect: int

    def validate(self, ctx, state):
        return _entry_is(ctx, self.parent, self.name, self.expect, LockMode.SHARED)


@action(ActionKind.NLINK)
class LinkCount(Action):
    """A file's link count changes by ``delta`` (it gains or loses a name)."""

    ino: int
    delta: int
    forbid_dir: bool

    def validate(self, ctx, state):
        i = ctx.inode(self.ino)
        if self.forbid_dir and i.is_dir():
            raise err.NotPermitted("hard link to a directory")
        if self.delta > 0 and i.nlink + self.delta > LINK_MAX:
            raise err.DfsError(code=E.EMLINK)
        if self.delta > 0 and i.nlink <= 0 and not i.is_dir():
            raise err.NotFound("no link to an unlinked (open) file")  # as Linux linkat
        last = self.delta < 0 and i.nlink + self.delta <= 0
        return [(S.lock_key_inode(self.ino), LockMode.EXCLUSIVE if last else LockMode.SHARED)]

    def commit(self, ctx, state, touched):
        i = ctx.maybe_inode(self.ino)
        if i is None:
            return
        i.nlink += self.delta
        i.ctime = ctx.ts
        if i.nlink <= 0 and not i.is_dir() and ctx.reap_unlinked(i, state.op_id):
            touched.drop(self.ino)
            return
        ctx.put(i)  # alive, or link-less but still open / locked by another operation
        touched.add(i)


@action(ActionKind.DIRNLINK)
class DirLinkCount(Action):
    """A directory gains or loses a subdirectory."""

    ino: int
    delta: int

    def validate(self, ctx, state):
        ctx.dir(self.ino)
        return [(S.lock_key_inode(self.ino), LockMode.SHARED)]

    def commit(self, ctx, state, touched):
        i = ctx.inode(self.ino)
        i.nlink += self.delta
        i.mtime = i.ctime = ctx.ts
        ctx.put(i)
        touched.add(i)


@action(ActionKind.MKDIR)
class MakeDir(Action):
    """A new directory inode (``ino`` 0: allocated here; else an id delegated to client
    ``session``, used once) with its parent's inherited ``layout`` and policies (``flags``)."""

    ino: int
    mode: int
    uid: int
    gid: int
    parent: int
    layout: int = 0
    flags: int = 0
    session: bytes = b""
    LATE_FIELDS: ClassVar[int] = 1

    def validate(self, ctx, state):
        ino = self.ino
        if ino == 0:
            ino = state.new_ino or ctx.alloc_ino()
            state.new_ino = ino
        else:
            ctx.store.check_owned(ino)
            if self.session:  # a lazy client's: the id is checked now, marked used at commit
                check_delegated(ctx, self.session, ino)
            state.new_ino = ino
        return [(S.lock_key_inode(ino), LockMode.EXCLUSIVE)]

    def commit(self, ctx, state, touched):
        ts = ctx.ts
        ino = self.ino or state.new_ino
        if self.ino and self.session:
            use_delegated(ctx, self.session, ino)
        i = Inode(ino, stat.S_IFDIR | (self.mode & 0o7777), 2, self.uid, self.gid, 0, 0, ts, ts, ts, self.parent,
                  flags=self.flags & S.INHERITED_FLAGS, layout=self.layout)
        ctx.put(i)
        ctx.count_inodes(1)
        touched.add(i)


@action(ActionKind.RMDIR)
class RemoveDir(Action):
    """Delete an empty directory's inode."""

    ino: int

    def validate(self, ctx, state):
        if self.ino == ROOT_INO:
            raise err.DfsError("root", code=E.EBUSY)
        ctx.dir(self.ino)
        if ctx.has_entries(self.ino):
            raise err.NotEmpty()
        return [(S.lock_key_inode(self.ino), LockMode.EXCLUSIVE)]

    def commit(self, ctx, state, touched):
        i = ctx.maybe_inode(self.ino)
        if i is not None:
            ctx.delete_inode(i)


@action(ActionKind.REPARENT)
class Reparent(Action):
    """A directory moves under ``parent`` (its '..')."""

    ino: int
    parent: int

    def validate(self, ctx, state):
        ctx.dir(self.ino)
        return [(S.lock_key_inode(self.ino), LockMode.EXCLUSIVE)]

    def commit(self, ctx, state, touched):
        i = ctx.inode(self.ino)
        i.parent = self.parent
        i.ctime = ctx.ts
        ctx.put(i)
        touched.add(i)


@action(ActionKind.TOUCH)
class Touch(Action):
    """An inode's ctime moves (it was renamed)."""

    ino: int

    def validate(self, ctx, state):
        ctx.inode(self.ino)
        return [(S.lock_key_inode(self.ino), LockMode.SHARED)]

    def commit(self, ctx, state, touched):
        i = ctx.maybe_inode(self.ino)
        if i is not None:
            i.ctime = ctx.ts
            ctx.put(i)
            touched.add(i)


@action(ActionKind.RENLOCK)
class RenameLock(Action):
    """The directory-rename ordering point (shard 0). The ancestry ``walked`` (the new
    parents' paths to the root, read after ``epoch``) must still hold: no directory rename
    that completed since re-parented one of them. Without ``walked`` (a coordinator of an
    earlier build), no directory rename may have completed since. Its release (or a
    one-phase commit) bumps the epoch; its commit records the directories it ``moved``."""

    epoch: int
    walked: list[int] | None = None
    moved: list[int] | None = None
    LATE_FIELDS: ClassVar[int] = 2

    def validate(self, ctx, state):
        if ctx.shard != 0:
            raise err.InvalidArgument("renlock outside shard 0")
        now = ctx.rename_epoch()
        if now != self.epoch:
            if self.walked is None or now - self.epoch > S.RENAMED_KEPT:
                raise err.Locked("a directory rename finished since the ancestry walk")
            path = set(self.walked)
            for e in range(self.epoch + 1, now + 1):
                moved = ctx.renamed(e)
                if moved is None or path.intersection(moved):
                    raise err.Locked("a directory rename since the ancestry walk moved a directory on its path")
        return [(S.LOCK_RENAME, LockMode.EXCLUSIVE)]

    def commit(self, ctx, state, touched):
        # the epoch this rename completes at: the lock keeps every other until then
        ctx.record_renamed(ctx.rename_epoch() + 1, self.moved or [])
        if state.onephase:
            ctx.bump_rename_epoch()


# ------------------------------------------------------------------ running them

def validate_all(ctx, actions: list[Action], state: PlanState) -> Locks:
    locks: Locks = []
    for a in actions:
        locks.extend(a.validate(ctx, state))
    for key, mode in locks:
        ctx.check_lock(key, mode, state.op_id)
    return locks


def commit_all(ctx, actions: list[Action], state: PlanState) -> list:
    """Commit every action; the attributes of the inodes they changed."""
    touched = Touched()
    for a in actions:
        a.commit(ctx, state, touched)
    return touched.attrs()


def touched_attr(res, ino: int):
    """The attributes of ``ino`` among those an operation's commit touched (an ActionResult)."""
    for a in res.touched if res is not None else ():
        if a.ino == ino:
            return a
    raise err.DfsError("reply lost its inode")
