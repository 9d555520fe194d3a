"""Histories of library clients for the linearizability check: concurrent
``dfs.connect()`` clients do whole-file puts and gets, O_EXCL creates, unlinks,
renames, stats and listings on a few names, and record each operation's call
time, return time, input and output; ``check`` splits them into the events of
the ``Files`` model (dfs/stress/linearizable.py) and asks the checker.

The names: ``groups`` groups, each two directories ``d0`` and ``d1`` (on two
shards when there are two) of ``NAMES`` names each; an operation stays inside
one group (renames go between its directories), so each group's history is
checked on its own. Even groups keep small files inline in the metadata, odd
ones put them in chunks on the data servers.

What one operation is, as the library does it (strict mode with ``ttl=0``: no
cache between the clients and the service, so every read is the service's):

* put: open(O_WRONLY|O_CREAT) (no O_TRUNC: every value has the same length
  ``VALUE_LEN``, so a write replaces the whole content), write, close (which
  publishes data and size): the events ``open_w`` [call, open returned] and
  ``write`` [open returned, return];
* get: open for reading, read everything, close: ``open_r`` [call, open
  returned] and ``read`` [open returned, return];
* stat: ``lstat``, whose lookup of the name and reading of the inode's
  attributes may be two requests: ``open_r`` and ``size``, both [call, return]
  (the model puts the lookup first);
* create: open(O_CREAT|O_EXCL) and close; unlink; rename; ls: ``listdir``.

Outcomes. ENOENT and EEXIST are answers. Any other failure (the library gave
up retrying: a deadline, an error that does not say whether the request was
applied) leaves the outcome unknown: the event's return time is None, and a
read-only operation with an unknown outcome is left out (it changed nothing).

Timestamps are ``time.monotonic()``: one clock for every process of the
machine, so a recorder in another network namespace (``python -m
dfs.stress.history``) and the nemesis in the test process share it.

May import: dfs (the public client API), dfs.common and dfs.stress.
"""

from __future__ import annotations

import argparse
import errno as E
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import dfs
from dfs.common.ids import shard_of
from dfs.stress.linearizable import Call, Files, Result, check_all

NAMES = 3  # names per directory
VALUE_LEN = 16  # every value written has this length (no truncation: see the module doc)
MIX = {"put": 25, "get": 25, "stat": 10, "ls": 8, "create": 10, "unlink": 10, "rename": 12}
ANSWERS = {E.ENOENT: "ENOENT", E.EEXIST: "EEXIST"}


@dataclass(slots=True)
class Op:
    """One operation of one client as it happened. ``opened``: when a put's or get's open
    returned (None: it did not); ``ret`` None: the outcome is unknown (``error`` says why)."""

    id: int
    client: int
    group: int
    kind: str
    args: tuple
    call: float
    opened: float | None = None
    ret: float | None = None
    out: object = None
    error: str | None = None


def events(op: Op) -> list[Call]:
    """The ``Files`` model's events of one operation (none: it changed nothing for sure)."""
    c, k = op.client, op.id
    if op.kind == "put":
        path, data = op.args
        if op.opened is None:  # the open failed: it may have created the file
            return [Call(c, op.call, None, ("open_w", k, path))]
        return [Call(c, op.call, op.opened, ("open_w", k, path)),
                Call(c, op.opened, op.ret, ("write", k, data))]
    if op.kind in ("get", "stat"):
        if op.ret is None:
            return []  # a read that may not have happened changed nothing
        (path,) = op.args
        if op.out == "ENOENT":
            return [Call(c, op.call, op.ret, ("open_r", k, path), "ENOENT")]
        if op.kind == "get":
            return [Call(c, op.call, op.opened, ("open_r", k, path)),
                    Call(c, op.opened, op.ret, ("read", k), op.out)]
        return [Call(c, op.call, op.ret, ("open_r", k, path)), Call(c, op.call, op.ret, ("size", k), op.out)]
    if op.kind == "ls":
        return [] if op.ret is None else [Call(c, op.call, op.ret, ("ls", *op.args), op.out)]
    if op.kind == "create":
        return [Call(c, op.call, op.ret, ("create", k, *op.args), op.out)]
    return [Call(c, op.call, op.ret, (op.kind, *op.args), op.out)]  # unlink, rename


def check(ops: list[Op], timeout: float | None = None) -> Result:
    """Whether every group's history is linearizable (the first failure, or ok)."""
    per: dict[int, list[Call]] = {}
    for op in sorted(ops, key=lambda o: o.id):
        per.setdefault(op.group, []).extend(events(op))
    return check_all(Files(), [per[g] for g in sorted(per)], timeout)


