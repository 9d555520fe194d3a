"""Fault injection on a real cluster: mgmt and metadata replicas as separate
processes on loopback (dfs.testing.cluster.LocalCluster), killed with SIGKILL.

Synchronisation is by polling conditions with deadlines only (``until``);
every cluster a test starts is stopped in a ``finally`` (the ``clusters``
fixture), also when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field

import pytest

from dfs.common.config import RaftOptions
from dfs.common.ids import ROOT_INO, shard_of
from dfs.common.records import Attr
from dfs.testing.cluster import LocalCluster
from dfs.testing.wait import until

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def clusters(make_cluster):
    """make(name, **kw) -> a started LocalCluster (tests/conftest.py's factory)."""
    return make_cluster


# ---------------------------------------------------------------- namespace inspection

def tree(c, ino: int = ROOT_INO, path: str = "") -> dict[str, Attr]:
    """path -> attributes of everything under ``ino``; checks each directory's
    listing names every entry once and its nlink is 2 + subdirectories."""
    out: dict[str, Attr] = {}
    entries = c.listdir(ino, plus=True)
    names = [e.name for e in entries]
    assert len(names) == len(set(names)), f"{path or '/'}: duplicate names in listing"
    subdirs = 0
    for e in entries:
        p = f"{path}/{e.name.decode()}"
        a = c.getattr(e.ino)
        out[p] = a
        if a.is_dir():
            subdirs += 1
            out.update(tree(c, e.ino, p))
        else:
            assert a.nlink >= 1
    d = c.getattr(ino)
    assert d.nlink == 2 + subdirs, f"{path or '/'}: nlink {d.nlink} with {subdirs} subdirectories"
    return out


def wait_recovered(cluster: LocalCluster, timeout: float = 60.0) -> None:
    """Every shard led and converged, and recovery has resolved every cross-shard op."""
    cluster.wait_all_converged(timeout)
    until(lambda: not cluster.pending_records(), timeout, "no pending cross-shard records or locks")
    cluster.wait_all_converged(timeout)


def dirs_on_shards(c, parent: int, per_shard: int, nshards: int, prefix: str) -> list[Attr]:
    """Make directories under ``parent`` until each shard has ``per_shard`` of them."""
    got: dict[int, list[Attr]] = {s: [] for s in range(nshards)}
    i = 0
    while any(len(v) < per_shard for v in got.values()):
        a = c.mkdir(parent, f"{prefix}{i}")
        i += 1
        if len(got[shard_of(a.ino)]) < per_shard:
            got[shard_of(a.ino)].append(a)
        else:
            c.rmdir(parent, f"{prefix}{i - 1}")
    return [a for s in sorted(got) for a in got[s]]


# ---------------------------------------------------------------- a. kill -9 under a workload

@dataclass
class Obj:
    """One file or directory of the model: where it may be.

    ``poss`` holds the states it may be in: ``None`` (absent) or (dir index,
    name). An acknowledged op leaves one state; an op that raised leaves both
    the old and the new one (it may or may not have happened, but not half),
    and the object is not touched again."""

    base: str
    poss: set = field(default_factory=set)
    certain: bool = True

    @property
    def at(self):
        assert self.certain and len(self.poss) == 1
        return next(iter(self.poss))


class Workload:
    def __init__(self, c, dirs: list[Attr], workers: int = 4) -> None:
        self.c = c  # SyncMetaClient; the workers run on its loop
        self.dirs = dirs
        self.shard_dirs = {s: [i for i, d in enumerate(dirs) if shard_of(d.ino) == s] for s in (0, 1)}
        self.nworkers = workers
        self.stop = threading.Event()
        self.acks = 0
        self.unknown = 0
        self.kinds: dict[str, int] = {}
        self.files: list[Obj] = []
        self.subdirs: list[Obj] = []
        self.errors: list[BaseException] = []
        self.thread: threading.Thread | None = None

    def other_shard_dir(self, rng: random.Random, d: int) -> int:
        return rng.choice(self.shard_dirs[1 - shard_of(self.dirs[d].ino)])

    async def _op(self, kind: str, obj: Obj, new, coro) -> None:
        old = set(obj.poss)
        try:
            await coro
        except Exception:  # noqa: BLE001 - any failure: outcome unknown
            obj.poss = old | {new}
            obj.certain = False
            self.unknown += 1
            return
        obj.poss = {new}
        self.acks += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    async def worker(self, wid: int) -> None:
        a = self.c.aio
        rng = random.Random(1000 + wid)
        sub = self.subdirs[wid]
        n = 0
        while not self.stop.is_set():
            n += 1
            live = [f for f in self.files if f.certain and f.base.startswith(f"f{wid}-") and f.at is not None]
            r = rng.random()
            if r < 0.45 or len(live) < 4:
                d = rng.randrange(len(self.dirs))
                f = Obj(f"f{wid}-{n}", {None})
                self.files.append(f)
                await self._op("create", f, (d, f.base), a.create(self.dirs[d].ino, f.base))
            elif r < 0.6:
                f = rng.choice(live)
                d, name = f.at
                await self._op("unlink", f, None, a.unlink(self.dirs[d].ino, name))
            elif r < 0.9:
                f = rng.choice(live)
                d, name = f.at
                e = self.other_shard_dir(rng, d)
                new = f"{f.base}.r{n}"
                await self._op("rename", f, (e, new), a.rename(self.dirs[d].ino, name, self.dirs[e].ino, new))
            elif sub.certain:
                d, name = sub.at
                e = self.other_shard_dir(rng, d)
                new = f"{sub.base}.r{n}"
                await self._op("dir-rename", sub, (e, new), a.rename(self.dirs[d].ino, name, self.dirs[e].ino, new))

    def start(self) -> None:
        async def main():
            await asyncio.gather(*(self.worker(w) for w in range(self.nworkers)))

        def run():
            try:
                self.c.run(main())
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.errors.append(e)

        self.thread = threading.Thread(target=run, name="workload", daemon=True)
        self.thread.start()

    def wait_progress(self, n: int, timeout: float = 90.0) -> None:
        target = self.acks + n
        until(lambda: self.acks >= target or not self.thread.is_alive(), timeout, f"{n} more acknowledged ops")
        assert not self.errors, self.errors

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=120)  # at most one op per worker in flight (30 s client deadline)
            assert not self.thread.is_alive(), "workload did not stop"
        assert not self.errors, self.errors


