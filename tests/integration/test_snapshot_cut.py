"""A snapshot is a consistent cut, under load (docs/design/snapshots.md).

Clients keep creating, rewriting, renaming across shards and unlinking small
files, each in its own pair of directories (homed on different shards, so the
renames are two-phase), and record every operation with the times it started
and ended. Meanwhile snapshots are taken, each with the times its create began
and returned. Afterwards every snapshot is read back (names through the
metadata at the snapshot's epoch, bytes through the data servers at it) and,
for every client, must equal the state after some prefix of that client's
operations that contains every operation acknowledged before the create began
and none that started after it returned. A cross-shard rename is in it wholly
(the name in exactly one of the two directories) or not at all.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

import dfs
from dfs.common.ids import dir_home_shard
from dfs.common.layout import Layout
from dfs.route.data import DataClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CLIENTS = 3
MIN_OPS = 12      # each client's operations at least (it goes on until the snapshots are taken)
MAX_OPS = 400     # and at most (the history check is linear in it per snapshot)
SNAPSHOTS = 6
NAMES = 4


class Client(threading.Thread):
    """One client's sequential operations on its own names, with start/end times."""

    def __init__(self, cluster, i: int, a: str, b: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.cluster, self.i, self.a, self.b, self.stop = cluster, i, a, b, stop
        self.ops: list[tuple[str, tuple, float, float]] = []  # kind, args, start, end (acknowledged only)
        self.errors: list[BaseException] = []

    def run(self) -> None:
        rnd = random.Random(self.i)
        state: dict[str, tuple[str, bytes]] = {}  # name -> (dir, content), as acknowledged
        with dfs.connect(self.cluster.config_path, uid=0, gid=0, ttl=0) as fs:
            for k in range(MAX_OPS):
                if self.stop.is_set() and k >= MIN_OPS:
                    return
                name = f"n{rnd.randrange(NAMES)}"
                if name not in state:
                    op = ("put", (self.a, name, f"c{self.i}-{k}-".encode() * rnd.randint(1, 2000)))
                else:
                    d, _ = state[name]
                    other = self.b if d == self.a else self.a
                    op = rnd.choice([("put", (d, name, f"c{self.i}-{k}-".encode() * rnd.randint(1, 2000))),
                                     ("mv", (d, other, name)), ("rm", (d, name))])
                t0 = time.monotonic()
                try:
                    if op[0] == "put":
                        d, n, data = op[1]
                        fs.write_bytes(f"{d}/{n}", data)
                        state[n] = (d, data)
                    elif op[0] == "mv":
                        src, dst, n = op[1]
                        fs.rename(f"{src}/{n}", f"{dst}/{n}")
                        state[n] = (dst, state[n][1])
                    else:
                        d, n = op[1]
                        fs.remove(f"{d}/{n}")
                        del state[n]
                except OSError as e:  # not acknowledged: the run stops, the history so far stands
                    self.errors.append(e)
                    return
                self.ops.append((op[0], op[1], t0, time.monotonic()))

    def steps(self) -> list[tuple[int, tuple]]:
        """The client's operations as the metadata service sees them, each with the index of the
        operation it belongs to: a put (open with O_CREAT|O_TRUNC, write, close) is two steps,
        the create or truncation to empty, then the size (and so the bytes) published at close."""
        out: list[tuple[int, tuple]] = []
        for k, (kind, args, _, _) in enumerate(self.ops):
            if kind == "put":
                d, n, data = args
                out.append((k, ("put", d, n, b"")))
                out.append((k, ("put", d, n, data)))
            else:
                out.append((k, (kind, *args)))
        return out

    def states_between(self, lo: int, hi: int) -> list[dict[str, tuple[str, bytes]]]:
        """The states after every prefix of steps that completes operations [0, lo) and applies
        no step of an operation from ``hi`` on."""
        steps = self.steps()
        state: dict[str, tuple[str, bytes]] = {}
        states = [{}] if lo == 0 else []
        for j, (k, step) in enumerate(steps):
            if k >= hi:
                break
            if step[0] == "put":
                _, d, n, data = step
                state[n] = (d, data)
            elif step[0] == "mv":
                _, src, dst, n = step
                state[n] = (dst, state[n][1])
            else:
                del state[step[2]]
            completed = k + 1 if j + 1 == len(steps) or steps[j + 1][0] != k else k
            if completed >= lo:
                states.append(dict(state))
        return states


def _dirs(top: int, nshards: int) -> list[tuple[str, str]]:
    """Per client, two directory names under /cut homed on different shards (renames between
    them are two-phase)."""
    out, i = [], 0
    while len(out) < CLIENTS:
        a, b = f"a{i}", f"b{i}"
        i += 1
        if dir_home_shard(top, a.encode(), nshards) != dir_home_shard(top, b.encode(), nshards):
            out.append((a, b))
    return out


async def _snapshot_state(fs, dc: DataClient, top: int, dirs: tuple[str, str], snap: int) -> dict:
    meta = fs.aio.core.meta.inner  # the raw MetaClient under .snap's addressing (snap= reads)
    out = {}
    for d in dirs:
        dino = (await meta.lookup(top, d, snap=snap)).ino
        for e in await meta.listdir(dino, plus=True, snap=snap):
            a = await meta.getattr(e.ino, snap=snap)
            if a.is_inline():
                data, _ = await meta.read_inline(e.ino, snap=snap)
                data = (bytes(data) + bytes(a.size))[:a.size]
            else:
                lay = Layout.unpack(a.layout)
                data = b""
                for index in range((a.size + lay.chunk_size - 1) // lay.chunk_size):
                    n = min(lay.chunk_size, a.size - index * lay.chunk_size)
                    got = bytes(await dc.read(e.ino, index, 0, n, lay, at=snap))
                    data += got + bytes(n - len(got))
            out[e.name.decode()] = (f"/cut/{d}", data)
    return out


def test_snapshots_are_consistent_cuts_under_load(make_cluster):
    c = make_cluster(shards=3, replicas=1, mgmt_replicas=1, data_servers=3)
    with dfs.connect(c.config_path, uid=0, gid=0) as fs:
        fs.mkdir("/cut")
        top = fs.stat("/cut").st_ino
        pairs = _dirs(top, 3)
        for a, b in pairs:
            fs.mkdir(f"/cut/{a}")
            fs.mkdir(f"/cut/{b}")
        stop = threading.Event()
        clients = [Client(c, i, f"/cut/{a}", f"/cut/{b}", stop) for i, (a, b) in enumerate(pairs)]
        for t in clients:
            t.start()
        snaps: list[tuple[int, float, float]] = []
        meta = fs.aio.core.meta
        while len(snaps) < SNAPSHOTS:
            t0 = time.monotonic()
            s = fs.run(meta.snapshot_create(top, f"s{len(snaps)}", "/cut"))
            snaps.append((s, t0, time.monotonic()))
        stop.set()
        for t in clients:
            t.join(120)
        assert not any(t.errors for t in clients), [t.errors for t in clients]
        assert all(len(t.ops) >= MIN_OPS for t in clients)

        async def check():
            dc = fs.aio.core.data.inner  # the raw DataClient (at= reads)
            bad = []
            for s, began, returned in snaps:
                for t, (a, b) in zip(clients, pairs):
                    seen = await _snapshot_state(fs, dc, top, (a, b), s)
                    lo = sum(1 for *_, end in t.ops if end < began)
                    hi = sum(1 for *_, start, _ in t.ops if start < returned)
                    if seen not in t.states_between(lo, hi):
                        bad.append((s, t.i, lo, hi, sorted((n, d, len(x)) for n, (d, x) in seen.items())))
            return bad

        bad = fs.run(check())
        assert not bad, f"snapshots that are no prefix of a client's history: {bad[:3]}"
