"""Coordinator crashes at every step of a cross-shard operation (in-process).

For each cross-shard namespace operation and each k = 1, 2, ... the k-th
internal call the coordinator makes (reads, PREPARE, COMMIT, FORGET, on its
own shard through ``ShardService.execute`` or on a peer through
``LocalEngine.call``) is made to fail, until an operation runs to its end
without reaching the fault. Fault modes:

* ``crash_before`` / ``crash_after``: the coordinator "dies" just before the
  call is sent / just after it took effect (its reply is lost). The exception
  is not a DfsError, so no abort path runs (a dead process does not abort);
  the coordinator's in-memory ``active`` set is then emptied, as a fresh
  leader would have it. Then either recovery runs (``engine.sweep()``) and the
  client retries the same request id, or the client retries at once and
  recovery runs afterwards.
* ``lost_reply`` / ``lost_request``: the coordinator stays alive but the call
  fails with ``Unavailable`` after (or without) taking effect, as a peer call
  whose deadline passed; the client retries with the same request id.

After each run the namespace must be exactly the state before the operation
or exactly the state after it (a normalised dump of every shard: paths, file
types, inode identity, link counts, directory parents; no dangling entry, no
orphan inode), no cross-shard op record ('P') and no lock ('K') may remain,
and retrying the same request must succeed and leave the "after" state.
"""

from __future__ import annotations

import asyncio
import stat
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.ids import ROOT_INO, dir_home_shard, shard_of
from dfs.common.ops import RENAME_EXCHANGE, Op
from dfs.common.records import ROOT, Attr
from dfs.meta import schema as S
from dfs.meta.local import LocalEngine

NSHARDS = 3
MAX_STEPS = 200


class Crash(Exception):
    """The coordinator's process died here (deliberately not a DfsError)."""


class FaultyShards:
    """Wraps a coordinator's shard caller; the k-th call (over all coordinators) fails."""

    def __init__(self, inner, plan: "FaultPlan") -> None:
        self.inner = inner
        self.plan = plan
        self.nshards = inner.nshards

    async def pending(self, shard: int) -> list:
        return await self.inner.pending(shard)

    async def call(self, shard: int, op: Op, caller, args: list, rid: bytes = b"", ts: int | None = None) -> Any:
        p = self.plan
        fire = False
        if p.armed:
            p.calls += 1
            p.trace.append((shard, Op(op).name))
            fire = p.calls == p.k
        if fire and p.mode == "crash_before":
            p.fired = True
            raise Crash(f"before call {p.k}: {Op(op).name} on shard {shard}")
        if fire and p.mode == "lost_request":
            p.fired = True
            raise err.Unavailable(f"request {p.k} lost")
        try:
            res = await self.inner.call(shard, op, caller, args, rid=rid, ts=ts)
        except err.DfsError:
            if not fire:
                raise
            res = None  # the call took effect (with an error answer) and then the reply was lost
        if fire and p.mode == "crash_after":
            p.fired = True
            raise Crash(f"after call {p.k}: {Op(op).name} on shard {shard}")
        if fire and p.mode == "lost_reply":
            p.fired = True
            raise err.Unavailable(f"reply {p.k} lost")
        return res


@dataclass
class FaultPlan:
    k: int
    mode: str
    armed: bool = False
    calls: int = 0
    fired: bool = False
    trace: list | None = None

    def __post_init__(self) -> None:
        self.trace = []


def install(engine: LocalEngine, plan: FaultPlan) -> None:
    for svc in engine.services:
        svc.coordinator.shards = FaultyShards(svc.coordinator.shards, plan)


def forget_running(engine: LocalEngine) -> None:
    """A restarted coordinator knows of no running operation."""
    for svc in engine.services:
        svc.coordinator.active.clear()


# ---------------------------------------------------------------- state inspection

def leftovers(engine: LocalEngine) -> dict[int, list]:
    """'P' (op records) and 'K' (locks) keys on every shard."""
    out = {}
    for svc in engine.services:
        kv = svc.store.kv
        keys = [k for k, _ in kv.scan_prefix(S.P_OP)] + [k for k, _ in kv.scan_prefix(S.P_LOCK)]
        if keys:
            out[svc.shard] = keys
    return out


