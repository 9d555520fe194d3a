"""A linearizability checker for recorded histories (Wing & Gong's search with
Lowe's memoisation, as Knossos and Porcupine do it).

A history is a list of ``Call``s: which client, when it was called, when it
returned (``None`` when the outcome is unknown: a timeout, a crash, a partition),
its input and its output. A ``Model`` says what a sequential object does.
``check`` answers whether some order of the operations, consistent with
real time (an operation that returned before another was called comes
first) and with the model, explains every output; an operation with an
unknown outcome may take effect at any point after its call, or never.

The search walks an ordered list of call and return events, linearising at
each step one operation whose call comes before the first pending return,
and memoises (set of linearised operations, model state) pairs so that a
state reached twice is explored once. It is exponential in the worst case
(linearisability checking is NP-complete), fast for the histories the tests
and ``dfs bench stress`` record (a few clients, a few hundred operations,
models whose states are small and hashable). ``partition`` splits a history
into independent ones when the model allows it (P-compositionality: one per
key for a map of registers).

Pure Python, no dependencies beyond the standard library.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Call:
    """One operation of a history. ``ret`` None: the outcome is unknown (``output`` ignored)."""

    client: int
    call: float
    ret: float | None
    input: Any
    output: Any = None


class Model(Protocol):
    def init(self) -> Hashable:
        """The object's initial state (hashable)."""

    def step(self, state: Hashable, input: Any, output: Any, known: bool) -> tuple[bool, Hashable]:
        """Apply ``input`` to ``state``: (whether ``output`` is what it returns, the next state).
        ``known`` False: the output is unknown and any is acceptable."""


@dataclass
class Result:
    ok: bool
    order: list[Call] = field(default_factory=list)  # a linearisation, when ok
    longest: list[Call] = field(default_factory=list)  # the deepest prefix found, when not ok
    # where it got stuck: the operation that returned there, then the others pending
    stuck: list[Call] = field(default_factory=list)
    timed_out: bool = False

    def explain(self) -> str:
        if self.ok:
            return f"linearizable ({len(self.order)} operations)"
        if self.timed_out:
            return "undecided: the search ran out of time"
        lines = [f"not linearizable: after {len(self.longest)} operations (the last ones:)"]
        lines += [f"  {c}" for c in self.longest[-8:]]
        lines.append("  the first of these returned, and neither it nor another one called before fits next:")
        lines += [f"    {c}" for c in self.stuck[:10]]
        return "\n".join(lines)


class _Entry:
    __slots__ = ("call", "id", "is_call", "match", "next", "prev")

    def __init__(self, call: Call, id: int, is_call: bool) -> None:
        self.call, self.id, self.is_call = call, id, is_call
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _entries(history: Sequence[Call]) -> _Entry:
    """A doubly linked list (with a sentinel head) of call and return events in time order;
    at equal times returns come first (an operation that returned at t precedes one called at t)."""
    events = []
    for i, c in enumerate(history):
        ret = math.inf if c.ret is None else c.ret
        if ret < c.call:
            raise ValueError(f"operation returns before it is called: {c}")
        events.append((c.call, 1, i, True))
        events.append((ret, 0 if c.ret is not None else 2, i, False))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Entry(None, -1, False)  # type: ignore[arg-type]
    calls: dict[int, _Entry] = {}
    prev = head
    for _, _, i, is_call in events:
        e = _Entry(history[i], i, is_call)
        if is_call:
            calls[i] = e
        else:
            e.match = calls[i]
            calls[i].match = e
        prev.next, e.prev = e, prev
        prev = e
    return head


def _lift(e: _Entry) -> None:
    e.prev.next = e.next
    if e.next is not None:
        e.next.prev = e.prev
    m = e.match
    m.prev.next = m.next
    if m.next is not None:
        m.next.prev = m.prev


def _unlift(e: _Entry) -> None:
    m = e.match
    m.prev.next = m
    if m.next is not None:
        m.next.prev = m
    e.prev.next = e
    if e.next is not None:
        e.next.prev = e