def test_kill9_during_workload(clusters):
    cluster = clusters("a", shards=2, replicas=3, mgmt_replicas=3)
    c = cluster.client()
    try:
        top = c.mkdir(ROOT_INO, "w")
        dirs = dirs_on_shards(c, top.ino, 3, 2, "d")
        wl = Workload(c, dirs, workers=4)
        for w in range(wl.nworkers):  # a directory per worker that moves between shards, with content
            name = f"m{w}"
            sd = c.mkdir(dirs[0].ino, name)
            c.create(sd.ino, "x")
            c.mkdir(sd.ino, "y")
            wl.subdirs.append(Obj(name, {(0, name)}))
        wl.start()
        try:
            wl.wait_progress(40)
            lead0 = cluster.leader_of(0)
            assert lead0 is not None
            cluster.kill(lead0)
            wl.wait_progress(40)  # a new shard-0 leader took over
            cluster.spawn(lead0)
            wl.wait_progress(40)
            lead1 = until(lambda: cluster.leader_of(1), 30, "a shard-1 leader")
            follower1 = next(p for p in cluster.meta_procs(1) if p is not lead1)
            cluster.kill(follower1)
            wl.wait_progress(40)
            cluster.spawn(follower1)
            wl.wait_progress(40)
            m = cluster.mgmt_procs()[0]
            cluster.kill(m)
            wl.wait_progress(40)
            cluster.spawn(m)
            wl.wait_progress(40)
        finally:
            wl.finish()

        print(f"workload: {wl.acks} acknowledged {wl.kinds}, {wl.unknown} with unknown outcome")
        wait_recovered(cluster)

        # ---- the namespace against the model
        assert wl.kinds.get("rename", 0) > 0 and wl.kinds.get("create", 0) > 0, wl.kinds
        found: dict[str, list] = {}
        for i, d in enumerate(dirs):
            for e in c.listdir(d.ino, plus=False):
                found.setdefault(e.name.decode().split(".")[0], []).append((i, e.name.decode()))
        for obj in wl.files + wl.subdirs:
            present = found.pop(obj.base, [])
            assert len(present) <= 1, f"{obj.base} under two names: {present}"
            state = present[0] if present else None
            assert state in obj.poss, f"{obj.base}: at {state}, model allows {obj.poss}"
        assert not found, f"entries the model does not know: {found}"
        for sub in wl.subdirs:
            for st in sub.poss - {None}:
                try:
                    a = c.lookup(dirs[st[0]].ino, st[1])
                except FileNotFoundError:
                    continue
                assert sorted(e.name for e in c.listdir(a.ino)) == [b"x", b"y"]
                assert a.nlink == 3
        t = tree(c, top.ino, "/w")  # listing each name once, dir nlinks, every inode reachable
        assert all(a.nlink == 1 for a in t.values() if not a.is_dir())
        certain = sum(1 for o in wl.files if o.certain)
        assert certain > 0
    finally:
        c.close()
    cluster.stop()
    cluster.assert_replicas_identical()


