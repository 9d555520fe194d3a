"""The metadata protocol as types: one request and one reply per op (the registry they are
entered in, ``REQUESTS``, is ``dfs.common.requests``, re-exported here).

Every op code (``dfs.common.ops.Op``) has a request class here, registered with
``@request(code, kind, Reply)``: a frozen dataclass with slots whose fields are
the op's arguments. On the wire (msgpack, inside MetaService's ``body``) a
request is the list of its fields in declaration order, with trailing fields
that hold their default left off, so a request is as small as the hand-built
lists it replaces. A reply is a record too (``Attr`` and ``DirEntry`` from
``dfs.common.records`` are used as they are); a ``bare`` reply travels as the
value of its one field (or nil when it has none).

``docs/protocol.md`` is generated from this registry (scripts/gen_protocol.py);
a unit test fails when it is out of date.

Decoding a request (``Request.from_wire``) checks the count and the type of
every field against the annotations and raises InvalidArgument (EINVAL)
otherwise: a shard never runs an op on a malformed body. Replies come from a
shard and are decoded without checks. The codec is ``dfs.common.wire``. On a
shard, a reply field typed ``Attr`` may hold the shard's inode record, which
encodes itself (``__wire__``) without an ``Attr`` being built. The shard side of each op (its
checks, its apply, its plan) is its module in ``dfs.meta.ops``; routing a
request to a shard is the request's ``shard`` method.

Imports dfs.common only: the client library builds its requests here.
"""

from __future__ import annotations

import enum
from typing import Any

from dfs.common.ids import dir_home_shard, shard_of
from dfs.common.ops import Op
from dfs.common.records import Attr, DirEntry
from dfs.common.requests import REQUESTS, Kind, Request, is_internal, request, request_class
from dfs.common.wire import codec, from_wire, record, to_wire

__all__ = ["Kind", "Request", "REQUESTS", "request", "request_class", "is_internal", "codec", "from_wire",
           "record", "to_wire"]


# ------------------------------------------------------------------ shared records

@record(bare=True)
class Done:
    """No answer beyond success (wire: nil)."""


@record
class HandleRef:
    """An open (or read) handle: the inode and the client-chosen handle id."""

    ino: int
    handle: bytes


@record(bare=True)
class Errnos:
    """One errno per item asked about (0: done)."""

    errnos: list[int]


@record
class Orphan:
    ino: int
    layout: int
    size: int


@record
class InlineRun:
    offset: int
    data: bytes


class Opened(enum.IntEnum):
    """LOOKUPOPEN: what the open part did."""

    NO = 0  # not opened: not a regular file, or an inode on another shard
    READ = 1  # a read handle (leader memory)
    DURABLE = 2  # a logged OPEN (an inline file): renew and close it as an open handle
    INLINE = 3  # no handle: the reply holds the whole of the (inline) file's bytes


# ------------------------------------------------------------------ reads

@record
class LookupReply:
    ino: int
    mode: int
    attr: Attr | None  # None: the inode lives on another shard


@request(Op.LOOKUP, Kind.READ, LookupReply)
class Lookup(Request):
    """The entry ``name`` of directory ``parent`` (search permission on it)."""

    parent: int
    name: bytes
    snap: int = 0  # a snapshot's number: the tree as it holds it (0: the live tree)

    def shard(self, nshards: int) -> int:
        return shard_of(self.parent)


@request(Op.GETATTR, Kind.READ, Attr)
class Getattr(Request):
    """An inode's attributes (also of an unlinked file a read handle of this leader still holds)."""

    ino: int
    snap: int = 0  # a snapshot's number: the tree as it holds it (0: the live tree)


@record
class ReaddirReply:
    entries: list[DirEntry]  # attr only with plus, and only for inodes of this shard
    eof: bool


@request(Op.READDIR, Kind.READ, ReaddirReply)
class Readdir(Request):
    """A page of entries after ``cookie`` (hash order; a page never splits equal hashes)."""

    ino: int
    cookie: int
    limit: int
    plus: bool
    snap: int = 0  # a snapshot's number: the tree as it holds it (0: the live tree)