def describe(res: Result, ops: list[Op]) -> str:
    """The checker's explanation, with the operations of the events it got stuck on in full."""
    lines = [res.explain()]
    if not res.ok and not res.timed_out:
        mine: list[Op] = []
        for c in res.stuck:
            for op in ops:
                if op.client == c.client and op.call <= c.call and (op.ret is None or c.call <= op.ret) \
                        and op not in mine:
                    mine.append(op)
                    break
        lines.append("  their operations:")
        lines += [f"    {fmt(op)}" for op in mine]
    return "\n".join(lines)


def fmt(op: Op) -> str:
    ret = "?" if op.ret is None else f"{op.ret:.4f}"
    out = op.out.decode(errors="replace") if isinstance(op.out, bytes) else op.out
    args = tuple(a.decode(errors="replace") if isinstance(a, bytes) else a for a in op.args)
    return (f"#{op.id} c{op.client} g{op.group} {op.kind}{args} [{op.call:.4f} .. {ret}] -> {out!r}"
            + (f" ({op.error})" if op.error else ""))


# ---------------------------------------------------------------------- recording

@dataclass
class Recorder:
    """``clients`` threads, each with its own ``dfs.connect(**connect_kw, ttl=0)`` client, doing
    operations on the groups under ``root`` until ``stop`` is set (``ops_done`` counts them)."""

    connect_kw: dict
    root: str
    groups: int = 1
    clients: int = 3
    seed: int = 0
    ops: list[Op] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)  # unknown outcomes by kind and error

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ids = iter(range(1, 1 << 62))
        self.threads: list[threading.Thread] = []
        self.failure: BaseException | None = None

    @property
    def ops_done(self) -> int:
        return len(self.ops)

    def connect(self) -> dfs.Client:
        return dfs.connect(**self.connect_kw, ttl=0)

    def setup(self) -> None:
        """The root, each group's two directories (on two shards when there are two), even
        groups inline, odd ones in chunks."""
        from dfs.common.layout import Layout

        with self.connect() as fs:
            fs.makedirs(self.root, exist_ok=True)
            for g in range(self.groups):
                top = f"{self.root}/g{g}"
                fs.mkdir(top)
                ino = fs.lstat(top).st_ino
                fs.run(fs.meta.setlayout(ino, Layout(chunk_size=64 * 1024, stripe=1, replicas=3).pack(),
                                         inline=g % 2 == 0))
                fs.mkdir(f"{top}/d0")
                first = shard_of(fs.lstat(f"{top}/d0").st_ino)
                for i in range(64):  # a second directory on another shard, if there is one
                    fs.mkdir(f"{top}/t{i}")
                    if shard_of(fs.lstat(f"{top}/t{i}").st_ino) != first or fs.meta.nshards == 1:
                        fs.rename(f"{top}/t{i}", f"{top}/d1")
                        break
                    fs.rmdir(f"{top}/t{i}")
                else:
                    fs.rename(f"{top}/t{i}", f"{top}/d1")

    def start(self) -> None:
        for cid in range(self.clients):
            t = threading.Thread(target=self._client, args=(cid,), name=f"lin-{cid}", daemon=True)
            self.threads.append(t)
            t.start()

    def join(self, timeout: float | None = None) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        if any(t.is_alive() for t in self.threads):
            raise TimeoutError("recording clients still running")

    def _client(self, cid: int) -> None:
        rng = random.Random(f"{self.seed}/{cid}")
        kinds, weights = list(MIX), list(MIX.values())
        # each client works on two neighbouring groups: every group has about 2 * clients / groups
        mine = sorted({cid % self.groups, (cid + 1) % self.groups})
        n = 0
        try:
            with self.connect() as fs:
                while not self.stop.is_set():
                    n += 1
                    g = rng.choice(mine)
                    kind = rng.choices(kinds, weights)[0]
                    self._one(fs, rng, cid, n, g, kind)
        except BaseException as e:  # noqa: BLE001 - a bug of the recorder: reported by the caller
            self.failure = e

    def _path(self, rng: random.Random) -> str:
        return f"d{rng.randrange(2)}/n{rng.randrange(NAMES)}"

    def _one(self, fs: dfs.Client, rng: random.Random, cid: int, n: int, g: int, kind: str) -> None:
        base = f"{self.root}/g{g}/"
        if kind == "put":
            args: tuple = (self._path(rng), f"c{cid}#{n}".encode().ljust(VALUE_LEN, b".")[:VALUE_LEN])
        elif kind == "rename":
            args = (self._path(rng), self._path(rng))
        elif kind == "ls":
            args = (f"d{rng.randrange(2)}",)
        else:
            args = (self._path(rng),)
        with self.lock:
            op = Op(next(self.ids), cid, g, kind, args, 0.0)
        run: Callable = getattr(self, "_" + kind)
        op.call = time.monotonic()
        try:
            op.out = run(fs, op, base, *args)
            op.ret = time.monotonic()
        except OSError as e:
            if e.errno in ANSWERS and (kind != "put" or op.opened is None) and not getattr(e, "_late", False):
                op.ret = time.monotonic()
                op.out = ANSWERS[e.errno]
            else:
                op.error = f"{type(e).__name__}: {e}"
                self.errors[f"{kind}: {type(e).__name__} {E.errorcode.get(e.errno, e.errno)}"] += 1
        with self.lock:
            self.ops.append(op)

    # each returns the output; an ENOENT/EEXIST raised before anything changed is the answer
    @staticmethod
    def _put(fs, op: Op, base: str, path: str, data: bytes):
        ref = fs.run(fs.aio.open_handle(base + path, os.O_WRONLY | os.O_CREAT))
        op.opened = time.monotonic()
        try:
            fs.run(ref.pwrite(0, data))
            fs.run(ref.close())
        except OSError as e:
            e._late = True  # after the open: never an answer
            fs.run(ref.release())
            raise
        return None

    @staticmethod
    def _get(fs, op: Op, base: str, path: str):
        ref = fs.run(fs.aio.open_handle(base + path, os.O_RDONLY))
        op.opened = time.monotonic()
        try:
            data = fs.run(ref.pread(0, 1 << 20))
        except OSError as e:
            e._late = True
            raise
        finally:
            fs.run(ref.release())
        return bytes(data)

    @staticmethod
    def _stat(fs, op: Op, base: str, path: str):
        return fs.lstat(base + path).st_size

    @staticmethod
    def _ls(fs, op: Op, base: str, d: str):
        return tuple(sorted(fs.listdir(base + d)))

    @staticmethod
    def _create(fs, op: Op, base: str, path: str):
        ref = fs.run(fs.aio.open_handle(base + path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        try:
            fs.run(ref.close())
        except OSError as e:
            e._late = True
            raise
        return None

    @staticmethod
    def _unlink(fs, op: Op, base: str, path: str):
        fs.remove(base + path)

    @staticmethod
    def _rename(fs, op: Op, base: str, src: str, dst: str):
        fs.rename(base + src, base + dst)


# ---------------------------------------------------------------------- files

def dump(ops: list[Op]) -> list[dict]:
    out = []
    for op in ops:
        d = asdict(op)
        d["args"] = [a.hex() if isinstance(a, bytes) else a for a in op.args]
        d["out"] = {"hex": op.out.hex()} if isinstance(op.out, bytes) else op.out
        d["bytes_args"] = [i for i, a in enumerate(op.args) if isinstance(a, bytes)]
        out.append(d)
    return out


def load(items: list[dict]) -> list[Op]:
    ops = []
    for d in items:
        args = tuple(bytes.fromhex(a) if i in d["bytes_args"] else a for i, a in enumerate(d["args"]))
        out = d["out"]
        out = bytes.fromhex(out["hex"]) if isinstance(out, dict) else (tuple(out) if isinstance(out, list) else out)
        ops.append(Op(d["id"], d["client"], d["group"], d["kind"], args, d["call"], d["opened"], d["ret"], out,
                      d["error"]))
    return ops


def main(argv: list[str] | None = None) -> int:
    """``python -m dfs.stress.history --mgmt A,B,C --root /lin --out h.json``: set up the groups,
    print ``READY``, record until stdin says ``stop`` (or closes), printing ``OPS <n>`` as
    operations complete, write the history to ``--out`` and print ``DONE <n>``. For a
    recorder in another network namespace than the nemesis (tests/netns)."""
    ap = argparse.ArgumentParser(prog="python -m dfs.stress.history")
    ap.add_argument("--mgmt", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    rec = Recorder({"mgmt": a.mgmt.split(",")}, a.root, a.groups, a.clients, a.seed)
    rec.setup()
    print("READY", flush=True)
    rec.start()

    def watch() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        rec.stop.set()

    threading.Thread(target=watch, daemon=True).start()
    last = -1
    while not rec.stop.wait(0.1):  # progress reports' pacing
        if rec.ops_done != last:
            last = rec.ops_done
            print(f"OPS {last}", flush=True)
    rec.join(300)
    with open(a.out, "w") as f:
        json.dump({"ops": dump(rec.ops), "errors": dict(rec.errors),
                   "failure": repr(rec.failure) if rec.failure else None}, f)
    print(f"DONE {rec.ops_done}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
