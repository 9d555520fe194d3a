"""The clients of a stress run: each a thread with its own ``dfs.connect()``
client, drawing operations from a weighted mix and checking each result
against the model.

Every operation is one row of ``CALLS`` run by ``Worker.perform``: the client
call, and how an unknown outcome is settled. A failure with a retryable errno
(the client library already retried with the same request id until its
deadline) leaves the outcome unknown: the row's ``done`` reads the state back
to decide whether the call took effect, else the call (or the row's ``redo``)
runs again; writes and truncates are idempotent and are simply repeated. The
result is then checked: an errno the model predicts is counted, anything else
is a difference; on success the model changes (``then``).

The model stays exact because the namespace is partitioned: ``c<i>/`` belongs
to client i (only it changes names there); ``shared/`` is where clients meet,
and every operation there, or on a file that has a name outside the caller's
own area, runs under the run's lock, with that client's caches dropped first.

May import: dfs (the public client API), dfs.common and dfs.stress.
"""

from __future__ import annotations

import contextlib
import errno as E
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import dfs
from dfs.common import errors as err
from dfs.stress.model import Differences, Dir, Model, Node, area_of, blob, describe

MAX_SIZE = 512 * 1024  # a file never grows past this (the model keeps every byte)
CHUNK = 64 * 1024  # chunk size of the run's layout: files of a few chunks
OWN_DIRS = 4  # top directories per client
SUBDIR_CAP = 6  # subdirectories per client
OWN_FILE_CAP = 80  # names per client before unlinks are preferred
SHARED_FILE_CAP = 60
OP_DEADLINE = 180.0  # an operation still failing with retryable errors after this is a difference

# errno values that leave an operation's outcome unknown (the library already retried them)
TRANSIENT = {E.EAGAIN, E.ETIMEDOUT, E.ECONNREFUSED, E.ECONNRESET, E.EPIPE, E.ESTALE, E.EHOSTUNREACH,
             err.UNAVAILABLE, err.NOT_LEADER, err.LOCKED, err.STALE_EPOCH}


def transient(e: BaseException) -> bool:
    return isinstance(e, (err.Retryable, TimeoutError, ConnectionError)) or (
        isinstance(e, OSError) and e.errno in TRANSIENT)

# The operation mix: kind -> weight (``Worker.op_<kind>`` does it).
MIX = {
    "create": 12, "write": 20, "truncate": 6, "read": 8, "rename": 10, "link": 6, "unlink": 8, "mkdir": 4,
    "rmdir": 3, "rename_dir": 3, "expect_error": 5, "share_out": 4, "share_in": 4, "link_out": 3, "link_in": 3,
    "shared_write": 3, "shared_rename": 3, "shared_unlink": 3,
}


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

class Stuck(Exception):
    """An operation kept failing with retryable errors past OP_DEADLINE."""


@dataclass(frozen=True, slots=True)
class Call:
    """One client call of the workload, as ``Worker.perform`` runs it: ``do(worker, *args)``;
    after a retryable failure, ``done(worker, *args)`` reads back whether it took effect
    (None: it is idempotent, run it again), and ``redo`` is what runs again (None: ``do``)."""

    do: Callable[..., object]
    done: Callable[..., bool] | None = None
    redo: Callable[..., object] | None = None


def _rename(w: Worker, a: str, b: str) -> None:
    w.c.rename(w.abs(a), w.abs(b))