def check(model: Model, history: Sequence[Call], timeout: float | None = None) -> Result:
    """Whether ``history`` is linearizable with respect to ``model``."""
    if not history:
        return Result(True)
    head = _entries(history)
    state = model.init()
    linearised = 0  # bitset of operation ids
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[_Entry, Hashable]] = []
    longest: list[Call] = []
    deepest: list[Call] = []  # the prefix where the search got stuck the deepest
    stuck: list[Call] = []
    deadline = None if timeout is None else time.monotonic() + timeout
    e = head.next
    steps = 0
    known_left = sum(1 for c in history if c.ret is not None)
    while True:
        if known_left == 0:
            return Result(True, [x.call for x, _ in stack])  # what is left never took effect
        if e is not None and e.is_call:
            known = e.call.ret is not None
            ok, nxt = model.step(state, e.call.input, e.call.output, known)
            if ok:
                key = (linearised | (1 << e.id), nxt)
                if key not in cache:
                    cache.add(key)
                    stack.append((e, state))
                    state, linearised = nxt, linearised | (1 << e.id)
                    known_left -= known
                    _lift(e)
                    if len(stack) > len(longest):
                        longest = [x.call for x, _ in stack]
                    e = head.next
                    continue
            e = e.next
            continue
        # a return (of an operation not linearised yet) or the end: backtrack
        if e is not None and len(stack) >= len(deepest):
            # as deep as the search got: e's operation had to come next, and neither it nor
            # any other one called before its return fits
            deepest = [x.call for x, _ in stack]
            stuck = [e.call] + [x.call for x in _until(head, e) if x.is_call and x.match is not e]
        if not stack:
            return Result(False, longest=deepest or longest, stuck=stuck[:20])
        top, state = stack.pop()
        linearised &= ~(1 << top.id)
        known_left += top.call.ret is not None
        _unlift(top)
        e = top.next
        steps += 1
        if deadline is not None and steps % 1024 == 0 and time.monotonic() > deadline:
            return Result(False, longest=longest, timed_out=True)


def _until(head: _Entry, end: _Entry) -> Iterable[_Entry]:
    e = head.next
    while e is not None and e is not end:
        yield e
        e = e.next


def partition(history: Sequence[Call], key: Callable[[Call], Hashable]) -> list[list[Call]]:
    """Split a history into independent sub-histories by ``key`` (each checked on its own)."""
    out: dict[Hashable, list[Call]] = {}
    for c in history:
        out.setdefault(key(c), []).append(c)
    return list(out.values())


def check_all(model: Model, histories: Iterable[Sequence[Call]], timeout: float | None = None) -> Result:
    """``check`` each independent history; the first failure, or ok."""
    order: list[Call] = []
    for h in histories:
        r = check(model, h, timeout)
        if not r.ok:
            return r
        order += r.order
    return Result(True, order)


# ---------------------------------------------------------------------- models

class Register:
    """A register: input ("w", v) -> output None; ("r",) -> the value (``init`` None)."""

    def __init__(self, initial: Any = None) -> None:
        self.initial = initial

    def init(self) -> Hashable:
        return self.initial

    def step(self, state, input, output, known):
        if input[0] == "w":
            return True, input[1]
        return (not known or output == state), state


class Namespace:
    """A directory of small files, as a file system presents it to clients:

    * ``("put", name, data)`` -> None: create or replace the file's contents;
    * ``("get", name)`` -> data, or "ENOENT";
    * ``("del", name)`` -> None, or "ENOENT";
    * ``("mv", src, dst)`` -> None (dst replaced), or "ENOENT" (no src);
    * ``("ls",)`` -> sorted tuple of names.

    The state is a frozenset of (name, data) pairs."""

    def init(self) -> Hashable:
        return frozenset()

    def step(self, state, input, output, known):
        d = dict(state)
        kind = input[0]
        if kind == "put":
            d[input[1]] = input[2]
            return True, frozenset(d.items())
        if kind == "get":
            want = d.get(input[1], "ENOENT")
            return (not known or output == want), state
        if kind == "del":
            if input[1] not in d:
                return (not known or output == "ENOENT"), state
            del d[input[1]]
            return (not known or output is None), frozenset(d.items())
        if kind == "mv":
            src, dst = input[1], input[2]
            if src not in d:
                return (not known or output == "ENOENT"), state
            if src != dst:
                d[dst] = d.pop(src)
            return (not known or output is None), frozenset(d.items())
        if kind == "ls":
            return (not known or tuple(output) == tuple(sorted(d))), state
        raise ValueError(f"unknown operation {input!r}")