def dump(engine: LocalEngine) -> dict:
    """A normalised image of the namespace, checking its invariants on the way.

    path -> (type, inode label, nlink); labels number inodes in walk order, so
    two dumps compare equal when the trees match up to inode numbering (an
    aborted mkdir consumes an inode number)."""
    stores = [svc.store.view(svc.store.kv) for svc in engine.services]  # the live tree (versioned keys)

    def inode(ino: int) -> S.Inode | None:
        b = stores[shard_of(ino)].get(S.inode_key(ino))
        return None if b is None else S.Inode.unpack(b)

    labels: dict[int, int] = {}
    refs: Counter = Counter()
    out: dict[str, tuple] = {}

    def walk(dino: int, path: str) -> None:
        d = inode(dino)
        assert d is not None and d.is_dir(), f"{path or '/'}: directory inode {dino:#x} missing"
        subdirs = 0
        for k, v in stores[shard_of(dino)].scan_prefix(S.dentry_prefix(dino)):
            _, _, name = S.split_dentry_key(k)
            cino, mode = S.split_dentry_value(v)
            p = f"{path}/{name.decode()}"
            i = inode(cino)
            assert i is not None, f"{p}: dangling entry to inode {cino:#x}"
            assert stat.S_IFMT(i.mode) == stat.S_IFMT(mode), f"{p}: entry type differs from inode"
            refs[cino] += 1
            label = labels.setdefault(cino, len(labels))
            if i.is_dir():
                assert refs[cino] == 1, f"{p}: directory with two names"
                assert i.parent == dino, f"{p}: parent field {i.parent:#x} != {dino:#x}"
                subdirs += 1
                out[p] = ("d", label, i.nlink)
                walk(cino, p)
            else:
                out[p] = ("f", label, i.nlink)
        assert d.nlink == 2 + subdirs, f"{path or '/'}: nlink {d.nlink} with {subdirs} subdirectories"

    walk(ROOT_INO, "")
    out["/"] = ("d", -1, inode(ROOT_INO).nlink)
    for ino, n in refs.items():
        i = inode(ino)
        if not i.is_dir():
            assert i.nlink == n, f"inode {ino:#x}: nlink {i.nlink} but {n} names"
    for shard, st in enumerate(stores):
        inos = [S.from_u64(k[1:9]) for k, _ in st.scan_prefix(S.P_INODE)]
        orphans = [hex(i) for i in inos if i != ROOT_INO and i not in labels]
        assert not orphans, f"shard {shard}: orphan inodes {orphans}"
        b = st.get(S.K_NINODES)
        assert (S.from_u64(b) if b else 0) == len(inos), f"shard {shard}: inode count"
    return out


# ---------------------------------------------------------------- scenarios

def name_on(parent: int, shard: int, prefix: str) -> str:
    """A name whose new directory under ``parent`` lives on ``shard``."""
    for i in range(10000):
        n = f"{prefix}{i}"
        if dir_home_shard(parent, n.encode(), NSHARDS) == shard:
            return n
    raise AssertionError("no name found")


async def mkdir_on(c: MetaClient, parent: int, shard: int, prefix: str) -> Attr:
    a = await c.mkdir(parent, name_on(parent, shard, prefix))
    assert shard_of(a.ino) == shard
    return a


@dataclass
class Call:
    shard: int  # where the client sends it
    op: Op
    args: list


async def sc_file_rename(c: MetaClient) -> Call:
    a = await mkdir_on(c, ROOT_INO, 1, "a")
    b = await mkdir_on(c, ROOT_INO, 2, "b")
    await c.create(a.ino, "f")
    await c.create(a.ino, "other")
    return Call(1, Op.RENAME, [a.ino, b"f", b.ino, b"g", 0])


async def sc_file_rename_replace(c: MetaClient) -> Call:
    a = await mkdir_on(c, ROOT_INO, 1, "a")
    b = await mkdir_on(c, ROOT_INO, 2, "b")
    await c.create(a.ino, "f")
    await c.create(b.ino, "g")  # replaced: its inode (shard 2) goes
    return Call(1, Op.RENAME, [a.ino, b"f", b.ino, b"g", 0])


