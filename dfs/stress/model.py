"""The expected namespace of a stress run, and the record of where the cluster
departs from it.

``Model`` holds every directory and every regular file (``Node``: its bytes
and how many names it has in each area, for link counts) under the run's
root, paths relative to it; the area of a path is its first component
(``c<i>`` of client i, ``shared``). ``Differences`` collects what did not match
(kept in full up to ``MAX_DIFFS``, all counted).

Pure data: no I/O, no clients. May import the standard library only.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter

MAX_DIFFS = 200  # differences kept in full (all are counted)


def blob(seed: str, n: int) -> bytes:
    """The bytes of one write: re-derivable from (run seed, client, op number)."""
    return random.Random(seed).randbytes(n)


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


def describe(want: bytes, got: bytes) -> dict:
    """Where two contents part: sizes and the first differing offset."""
    first = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    return {"expected_size": len(want), "actual_size": len(got), "first_difference": first,
            "expected_bytes": want[first:first + 8].hex(), "actual_bytes": got[first:first + 8].hex()}


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
