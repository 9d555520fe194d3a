"""RaftHost durability: nothing is acknowledged for an entry before the journal holds it
on disk, one sync covers a batch, "async" never syncs, and damaged state stops the start.

Syncs are observed by replacing a journal's ``fsync`` (counting, blocking or failing
it); replicas run in this process (``cluster_factory``, tests/unit/consensus/conftest.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading

import pytest

from dfs.common.errors import Unavailable
from dfs.consensus.files import CorruptState, write_state
from dfs.consensus.raft import DUMP_FILE, LOG_FILE, MEMBERS_FILE, STATE_FILE, RaftHost, encode_entry
from dfs.consensus.testing import CounterSM, add_cmd
from dfs.testing.cluster import free_ports
from dfs.testing.wait import until_async

pytestmark = pytest.mark.timeout(60)

until = functools.partial(until_async, interval=0.01)


class BlockedSync:
    """A journal fsync that waits for ``release``; ``entered`` once a tick thread is in it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()

    def __call__(self, fd: int) -> None:
        self.entered.set()
        if not self.go.wait(30):
            raise OSError(5, "test never released the sync")
        os.fdatasync(fd)

    def release(self) -> None:
        self.go.set()


def held_acks(h: RaftHost) -> list[dict]:
    """The follower's AppendEntries acknowledgements waiting for its journal sync."""
    return [m for _, m in h._node._dfs_transport._held if m["type"] == "next_node_idx" and m["success"]]


def test_followers_acknowledge_only_synced_entries(cluster_factory):
    async def main():
        c = cluster_factory()
        leader = await c.leader()
        await leader.submit(add_cmd("warm"))
        followers = [h for h in c.live() if h is not leader]
        # a follower applies an entry only after its sync: nothing of theirs is unsynced now
        await until(lambda: all(f.sm.applied_index() == leader.sm.applied_index() for f in followers), 10,
                    "followers caught up")
        blocks = []
        for f in followers:
            b = BlockedSync()
            f._journal.fsync = b
            blocks.append(b)
        index = leader.commit_index + 1
        task = asyncio.ensure_future(leader.submit(add_cmd("x"), timeout=30))
        for b in blocks:  # both followers appended the entry and are writing it
            assert await asyncio.to_thread(b.entered.wait, 10), "no sync began"
        assert all(f._journal[-1][1] >= index for f in followers)
        # their acknowledgements wait behind the sync; the leader has no majority for it
        for f in followers:
            assert any(m["next_node_idx"] > index for m in held_acks(f)), held_acks(f)
        m = await leader.membership()
        assert all(p.match_index < index for p in m.peers), m.peers
        assert not task.done() and leader.commit_index < index
        blocks[0].release()
        assert await task == b"2"  # one follower's sync makes the majority
        blocks[1].release()
        await until(lambda: all(f.applied_index >= index for f in followers), 10, "both apply")

    asyncio.run(main())


def test_a_leader_counts_itself_only_once_synced(tmp_path):
    async def main():
        sm = CounterSM(str(tmp_path / "sm"))
        addr = f"127.0.0.1:{free_ports(1)[0]}"
        h = RaftHost(sm, addr, [addr], str(tmp_path / "raft"))  # a group of one: its own sync is the majority
        try:
            await until(lambda: h.is_leader, 10, "leading")
            await h.submit(add_cmd("a"))
            b = BlockedSync()
            h._journal.fsync = b
            task = asyncio.ensure_future(h.submit(add_cmd("b"), timeout=30))
            assert await asyncio.to_thread(b.entered.wait, 10), "no sync began"
            assert h._journal[-1][1] > h.commit_index and not task.done()
            b.release()
            assert await task == b"2"
        finally:
            h.close()
            sm.close()

    asyncio.run(main())


def test_one_sync_covers_many_entries_under_load(cluster_factory):
    async def main():
        c = cluster_factory()
        leader = await c.leader()
        await leader.submit(add_cmd("warm"))
        before = {id(h): h.status() for h in c.live()}
        sem = asyncio.Semaphore(64)

        async def one(i):
            async with sem:
                return await leader.submit(add_cmd(f"c{i}"))

        n = 640
        await asyncio.gather(*(one(i) for i in range(n)))
        await until(lambda: len({sm.applied_index() for sm in c.sms}) == 1, 10, "convergence")
        for h in c.live():
            b, a = before[id(h)], h.status()
            syncs = a["journal_syncs"] - b["journal_syncs"]
            synced = a["journal_synced_entries"] - b["journal_synced_entries"]
            assert 0 < syncs <= synced, (h.role, syncs, synced)  # never a sync without an entry
            assert syncs < n / 4, (h.role, syncs)  # group commit: commands share entries and syncs
            assert a["durability"] == "sync"

    asyncio.run(main())


def test_async_durability_writes_but_never_syncs(cluster_factory):
    async def main():
        c = cluster_factory(durability="async")
        leader = await c.leader()
        res = await asyncio.gather(*(leader.submit(add_cmd(f"a{i}")) for i in range(50)))
        assert sorted(int(r) for r in res) == list(range(1, 51))
        await until(lambda: len({sm.applied_index() for sm in c.sms}) == 1, 10, "convergence")
        assert all(h.status()["journal_syncs"] == 0 and h.status()["durability"] == "async" for h in c.live())
        digests = [sm.digest() for sm in c.sms]
        for i in range(3):
            c.stop(i)
        for i in range(3):
            c.start(i)
        leader = await c.leader()
        assert [sm.digest() for sm in c.sms] == digests  # written to the OS: a restart keeps it
        assert int(await leader.submit(add_cmd("after"))) == 51

    asyncio.run(main())