async def _dir_tree(c: MetaClient, coord: int, dst: int, moved: int) -> Call:
    a = await mkdir_on(c, ROOT_INO, coord, "a")
    b = await mkdir_on(c, ROOT_INO, dst, "b")
    d = await mkdir_on(c, a.ino, moved, "d")
    await c.create(d.ino, "inside")
    await mkdir_on(c, d.ino, (moved + 1) % NSHARDS, "sub")
    return Call(coord, Op.RENAME, [a.ino, name_on(a.ino, moved, "d").encode(), b.ino, b"moved", 0])


async def sc_dir_rename(c: MetaClient) -> Call:
    # shards 1 -> 2; shard 0 takes part only through the rename ordering lock
    return await _dir_tree(c, 1, 2, 1)


async def sc_dir_rename_coord0(c: MetaClient) -> Call:
    # the coordinator itself holds the rename lock (until FORGET)
    return await _dir_tree(c, 0, 1, 2)


async def sc_exchange(c: MetaClient) -> Call:
    a = await mkdir_on(c, ROOT_INO, 1, "a")
    b = await mkdir_on(c, ROOT_INO, 2, "b")
    await c.create(a.ino, "f")
    d = await mkdir_on(c, b.ino, 0, "d")
    await c.create(d.ino, "x")
    return Call(1, Op.RENAME, [a.ino, b"f", b.ino, name_on(b.ino, 0, "d").encode(), RENAME_EXCHANGE])


async def sc_mkdir_remote(c: MetaClient) -> Call:
    p = await mkdir_on(c, ROOT_INO, 1, "p")
    name = name_on(p.ino, 2, "n")
    return Call(2, Op.MKDIR, [p.ino, name.encode(), 0o755, 0])


async def sc_rmdir_remote(c: MetaClient) -> Call:
    p = await mkdir_on(c, ROOT_INO, 1, "p")
    await mkdir_on(c, p.ino, 2, "n")
    return Call(1, Op.RMDIR, [p.ino, name_on(p.ino, 2, "n").encode()])


async def sc_link(c: MetaClient) -> Call:
    a = await mkdir_on(c, ROOT_INO, 1, "a")
    b = await mkdir_on(c, ROOT_INO, 2, "b")
    f, _ = await c.create(a.ino, "f")
    return Call(2, Op.LINK, [f.ino, b.ino, b"l"])


async def sc_unlink_link(c: MetaClient) -> Call:
    a = await mkdir_on(c, ROOT_INO, 1, "a")
    b = await mkdir_on(c, ROOT_INO, 2, "b")
    f, _ = await c.create(a.ino, "f")
    await c.link(f.ino, b.ino, "l")
    return Call(2, Op.UNLINK, [b.ino, b"l"])


async def sc_unlink_last_remote(c: MetaClient) -> Call:
    # the last name of a file whose inode lives on another shard: the inode goes
    a = await mkdir_on(c, ROOT_INO, 1, "a")
    b = await mkdir_on(c, ROOT_INO, 2, "b")
    await c.create(a.ino, "f")
    await c.rename(a.ino, "f", b.ino, "g")
    return Call(2, Op.UNLINK, [b.ino, b"g"])


SCENARIOS = {
    "file_rename": sc_file_rename,
    "file_rename_replace": sc_file_rename_replace,
    "dir_rename": sc_dir_rename,
    "dir_rename_coord0": sc_dir_rename_coord0,
    "exchange_file_dir": sc_exchange,
    "mkdir_remote": sc_mkdir_remote,
    "rmdir_remote": sc_rmdir_remote,
    "link": sc_link,
    "unlink_link": sc_unlink_link,
    "unlink_last_remote": sc_unlink_last_remote,
}


# ---------------------------------------------------------------- driver

async def fresh(scenario) -> tuple[LocalEngine, Call]:
    engine = LocalEngine(NSHARDS)
    call = await scenario(MetaClient(engine))
    assert not leftovers(engine)
    return engine, call