@record(bare=True)
class Target:
    target: bytes


@request(Op.READLINK, Kind.READ, Target)
class Readlink(Request):
    """A symlink's target."""

    ino: int
    snap: int = 0  # a snapshot's number: the tree as it holds it (0: the live tree)


@record(bare=True)
class XattrValue:
    value: bytes


@request(Op.GETXATTR, Kind.READ, XattrValue)
class Getxattr(Request):
    """One extended attribute (ENODATA if absent)."""

    ino: int
    name: bytes
    snap: int = 0  # a snapshot's number: the tree as it holds it (0: the live tree)


@record(bare=True)
class XattrNames:
    names: list[bytes]


@request(Op.LISTXATTR, Kind.READ, XattrNames)
class Listxattr(Request):
    """The names of an inode's extended attributes (trusted.* for root only)."""

    ino: int
    snap: int = 0  # a snapshot's number: the tree as it holds it (0: the live tree)


@record
class StatfsReply:
    files: int  # inodes on this shard


@request(Op.STATFS, Kind.READ, StatfsReply)
class Statfs(Request):
    """This shard's counts (the client sums every shard's)."""

    def shard(self, nshards: int) -> int:
        raise TypeError("STATFS goes to every shard")


@record(bare=True)
class AttrsReply:
    attrs: list[Attr | int]  # per inode asked: its attributes or an errno


@request(Op.GETATTRS, Kind.READ, AttrsReply)
class Getattrs(Request):
    """Many inodes of one shard. ``scan``: a deleted file whose chunks the leader still has to
    free answers EBUSY, not ENOENT (the data servers' orphan scan)."""

    inos: list[int]
    scan: bool = False
    snap: int = 0  # a snapshot's number: the tree as it holds it (0: the live tree)

    def shard(self, nshards: int) -> int:
        return shard_of(self.inos[0])


@record(bare=True)
class OpStatusReply:
    state: str  # dfs.meta.schema.OpState: "P" prepared, "C" committed, "" no record


@request(Op.OPSTATUS, Kind.READ, OpStatusReply, internal=True)
class OpStatus(Request):
    """Where a cross-shard operation stands on this shard (2PC recovery)."""

    op_id: bytes


@record(bare=True)
class DirParentReply:
    parent: int


@request(Op.DIRPARENT, Kind.READ, DirParentReply, internal=True)
class DirParent(Request):
    """A directory's parent, waiting (Locked) while it is being re-parented (rename's ancestry walk)."""

    ino: int


@record(bare=True)
class RenameEpochReply:
    epoch: int


@request(Op.RENAMEEPOCH, Kind.READ, RenameEpochReply, internal=True)
class RenameEpoch(Request):
    """The directory-rename epoch (shard 0): bumped by every directory rename that completes."""


@record
class Outcome:
    status: int  # 0 or an errno
    payload: Any  # the op's reply (wire form), or the error's message


@record(bare=True)
class ReqStatusReply:
    outcome: Outcome | None  # None: no record of the request


@request(Op.REQSTATUS, Kind.READ, ReqStatusReply, internal=True)
class ReqStatus(Request):
    """The recorded outcome of a request id (the coordinator's answer to a retry)."""

    request_id: bytes


@record(bare=True)
class OrphansReply:
    orphans: list[Orphan]


@request(Op.ORPHANS, Kind.READ, OrphansReply, internal=True)
class Orphans(Request):
    """Deleted regular files whose chunks are still to free."""

    limit: int = 1000


@record
class InlineData:
    data: bytes  # the file is these bytes, then zeros up to its size
    high_water: int  # the longest the bytes ever were


@request(Op.READINLINE, Kind.READ, InlineData)
class ReadInline(Request):
    """An inline file's bytes (ENOTSUP if the file is not inline; owner, root or r)."""

    ino: int
    snap: int = 0  # a snapshot's number: the tree as it holds it (0: the live tree)


# ------------------------------------------------------------------ read handles

