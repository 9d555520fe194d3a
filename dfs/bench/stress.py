"""Correctness under load: concurrent clients against a model of the namespace.

    dfs bench stress [--data DIR | --cluster FILE | --mgmt ADDRS] [--clients 4] [--duration 30]
                     [--seed N] [--chaos] [--json out.json]

Without a cluster argument it starts its own LocalCluster in a temporary folder
(``--shards`` x ``--replicas`` metadata, 3 mgmt replicas, ``--data-servers`` data
servers, chains of 3). ``--clients`` threads, each with its own ``dfs.connect()``
client, create files, write them (random offsets and sizes, bytes derived from
``--seed``, the client and the op number), truncate, read back, rename (files and
directories, across directories that mkdir spread over the shards, replacing
existing names too), hard-link, unlink, mkdir and rmdir, and try operations that
must fail with a given errno, for ``--duration`` seconds. Files live in small
directories whose layout is 64 KiB chunks striped over 4 chains, half of them
keeping small files inline in the metadata, so sizes cross both boundaries.

The model stays exact because the namespace is partitioned:

* ``c<i>/`` belongs to client ``i``: only it changes names there;
* ``shared/`` is where clients meet (renames in and out of it, links into and
  out of it, writes, renames between its directories, unlinks): every operation
  there, and every operation on a file that has a name outside the caller's own
  area, runs under one lock of this tool, with that client's caches dropped
  first (another client changed the names since).

Each operation's result is checked against the model: an errno the model
predicts is fine, anything else is a difference. A failure with a retryable
errno (the client library already retried with the same request id until its
deadline) leaves the outcome unknown: the tool reads the state back to decide
whether the operation took effect, and repeats it if it did not (writes and
truncates are idempotent and are simply repeated).

``--chaos`` (own cluster only): a thread kill -9's a random server process every
``--chaos-every`` seconds on average -- a metadata replica (often the leader;
at most one per shard down at a time), a data server (one at a time, and only
when every target serves), or an mgmt replica (one at a time) -- and restarts it
``--chaos-down`` seconds later on average.

At the end the cluster is brought back to health, then every directory and file
is compared with the model: names, types, sizes, full contents, link counts
(files: their names; directories: 2 + subdirectories), and that the names of one
file share one inode. Printed: ops per kind, ops/s, retries, kills, and the
differences; ``--json`` writes the same. The exit status is 1 on any difference.
"""

from __future__ import annotations

import argparse
import contextlib
import errno as E
import itertools
import json
import os
import random
import shutil
import stat as S
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import dfs
from dfs.common import errors as err
from dfs.common.ids import shard_of

MAX_SIZE = 512 * 1024  # a file never grows past this (the model keeps every byte)
CHUNK = 64 * 1024  # chunk size of the run's layout: files of a few chunks
OWN_DIRS = 4  # top directories per client
SUBDIR_CAP = 6  # subdirectories per client
OWN_FILE_CAP = 80  # names per client before unlinks are preferred
SHARED_FILE_CAP = 60
OP_DEADLINE = 180.0  # an operation still failing with retryable errors after this is a difference
MAX_DIFFS = 200  # differences kept in full (all are counted)

# errno values that leave an operation's outcome unknown (the library already retried them)
TRANSIENT = {E.EAGAIN, E.ETIMEDOUT, E.ECONNREFUSED, E.ECONNRESET, E.EPIPE, E.ESTALE, E.EHOSTUNREACH,
             err.UNAVAILABLE, err.NOT_LEADER, err.LOCKED, err.STALE_EPOCH}


def transient(e: BaseException) -> bool:
    return isinstance(e, (err.Retryable, TimeoutError, ConnectionError)) or (
        isinstance(e, OSError) and e.errno in TRANSIENT)


def blob(seed: str, n: int) -> bytes:
    """The bytes of one write: re-derivable from (run seed, client, op number)."""
    return random.Random(seed).randbytes(n)


# ---------------------------------------------------------------------- the model
class Node:
    """A regular file of the model: its bytes and how many names it has in each area."""

    __slots__ = ("areas", "data", "history", "id")
    _ids = itertools.count(1)

    def __init__(self, data: bytes) -> None:
        self.id = next(Node._ids)
        self.data = bytearray(data)
        self.areas: Counter[str] = Counter()
        self.history: list[str] = []  # the last operations that changed it (for reports)

    @property
    def nlink(self) -> int:
        return sum(self.areas.values())

    def note(self, what: str) -> None:
        self.history.append(what)
        del self.history[:-12]

    def write(self, off: int, data: bytes) -> None:
        if not data:  # write(2) of nothing changes nothing, past the end either
            return
        if off > len(self.data):
            self.data.extend(bytes(off - len(self.data)))
        self.data[off:off + len(data)] = data

    def truncate(self, n: int) -> None:
        if n < len(self.data):
            del self.data[n:]
        else:
            self.data.extend(bytes(n - len(self.data)))


class Dir:
    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[str, Node | Dir] = {}

    def subdirs(self) -> int:
        return sum(1 for v in list(self.entries.values()) if isinstance(v, Dir))


def area_of(path: str) -> str:
    return path.split("/", 1)[0]