def check_reply(engine: LocalEngine, call: Call, res: Any) -> None:
    if call.op == Op.MKDIR:
        parent, name = call.args[0], call.args[1]
        st = engine.services[shard_of(parent)].store
        v = st.view(st.kv).get(S.dentry_key(parent, name))
        assert v is not None and res[0] == S.split_dentry_value(v)[0], "mkdir reply names another inode"
    elif call.op == Op.LINK:
        assert res[0] == call.args[0]
    else:
        assert res is None


async def reference(scenario) -> tuple[dict, dict]:
    engine, call = await fresh(scenario)
    before = dump(engine)
    res = await engine.call(call.shard, call.op, ROOT, call.args, uuid.uuid4().bytes)
    check_reply(engine, call, res)
    after = dump(engine)
    assert before != after
    assert not leftovers(engine)
    await engine.close()
    return before, after


async def run_steps(scenario, mode: str, sweep_first: bool = True) -> int:
    before, after = await reference(scenario)
    for k in range(1, MAX_STEPS):
        engine, call = await fresh(scenario)
        rid = uuid.uuid4().bytes
        plan = FaultPlan(k, mode)
        install(engine, plan)
        plan.armed = True
        where = f"{mode} k={k}"
        try:
            res = await engine.call(call.shard, call.op, ROOT, call.args, rid)
            crashed = False
        except Crash:
            crashed = True
        plan.armed = False
        where += f" trace={plan.trace}"
        if not plan.fired:  # ran to its end without reaching the fault: every step covered
            check_reply(engine, call, res)
            assert dump(engine) == after, where
            assert not leftovers(engine), where
            await engine.close()
            return k - 1
        if crashed:
            assert mode.startswith("crash"), where
            forget_running(engine)
            if sweep_first:
                await engine.sweep()
                await engine.sweep()
                assert not leftovers(engine), f"{where}: left after recovery: {leftovers(engine)}"
                state = dump(engine)
                assert state in (before, after), f"{where}: half-done state {state}"
            res = await engine.call(call.shard, call.op, ROOT, call.args, rid)
        else:
            # the coordinator survived a lost request/reply and the client's retry finished it
            await engine.sweep()  # anything a lost reply left behind
        check_reply(engine, call, res)
        assert dump(engine) == after, where
        await engine.sweep()
        assert not leftovers(engine), f"{where}: {leftovers(engine)}"
        # and once more: answered from the request's record, nothing changes
        res = await engine.call(call.shard, call.op, ROOT, call.args, rid)
        check_reply(engine, call, res)
        assert dump(engine) == after, where
        assert not leftovers(engine), where
        await engine.close()
    raise AssertionError(f"operation did not finish within {MAX_STEPS} faulted calls")


@pytest.mark.parametrize("mode", ["crash_before", "crash_after"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_crash_then_recover_then_retry(name, mode):
    steps = asyncio.run(run_steps(SCENARIOS[name], mode, sweep_first=True))
    assert steps >= 5  # at least reads, two prepares, a commit: every one of them was a crash point


@pytest.mark.parametrize("mode", ["crash_before", "crash_after"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_crash_then_retry_without_recovery(name, mode):
    """The retry itself (on the restarted coordinator) finishes or undoes the earlier attempt."""
    asyncio.run(run_steps(SCENARIOS[name], mode, sweep_first=False))


@pytest.mark.parametrize("mode", ["lost_request", "lost_reply"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lost_internal_call(name, mode):
    """A peer call that times out (maybe after taking effect) while the coordinator lives on."""
    asyncio.run(run_steps(SCENARIOS[name], mode))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_retry_after_completion_is_answered_from_record(name):
    """A client whose reply was lost retries a finished (forgotten) cross-shard op: same answer, no change."""

    async def go():
        engine, call = await fresh(SCENARIOS[name])
        rid = uuid.uuid4().bytes
        res = await engine.call(call.shard, call.op, ROOT, call.args, rid)
        after = dump(engine)
        again = await engine.call(call.shard, call.op, ROOT, call.args, rid)
        assert again == res
        assert dump(engine) == after and not leftovers(engine)
        await engine.close()

    asyncio.run(go())