@record
class OpenReadReply:
    attr: Attr
    durable: bool  # the leader logged an OPEN instead (inline files): RENEW / CLOSE it
    data: bytes | None = None  # OpenRead.inline and an inline file: its bytes, and no handle


@request(Op.OPENREAD, Kind.READ_HANDLE, OpenReadReply)
class OpenRead(Request):
    """As OPEN, for reading: the handle lives in the leader's memory, no Raft round."""

    ino: int
    handle: bytes
    lease_s: float
    access: int = 0  # 0 or R_OK
    inline: bool = False  # an inline file: answer its bytes and take no handle (Opened.INLINE)


@request(Op.RENEWREAD, Kind.READ_HANDLE, Errnos)
class RenewRead(Request):
    """Extend read handles (a new leader adopts them while the file or its orphan exists)."""

    pairs: list[HandleRef]
    lease_s: float

    def shard(self, nshards: int) -> int:
        return shard_of(self.pairs[0].ino)


@request(Op.CLOSEREAD, Kind.READ_HANDLE, Done)
class CloseRead(Request):
    """Forget read handles (unknown ones are fine)."""

    pairs: list[HandleRef]

    def shard(self, nshards: int) -> int:
        return shard_of(self.pairs[0].ino)


@record
class LookupOpenReply:
    ino: int
    mode: int
    attr: Attr | None
    opened: int  # Opened
    data: bytes | None = None  # Opened.INLINE: the file's bytes


@request(Op.LOOKUPOPEN, Kind.READ_HANDLE, LookupOpenReply)
class LookupOpen(Request):
    """LOOKUP, then OPENREAD of a regular file on this shard, in one round trip."""

    parent: int
    name: bytes
    handle: bytes
    lease_s: float
    access: int = 0
    inline: bool = False  # as OpenRead.inline

    def shard(self, nshards: int) -> int:
        return shard_of(self.parent)


# ------------------------------------------------------------------ single-shard mutations

@record
class CreateReply:
    attr: Attr | None  # None: an existing file whose inode lives on another shard
    created: bool
    ino: int
    opened: bool  # the handle was recorded (create-open of a regular file)
    parent: Attr  # the directory after the command


@request(Op.CREATE, Kind.LOGGED, CreateReply)
class Create(Request):
    """A regular file, symlink (``target``) or node in ``parent``; with ``handle`` (regular
    files) also opened, in the same command. A new regular file is inline if ``inline``, or,
    without it, if its directory is."""

    parent: int
    name: bytes
    mode: int
    rdev: int
    excl: bool
    umask: int
    target: bytes | None
    inline: bool | None = None
    handle: bytes | None = None
    lease_s: float | None = None
    access: int = 0  # R_OK | W_OK, checked when an existing file is opened
    # lazy mode: the new inode's id, from a DELEGATE grant of ``session`` on this shard (0: the
    # shard picks one), and a regular file's layout, which the client already placed data by
    ino: int = 0
    session: bytes = b""
    layout: int = 0

    def shard(self, nshards: int) -> int:
        return shard_of(self.parent)


@request(Op.SETATTR, Kind.LOGGED, Attr)
class Setattr(Request):
    """chmod, chown, truncate, utimes (``valid``: SET_* bits); ``grow``: an EXTEND first."""

    ino: int
    valid: int
    mode: int
    uid: int
    gid: int
    size: int
    atime: int
    mtime: int
    grow: int | None = None


@request(Op.SETXATTR, Kind.LOGGED, Done)
class Setxattr(Request):
    """Set an extended attribute (``flags``: XATTR_CREATE, XATTR_REPLACE)."""

    ino: int
    name: bytes
    value: bytes
    flags: int


@request(Op.REMOVEXATTR, Kind.LOGGED, Done)
class Removexattr(Request):
    """Remove an extended attribute (ENODATA if absent)."""

    ino: int
    name: bytes


@request(Op.SETLAYOUT, Kind.LOGGED, Attr)
class Setlayout(Request):
    """A directory's default layout for new children (packed Layout, 0 = the default) and,
    with ``inline``, its small-files policy (owner or root)."""

    ino: int
    layout: int
    inline: bool | None = None