class Model:
    """The expected namespace under the run's root; paths are relative to it."""

    def __init__(self) -> None:
        self.root = Dir()

    def get(self, path: str) -> Node | Dir | None:
        cur: Node | Dir | None = self.root
        for part in path.split("/"):
            if not isinstance(cur, Dir):
                return None
            cur = cur.entries.get(part)
        return cur

    def _parent(self, path: str) -> tuple[Dir, str]:
        head, _, name = path.rpartition("/")
        d = self.get(head) if head else self.root
        assert isinstance(d, Dir), path
        return d, name

    def add(self, path: str, obj: Node | Dir) -> None:
        d, name = self._parent(path)
        assert name not in d.entries, path
        d.entries[name] = obj
        if isinstance(obj, Node):
            obj.areas[area_of(path)] += 1

    def remove(self, path: str) -> Node | Dir:
        d, name = self._parent(path)
        obj = d.entries.pop(name)
        if isinstance(obj, Node):
            a = area_of(path)
            obj.areas[a] -= 1
            if obj.areas[a] <= 0:
                del obj.areas[a]
        return obj

    def files(self, path: str) -> list[tuple[str, Node]]:
        """(path, node) of every file under directory ``path``."""
        out: list[tuple[str, Node]] = []
        d = self.get(path)
        stack = [(path, d)]
        while stack:
            p, d = stack.pop()
            for name, v in list(d.entries.items()):
                if isinstance(v, Dir):
                    stack.append((f"{p}/{name}", v))
                else:
                    out.append((f"{p}/{name}", v))
        return out


# ---------------------------------------------------------------------- results
@dataclass
class Stats:
    ops: Counter = field(default_factory=Counter)  # successful operations per kind
    expected: Counter = field(default_factory=Counter)  # predicted errors per "kind errno"
    retries: Counter = field(default_factory=Counter)  # retryable failures per kind
    resolved: Counter = field(default_factory=Counter)  # unknown outcomes found done (no repeat)
    transient: Counter = field(default_factory=Counter)  # the retryable errors seen, by kind and type

    def merge(self, o: Stats) -> None:
        self.transient.update(o.transient)
        self.ops.update(o.ops)
        self.expected.update(o.expected)
        self.retries.update(o.retries)
        self.resolved.update(o.resolved)


class Differences:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[dict] = []
        self.count = 0

    def add(self, **d) -> None:
        with self.lock:
            self.count += 1
            if len(self.items) < MAX_DIFFS:
                self.items.append(d)


class Stuck(Exception):
    """An operation kept failing with retryable errors past OP_DEADLINE."""