class Files:
    """Files and names as a client of a file system sees them, down to open files: a name
    points at an inode, an open binds a handle to the inode its name pointed at then, and
    what is written or read through the handle is that inode's, whatever happened to the
    name meanwhile (close-to-open). Paths are ``"dir/name"``; every file's content is a
    ``bytes`` value, ``b""`` when it was just created. Operations (``k``: the id of the
    operation that opened a handle, unique in the history):

    * ``("create", k, path)`` -> None, or "EEXIST": open(O_CREAT|O_EXCL), a new empty file;
    * ``("open_w", k, path)`` -> None: open(O_CREAT) for writing: the file, created empty if
      missing, bound to handle k;
    * ``("write", k, data)`` -> None: the written data published at close: the content of
      handle k's inode becomes ``data``; the handle is gone;
    * ``("open_r", k, path)`` -> None, or "ENOENT": an open for reading (or the lookup of a
      stat): handle k bound to the name's inode, and its size then;
    * ``("read", k)`` -> bytes: the content of handle k's inode, cut to the size it had at
      the open (a reader sees the size as of its open); ``("size", k)`` -> int: the
      inode's size now (the attributes of a stat); either ends the handle;
    * ``("unlink", path)`` -> None, or "ENOENT";
    * ``("rename", src, dst)`` -> None (dst replaced), or "ENOENT" (no src);
    * ``("ls", dir)`` -> the sorted tuple of the names in ``dir``.

    An inode is named by the id of the operation that created it. The state is a tuple
    (names, contents, handles) of sorted tuples: (path, ino), (ino, content) of every inode a
    name or a handle holds, (k, (ino, size at the open))."""

    def init(self) -> Hashable:
        return ((), (), ())

    def step(self, state, input, output, known):
        names, contents, handles = (dict(x) for x in state)
        kind = input[0]

        def done(out_ok: bool = True):
            if not (out_ok or not known):
                return False, state
            live = set(names.values()) | {i for i, _ in handles.values()}
            return True, (tuple(sorted(names.items())),
                          tuple(sorted((i, c) for i, c in contents.items() if i in live)),
                          tuple(sorted(handles.items())))

        if kind == "create":
            _, k, path = input
            if path in names:
                return (not known or output == "EEXIST"), state
            names[path] = k
            contents[k] = b""
            return done(output is None)
        if kind == "open_w":
            _, k, path = input
            if path not in names:
                names[path] = k
                contents[k] = b""
            handles[k] = (names[path], 0)
            return done(output is None)
        if kind == "write":
            _, k, data = input
            if k not in handles:
                return False, state  # its open did not take effect (yet)
            contents[handles.pop(k)[0]] = data
            return done(output is None)
        if kind == "open_r":
            _, k, path = input
            if path not in names:
                return (not known or output == "ENOENT"), state
            handles[k] = (names[path], len(contents[names[path]]))
            return done(output is None)
        if kind in ("read", "size"):
            k = input[1]
            if k not in handles:
                return False, state
            ino, size = handles.pop(k)
            c = contents[ino]
            return done(output == (c[:size] if kind == "read" else len(c)))
        if kind == "unlink":
            path = input[1]
            if path not in names:
                return (not known or output == "ENOENT"), state
            del names[path]
            return done(output is None)
        if kind == "rename":
            _, src, dst = input
            if src not in names:
                return (not known or output == "ENOENT"), state
            if src != dst:
                names[dst] = names.pop(src)
            return done(output is None)
        if kind == "ls":
            prefix = input[1] + "/"
            want = tuple(sorted(p[len(prefix):] for p in names if p.startswith(prefix)))
            return (not known or tuple(output) == want), state
        raise ValueError(f"unknown operation {input!r}")
