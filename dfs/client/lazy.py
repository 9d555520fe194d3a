"""Lazy mode: namespace and data write-back, under both faces (docs/design/client.md, "Lazy mode").

``LazyMode`` is a ``Mode`` (dfs/client/mode.py) over the write-back engine
(dfs/client/writeback.py). In its scope, every namespace change (create,
mknod, mkdir, symlink, link, setattr, unlink, rmdir, rename, and a written
file's size and bytes at its close) is applied to this client's own view at
once and queued in the engine's ordered log; the engine sends it in the
background. New inodes get their final ids at once, from ranges the shards
delegated to this client's session. What the view holds is authoritative for
this client (lookups, getattrs, readdirs, readlinks answer from it, merged
with what the service says); what it learned from the service is kept for
``ttl`` (others' changes are seen within it). Closes do not wait for the data
servers (``OpenPlan.close_waits`` False; the client-wide ``WriteBudget``
bounds what they hold). Barriers (fsync of a file or directory,
``Client.sync()``, unmount, client close) wait for everything queued before
them and raise what the service refused (``dfs.client.writeback.Failure``);
the close of a file raises what concerns it.

Scope: ``scope="all"`` (``connect(consistency="lazy")``, ``dfs mount --lazy``)
changes everything lazily; ``scope="tree"`` (the default mode of both faces)
changes lazily only under directories whose attributes carry FLAG_LAZY
(``SETLAZY``; new subdirectories inherit it), as this client has seen them on
its way there, and is strict mode everywhere else (a strict change first waits
for the queued lazy changes of the objects it touches).

What is checked locally, before anything is queued: names, the existence of
the entries a change needs or replaces (this client's view, else the
directory's listing fetched once, else a LOOKUP), types (EISDIR, ENOTDIR,
ENOTEMPTY), the caller's permission on the parent, and setattr's owner rules,
so a program gets the errno it would get from strict mode at the call; the
service checks everything again at flush, and what only it can know (another
client took the name, removed the parent, changed a permission; ENOSPC) is
reported at the next barrier.

Beside it: dfs/client/setattr_rules.py (SETATTR as the shard applies it, and two
queued ones merged) and dfs/client/lazysizes.py (a file's size and inline bytes
through the same log).

Imports: dfs.common and this package only.
"""

from __future__ import annotations

import errno as E
import logging
import os
import stat
import time
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any

from dfs.common import errors as err
from dfs.common import messages as m
from dfs.common.ids import ROOT_INO, dir_home_shard, name_hash, shard_of
from dfs.common.layout import DEFAULT_LAYOUT
from dfs.common.limits import NAME_MAX, SYMLINK_MAX
from dfs.common.ops import (
    DEFAULT_DELEGATION_LEASE_S,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
)
from dfs.common.perm import check_mode
from dfs.common.records import FLAG_INLINE, FLAG_LAZY, Attr, Caller, DirEntry
from dfs.client.file import WriteBudget
from dfs.client.meta import setattr_request
from dfs.client.mode import Change, KernelCache, Mutation, OpenPlan, StrictMode
from dfs.client.lazysizes import LazySizes
from dfs.client.setattr_rules import applied_setattr, merge_setattr
from dfs.client.writeback import Delegations, Failure, WriteBack, WriteBackError

log = logging.getLogger("dfs.client.lazy")

__all__ = ["LazyMode"]

INHERITED = FLAG_INLINE | FLAG_LAZY  # the policies a new subdirectory takes from its parent
W_X = os.W_OK | os.X_OK
LISTING_MAX = 10_000  # a directory's names are fetched once for existence checks up to this many


def _check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise err.InvalidArgument("bad name")
    if len(name) > NAME_MAX:
        raise err.NameTooLong()


class _Names:
    """The names of a directory as this client knows them all (existence checks without a
    request): a directory it made, or one whose listing it fetched, until ``expiry``."""

    __slots__ = ("names", "expiry")

    def __init__(self, names: set[bytes], expiry: float) -> None:
        self.names = names
        self.expiry = expiry