# ---------------------------------------------------------------------- one client
class Worker(threading.Thread):
    def __init__(self, cid: int, run: Run) -> None:
        super().__init__(name=f"stress-{cid}", daemon=True)
        self.cid = cid
        self.run_ = run
        self.me = f"c{cid}"
        self.rng = random.Random(f"{run.seed}/{cid}")
        self.stats = Stats()
        self.opno = 0
        self.names = itertools.count()
        self.c = run.connect()
        self.error: BaseException | None = None
        self.kinds, weights = zip(*[
            ("create", 12), ("write", 20), ("truncate", 6), ("read", 8), ("rename", 10), ("link", 6),
            ("unlink", 8), ("mkdir", 4), ("rmdir", 3), ("rename_dir", 3), ("expect_error", 5),
            ("share_out", 4), ("share_in", 4), ("link_out", 3), ("link_in", 3), ("shared_write", 3),
            ("shared_rename", 3), ("shared_unlink", 3)])
        self.cum = list(itertools.accumulate(weights))

    # ------------------------------------------------------------------ plumbing
    @property
    def model(self) -> Model:
        return self.run_.model

    def abs(self, p: str) -> str:
        return f"{self.run_.root}/{p}"

    def new_name(self, prefix: str = "f") -> str:
        return f"{prefix}{self.cid}_{next(self.names)}"

    def data(self, n: int) -> bytes:
        return blob(f"{self.run_.seed}/{self.cid}/{self.opno}", n)

    def size(self) -> int:
        r = self.rng.random()
        if r < 0.1:
            return 0
        if r < 0.5:
            return self.rng.randint(1, 8192)
        return min(MAX_SIZE, int(2 ** self.rng.uniform(13, 18.5)))

    def diff(self, what: str, path: str = "", **kw) -> None:
        self.run_.diffs.add(kind="op", t=self.run_.now(), client=self.cid, op=self.opno, what=what, path=path, **kw)

    def note(self, node: Node, what: str) -> None:
        node.note(f"{self.run_.now():.2f} c{self.cid}#{self.opno} {what}")

    @contextlib.contextmanager
    def shared(self):
        """Hold the tool's lock of the shared area; this client's caches start empty."""
        with self.run_.lock:
            self.c.mode.clear()
            yield

    def guard(self, *nodes: Node | None):
        """The shared lock if any of ``nodes`` has a name outside this client's area. Only this
        client gives its own files names elsewhere, so a file that is only ours stays so."""
        if any(n is not None and n.areas.keys() != {self.me} for n in nodes):
            return self.shared()
        return contextlib.nullcontext()

    def attempt(self, kind: str, do: Callable[[], object], done: Callable[[], bool] | None = None,
                redo: Callable[[], object] | None = None):
        """Run ``do``: None on success, else the clean OSError it failed with. A retryable
        failure leaves the outcome unknown: ``done()`` reads the state back (True: it took
        effect), else ``redo`` (default ``do``) runs again."""
        end = time.monotonic() + OP_DEADLINE
        fn = do
        pause = 0.1
        while True:
            try:
                fn()
                return None
            except OSError as e:
                if not transient(e):
                    return e
                self.stats.transient[f"{kind}: {type(e).__name__} {e}"[:160]] += 1
            self.stats.retries[kind] += 1
            fn = redo or do
            while True:  # resolve the unknown outcome (reads may fail transiently too)
                if time.monotonic() > end:
                    raise Stuck(kind)
                time.sleep(pause)  # back-off between retries, not synchronisation
                pause = min(2.0, pause * 2)
                try:
                    if done is not None and done():
                        self.stats.resolved[kind] += 1
                        return None
                    break
                except OSError as e:
                    if not transient(e):
                        raise
                    self.stats.retries[kind] += 1

    def ok(self, kind: str, e: OSError | None, path: str, expect: tuple[int, ...] = ()) -> bool:
        """True when the operation succeeded; a predicted errno is counted, another one is a difference."""
        if e is None:
            if expect:
                self.diff(f"{kind} succeeded, expected {'/'.join(E.errorcode.get(x, str(x)) for x in expect)}",
                          path)
                return True
            self.stats.ops[kind] += 1
            return True
        if e.errno in expect:
            self.stats.expected[f"{kind} {E.errorcode.get(e.errno, e.errno)}"] += 1
            return False
        self.diff(f"{kind} failed unexpectedly", path, errno=e.errno, error=str(e))
        return False

    def exists(self, p: str) -> bool:
        try:
            self.c.lstat(self.abs(p))
            return True
        except FileNotFoundError:
            return False

    def pwrite(self, p: str, off: int, data: bytes, mode: str = "r+b") -> None:
        f = self.c.open(self.abs(p), mode, buffering=0)
        try:
            if off:
                f.seek(off)
            mv = memoryview(data)
            n = 0
            while n < len(data):
                n += f.write(mv[n:])
        finally:
            f.close()

    # ------------------------------------------------------------------ picking
    def own_dirs(self) -> list[str]:
        top = [f"{self.me}/d{k}" for k in range(OWN_DIRS)]
        subs = [f"{t}/{n}" for t in top for n, v in list(self.model.get(t).entries.items()) if isinstance(v, Dir)]
        return top + subs

    def own_subdirs(self) -> list[str]:
        return [d for d in self.own_dirs() if d.count("/") == 2]

    def own_files(self) -> list[tuple[str, Node]]:
        return self.model.files(self.me)

    def shared_dirs(self) -> list[str]:
        return [f"shared/s{k}" for k in range(self.run_.shared_dirs)]

    def pick_file(self) -> tuple[str, Node] | None:
        fs = self.own_files()
        return self.rng.choice(fs) if fs else None

    def pick_shared_file(self) -> tuple[str, Node] | None:
        fs = self.model.files("shared")
        return self.rng.choice(fs) if fs else None

    def pick_target(self, pick: Callable[[], tuple[str, Node] | None],
                    dirs: Callable[[], list[str]]) -> tuple[str, Node | None]:
        """Where a rename goes: now and then an existing file from ``pick`` (replaced), else a
        new name in one of ``dirs``."""
        other = pick() if self.rng.random() < 0.3 else None
        if other is not None:
            return other
        return f"{self.rng.choice(dirs())}/{self.new_name()}", None

    def on_own_file(self, body: Callable[[str, Node], None]) -> None:
        """``body(path, node)`` on one of this client's files, under the lock its names need;
        with no file yet, a create instead."""
        f = self.pick_file()
        if f is None:
            return self.op_create()
        with self.guard(f[1]):
            body(*f)

    def on_shared_file(self, body: Callable[[str, Node], None]) -> None:
        """``body(path, node)`` on a file of the shared area, under its lock; none: nothing."""
        with self.shared():
            sf = self.pick_shared_file()
            if sf is not None:
                body(*sf)

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        try:
            while not self.run_.stop.is_set():
                self.opno += 1
                r = self.rng.random() * self.cum[-1]
                kind = self.kinds[next(i for i, c in enumerate(self.cum) if r < c)]
                try:
                    getattr(self, "op_" + kind)()
                except Stuck as e:
                    self.diff(f"{e} still failing with retryable errors after {OP_DEADLINE:.0f} s")
                    return
        except BaseException as e:  # noqa: BLE001 - a bug of this tool or an error that is no OSError: reported
            self.error = e
            self.diff("exception", error=f"{type(e).__name__}: {e}")
        finally:
            with contextlib.suppress(Exception):  # the cluster's state is checked afterwards anyway
                self.c.close()

    # ------------------------------------------------------------------ own area
    def op_create(self) -> None:
        if len(self.own_files()) >= OWN_FILE_CAP:
            return self.op_unlink()
        p = f"{self.rng.choice(self.own_dirs())}/{self.new_name()}"
        data = self.data(self.size())
        e = self.attempt("create", lambda: self.pwrite(p, 0, data, "xb"),
                         redo=lambda: self.pwrite(p, 0, data, "wb"))  # wb: create or cut, then write
        if self.ok("create", e, p):
            n = Node(data)
            self.note(n, f"create {p} {len(data)}")
            self.model.add(p, n)

    def op_write(self) -> None:
        self.on_own_file(lambda p, node: self._write(p, node, "write"))

    def _write(self, p: str, node: Node, kind: str) -> None:
        n = self.size()
        off = self.rng.randint(0, max(0, min(len(node.data) + CHUNK, MAX_SIZE - n)))
        data = self.data(n)
        e = self.attempt(kind, lambda: self.pwrite(p, off, data))
        if self.ok(kind, e, p):
            node.write(off, data)
            self.note(node, f"write {p} @{off}+{n}")

    def op_truncate(self) -> None:
        self.on_own_file(lambda p, node: self._truncate(
            p, node, self.rng.choice([0, self.rng.randint(0, len(node.data)), self.rng.randint(0, MAX_SIZE)]),
            "truncate"))

    def _truncate(self, p: str, node: Node, n: int, kind: str) -> None:
        e = self.attempt(kind, lambda: self.c.truncate(self.abs(p), n))
        if self.ok(kind, e, p):
            node.truncate(n)
            self.note(node, f"truncate {p} {n}")

    def op_read(self) -> None:
        self.on_own_file(self._read)

    def _read(self, p: str, node: Node) -> None:
        got: list[bytes] = []
        e = self.attempt("read", lambda: got.append(self.c.read_bytes(self.abs(p))))
        if self.ok("read", e, p) and got[-1] != node.data:
            first = describe(bytes(node.data), got[-1])
            again: list[bytes] = []
            self.attempt("read", lambda: again.append(self.c.read_bytes(self.abs(p))))
            ino = self.c.lstat(self.abs(p)).st_ino
            self.diff("read: wrong content", p, ino=ino, **first, chunk=first["first_difference"] // CHUNK,
                      reread_ok=bool(again) and again[-1] == node.data, history=list(node.history))

    def op_rename(self) -> None:
        f = self.pick_file()
        if f is None:
            return self.op_create()
        src, node = f
        dst, dst_node = self.pick_target(self.pick_file, self.own_dirs)
        with self.guard(node, dst_node):
            self._rename_file(src, node, dst, dst_node)

    def _rename_file(self, src: str, node: Node, dst: str, dst_node: Node | None) -> None:
        kind = "rename" if area_of(src) == area_of(dst) else ("share_out" if area_of(dst) == "shared" else "share_in")
        if src == dst or dst_node is node:  # two names of one file: POSIX says do nothing
            e = self.attempt(kind, lambda: self.c.rename(self.abs(src), self.abs(dst)), done=lambda: True)
            self.ok(kind, e, src)
            return
        e = self.attempt(kind, lambda: self.c.rename(self.abs(src), self.abs(dst)),
                         done=lambda: not self.exists(src))
        if self.ok(kind, e, src):
            if dst_node is not None:
                self.model.remove(dst)
                self.note(dst_node, f"replaced {dst} by {src}")
            self.model.remove(src)
            self.model.add(dst, node)
            self.note(node, f"{kind} {src} -> {dst}")

    def op_link(self) -> None:
        self.on_own_file(lambda src, node: self._link(
            src, node, f"{self.rng.choice(self.own_dirs())}/{self.new_name('l')}", "link"))

    def _link(self, src: str, node: Node, dst: str, kind: str) -> None:
        e = self.attempt(kind, lambda: self.c.link(self.abs(src), self.abs(dst)), done=lambda: self.exists(dst))
        if self.ok(kind, e, dst):
            self.model.add(dst, node)
            self.note(node, f"{kind} {src} -> {dst}")

    def op_unlink(self) -> None:
        self.on_own_file(lambda p, node: self._unlink(p, node, "unlink"))

    def _unlink(self, p: str, node: Node, kind: str) -> None:
        e = self.attempt(kind, lambda: self.c.remove(self.abs(p)), done=lambda: not self.exists(p))
        if self.ok(kind, e, p):
            self.model.remove(p)
            self.note(node, f"{kind} {p}")

    def op_mkdir(self) -> None:
        if len(self.own_subdirs()) >= SUBDIR_CAP:
            return self.op_rmdir()
        p = f"{self.me}/d{self.rng.randrange(OWN_DIRS)}/{self.new_name('s')}"
        e = self.attempt("mkdir", lambda: self.c.mkdir(self.abs(p)), done=lambda: self.exists(p))
        if self.ok("mkdir", e, p):
            self.model.add(p, Dir())

    def op_rmdir(self) -> None:
        subs = self.own_subdirs()
        if not subs:
            return self.op_mkdir()
        p = self.rng.choice(subs)
        d = self.model.get(p)
        if d.entries:  # empty it first: its files go to a top directory
            for name, v in list(d.entries.items()):
                top = f"{self.me}/d{self.rng.randrange(OWN_DIRS)}"
                with self.guard(v):
                    self._rename_file(f"{p}/{name}", v, f"{top}/{self.new_name()}", None)
            if d.entries:
                return
        e = self.attempt("rmdir", lambda: self.c.rmdir(self.abs(p)), done=lambda: not self.exists(p))
        if self.ok("rmdir", e, p):
            self.model.remove(p)

    def op_rename_dir(self) -> None:
        subs = self.own_subdirs()
        if not subs:
            return self.op_mkdir()
        src = self.rng.choice(subs)
        dst = f"{self.me}/d{self.rng.randrange(OWN_DIRS)}/{self.new_name('s')}"
        # the files under it keep their areas: no other client has a name that changes
        e = self.attempt("rename_dir", lambda: self.c.rename(self.abs(src), self.abs(dst)),
                         done=lambda: not self.exists(src))
        if self.ok("rename_dir", e, src):
            self.model.add(dst, self.model.remove(src))

    def op_expect_error(self) -> None:
        """An operation the model says must fail, with the errno it must fail with."""
        files = self.own_files()
        subs = self.own_subdirs()
        top = f"{self.me}/d{self.rng.randrange(OWN_DIRS)}"
        cases: list[tuple[str, Callable[[], object], tuple[int, ...], str]] = [
            ("unlink missing", lambda: self.c.remove(self.abs(f"{top}/missing")), (E.ENOENT,), top),
            ("rmdir missing", lambda: self.c.rmdir(self.abs(f"{top}/missing")), (E.ENOENT,), top),
            ("mkdir existing", lambda: self.c.mkdir(self.abs(top)), (E.EEXIST,), top),
            ("rename missing", lambda: self.c.rename(self.abs(f"{top}/missing"), self.abs(f"{top}/x")),
             (E.ENOENT,), top),
        ]
        if files:
            p, _ = self.rng.choice(files)
            q, _ = self.rng.choice(files)
            cases += [
                ("create existing", lambda: self.c.open(self.abs(p), "xb").close(), (E.EEXIST,), p),
                ("link onto existing", lambda: self.c.link(self.abs(p), self.abs(q)), (E.EEXIST,), q),
                ("rmdir of a file", lambda: self.c.rmdir(self.abs(p)), (E.ENOTDIR,), p),
                ("file into missing dir", lambda: self.c.rename(self.abs(p), self.abs(f"{top}/missing/x")),
                 (E.ENOENT,), p),
            ]
            if subs:
                s = self.rng.choice(subs)
                cases.append(("rename file onto dir", lambda: self.c.rename(self.abs(p), self.abs(s)),
                              (E.EISDIR,), p))
        full = [s for s in subs if self.model.get(s).entries]
        if full:
            s = full[0]
            cases.append(("rmdir non-empty", lambda: self.c.rmdir(self.abs(s)), (E.ENOTEMPTY, E.EEXIST), s))
        what, fn, expect, path = self.rng.choice(cases)
        e = self.attempt("expect_error", fn)
        self.ok(what, e, path, expect)

    # ------------------------------------------------------------------ the shared area
    def out_to_shared(self, body: Callable[[str, Node], None]) -> None:
        """``body(path, node)`` on one of this client's files, under the shared area's lock,
        while the shared area has room for one more name; with no file yet, a create instead."""
        f = self.pick_file()
        if f is None:
            return self.op_create()
        with self.shared():
            if len(self.model.files("shared")) < SHARED_FILE_CAP:
                body(*f)

    def op_share_out(self) -> None:
        self.out_to_shared(lambda src, node: self._rename_file(
            src, node, *self.pick_target(self.pick_shared_file, self.shared_dirs)))

    def op_share_in(self) -> None:
        self.on_shared_file(lambda src, node: self._rename_file(
            src, node, f"{self.rng.choice(self.own_dirs())}/{self.new_name()}", None))

    def op_link_out(self) -> None:
        self.out_to_shared(lambda src, node: self._link(
            src, node, f"{self.rng.choice(self.shared_dirs())}/{self.new_name('l')}", "link_out"))

    def op_link_in(self) -> None:
        self.on_shared_file(lambda src, node: self._link(
            src, node, f"{self.rng.choice(self.own_dirs())}/{self.new_name('l')}", "link_in"))

    def op_shared_write(self) -> None:
        self.on_shared_file(self._shared_write)

    def _shared_write(self, p: str, node: Node) -> None:
        if self.rng.random() < 0.3:
            self._truncate(p, node, self.rng.randint(0, MAX_SIZE // 2), "shared_write")
        else:
            self._write(p, node, "shared_write")

    def op_shared_rename(self) -> None:
        self.on_shared_file(lambda src, node: self._rename_file(
            src, node, *self.pick_target(self.pick_shared_file, self.shared_dirs)))

    def op_shared_unlink(self) -> None:
        self.on_shared_file(lambda p, node: self._unlink(p, node, "shared_unlink"))


def describe(want: bytes, got: bytes) -> dict:
    """Where two contents part: sizes and the first differing offset."""
    first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return {"expected_size": len(want), "actual_size": len(got), "first_difference": first,
            "expected_bytes": want[first:first + 8].hex(), "actual_bytes": got[first:first + 8].hex()}


# ---------------------------------------------------------------------- chaos
class Chaos(threading.Thread):
    """kill -9 random server processes of a LocalCluster and restart them a little later."""

    def __init__(self, cluster, rng: random.Random, stop: threading.Event, every: float, down: float,
                 now: Callable[[], float]) -> None:
        super().__init__(name="stress-chaos", daemon=True)
        self.cluster = cluster
        self.rng = rng
        self.stop = stop
        self.every = every
        self.down_s = down
        self.down: list[tuple[float, object]] = []  # (restart at, proc)
        self.kills: Counter = Counter()
        self.events: list[dict] = []
        self.error: BaseException | None = None
        self.now = now
        self.first = threading.Event()  # set once the first kill is done (or failed)

    def _eligible(self) -> list:
        c = self.cluster
        down = {id(p) for _, p in self.down}
        out = []
        for s in range(c.cfg.nshards):
            ps = c.meta_procs(s)
            if all(p.alive and id(p) not in down for p in ps):
                out += [("meta", p) for p in ps]
        ms = c.mgmt_procs()
        if all(p.alive for p in ms):
            out += [("mgmt", p) for p in ms]
        ds = c.data_procs()
        if ds and all(p.alive for p in ds):
            m = c.cluster_map()
            if m is not None and all(t.state == "serving" for t in m.targets.values()):
                out += [("data", p) for p in ds]
        return out

    def _kill_one(self) -> None:
        eligible = self._eligible()
        if not eligible:
            return
        role = self.rng.choice(sorted({r for r, _ in eligible}))
        procs = [p for r, p in eligible if r == role]
        p = self.rng.choice(procs)
        if role == "meta" and self.rng.random() < 0.5:  # the leader, often: failover mid-operation
            leader = self.cluster.leader_of(p.shard)
            if leader is not None and leader in procs:
                p = leader
        self.cluster.kill(p)
        self.kills[role] += 1
        self.events.append({"t": self.now(), "kill": p.name})
        self.down.append((time.monotonic() + self.rng.uniform(0.5, 1.5) * self.down_s, p))

    def _restart_due(self, everything: bool = False) -> None:
        now = time.monotonic()
        for item in list(self.down):
            t, p = item
            if everything or t <= now:
                self.down.remove(item)
                self.cluster.restart(p)
                self.events.append({"t": self.now(), "restart": p.name})

    def run(self) -> None:
        try:
            try:
                self._kill_one()  # the first one at once: every chaos run has at least one
            finally:
                self.first.set()
            next_kill = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.every
            while not self.stop.wait(0.1):  # pacing of the chaos, not synchronisation
                self._restart_due()
                if time.monotonic() >= next_kill:
                    self._kill_one()
                    next_kill = time.monotonic() + self.rng.uniform(0.5, 1.5) * self.every
        except BaseException as e:  # noqa: BLE001 - reported in the results
            self.error = e
        finally:
            self._restart_due(everything=True)


# ---------------------------------------------------------------------- the run
class Run:
    def __init__(self, a, connect_kw: dict, root: str) -> None:
        self.a = a
        self.seed = a.seed
        self.connect_kw = connect_kw
        self.root = root
        self.model = Model()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.diffs = Differences()
        self.shared_dirs = 4
        self.t0 = time.monotonic()

    def now(self) -> float:
        """Seconds since the clients started (the time of notes, differences and chaos events)."""
        return round(time.monotonic() - self.t0, 3)

    def connect(self, **kw) -> dfs.Client:
        return dfs.connect(**self.connect_kw, **kw)

    def setup(self, fs) -> None:
        """The run's root (64 KiB chunks over 4 chains), the clients' areas (half of them
        keeping small files inline) and the shared directories."""
        from dfs.common.layout import Layout

        fs.mkdir(self.root)
        lay = Layout(chunk_size=CHUNK, stripe=4, replicas=3).pack()
        root_ino = fs.lstat(self.root).st_ino
        fs._run(fs.meta.setlayout(root_ino, lay, inline=False))
        for i in range(self.a.clients):
            fs.mkdir(f"{self.root}/c{i}")
            self.model.add(f"c{i}", Dir())
            ino = fs.lstat(f"{self.root}/c{i}").st_ino
            fs._run(fs.meta.setlayout(ino, lay, inline=i % 2 == 0))
            for k in range(OWN_DIRS):
                fs.mkdir(f"{self.root}/c{i}/d{k}")
                self.model.add(f"c{i}/d{k}", Dir())
        fs.mkdir(f"{self.root}/shared")
        self.model.add("shared", Dir())
        for k in range(self.shared_dirs):
            fs.mkdir(f"{self.root}/shared/s{k}")
            self.model.add(f"shared/s{k}", Dir())


def verify(fs, root: str, model: Model, diffs: Differences) -> dict:
    """Compare the tree under ``root`` with the model; returns what was checked."""
    checked = Counter()
    read: set[int] = set()  # model node ids whose content was compared
    inos: dict[int, int] = {}  # model node id -> inode number seen
    owner: dict[int, int] = {}  # inode number -> model node id

    def d(what: str, path: str, **kw) -> None:
        diffs.add(kind="verify", what=what, path=path, **kw)

    def walk(rel: str, mdir: Dir) -> None:
        path = f"{root}/{rel}" if rel else root
        entries = {e.name: e for e in fs.scandir(path)}
        want, have = set(mdir.entries), set(entries)
        for name in sorted(want - have):
            d("missing", f"{rel}/{name}".lstrip("/"))
        for name in sorted(have - want):
            d("extra", f"{rel}/{name}".lstrip("/"))
        st = fs.lstat(path)
        checked["dirs"] += 1
        checked[f"dirs on shard {shard_of(st.st_ino)}"] += 1
        if st.st_nlink != 2 + mdir.subdirs():
            d("directory link count", rel or ".", expected=2 + mdir.subdirs(), actual=st.st_nlink)
        for name in sorted(want & have):
            m = mdir.entries[name]
            p = f"{rel}/{name}".lstrip("/")
            st = fs.lstat(f"{root}/{p}")
            if isinstance(m, Dir):
                if not S.S_ISDIR(st.st_mode):
                    d("type", p, expected="directory", actual=oct(S.S_IFMT(st.st_mode)))
                    continue
                walk(p, m)
                continue
            if not S.S_ISREG(st.st_mode):
                d("type", p, expected="file", actual=oct(S.S_IFMT(st.st_mode)))
                continue
            checked["names"] += 1
            if inos.setdefault(m.id, st.st_ino) != st.st_ino:
                d("hard links of one file have different inodes", p, history=m.history)
            if owner.setdefault(st.st_ino, m.id) != m.id:
                d("two files share an inode", p, history=m.history)
            if st.st_nlink != m.nlink:
                d("file link count", p, expected=m.nlink, actual=st.st_nlink, history=m.history)
            if st.st_size != len(m.data):
                d("size", p, expected=len(m.data), actual=st.st_size, history=m.history)
            if m.id not in read:
                read.add(m.id)
                got = fs.read_bytes(f"{root}/{p}")
                checked["files"] += 1
                checked["bytes"] += len(got)
                if got != m.data:
                    d("content", p, ino=st.st_ino, **describe(bytes(m.data), got), history=m.history)

    walk("", model.root)
    return dict(checked)


def wait_usable(fs, root: str, timeout: float = 180.0) -> None:
    """Until the run's root answers (the cluster is back)."""
    end = time.monotonic() + timeout
    while True:
        try:
            fs.listdir(root)
            return
        except OSError as e:
            if not transient(e) or time.monotonic() > end:
                raise
        time.sleep(0.5)  # polling interval of a deadline-bounded wait


def summary(res: dict) -> str:
    lines = [f"{'op':<16}{'ok':>9}{'retries':>9}{'resolved':>10}"]
    for k in sorted(set(res["ops"]) | set(res["retries"])):
        lines.append(f"{k:<16}{res['ops'].get(k, 0):>9}{res['retries'].get(k, 0):>9}{res['resolved'].get(k, 0):>10}")
    lines.append(f"{'total':<16}{res['ops_total']:>9}   {res['ops_per_s']:,.1f} ops/s over {res['elapsed_s']:.1f} s "
                 f"by {res['config']['clients']} clients")
    if res["expected_errors"]:
        lines.append("predicted errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(res["expected_errors"].items())))
    if res.get("chaos"):
        ch = res["chaos"]
        lines.append("chaos: kills " + (", ".join(f"{k} x{v}" for k, v in sorted(ch["kills"].items())) or "none"))
    v = res["verified"]
    lines.append(f"verified: {v.get('dirs', 0)} directories, {v.get('names', 0)} file names, "
                 f"{v.get('files', 0)} files, {v.get('bytes', 0):,} bytes; directories per shard: "
                 + ", ".join(f"{k.rsplit(' ', 1)[1]}: {n}" for k, n in sorted(v.items()) if k.startswith("dirs on")))
    lines.append(f"differences: {res['differences_count']}")
    for x in res["differences"][:20]:
        lines.append("  " + json.dumps(x, default=str))
    return "\n".join(lines)


def stress(a, log=print) -> dict:
    cluster = None
    tmp = None
    if a.data or a.cluster or a.mgmt:
        connect_kw = {"data": a.data or None, "mgmt": a.mgmt or None}
        if a.cluster:
            connect_kw["cluster"] = a.cluster
    else:
        from dfs.local.cluster import LocalCluster

        tmp = tempfile.mkdtemp(prefix="dfs-stress-", dir=a.dir or None)
        log(f"starting a LocalCluster in {tmp}: {a.shards} shards x {a.replicas}, 3 mgmt, "
            f"{a.data_servers} data servers")
        cluster = LocalCluster(os.path.join(tmp, "cluster"), shards=a.shards, replicas=a.replicas,
                               data_servers=a.data_servers, chain_replicas=min(3, a.data_servers), metrics=False)
        cluster.start(180.0)
        connect_kw = {"mgmt": cluster.mgmt_addresses}
    root = f"/stress-{a.seed}-{os.getpid()}-{int(time.time())}"
    run = Run(a, connect_kw, root)
    chaos = None
    workers: list[Worker] = []
    try:
        with run.connect() as fs:
            run.setup(fs)
        workers = [Worker(i, run) for i in range(a.clients)]
        if a.chaos:
            chaos = Chaos(cluster, random.Random(f"{a.seed}/chaos"), run.stop, a.chaos_every, a.chaos_down,
                          run.now)
        t0 = run.t0 = time.monotonic()
        for w in workers:
            w.start()
        if chaos:
            chaos.start()
            chaos.first.wait()
        progress(run, workers, chaos, a)
        run.stop.set()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - t0
        if chaos:
            chaos.join()
        if cluster is not None:
            for p in cluster.procs:  # a process that died by itself is part of the report too
                if p.popen is not None and not p.alive:
                    run.diffs.add(kind="cluster", what=f"{p.name} exited with {p.popen.returncode}")
                    cluster.restart(p)
            cluster.wait_healthy(180.0)
        stats = Stats()
        for w in workers:
            stats.merge(w.stats)
        with run.connect(ttl=0) as fs:
            wait_usable(fs, root)
            checked = verify(fs, root, run.model, run.diffs)
        total = sum(stats.ops.values())
        res = {
            "config": {"clients": a.clients, "duration_s": a.duration, "seed": a.seed, "chaos": a.chaos,
                       "cluster": "own" if cluster is not None else "external", "root": root,
                       **({"shards": a.shards, "replicas": a.replicas, "data_servers": a.data_servers}
                          if cluster is not None else {})},
            "elapsed_s": round(elapsed, 3),
            "ops": dict(sorted(stats.ops.items())),
            "ops_total": total,
            "ops_per_s": round(total / elapsed, 1) if elapsed else 0.0,
            "expected_errors": dict(sorted(stats.expected.items())),
            "retries": dict(sorted(stats.retries.items())),
            "resolved": dict(sorted(stats.resolved.items())),
            "transient_errors": dict(stats.transient.most_common(30)),
            "verified": checked,
            "differences_count": run.diffs.count,
            "differences": run.diffs.items,
        }
        if chaos:
            res["chaos"] = {"kills": dict(chaos.kills), "events": chaos.events,
                            "error": repr(chaos.error) if chaos.error else None}
        return res
    finally:
        run.stop.set()
        if cluster is not None:
            cluster.stop()
        if tmp is not None and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            log(f"cluster folder kept: {tmp}")


def progress(run: Run, workers: list[Worker], chaos: Chaos | None, a) -> None:
    """Until the duration is over (or every worker stopped), with a progress bar."""
    from tqdm import tqdm

    end = time.monotonic() + a.duration
    with tqdm(total=int(a.duration), unit="s", disable=not a.progress, file=sys.stderr,
              bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s {postfix}") as bar:
        while True:
            left = end - time.monotonic()
            if left <= 0 or not any(w.is_alive() for w in workers):
                break
            run.stop.wait(min(0.5, left))  # the duration's pacing
            bar.n = min(int(a.duration), int(a.duration - max(0.0, end - time.monotonic())))
            post = {"ops": sum(w.opno for w in workers), "diffs": run.diffs.count}
            if chaos:
                post["kills"] = sum(chaos.kills.values())
            bar.set_postfix(post, refresh=False)
            bar.refresh()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dfs bench stress", description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--data", default="", help="the data folder of a running cluster (`dfs cluster up --data`)")
    where.add_argument("--cluster", default="", help="a cluster file")
    where.add_argument("--mgmt", default="", help="mgmt addresses, comma-separated")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds")
    ap.add_argument("--seed", type=int, default=None, help="default: from the clock (printed)")
    ap.add_argument("--chaos", action="store_true", help="kill -9 and restart servers during the run (own cluster)")
    ap.add_argument("--chaos-every", type=float, default=2.0, help="mean seconds between two kills")
    ap.add_argument("--chaos-down", type=float, default=2.0, help="mean seconds a killed process stays down")
    ap.add_argument("--shards", type=int, default=2, help="own cluster: metadata shards")
    ap.add_argument("--replicas", type=int, default=3, help="own cluster: replicas per shard")
    ap.add_argument("--data-servers", type=int, default=3, help="own cluster: data servers")
    ap.add_argument("--dir", default="", help="own cluster: where its temporary folder goes")
    ap.add_argument("--keep", action="store_true", help="own cluster: keep its folder (logs) at the end")
    ap.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    if a.chaos and (a.data or a.cluster or a.mgmt):
        ap.error("--chaos kills processes: only with the cluster this tool starts itself")
    if a.clients < 1 or a.duration <= 0:
        ap.error("--clients and --duration must be positive")
    if a.seed is None:
        a.seed = int(time.time() * 1000) % 1_000_000
    print(f"dfs bench stress: {a.clients} clients, {a.duration:g} s, seed {a.seed}"
          + (", chaos" if a.chaos else ""), flush=True)
    res = stress(a)
    print(summary(res), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return 1 if res["differences_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