@request(Op.ORPHANDONE, Kind.LOGGED, Done, internal=True)
class OrphanDone(Request):
    """The orphan's chunks are freed: forget its record."""

    ino: int


@request(Op.EXTEND, Kind.LOGGED, Attr)
class Extend(Request):
    """A writer's close/fsync: size = max(size, ``size``), mtime = ctime = now (regular files)."""

    ino: int
    size: int


@request(Op.WRITEINLINE, Kind.LOGGED, Attr)
class WriteInline(Request):
    """Write runs into an inline file and publish ``size`` (grow only): EFBIG past INLINE_MAX."""

    ino: int
    runs: list[InlineRun]
    size: int


@request(Op.MIGRATE, Kind.LOGGED, Attr)
class Migrate(Request):
    """The inline bytes (``expect``: their inline_digest) were copied to the data servers."""

    ino: int
    expect: bytes | None


@request(Op.OPEN, Kind.LOGGED, Attr)
class Open(Request):
    """Record open handle ``handle`` of a regular file until ts + lease (a repeat extends it)."""

    ino: int
    handle: bytes
    lease_s: float
    access: int = 0  # R_OK | W_OK


@request(Op.RENEW, Kind.LOGGED, Errnos)
class Renew(Request):
    """Extend open handles to ts + lease: per pair 0, or ENOENT (the handle is gone)."""

    pairs: list[HandleRef]
    lease_s: float

    def shard(self, nshards: int) -> int:
        return shard_of(self.pairs[0].ino)


@record(bare=True)
class Closed:
    deleted: bool  # this close freed the inode (no link, no other handle)


@request(Op.CLOSE, Kind.LOGGED, Closed)
class Close(Request):
    """Drop an open handle (a gone one is fine)."""

    ino: int
    handle: bytes


@record
class Expired:
    expired: int
    freed: int


@request(Op.EXPIREHANDLES, Kind.LOGGED, Expired, internal=True)
class ExpireHandles(Request):
    """Drop handles whose expiry < the command's ts, then free link-less inodes left without one."""

    limit: int = 1000


@request(Op.READMARK, Kind.LOGGED, Done, internal=True)
class ReadMark(Request):
    """Read handles granted in Raft term ``term`` live until at most ``until`` ns."""

    term: int
    until: int


# ------------------------------------------------------------------ namespace ops that may span shards

@request(Op.MKDIR, Kind.COORDINATED, Attr)
class Mkdir(Request):
    """A directory; sent to its home shard (hash of parent and name)."""

    parent: int
    name: bytes
    mode: int
    umask: int
    ino: int = 0  # lazy mode: the new directory's id, from a DELEGATE grant of ``session`` on its home shard
    session: bytes = b""

    def shard(self, nshards: int) -> int:
        if self.ino:
            return shard_of(self.ino)  # the home shard whose grant the id came from
        return dir_home_shard(self.parent, self.name, nshards)


@request(Op.RMDIR, Kind.COORDINATED, Done)
class Rmdir(Request):
    """Remove an empty directory."""

    parent: int
    name: bytes

    def shard(self, nshards: int) -> int:
        return shard_of(self.parent)


@request(Op.UNLINK, Kind.COORDINATED, Done)
class Unlink(Request):
    """Remove a non-directory entry."""

    parent: int
    name: bytes

    def shard(self, nshards: int) -> int:
        return shard_of(self.parent)


@request(Op.RENAME, Kind.COORDINATED, Done)
class Rename(Request):
    """renameat2 (``flags``: RENAME_NOREPLACE, RENAME_EXCHANGE); sent to the source parent's shard."""

    sparent: int
    sname: bytes
    dparent: int
    dname: bytes
    flags: int

    def shard(self, nshards: int) -> int:
        return shard_of(self.sparent)