class LazyMode(StrictMode):
    """Write-back of namespace changes and data; see the module doc.

    ``ttl``: seconds what came from the service is reused (others' changes are seen within
    it); ``delay``: the bound on how long a change waits before it is sent (back-pressure
    beyond it); ``scope``: "all" or "tree"; ``inline``: new files keep their bytes in the
    metadata shard while small (their data then travels in the same batches as their
    create); ``budget``: bytes the closes that do not wait may hold; ``max_entries``: the
    log's length; ``lease_s``: the lease of delegated ids; ``kernel``: the mount's kernel
    cache timeouts (the core then caches nothing itself, as ``StrictMode.for_mount``)."""

    name = "lazy"

    def __init__(self, ttl: float = 10.0, *, delay: float = 1.0, scope: str = "all", inline: bool = True,
                 budget: int = 256 << 20, max_entries: int = 100_000, lease_s: float = DEFAULT_DELEGATION_LEASE_S,
                 strict_ttl: float | None = None, kernel: KernelCache | None = None, **kw) -> None:
        if scope not in ("all", "tree"):
            raise ValueError("scope: 'all' or 'tree'")
        # the service's answers are cached for ttl in lazy scope; strict_ttl outside it (tree)
        super().__init__(ttl if strict_ttl is None else strict_ttl, kernel=kernel, **kw)
        self.lazy_ttl = float(ttl)
        self.delay = float(delay)
        self.scope = scope
        self.all = scope == "all"
        self.inline = inline
        self.budget_bytes = int(budget)
        self.max_entries = max_entries
        self.lease_s = lease_s
        self.name = "lazy" if self.all else "strict+lazy trees"
        self.core: Any = None
        self.meta: Any = None
        self.engine: WriteBack | None = None
        self.deleg: Delegations | None = None
        self.session = os.urandom(16)
        # the view: this client's own changes, authoritative for it
        self._own_attrs: dict[int, Attr] = {}
        self._ents: dict[tuple[int, bytes], int] = {}  # (parent, name) -> ino; 0: removed
        self._kids: dict[int, dict[bytes, int]] = {}  # parent -> {name: ino or 0}
        self._complete: set[int] = set()  # directories made here: the view lists them entirely
        self._names: dict[int, _Names] = {}
        self._own_links: dict[int, bytes] = {}
        self._inline: dict[int, bytearray] = {}  # bytes of inline files made here, while queued
        self._noxattr: set[int] = set()  # inodes made here that have no xattrs
        self._stamp: dict[tuple, int] = {}  # view key -> seq of the last entry that changed it
        self._expire: deque[tuple[float, tuple, int]] = deque()  # (when, keys, seq): evict after ttl
        # learned from the service (and kept for ttl): directories' attributes for inheritance
        self._dirs: OrderedDict[int, tuple[float, Attr]] = OrderedDict()
        self._where: OrderedDict[int, tuple[int, bytes]] = OrderedDict()  # directory -> (parent, name)
        self._lazy_dirs: set[int] = set()  # tree scope: directories seen with FLAG_LAZY
        self._lazy_inos: set[int] = set()  # tree scope: files met in them
        # files made here whose create the service refused, as the view last had them: what
        # their opens still write goes nowhere (their close and the barrier report the refusal)
        self._refused: OrderedDict[int, Attr] = OrderedDict()

    @classmethod
    def for_mount(cls, entry_timeout: float = 1.0, attr_timeout: float = 1.0, negative_timeout: float = 1.0,
                  ttl: float = 10.0, **kw) -> LazyMode:
        """Under the FUSE mount: the kernel caches the service's answers, for these timeouts (the
        core itself keeps only its own view, and what new children inherit, for ``ttl``)."""
        return cls(ttl, kernel=KernelCache(entry_timeout, attr_timeout, negative_timeout), strict_ttl=0, **kw)

    # ------------------------------------------------------------------ life cycle
    def bind(self, core) -> None:
        self.core = core
        self.meta = core.meta
        if self.budget_bytes:
            core.budget = WriteBudget(self.budget_bytes)

    def _engine(self) -> WriteBack:
        if self.engine is None:
            self.engine = WriteBack(self.meta, delay=self.delay, max_entries=self.max_entries,
                                    on_failure=self._on_failure)
            self.deleg = Delegations(self.meta, self.session, lease_s=self.lease_s)
        return self.engine

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()
        if self.deleg is not None:
            await self.deleg.close(release=True)

    # ------------------------------------------------------------------ scope
    def _lazy_dir(self, parent: int) -> bool:
        return self.all or parent in self._lazy_dirs

    def _lazy_file(self, ino: int) -> bool:
        return self.all or ino in self._lazy_inos or ino in self._own_attrs

    def _in_scope(self, mu: Mutation) -> bool:
        if self.all:
            return True
        op = mu.op
        if op is Change.RENAME:
            return mu.parent in self._lazy_dirs and mu.new_parent in self._lazy_dirs
        if op in (Change.SETATTR, Change.TRUNCATE, Change.SETXATTR, Change.REMOVEXATTR):
            return all(self._lazy_file(i) for i in mu.inos)
        return mu.parent in self._lazy_dirs

    def _note(self, parent: int, attr: Attr, name: bytes = b"") -> None:
        """What the service said of ``attr`` (named in ``parent``): directories' attributes (for
        what new children inherit), the lazy trees, where directories are (for messages)."""
        ino = attr.ino
        if attr.is_dir():
            self._dirs[ino] = (time.monotonic() + max(self.lazy_ttl, 1.0), attr)
            self._dirs.move_to_end(ino)
            if len(self._dirs) > 100_000:
                self._dirs.popitem(last=False)
            if parent and name:
                self._name_dir(ino, parent, name)
            if not self.all:
                if attr.flags & FLAG_LAZY:
                    self._lazy_dirs.add(ino)
                else:
                    self._lazy_dirs.discard(ino)
        elif not self.all and parent in self._lazy_dirs:
            self._lazy_inos.add(ino)

    # ------------------------------------------------------------------ (a) reads
    def own(self, parent, name):
        ino = self._ents.get((parent, name))
        if ino is None:
            return None
        if ino == 0:
            raise err.NotFound()
        return self._own_attrs.get(ino)

    def own_attr(self, ino):
        return self._own_attrs.get(ino) if self._own_attrs else None

    def entry(self, parent, name):
        ino = self._ents.get((parent, name))
        if ino is not None:
            if ino == 0:
                raise err.NotFound()
            return ino
        known = self._names.get(parent)
        if known is not None and name not in known.names and known.expiry > time.monotonic():
            raise err.NotFound()
        return super().entry(parent, name)

    def attr(self, ino):
        a = self._own_attrs.get(ino)
        return a if a is not None else super().attr(ino)

    def walk_attr(self, ino):
        a = self._own_attrs.get(ino)
        return a if a is not None else super().walk_attr(ino)

    def link_target(self, ino):
        t = self._own_links.get(ino)
        return t if t is not None else super().link_target(ino)

    def xattr(self, ino, name):
        if ino in self._noxattr:
            raise err.NoData()
        return super().xattr(ino, name)

    def xattr_names(self, ino):
        if ino in self._noxattr:
            return []
        return super().xattr_names(ino)

    def listing(self, ino, cookie, limit, plus):
        if ino not in self._complete:
            return None
        kids = self._kids.get(ino, {})
        rows = sorted((name_hash(n), n, i) for n, i in kids.items() if i)
        out = []
        for h, n, i in rows:
            if h + 1 <= cookie:
                continue
            a = self._own_attrs.get(i)
            if a is None:  # cannot happen while the directory is complete; be safe
                return None
            out.append(DirEntry(n, i, stat.S_IFMT(a.mode), h + 1, a if plus else None))
            if len(out) >= limit:
                # a page never splits a run of equal hashes (cookies must resume after it)
                return out, False
        return out, True

    def merge(self, ino, cookie, entries, eof):
        kids = self._kids.get(ino)
        own = self._own_attrs
        if not kids:
            if not own:
                return entries, eof
            # the names are the service's; attributes this client changed are its own (readdirplus
            # must agree with getattr: tar -c warns "file changed as we read it" otherwise)
            return [replace(e, attr=own[e.ino]) if e.attr is not None and e.ino in own else e
                    for e in entries], eof
        hi = entries[-1].cookie if entries and not eof else None  # the page covers hashes below hi
        out = []
        for e in entries:
            mine = kids.get(e.name)
            if mine is None:
                a = own.get(e.ino) if e.attr is not None else None
                out.append(replace(e, attr=a) if a is not None else e)
            elif mine and mine == e.ino:
                a = self._own_attrs.get(mine)
                out.append(replace(e, attr=a) if a is not None and e.attr is not None else e)
            # else: removed here, or replaced by another inode (added below)
        have = {e.name for e in out}
        for n, i in kids.items():
            if not i or n in have:
                continue
            h = name_hash(n)
            if h + 1 <= cookie or (hi is not None and h + 1 > hi):
                continue
            a = self._own_attrs.get(i)
            if a is None:
                continue
            out.append(DirEntry(n, i, stat.S_IFMT(a.mode), h + 1, a))
        out.sort(key=lambda e: e.cookie)
        return out, eof

    def remember(self, parent, name, attr):
        self._note(parent, attr, name)
        if (parent, name) in self._ents or attr.ino in self._own_attrs:
            return  # this client's own change wins
        super().remember(parent, name, attr)

    def remember_attr(self, attr):
        if attr.is_dir():
            self._note(0, attr)
        if attr.ino in self._own_attrs:
            return
        super().remember_attr(attr)

    def listed(self, ino, entries):
        for e in entries:
            if e.attr is not None:
                self._note(ino, e.attr, e.name)
        super().listed(ino, [e for e in entries if e.ino not in self._own_attrs and (ino, e.name) not in self._ents])

    def clear(self):
        super().clear()
        self._dirs.clear()

    # ------------------------------------------------------------------ the view
    def _put_attr(self, a: Attr) -> None:
        self._own_attrs[a.ino] = a
        if a.is_dir() and not self.all and a.flags & FLAG_LAZY:
            self._lazy_dirs.add(a.ino)

    def _put_entry(self, parent: int, name: bytes, ino: int) -> None:
        self._ents[(parent, name)] = ino
        self._kids.setdefault(parent, {})[name] = ino
        known = self._names.get(parent)
        if known is not None:
            if ino:
                known.names.add(name)
            else:
                known.names.discard(name)
            known.expiry = max(known.expiry, time.monotonic() + self.lazy_ttl)
        if ino and not self.all:
            self._lazy_inos.add(ino)

    def _stamped(self, e, keys: tuple) -> None:
        for k in keys:
            self._stamp[k] = e.seq

    def _acked(self, keys: tuple, seq: int) -> None:
        """An entry that changed ``keys`` is on the service: the view may forget them after
        ttl (the service answers then), unless a later change touched them."""
        self._expire.append((time.monotonic() + self.lazy_ttl, keys, seq))

    def _evict(self, now: float | None = None) -> None:
        x = self._expire
        if not x:
            return
        now = time.monotonic() if now is None else now
        eng = self.engine
        while x and x[0][0] <= now:
            _, keys, seq = x.popleft()
            for k in keys:
                if self._stamp.get(k) == seq and not (eng is not None and eng.pending(k)):
                    del self._stamp[k]
                    self._forget_key(k)

    def _forget_key(self, k: tuple) -> None:
        if k[0] == "i":
            ino = k[1]
            self._own_attrs.pop(ino, None)
            self._own_links.pop(ino, None)
            self._inline.pop(ino, None)
            self._noxattr.discard(ino)
            if ino in self._complete:
                self._complete.discard(ino)
                self._kids.pop(ino, None)  # the service lists it now
        else:
            _, parent, name = k
            self._ents.pop((parent, name), None)
            kids = self._kids.get(parent)
            if kids is not None:
                kids.pop(name, None)
                if not kids:
                    del self._kids[parent]
            self._complete.discard(parent)  # what is forgotten must come from the service again

    def _on_failure(self, e, f: Failure) -> None:
        """The service refused an entry: its objects are what the service says (the view of them
        is dropped, and what their directories' listings were known to hold)."""
        if isinstance(e.req, m.Create) and e.ino in self._own_attrs:
            self._refused[e.ino] = self._own_attrs[e.ino]
            while len(self._refused) > 10_000:
                self._refused.popitem(last=False)
        for k in e.writes:
            self._stamp.pop(k, None)
            self._forget_key(k)
            if k[0] == "i":
                self._names.pop(k[1], None)
                self.forget_attr(k[1])
            else:
                self._names.pop(k[1], None)
                self.forget_entry(k[1], k[2])
        for k in e.reads:  # a directory another client changed: list it from the service again
            if k[0] == "i":
                self._names.pop(k[1], None)
                self._complete.discard(k[1])

    def _path(self, parent: int, name: bytes = b"") -> str:
        parts = [name] if name else []
        ino, hops = parent, 0
        while ino != ROOT_INO and hops < 64:
            w = self._where.get(ino)
            if w is None or not w[1]:
                parts.append(f"<inode {ino:#x}>".encode())
                break
            parts.append(w[1])
            ino = w[0]
            hops += 1
        return "/" + "/".join(os.fsdecode(p) for p in reversed(parts))

    def _name_dir(self, ino: int, parent: int, name: bytes) -> None:
        """Where ``ino`` is (for the paths of error messages)."""
        self._where[ino] = (parent, name)
        self._where.move_to_end(ino)
        if len(self._where) > 200_000:
            self._where.popitem(last=False)

    # ------------------------------------------------------------------ what the view needs
    async def _dir_attr(self, ino: int, caller: Caller | None) -> Attr:
        a = self._own_attrs.get(ino)
        if a is None:
            d = self._dirs.get(ino)
            if d is not None and d[0] > time.monotonic():
                a = d[1]
            else:
                a = super().attr(ino) or await self.meta.getattr(ino, caller=caller)
                self._note(0, a)
        if not a.is_dir():
            raise err.NotADirectory()
        return a

    async def _inode_attr(self, ino: int, caller: Caller | None = None) -> Attr:
        a = self._own_attrs.get(ino) or super().attr(ino)
        if a is None:
            a = await self.meta.getattr(ino, caller=caller)
        return a

    async def _existing(self, parent: int, name: bytes, caller: Caller | None) -> Attr | None:
        """What ``name`` in ``parent`` is as this client sees it (None: nothing)."""
        ino = self._ents.get((parent, name))
        if ino is not None:
            return self._own_attrs.get(ino) or (await self._inode_attr(ino, caller) if ino else None)
        known = self._names.get(parent)
        now = time.monotonic()
        if known is None or known.expiry <= now:
            known = await self._list_names(parent, caller)
        if known is not None and name not in known.names:
            return None
        cached = super().entry(parent, name)
        if cached is not None:
            a = super().attr(cached)
            if a is not None:
                return a
        try:
            a = await self.meta.lookup(parent, name, caller=caller)
        except err.NotFound:
            return None
        self.remember(parent, name, a)
        return a

    async def _list_names(self, parent: int, caller: Caller | None) -> _Names | None:
        """The names of ``parent`` on the service, once, for the existence checks of the changes
        that follow (None: too many to keep, each name is looked up)."""
        names: set[bytes] = set()
        cookie = 0
        while len(names) < LISTING_MAX:
            entries, eof = await self.meta.readdir(parent, cookie, 1000, plus=False, caller=caller)
            names.update(e.name for e in entries)
            if eof or not entries:
                for n, i in self._kids.get(parent, {}).items():  # this client's own changes win
                    (names.add if i else names.discard)(n)
                known = self._names[parent] = _Names(names, time.monotonic() + self.lazy_ttl)
                return known
            cookie = entries[-1].cookie
        return None

    async def _empty(self, ino: int, caller: Caller | None) -> bool:
        if ino in self._complete:
            return not any(self._kids.get(ino, {}).values())
        entries, _ = await self.meta.readdir(ino, 0, 64, plus=False, caller=caller)
        entries, _ = self.merge(ino, 0, entries, True)
        return not entries

    # ------------------------------------------------------------------ (b) mutations
    async def mutate(self, mu, send):
        if not self._in_scope(mu):
            if self.engine is not None and not self.engine.idle:
                await self.engine.settle(self._keys_of(mu))
            return await super().mutate(mu, send)
        self._evict()
        op = mu.op
        if op is Change.CREATE:
            return await self._create(mu)
        if op in (Change.MKNOD, Change.SYMLINK):
            return (await self._create(mu))[0]
        if op is Change.MKDIR:
            return await self._mkdir(mu)
        if op is Change.UNLINK:
            return await self._remove(mu, False)
        if op is Change.RMDIR:
            return await self._remove(mu, True)
        if op is Change.RENAME:
            return await self._rename(mu, send)
        if op is Change.LINK:
            return await self._link(mu)
        if op is Change.SETATTR:
            return await self._setattr(mu)
        # TRUNCATE: through the file's handle, whose size sink is lazy (LazySizes); xattrs: sent
        # now, after the queued changes of the inode (they are rare, and the view keeps none)
        if op is not Change.TRUNCATE or not self.core.files.get(mu.inos[0] if mu.inos else 0):
            if self.engine is not None:
                await self.engine.settle(self._keys_of(mu))
        for i in mu.inos:
            self._noxattr.discard(i)
        return await send()

    @staticmethod
    def _keys_of(mu: Mutation) -> list[tuple]:
        keys: list[tuple] = [("i", i) for i in mu.inos]
        for p, n in ((mu.parent, mu.name), (mu.new_parent, mu.new_name)):
            if p:
                keys.append(("i", p))
                if n:
                    keys.append(("e", p, n))
        return keys

    def _caller(self, mu: Mutation) -> Caller:
        return mu.caller or self.meta.caller

    async def _queue(self, req: m.Request, shard: int, caller: Caller, *, op: str, path: str, ino: int,
                     reads: tuple, writes: tuple, nbytes: int = 0, view: tuple = (), on_done=None):
        """Queue ``req``; ``view``: the view keys it changes (stamped, forgotten after ttl once
        it is on the service)."""
        eng = self._engine()
        keys = view or writes

        def done(reply, keys=keys):
            if on_done is not None:
                on_done(reply)
            self._acked(keys, e.seq)

        e = eng.add(req, shard=shard, caller=caller, op=op, path=path, ino=ino, reads=reads, writes=writes,
                    nbytes=nbytes, on_done=done)
        self._stamped(e, keys)
        return e

    async def _create(self, mu: Mutation):
        """CREATE (regular files: (attr, created, None, parent attr)), MKNOD, SYMLINK."""
        parent, name, caller, args = mu.parent, mu.name, self._caller(mu), mu.args
        _check_name(name)
        op = mu.op
        eng = self._engine()
        await eng.admit()
        pattr = await self._dir_attr(parent, caller)
        have = await self._existing(parent, name, caller)
        if have is not None:
            if op is Change.CREATE and not args.get("flags", 0) & os.O_EXCL:
                return have, False, None, pattr  # opened as it is (O_TRUNC: through its handle)
            raise err.Exists()
        check_mode(pattr.mode, pattr.uid, pattr.gid, caller, W_X)
        if op is Change.CREATE:
            fmt, rdev, target = stat.S_IFREG, 0, None
        elif op is Change.SYMLINK:
            fmt, rdev, target = stat.S_IFLNK, 0, args["target"]
            if not target or len(target) > SYMLINK_MAX or b"\0" in target:
                raise err.NameTooLong() if target and len(target) > SYMLINK_MAX else err.InvalidArgument()
        else:
            fmt = stat.S_IFMT(args["mode"]) or stat.S_IFREG
            rdev = args.get("rdev", 0)
            target = None
            if fmt == stat.S_IFDIR:
                raise err.InvalidArgument("use mkdir for directories")
            if fmt in (stat.S_IFCHR, stat.S_IFBLK) and caller.uid != 0:
                raise err.NotPermitted("mknod of a device needs root")
        mode = args.get("mode", 0o777)
        umask = args.get("umask", 0)
        shard = shard_of(parent)
        ino = await self.deleg.take(shard)
        if (parent, name) in self._ents and self._ents[(parent, name)]:
            raise err.Exists()  # made meanwhile by another call of this client
        perm = 0o777 if fmt == stat.S_IFLNK else (mode & 0o7777 & ~umask)
        gid = pattr.gid if pattr.mode & stat.S_ISGID else caller.gid
        if perm & stat.S_ISGID and caller.uid != 0 and not caller.in_group(gid):
            perm &= ~stat.S_ISGID
        now = time.time_ns()
        reg = fmt == stat.S_IFREG
        layout = (pattr.layout or DEFAULT_LAYOUT.pack()) if reg else 0
        inline = reg and (self.inline or bool(pattr.flags & FLAG_INLINE))
        size = len(target) if target is not None else 0
        a = Attr(ino, fmt | perm, 1, caller.uid, gid, rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0, size,
                 now, now, now, layout, FLAG_INLINE if inline else 0)
        req = m.Create(parent, name, fmt | (mode & 0o7777), rdev, True, umask, target,
                       True if inline else (False if reg else None), ino=ino, session=self.session, layout=layout)
        self._put_attr(a)
        self._put_entry(parent, name, ino)
        self._noxattr.add(ino)
        self._name_dir(ino, parent, name)
        if target is not None:
            self._own_links[ino] = target
        if inline:
            self._inline[ino] = bytearray()
        self._touch_dir(parent, now)
        ek, ik = ("e", parent, name), ("i", ino)
        await self._queue(req, shard, caller, op=op.value, path=self._path(parent, name), ino=ino,
                          reads=(("i", parent),), writes=(ek, ik), on_done=self._dropped_inline(ino))
        if op is Change.CREATE:
            return a, True, None, self._own_attrs.get(parent, pattr)
        return (a,)

    def _dropped_inline(self, ino: int):
        def done(_reply) -> None:
            if self.engine is not None and not self.engine.pending(("i", ino)):
                self._inline.pop(ino, None)  # on the service now: reads ask it
        return done

    def _touch_dir(self, ino: int, now: int, nlink: int = 0) -> None:
        a = self._own_attrs.get(ino)
        if a is not None:
            self._own_attrs[ino] = replace(a, mtime_ns=now, ctime_ns=now, nlink=a.nlink + nlink)

    async def _mkdir(self, mu: Mutation) -> Attr:
        parent, name, caller, args = mu.parent, mu.name, self._caller(mu), mu.args
        _check_name(name)
        eng = self._engine()
        await eng.admit()
        pattr = await self._dir_attr(parent, caller)
        if await self._existing(parent, name, caller) is not None:
            raise err.Exists()
        check_mode(pattr.mode, pattr.uid, pattr.gid, caller, W_X)
        home = dir_home_shard(parent, name, self.meta.nshards)
        ino = await self.deleg.take(home)
        if self._ents.get((parent, name)):
            raise err.Exists()
        mode, umask = args.get("mode", 0o777), args.get("umask", 0)
        perm = mode & 0o7777 & ~umask
        gid = caller.gid
        if pattr.mode & stat.S_ISGID:
            gid = pattr.gid
            perm |= stat.S_ISGID
        now = time.time_ns()
        a = Attr(ino, stat.S_IFDIR | perm, 2, caller.uid, gid, 0, 0, now, now, now, pattr.layout,
                 pattr.flags & INHERITED)
        self._put_attr(a)
        self._put_entry(parent, name, ino)
        self._complete.add(ino)
        self._names[ino] = _Names(set(), float("inf"))
        self._noxattr.add(ino)
        self._name_dir(ino, parent, name)
        self._touch_dir(parent, now, 1)
        req = m.Mkdir(parent, name, mode, umask, ino, self.session)
        await self._queue(req, home, caller, op="mkdir", path=self._path(parent, name), ino=ino,
                          reads=(("i", parent),), writes=(("e", parent, name), ("i", ino)))
        return a

    async def _remove(self, mu: Mutation, isdir: bool) -> None:
        parent, name, caller = mu.parent, mu.name, self._caller(mu)
        eng = self._engine()
        await eng.admit()
        await self._dir_attr(parent, caller)
        a = await self._existing(parent, name, caller)
        if a is None:
            raise err.NotFound()
        if isdir:
            if not a.is_dir():
                raise err.NotADirectory()
            if a.ino == ROOT_INO:
                raise err.DfsError("root", code=E.EBUSY)
            if not await self._empty(a.ino, caller):
                raise err.NotEmpty()
        elif a.is_dir():
            raise err.IsADirectory()
        now = time.time_ns()
        self._put_entry(parent, name, 0)
        if isdir:
            self._touch_dir(parent, now, -1)
            self._complete.discard(a.ino)
            self._kids.pop(a.ino, None)
            self._names.pop(a.ino, None)
            self._own_attrs.pop(a.ino, None)
        else:
            self._touch_dir(parent, now)
            own = self._own_attrs.get(a.ino)
            if own is not None:
                self._own_attrs[a.ino] = replace(own, nlink=max(0, own.nlink - 1), ctime_ns=now)
        self.forget_attr(a.ino)
        req = (m.Rmdir if isdir else m.Unlink)(parent, name)
        await self._queue(req, shard_of(parent), caller, op="rmdir" if isdir else "unlink",
                          path=self._path(parent, name), ino=a.ino, reads=(("i", parent),),
                          writes=(("e", parent, name), ("i", a.ino)))

    async def _rename(self, mu: Mutation, send):
        sp, sn, dp, dn, caller = mu.parent, mu.name, mu.new_parent, mu.new_name, self._caller(mu)
        flags = mu.args.get("flags", 0)
        _check_name(dn)
        eng = self._engine()
        await eng.admit()
        await self._dir_attr(sp, caller)
        await self._dir_attr(dp, caller)
        src = await self._existing(sp, sn, caller)
        if src is None:
            raise err.NotFound()
        dst = await self._existing(dp, dn, caller)
        if flags & RENAME_NOREPLACE and dst is not None:
            raise err.Exists()
        if flags & RENAME_EXCHANGE and dst is None:
            raise err.NotFound()
        if src.is_dir() and sp != dp:
            # a directory moving elsewhere: the service checks it does not go under itself
            # (the whole ancestry); done now, after what is queued for the objects it touches
            await eng.settle(self._keys_of(mu) + [("i", src.ino)] + ([("i", dst.ino)] if dst else []))
            await send()
            self._renamed_now(sp, sn, dp, dn, src, dst, flags)
            return None
        if dst is not None and dst.ino == src.ino:
            return None  # the same file: nothing to do (POSIX)
        if dst is not None and not flags & RENAME_EXCHANGE:
            if src.is_dir() and not dst.is_dir():
                raise err.NotADirectory()
            if not src.is_dir() and dst.is_dir():
                raise err.IsADirectory()
            if dst.is_dir() and not await self._empty(dst.ino, caller):
                raise err.NotEmpty()
        now = time.time_ns()
        self._put_attr(replace(self._own_attrs.get(src.ino, src), ctime_ns=now))
        self._put_entry(dp, dn, src.ino)
        if flags & RENAME_EXCHANGE:
            self._put_attr(replace(self._own_attrs.get(dst.ino, dst), ctime_ns=now))
            self._put_entry(sp, sn, dst.ino)
        else:
            self._put_entry(sp, sn, 0)
            if dst is not None:
                own = self._own_attrs.get(dst.ino)
                if dst.is_dir():
                    self._touch_dir(dp, now, -1)
                    self._own_attrs.pop(dst.ino, None)
                    self._complete.discard(dst.ino)
                elif own is not None:
                    self._own_attrs[dst.ino] = replace(own, nlink=max(0, own.nlink - 1), ctime_ns=now)
                self.forget_attr(dst.ino)
        for i in (src.ino,) + ((dst.ino,) if dst is not None else ()):
            own = self._own_attrs.get(i)
            if own is not None:
                self._own_attrs[i] = replace(own, ctime_ns=now)
            self.forget_attr(i)
            if self._own_attrs.get(i) is not None and self._own_attrs[i].is_dir():
                self._name_dir(i, dp if i == src.ino else sp, dn if i == src.ino else sn)
        self._touch_dir(sp, now)
        self._touch_dir(dp, now)
        writes = [("e", sp, sn), ("e", dp, dn), ("i", src.ino)] + ([("i", dst.ino)] if dst is not None else [])
        await self._queue(m.Rename(sp, sn, dp, dn, flags), shard_of(sp), caller, op="rename",
                          path=f"{self._path(sp, sn)} -> {self._path(dp, dn)}", ino=src.ino,
                          reads=(("i", sp), ("i", dp)), writes=tuple(writes))
        return None

    def _renamed_now(self, sp, sn, dp, dn, src: Attr, dst: Attr | None, flags: int) -> None:
        """A rename sent at once: the view follows (its entries, if it had them)."""
        for key in ((sp, sn), (dp, dn)):
            self._ents.pop(key, None)
            kids = self._kids.get(key[0])
            if kids is not None:
                kids.pop(key[1], None)
            self.forget_entry(*key)
        for p in (sp, dp):
            self._names.pop(p, None)
            self._complete.discard(p)
            self.forget_attr(p)
        self._name_dir(src.ino, dp, dn)

    async def _link(self, mu: Mutation) -> Attr:
        parent, name, caller = mu.parent, mu.name, self._caller(mu)
        ino = mu.inos[0]
        _check_name(name)
        eng = self._engine()
        await eng.admit()
        pattr = await self._dir_attr(parent, caller)
        a = await self._inode_attr(ino, caller)
        if a.is_dir():
            raise err.NotPermitted("hard link to a directory")
        if await self._existing(parent, name, caller) is not None:
            raise err.Exists()
        check_mode(pattr.mode, pattr.uid, pattr.gid, caller, W_X)
        now = time.time_ns()
        a = replace(a, nlink=a.nlink + 1, ctime_ns=now)
        self._put_attr(a)
        self._put_entry(parent, name, ino)
        self._touch_dir(parent, now)
        self.forget_attr(ino)
        await self._queue(m.Link(ino, parent, name), shard_of(parent), caller, op="link",
                          path=self._path(parent, name), ino=ino, reads=(("i", parent),),
                          writes=(("e", parent, name), ("i", ino)))
        return a

    async def _setattr(self, mu: Mutation) -> Attr:
        ino, caller = mu.inos[0], self._caller(mu)
        fields = {k: v for k, v in mu.args.items() if v is not None and v is not False}
        grow = fields.pop("grow", None)
        eng = self._engine()
        await eng.admit()
        a = await self._inode_attr(ino, caller)
        new = applied_setattr(a, caller, fields, time.time_ns(), grow)
        self._put_attr(new)
        self.forget_attr(ino)
        await self._queue_setattr(ino, caller, fields, grow)
        return new

    async def _queue_setattr(self, ino: int, caller: Caller, fields: dict, grow: int | None) -> None:
        """Queue SETATTR ``fields`` (and ``grow``) of ``ino``, folded into the inode's last change
        when that one is an unsent SETATTR or EXTEND the two can be merged with (tar's
        utimes, chown and chmod of each file become one command)."""
        key = ("i", ino)
        last = self.engine.unsent(key, caller) if self.engine is not None else None
        if last is not None and last.merge is not None:
            merged = merge_setattr(last.merge, fields, grow)
            if merged is not None:
                last.merge = merged
                last.req = setattr_request(ino, grow=merged[1], **merged[0])
                last.op = "setattr"
                self.engine.stats["merged"] += 1
                self._stamped(last, (key,))
                return
        e = await self._queue(setattr_request(ino, grow=grow, **fields), shard_of(ino), caller, op="setattr",
                              path=self._ino_path(ino), ino=ino, reads=(), writes=(key,))
        e.merge = (fields, grow)

    def _ino_path(self, ino: int) -> str:
        w = self._where.get(ino)
        if w is not None and w[1]:
            return self._path(w[0], w[1])
        return f"<inode {ino:#x}>"

    # ------------------------------------------------------------------ the data path's size sink
    async def _size_change(self, ino: int, req: m.Request, a: Attr, nbytes: int = 0) -> Attr:
        self._put_attr(a)
        self.forget_attr(ino)
        if a.nlink == 0 and ino in self._own_attrs and not a.is_dir():
            return a  # a file this client unlinked: gone from the service, its bytes with it
        if isinstance(req, m.Extend):
            await self._queue_setattr(ino, self.meta.caller, {}, req.size)
            return a
        await self._queue(req, shard_of(ino), self.meta.caller, op=req.OP.name.lower(), path=self._ino_path(ino),
                          ino=ino, reads=(), writes=(("i", ino),), nbytes=nbytes,
                          on_done=self._dropped_inline(ino))
        return a

    # ------------------------------------------------------------------ (c) open and close
    def open_plan(self, ino, flags):
        if ino is None:
            if self.all:
                return OpenPlan(revalidate=False, server_handle=True, close_waits=False)
            return super().open_plan(ino, flags)
        eng = self.engine
        if ino in self._own_attrs and eng is not None and eng.pending(("i", ino)):
            # the service may not have it yet: no handle, its attributes are the view's
            return OpenPlan(revalidate=False, server_handle=False, close_waits=False)
        if self._lazy_file(ino):
            return OpenPlan(revalidate=False, server_handle=True, close_waits=False)
        return super().open_plan(ino, flags)

    def wrote(self, ino):
        if ino not in self._own_attrs:
            super().wrote(ino)

    async def check_close(self, ino):
        if self.engine is not None:
            fails = self.engine.take_failures(ino)
            if fails:
                raise WriteBackError.make(fails)

    # ------------------------------------------------------------------ (d) data
    def file_io(self, meta, data):
        return LazySizes(self, meta), data

    # ------------------------------------------------------------------ (e) barriers
    async def barrier(self, ino=None):
        if self.engine is None:
            return
        fails = await self.engine.barrier()
        self._evict()
        if fails:
            raise WriteBackError.make(fails)

    # ------------------------------------------------------------------ the per-directory mark
    async def set_lazy(self, ino: int, lazy: bool, caller: Caller | None = None) -> Attr:
        """SETLAZY of directory ``ino`` once this client's queued changes of it are on the
        service (its mkdir may still be in the log); this client's scope follows at once."""
        if self.engine is not None:
            await self.engine.settle([("i", ino)])
        a = await self.meta.setlazy(ino, lazy, caller=caller)
        self.forget_attr(ino)
        if ino in self._own_attrs:
            self._own_attrs[ino] = a
        if a.flags & FLAG_LAZY:
            self._lazy_dirs.add(ino)
        else:
            self._lazy_dirs.discard(ino)
        return a

    # ------------------------------------------------------------------ lazyio
    async def propagate(self, ino: int) -> None:
        """Make this client's published changes of ``ino`` visible to others now (lazyio)."""
        if self.engine is not None:
            await self.engine.settle([("i", ino)])
            fails = self.engine.take_failures(ino)
            if fails:
                raise WriteBackError.make(fails)