def test_durability_is_checked(tmp_path):
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    with pytest.raises(ValueError, match="durability"):
        RaftHost(CounterSM(None), addr, [addr], str(tmp_path / "raft"), durability="fast")


def test_a_failing_journal_halts_the_replica(cluster_factory):
    async def main():
        c = cluster_factory()
        leader = await c.leader()
        await leader.submit(add_cmd("a"))
        f = next(h for h in c.live() if h is not leader)

        def eio(fd):
            raise OSError(5, "Input/output error")

        f._journal.fsync = eio
        assert await leader.submit(add_cmd("b")) == b"2"  # the other follower and the leader
        await until(lambda: f.status()["halted"], 10, "the follower halting")
        with pytest.raises(Unavailable, match="halted"):
            await f.submit(add_cmd("c"))
        assert not f._node.tick_thread_alive() or f._node._SyncObj__destroying
        assert await leader.submit(add_cmd("d")) == b"3"

    asyncio.run(main())


def _single(tmp_path, **kw) -> tuple[RaftHost, CounterSM, str]:
    addr = kw.pop("addr", None) or f"127.0.0.1:{free_ports(1)[0]}"
    sm = CounterSM(str(tmp_path / "sm"))
    try:
        return RaftHost(sm, addr, [addr], str(tmp_path / "raft"), **kw), sm, addr
    except BaseException:
        sm.close()
        raise


def _prepare(tmp_path) -> str:
    """A replica's Raft folder with a log, a state file, a dump and members.json."""

    async def main():
        h, sm, addr = _single(tmp_path, log_compaction_min_entries=4)
        try:
            await until(lambda: h.is_leader, 10, "leading")
            for i in range(12):
                await h.submit(add_cmd(f"p{i}"))
            await until(lambda: h.status()["snapshots_taken"] > 0, 10, "a dump")
        finally:
            h.close()
            sm.close()
        return addr

    return asyncio.run(main())


@pytest.mark.parametrize("damage", [STATE_FILE, DUMP_FILE, MEMBERS_FILE])
def test_damaged_raft_state_stops_the_start(tmp_path, damage):
    addr = _prepare(tmp_path)
    path = tmp_path / "raft" / damage
    assert path.exists()
    with open(path, "r+b") as f:  # what a torn write or a bad block leaves
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CorruptState, match=damage):
        _single(tmp_path, addr=addr)


def test_an_undamaged_replica_restarts_from_its_files(tmp_path):
    addr = _prepare(tmp_path)
    assert {LOG_FILE, STATE_FILE, DUMP_FILE, MEMBERS_FILE} <= set(os.listdir(tmp_path / "raft"))

    async def main():
        h, sm, _ = _single(tmp_path, addr=addr)
        try:
            await until(lambda: h.is_leader, 10, "leading")
            assert int(await h.submit(add_cmd("after"))) == 13
        finally:
            h.close()
            sm.close()

    asyncio.run(main())


def test_a_vote_survives_a_restart_and_is_not_given_twice(tmp_path):
    # term 9 with a vote for another replica already given: a restarted voter keeps it
    raft = tmp_path / "raft"
    raft.mkdir()
    me, other = (f"127.0.0.1:{p}" for p in free_ports(2))
    write_state(str(raft / STATE_FILE), {"term": 9, "voted_for": other, "commit_index": 1})
    sm = CounterSM(None)
    h = RaftHost(sm, me, [me, other], str(raft))
    try:
        assert h._node._SyncObj__votedForNodeId == other and h.term >= 9
    finally:
        h.close()


def test_a_stop_between_a_dump_and_its_compaction_loses_no_entry(tmp_path):
    """pysyncobj writes a dump on one tick and compacts its journal on the next. A stop in
    between used to leave a journal that did not start at the dump, which pysyncobj then
    cleared: the entries after the dump (a follower's acknowledged ones) were gone."""

    async def main():
        h, sm, addr = _single(tmp_path)
        await until(lambda: h.is_leader, 10, "leading")
        for i in range(10):
            await h.submit(add_cmd(f"a{i}"))
        serializer = h._node._SyncObj__serializer
        dump = serializer._Serializer__serializer
        stopped = threading.Event()

        def dump_then_stop(tmp, data):  # pysyncobj's thread
            dump(tmp, data)
            h._node.destroy()  # the tick thread ends after this tick: no compaction
            stopped.set()

        serializer._Serializer__serializer = dump_then_stop

        def arm():  # pysyncobj's thread: next tick appends an entry, then compacts below it
            h._node._apply_entry(encode_entry([add_cmd("late")]))
            h._node.forceLogCompaction()

        h._on_tick.append(arm)
        assert await asyncio.to_thread(stopped.wait, 10), "no dump was taken"
        await asyncio.to_thread(h._node._SyncObj__thread.join, 10)
        last = h._journal[-1]
        assert last[1] == h.applied_index + 1  # "late", after the dump
        h.close()
        sm.close()
        h2, sm2, _ = _single(tmp_path, addr=addr)
        try:
            await until(lambda: h2.is_leader, 10, "leading again")
            log = h2._node._SyncObj__raftLog
            assert any(e == last for e in log[:]), (last[1], [e[1] for e in log[:]])
            await until(lambda: "late" in sm2.results(), 10, "the entry after the dump applied")
        finally:
            h2.close()
            sm2.close()

    asyncio.run(main())