# ---------------------------------------------------------------- b. whole-cluster restart

def populate(c, nshards: int = 2) -> None:
    top = c.mkdir(ROOT_INO, "p")
    dirs = dirs_on_shards(c, top.ino, 2, nshards, "d")
    for i, d in enumerate(dirs):
        for j in range(5):
            c.create(d.ino, f"f{j}", 0o640)
        sub = c.mkdir(d.ino, "sub")
        c.create(sub.ino, "deep")
    f = c.lookup(dirs[0].ino, "f0")
    c.link(f.ino, dirs[-1].ino, "hard")  # a cross-shard hard link
    c.symlink(dirs[1].ino, "sym", "/p/target")
    c.rename(dirs[0].ino, "f1", dirs[-1].ino, "moved")
    c.rename(dirs[0].ino, "sub", dirs[-1].ino, "sub0")  # a cross-shard directory rename
    c.setxattr(f.ino, "user.k", b"v")


def test_whole_cluster_restart(clusters):
    cluster = clusters("b", shards=2, replicas=3, mgmt_replicas=1)
    with cluster.client() as c:
        populate(c)
        before = tree(c)
    cluster.stop()
    again = clusters("b")  # the same data folder: cluster.toml is reloaded
    assert again.cfg.cluster_id == cluster.cfg.cluster_id
    with again.client() as c:
        after = tree(c)
        assert after == before
        hard = next(p for p in before if p.endswith("/hard"))
        assert c.getxattr(c.resolve(hard).ino, "user.k") == b"v"
        c.create(ROOT_INO, "after-restart")  # still writable


# ---------------------------------------------------------------- c. all replicas of a shard killed

def test_kill9_all_replicas_of_a_shard(clusters):
    cluster = clusters("c", shards=2, replicas=3, mgmt_replicas=1)
    with cluster.client() as c:
        populate(c)
        before = tree(c)
    # The Raft journal is not fsynced per entry and RocksDB writes are not
    # synced either; kill -9 does not lose them because the page cache
    # survives a process death (a power loss is another matter and is not
    # what this test covers).
    for shard in (0, 1):
        procs = cluster.meta_procs(shard)
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)  # all at once
        for p in procs:
            cluster.kill(p)  # reap
        for p in procs:
            cluster.spawn(p)
        cluster.wait_all_converged(90)
        with cluster.client() as c:
            assert tree(c) == before, f"after kill -9 of every replica of shard {shard}"
    with cluster.client() as c:
        c.create(ROOT_INO, "after")
    wait_recovered(cluster)
    cluster.stop()
    cluster.assert_replicas_identical()


# ---------------------------------------------------------------- d. a wiped replica catches up from a snapshot

def test_wiped_replica_catches_up_from_snapshot(clusters):
    cluster = clusters("d", shards=2, replicas=3, mgmt_replicas=1,
                       raft=RaftOptions(log_compaction_min_entries=50, log_compaction_min_time=600.0))
    shard = 0
    lead = cluster.leader_of(shard)
    victim = next(p for p in cluster.meta_procs(shard) if p is not lead)
    cluster.kill(victim)
    shutil.rmtree(victim.data)
    others = [p for p in cluster.meta_procs(shard) if p is not victim]

    def compacted() -> bool:
        return all(os.path.exists(os.path.join(p.data, "raft", "raft.dump")) for p in others)

    with cluster.client() as c:
        top = c.mkdir(ROOT_INO, "s")
        assert shard_of(ROOT_INO) == shard
        n = 0

        async def burst(k: int) -> None:  # k separate creates from 8 tasks: many Raft entries
            sem = asyncio.Semaphore(8)

            async def one(i: int) -> None:
                async with sem:
                    await c.aio.create(ROOT_INO, f"f{i}")

            await asyncio.gather(*(one(i) for i in range(n, n + k)))

        deadline = time.monotonic() + 120
        while n < 300 or not compacted():
            assert time.monotonic() < deadline, "the shard-0 replicas never compacted their logs"
            c.run(burst(100))
            n += 100
        c.create(top.ino, "last")
    cluster.spawn(victim)
    cluster.wait_all_converged(90)
    with open(victim.log, errors="replace") as f:
        log_text = f.read()
    assert "restoring state machine from snapshot" in log_text
    assert os.path.basename(cluster.db_path(victim)) != "db-0"  # restore() switched to a new generation
    with cluster.client() as c:
        names = {e.name for e in c.listdir(ROOT_INO)}
        assert {f"f{i}".encode() for i in range(n)} <= names
    cluster.stop()
    cluster.assert_replicas_identical()