@request(Op.LINK, Kind.COORDINATED, Attr)
class Link(Request):
    """A hard link ``parent/name`` to ``ino``; sent to the new parent's shard."""

    ino: int
    parent: int
    name: bytes

    def shard(self, nshards: int) -> int:
        return shard_of(self.parent)


# ------------------------------------------------------------------ two-phase primitives (shard to shard)

@record
class ActionResult:
    """What applying a shard's actions gave: a new inode (mkdir) and the inodes touched."""

    new_ino: int
    touched: list[Attr]


@request(Op.ONEPHASE, Kind.LOGGED, ActionResult, internal=True)
class OnePhase(Request):
    """Validate and apply ``actions`` (dfs.meta.ops.actions) at once: every one is on this shard."""

    op_id: bytes
    actions: list[list]


@record
class Prepared:
    new_ino: int


@request(Op.PREPARE, Kind.LOGGED, Prepared, internal=True)
class Prepare(Request):
    """Validate ``actions``, take their locks and record the operation; on the coordinator
    (``coord`` is this shard) the record is the intent and lists the participants ``parts``."""

    op_id: bytes
    coord: int
    actions: list[list]
    parts: list[int]
    rid: bytes = b""  # the client's request id (on the coordinator)


@record(bare=True)
class Committed:
    touched: list[Attr] | None  # None: committed before (a repeat)


@request(Op.COMMIT, Kind.LOGGED, Committed, internal=True)
class Commit(Request):
    """Apply a prepared operation's actions and release its locks; on the coordinator this is
    the decision, recorded with the client's ``reply``."""

    op_id: bytes
    reply: ActionResult | None


@record(bare=True)
class AbortOutcome:
    outcome: str  # dfs.meta.schema.OpState: "A" aborted (or never prepared), "C" already committed


@request(Op.ABORT, Kind.LOGGED, AbortOutcome, internal=True)
class Abort(Request):
    """Undo a prepared operation unless it is committed."""

    op_id: bytes


@request(Op.FORGET, Kind.LOGGED, Done, internal=True)
class Forget(Request):
    """Drop the coordinator's record once every participant has committed."""

    op_id: bytes


# ------------------------------------------------------------------ snapshots (docs/design/snapshots.md)

@record(bare=True)
class SnapNumber:
    snap: int


@request(Op.SNAPCREATE, Kind.LEADER, SnapNumber)
class SnapCreate(Request):
    """Take snapshot ``name`` of directory ``root`` (its owner or root): the cut across every
    shard and data server, run by shard 0's leader. ``path``: the directory's path, for people."""

    root: int
    name: bytes
    path: str = ""

    def shard(self, nshards: int) -> int:
        return 0


@request(Op.SNAPDELETE, Kind.LEADER, Done)
class SnapDelete(Request):
    """Delete snapshot ``name`` of ``root`` (the directory's owner or root): every shard ends
    it and prunes what only it read, every data server drops what only it read."""

    root: int
    name: bytes

    def shard(self, nshards: int) -> int:
        return 0


@request(Op.SNAPFENCE, Kind.LOGGED, Done, internal=True)
class SnapFence(Request):
    """Until ``until`` (ns, the leader's clock) or SNAPBEGIN/SNAPEND of ``snap``: PREPAREs of
    cross-shard operations answer CONFLICT (their coordinators abort and start over)."""

    snap: int
    until: int


@request(Op.SNAPBEGIN, Kind.LOGGED, Done, internal=True)
class SnapBegin(Request):
    """Snapshot ``snap`` is taken here: it holds everything applied so far, later writes are
    at ``snap + 1``; the fence lifts."""

    snap: int


@request(Op.SNAPEND, Kind.LOGGED, Done, internal=True)
class SnapEnd(Request):
    """Snapshot ``snap`` is deleted (or its creation aborted) here: what only it read is
    pruned in the background; a fence for it lifts."""

    snap: int


@record
class Pruned:
    removed: int
    cursor: bytes | None  # where to go on (None: a pass is over)


@request(Op.SNAPPRUNE, Kind.LOGGED, Pruned, internal=True)
class SnapPrune(Request):
    """Remove history entries no live snapshot reads, from ``cursor`` on, about ``limit``."""

    cursor: bytes
    limit: int