CALLS: dict[str, Call] = {
    "create": Call(lambda w, p, data: w.pwrite(p, 0, data, "xb"),
                   redo=lambda w, p, data: w.pwrite(p, 0, data, "wb")),  # wb: create or cut, then write
    "write": Call(lambda w, p, off, data: w.pwrite(p, off, data)),
    "truncate": Call(lambda w, p, n: w.c.truncate(w.abs(p), n)),
    "read": Call(lambda w, p, out: out.append(w.c.read_bytes(w.abs(p)))),
    "rename": Call(_rename, done=lambda w, a, b: not w.exists(a)),
    # a rename onto another name of the same file does nothing (POSIX): every outcome is it
    "rename_same": Call(_rename, done=lambda w, a, b: True),
    "link": Call(lambda w, a, b: w.c.link(w.abs(a), w.abs(b)), done=lambda w, a, b: w.exists(b)),
    "unlink": Call(lambda w, p: w.c.remove(w.abs(p)), done=lambda w, p: not w.exists(p)),
    "mkdir": Call(lambda w, p: w.c.mkdir(w.abs(p)), done=lambda w, p: w.exists(p)),
    "rmdir": Call(lambda w, p: w.c.rmdir(w.abs(p)), done=lambda w, p: not w.exists(p)),
}


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
        self.kinds = list(MIX)
        self.cum = list(itertools.accumulate(MIX.values()))

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

    def perform(self, kind: str, call: str, *args, path: str, then: Callable[[], object] | None = None,
                note: tuple[Node, str] | None = None, expect: tuple[int, ...] = (), label: str = "") -> bool:
        """Operation ``kind``: the row ``call`` of CALLS with ``args``, until its outcome is known;
        the result checked (``ok``, as ``label`` or ``kind``); on success ``then()`` changes the
        model and ``note`` goes into the node's history. With ``expect`` (the errnos it must fail
        with) the call is only ever repeated: a failure changes nothing. True on success."""
        c = CALLS[call]
        e = self.attempt(kind, lambda: c.do(self, *args),
                         done=None if expect or c.done is None else lambda: c.done(self, *args),
                         redo=None if expect or c.redo is None else lambda: c.redo(self, *args))
        if not self.ok(label or kind, e, path, expect) or expect:
            return False
        if then is not None:
            then()
        if note is not None:
            self.note(*note)
        return True

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

        def created() -> None:
            n = Node(data)
            self.note(n, f"create {p} {len(data)}")
            self.model.add(p, n)

        self.perform("create", "create", p, data, path=p, then=created)

    def op_write(self) -> None:
        self.on_own_file(lambda p, node: self._write(p, node, "write"))

    def _write(self, p: str, node: Node, kind: str) -> None:
        n = self.size()
        off = self.rng.randint(0, max(0, min(len(node.data) + CHUNK, MAX_SIZE - n)))
        data = self.data(n)
        self.perform(kind, "write", p, off, data, path=p, then=lambda: node.write(off, data),
                     note=(node, f"write {p} @{off}+{n}"))

    def op_truncate(self) -> None:
        self.on_own_file(lambda p, node: self._truncate(
            p, node, self.rng.choice([0, self.rng.randint(0, len(node.data)), self.rng.randint(0, MAX_SIZE)]),
            "truncate"))

    def _truncate(self, p: str, node: Node, n: int, kind: str) -> None:
        self.perform(kind, "truncate", p, n, path=p, then=lambda: node.truncate(n), note=(node, f"truncate {p} {n}"))

    def op_read(self) -> None:
        self.on_own_file(self._read)

    def _read(self, p: str, node: Node) -> None:
        got: list[bytes] = []
        if self.perform("read", "read", p, got, path=p) and got[-1] != node.data:
            first = describe(bytes(node.data), got[-1])
            again: list[bytes] = []
            self.attempt("read", lambda: CALLS["read"].do(self, p, again))  # not counted: a second look
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
            self.perform(kind, "rename_same", src, dst, path=src)
            return

        def moved() -> None:
            if dst_node is not None:
                self.model.remove(dst)
                self.note(dst_node, f"replaced {dst} by {src}")
            self.model.remove(src)
            self.model.add(dst, node)

        self.perform(kind, "rename", src, dst, path=src, then=moved, note=(node, f"{kind} {src} -> {dst}"))

    def op_link(self) -> None:
        self.on_own_file(lambda src, node: self._link(
            src, node, f"{self.rng.choice(self.own_dirs())}/{self.new_name('l')}", "link"))

    def _link(self, src: str, node: Node, dst: str, kind: str) -> None:
        self.perform(kind, "link", src, dst, path=dst, then=lambda: self.model.add(dst, node),
                     note=(node, f"{kind} {src} -> {dst}"))

    def op_unlink(self) -> None:
        self.on_own_file(lambda p, node: self._unlink(p, node, "unlink"))

    def _unlink(self, p: str, node: Node, kind: str) -> None:
        self.perform(kind, "unlink", p, path=p, then=lambda: self.model.remove(p), note=(node, f"{kind} {p}"))

    def op_mkdir(self) -> None:
        if len(self.own_subdirs()) >= SUBDIR_CAP:
            return self.op_rmdir()
        p = f"{self.me}/d{self.rng.randrange(OWN_DIRS)}/{self.new_name('s')}"
        self.perform("mkdir", "mkdir", p, path=p, then=lambda: self.model.add(p, Dir()))

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
        self.perform("rmdir", "rmdir", p, path=p, then=lambda: self.model.remove(p))

    def op_rename_dir(self) -> None:
        subs = self.own_subdirs()
        if not subs:
            return self.op_mkdir()
        src = self.rng.choice(subs)
        dst = f"{self.me}/d{self.rng.randrange(OWN_DIRS)}/{self.new_name('s')}"
        # the files under it keep their areas: no other client has a name that changes
        self.perform("rename_dir", "rename", src, dst, path=src,
                     then=lambda: self.model.add(dst, self.model.remove(src)))

    def op_expect_error(self) -> None:
        """An operation the model says must fail, with the errno it must fail with."""
        files = self.own_files()
        subs = self.own_subdirs()
        top = f"{self.me}/d{self.rng.randrange(OWN_DIRS)}"
        # (what, row of CALLS, its arguments, the errnos it must fail with, the path reported)
        cases: list[tuple[str, str, tuple, tuple[int, ...], str]] = [
            ("unlink missing", "unlink", (f"{top}/missing",), (E.ENOENT,), top),
            ("rmdir missing", "rmdir", (f"{top}/missing",), (E.ENOENT,), top),
            ("mkdir existing", "mkdir", (top,), (E.EEXIST,), top),
            ("rename missing", "rename", (f"{top}/missing", f"{top}/x"), (E.ENOENT,), top),
        ]
        if files:
            p, _ = self.rng.choice(files)
            q, _ = self.rng.choice(files)
            cases += [
                ("create existing", "create", (p, b""), (E.EEXIST,), p),
                ("link onto existing", "link", (p, q), (E.EEXIST,), q),
                ("rmdir of a file", "rmdir", (p,), (E.ENOTDIR,), p),
                ("file into missing dir", "rename", (p, f"{top}/missing/x"), (E.ENOENT,), p),
            ]
            if subs:
                s = self.rng.choice(subs)
                cases.append(("rename file onto dir", "rename", (p, s), (E.EISDIR,), p))
        full = [s for s in subs if self.model.get(s).entries]
        if full:
            s = full[0]
            cases.append(("rmdir non-empty", "rmdir", (s,), (E.ENOTEMPTY, E.EEXIST), s))
        what, call, args, expect, path = self.rng.choice(cases)
        self.perform("expect_error", call, *args, path=path, expect=expect, label=what)

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


# ---------------------------------------------------------------------- the run
class Run:
    """What the clients of one run share: the model, the shared area's lock, the stop flag,
    the differences; how they connect (``dfs.connect`` keywords)."""

    def __init__(self, seed: int, clients: int, connect_kw: dict, root: str) -> None:
        self.seed = seed
        self.clients = clients
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
        fs.run(fs.meta.setlayout(root_ino, lay, inline=False))
        for i in range(self.clients):
            fs.mkdir(f"{self.root}/c{i}")
            self.model.add(f"c{i}", Dir())
            ino = fs.lstat(f"{self.root}/c{i}").st_ino
            fs.run(fs.meta.setlayout(ino, lay, inline=i % 2 == 0))
            for k in range(OWN_DIRS):
                fs.mkdir(f"{self.root}/c{i}/d{k}")
                self.model.add(f"c{i}/d{k}", Dir())
        fs.mkdir(f"{self.root}/shared")
        self.model.add("shared", Dir())
        for k in range(self.shared_dirs):
            fs.mkdir(f"{self.root}/shared/s{k}")
            self.model.add(f"shared/s{k}", Dir())