@record
class SnapState:
    epoch: int         # the write epoch
    live: list[int]    # live snapshots
    fence: int         # the snapshot a fence is up for (0: none)
    prepared: int      # cross-shard operations prepared here and not decided yet
    unpruned: bool     # a deleted snapshot's history may remain


@request(Op.SNAPSTATUS, Kind.READ, SnapState, internal=True)
class SnapStatus(Request):
    """This shard's snapshot state (the snapshot coordinator waits on ``prepared``)."""


# ------------------------------------------------------------------ data-plane capabilities (dfs.common.caps)

@record
class CapsReply:
    caps: list[bytes]  # signed capabilities (none: the cluster does not check them)


@request(Op.CAPS, Kind.READ_HANDLE, CapsReply)
class Caps(Request):
    """A capability for data-plane requests on ``ino`` (``rights``: dfs.common.caps READ |
    WRITE), granted for an open ``handle`` of the caller's that allows them, a delegated id
    of lazy ``session``, or else the caller's access now; with ``snap``: reads at that
    snapshot of every file, for a caller who may read directory ``ino`` (the snapshot's)."""

    ino: int
    rights: int
    handle: bytes | None = None
    session: bytes | None = None
    snap: int = 0


# ------------------------------------------------------------------ write-back (lazy mode, docs/design/writeback.md)

@record
class Grant:
    lo: int  # the first delegated inode id
    hi: int  # one past the last
    expiry: int  # ns, the shard leader's time: the session renews before it


@request(Op.DELEGATE, Kind.LOGGED, Grant)
class Delegate(Request):
    """Delegate ``count`` new inode ids of this shard (whole blocks of DELEGATION_BLOCK) to client
    session ``session`` until ts + lease (which also renews its earlier grants here): the session's
    CREATE, MKDIR and SYMLINK may then carry them, each used once."""

    session: bytes
    count: int
    lease_s: float

    def shard(self, nshards: int) -> int:
        raise TypeError("DELEGATE goes to the shard whose ids are wanted")


@record(bare=True)
class Expiry:
    expiry: int  # ns


@request(Op.RENEWDELEGATION, Kind.LOGGED, Expiry)
class RenewDelegation(Request):
    """Extend every grant of ``session`` on this shard to ts + lease (ENOENT: none is left, they
    expired); with ``release`` drop them (the ids unused so far are never used)."""

    session: bytes
    lease_s: float
    release: bool = False

    def shard(self, nshards: int) -> int:
        raise TypeError("RENEWDELEGATION goes to every shard holding a grant of the session")


@request(Op.EXPIREDELEGATIONS, Kind.LOGGED, Expired, internal=True)
class ExpireDelegations(Request):
    """Drop the grants whose lease ended before the command's ts (their unused ids are never used)."""

    limit: int = 1000


@request(Op.SETLAZY, Kind.LOGGED, Attr)
class SetLazy(Request):
    """A directory's lazy policy (FLAG_LAZY): clients change its tree in lazy mode; new
    subdirectories inherit it (owner or root)."""

    ino: int
    lazy: bool


@record
class BatchItem:
    """One operation of a BATCH: a logged single-shard op with its own request id and caller;
    ``after``: the indices of earlier items of the batch it depends on."""

    op: int
    rid: bytes
    uid: int
    gid: int
    groups: list[int]
    args: Any
    after: list[int]


@record(bare=True)
class BatchReply:
    results: list[Outcome | None]  # per item; None: not run (resend it, or it depends on a failed one)


@request(Op.BATCH, Kind.LOGGED, BatchReply)
class Batch(Request):
    """Logged ops of this shard applied in order in one command, each as if alone (its own
    idempotency record). An item whose ``after`` item failed is not run; a retryable error
    (a lock) stops the batch there: the items from it on are not run."""

    items: list[BatchItem]

    def shard(self, nshards: int) -> int:
        raise TypeError("BATCH goes to the shard of its items")
