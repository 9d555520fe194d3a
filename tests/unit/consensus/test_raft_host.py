"""RaftHost with 1 or 3 replicas inside this process (real pysyncobj over loopback TCP)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time

import pytest

from dfs.common.errors import NotLeader, Unavailable
from dfs.consensus.journal import DiskJournal
from dfs.consensus.raft import (
    DUMP_FILE,
    LOG_FILE,
    STATE_FILE,
    RaftHost,
    decode_entry,
    encode_entry,
)
from dfs.consensus.testing import CounterSM, add_cmd, put_cmd
from dfs.testing.cluster import free_ports
from dfs.testing.wait import until_async

pytestmark = pytest.mark.timeout(60)

until = functools.partial(until_async, interval=0.01)  # hosts in this process: polls are cheap


def test_entry_codec_roundtrip():
    cmds = [b"", b"a", bytes(range(256)) * 3]
    assert decode_entry(encode_entry(cmds)) == cmds


def test_single_node_group_commits_and_applies(tmp_path):
    async def main():
        sm = CounterSM(str(tmp_path / "sm"))
        addr = f"127.0.0.1:{free_ports(1)[0]}"
        h = RaftHost(sm, addr, [addr], str(tmp_path / "raft"))
        try:
            assert await h.wait_leader(10) == addr
            await until(lambda: h.is_leader, 10, "the host leading")
            assert await h.submit(add_cmd("x")) == b"1"
            res = await asyncio.gather(*(h.submit(add_cmd(f"r{i}")) for i in range(100)))
            assert sorted(int(r) for r in res) == list(range(2, 102))
            c = sm.counters()
            assert c["commands"] == 101 and c["entries"] < 101 and c["dups"] == 0
            assert h.role == "leader" and h.status()["sm_applied_index"] == sm.applied_index()
        finally:
            h.close()
            sm.close()

    asyncio.run(main())


def test_concurrent_submits_are_batched(cluster_factory):
    async def main():
        c = cluster_factory()
        leader = await c.leader()
        await leader.submit(add_cmd("warmup"))
        before = leader.sm.counters()
        n = 640
        sem = asyncio.Semaphore(64)

        async def one(i):
            async with sem:
                return await leader.submit(add_cmd(f"c{i}"))

        res = await asyncio.gather(*(one(i) for i in range(n)))
        assert sorted(int(r) for r in res) == list(range(2, n + 2))  # each got its own result
        after = leader.sm.counters()
        entries, commands = after["entries"] - before["entries"], after["commands"] - before["commands"]
        assert commands == n and entries < commands / 4, (entries, commands)
        # every replica converges to the same state
        await until(lambda: all(sm.applied_index() == leader.sm.applied_index() for sm in c.sms), 10, "convergence")
        assert len({tuple(sm.digest()) for sm in c.sms}) == 1
        assert all(sm.counters()["dups"] == 0 for sm in c.sms)

    asyncio.run(main())


def test_group_commit_off_one_entry_per_command(cluster_factory):
    async def main():
        c = cluster_factory(group_commit=False)
        leader = await c.leader()
        before = leader.sm.counters()
        res = await asyncio.gather(*(leader.submit(put_cmd(b"k%d" % i, b"v")) for i in range(50)))
        assert res == [b"ok"] * 50
        after = leader.sm.counters()
        assert after["entries"] - before["entries"] == 50

    asyncio.run(main())


def test_submit_on_follower_fails_fast_with_leader_hint(cluster_factory):
    async def main():
        c = cluster_factory()
        leader = await c.leader()
        await leader.submit(add_cmd("a"))  # followers have heard from the leader
        follower = next(h for h in c.live() if not h.is_leader)
        await until(lambda: follower.leader == leader.self_address, 10, "follower knows leader")
        t0 = time.monotonic()
        with pytest.raises(NotLeader) as ei:
            await follower.submit(add_cmd("b"))
        assert time.monotonic() - t0 < 0.1
        assert ei.value.leader == leader.self_address
        assert follower.role == "follower" and follower.leader == leader.self_address

    asyncio.run(main())


def test_lost_majority_fails_pending_and_deadline(cluster_factory):
    async def main():
        c = cluster_factory(leader_fallback_timeout=1.0)
        leader = await c.leader()
        await leader.submit(add_cmd("a"))
        for i, h in enumerate(c.hosts):
            if h is not leader:
                c.stop(i)
        # A short deadline: Unavailable, while it is still (nominally) leader.
        with pytest.raises(Unavailable):
            await leader.submit(add_cmd("b"), timeout=0.2)
        # A long deadline: the leader steps down (no majority) and fails it long before 30 s.
        t0 = time.monotonic()
        with pytest.raises((NotLeader, Unavailable)):
            await leader.submit(add_cmd("c"), timeout=30)
        assert time.monotonic() - t0 < 5
        await until(lambda: not leader.is_leader, 10, "step down")
        with pytest.raises(NotLeader):
            await leader.submit(add_cmd("d"))
        assert leader.status()["queued"] == 0 and leader.status()["inflight"] == 0

    asyncio.run(main())


def stored(sm: CounterSM) -> dict:
    """The counters a replica keeps on disk: ``restores`` counts the snapshots this
    process installed and starts at 0 with every process."""
    return {k: v for k, v in sm.counters().items() if k != "restores"}


def test_restart_keeps_state_without_double_apply(cluster_factory):
    async def main():
        c = cluster_factory(log_compaction_min_entries=20)
        leader = await c.leader()
        # A replica its peers connect to late (pysyncobj retries a connection every
        # connection_retry) misses the first entries and, once the leader compacted them, is
        # sent a snapshot: legitimate, but then it may take no dump of its own (and its
        # restores counter counts this process's installs, not state). Load a connected group.
        await until(lambda: all(all(h.status()["peers"].values()) for h in c.live()), 10, "peers connected")
        for k in range(60):  # > compaction threshold: dump files exist at restart
            await asyncio.gather(*(leader.submit(add_cmd(f"r{k}-{j}")) for j in range(3)))
        await until(lambda: len({sm.applied_index() for sm in c.sms}) == 1, 10, "convergence")
        before = [stored(sm) for sm in c.sms]
        digests = [sm.digest() for sm in c.sms]
        assert all(h.status()["snapshots_taken"] > 0 for h in c.live())
        for i in range(3):
            c.stop(i)
        for i in range(3):
            c.start(i)
        leader = await c.leader()
        # replay of journal/dump must not re-apply or restore anything
        assert [stored(sm) for sm in c.sms] == before
        assert [sm.digest() for sm in c.sms] == digests
        assert all(sm.restores == 0 for sm in c.sms)
        assert int(await leader.submit(add_cmd("after"))) == before[0]["seq"] + 1
        await until(lambda: all(sm.counters()["seq"] == before[0]["seq"] + 1 for sm in c.sms), 10, "apply")
        assert all(sm.counters()["dups"] == 0 for sm in c.sms)
        # the journal tail after each node's dump was replayed and skipped, not re-applied
        assert all(h.status()["skipped_on_replay"] > 0 for h in c.live())

    asyncio.run(main())


@pytest.mark.parametrize("memory", [False, True], ids=["rocks", "memory"])
def test_wiped_follower_catches_up_by_snapshot(cluster_factory, memory):
    async def main():
        c = cluster_factory(log_compaction_min_entries=10, memory=memory)
        leader = await c.leader()
        li = c.hosts.index(leader)
        fi = (li + 1) % 3
        await leader.submit(add_cmd("first"))
        c.stop(fi)
        import shutil

        shutil.rmtree(os.path.join(c.root, f"raft{fi}"), ignore_errors=True)
        shutil.rmtree(os.path.join(c.root, f"sm{fi}"), ignore_errors=True)
        for k in range(40):
            await asyncio.gather(*(leader.submit(add_cmd(f"w{k}-{j}")) for j in range(4)))
        await until(lambda: leader.status()["snapshots_taken"] > 0 and leader.status()["log_len"] < 30,
                    10, "leader compaction")
        f = c.start(fi)
        await until(lambda: c.sms[fi].applied_index() >= leader.sm.applied_index(), 20, "catch up")
        assert c.sms[fi].restores == 1
        assert f.status()["snapshots_restored"] == 1
        assert c.sms[fi].digest() == leader.sm.digest()
        assert c.sms[fi].counters()["seq"] == 161
        # and it keeps following
        await leader.submit(add_cmd("later"))
        await until(lambda: c.sms[fi].counters()["seq"] == 162, 10, "follow after snapshot")

    asyncio.run(main())


def test_close_fails_pending(tmp_path):
    async def main():
        sm = CounterSM(None)
        a, b = (f"127.0.0.1:{p}" for p in free_ports(2))
        h = RaftHost(sm, a, [a, b], str(tmp_path / "raft"))  # peer never starts: no leader
        try:
            with pytest.raises(NotLeader) as ei:
                await h.submit(add_cmd("x"))
            assert ei.value.leader == ""
            assert h.leader is None and h.role in ("follower", "candidate")
            with pytest.raises(Unavailable):
                await h.wait_leader(0.3)
        finally:
            h.close()
        with pytest.raises(Unavailable):
            await h.submit(add_cmd("y"))

    asyncio.run(main())


def test_a_leader_cut_off_from_its_majority_stops_serving_reads_before_it_steps_down(cluster_factory):
    """The read lease (RaftHost.read_lease): a leader answers reads only while a majority
    answered it lately. pysyncobj keeps it leader until its fallback timeout (here far
    longer than the test), while the others may already have elected a new leader that
    commits what this one's reads would miss."""
    async def main():
        c = cluster_factory(leader_fallback_timeout=120.0)
        leader = await c.leader()
        await leader.submit(add_cmd("a"))
        await until(leader.read_lease, 10, "a read lease")
        for i, h in enumerate(c.hosts):
            if h is not leader:
                c.stop(i)
        await until(lambda: not leader.read_lease(), 30, "the read lease to lapse")
        assert leader.is_leader  # still leader in pysyncobj's view: reads would have been stale

    asyncio.run(main())


def test_a_new_leader_serves_reads_once_its_first_entry_is_applied(cluster_factory):
    async def main():
        c = cluster_factory()
        leader = await c.leader()
        await until(leader.read_lease, 10, "a read lease")
        node = leader._node
        assert node.raftLastApplied >= node._SyncObj__noopIDx
        for h in c.hosts:
            if h is not leader:
                assert not h.read_lease()



def test_a_stranger_cannot_make_a_raft_port_buffer_much(tmp_path):
    """A connection that has not named a member may send PREAUTH_BYTES before it is dropped
    (pysyncobj would buffer what a 2 GiB length prefix announces), and at most
    PREAUTH_CONNECTIONS such connections stay open; the group goes on committing."""
    import socket
    import struct

    from dfs.consensus.node import _Transport

    async def main():
        sm = CounterSM(str(tmp_path / "sm"))
        addr = f"127.0.0.1:{free_ports(1)[0]}"
        h = RaftHost(sm, addr, [addr], str(tmp_path / "raft"), password="f" + os.urandom(16).hex())
        loop = asyncio.get_running_loop()
        host, port = addr.rsplit(":", 1)
        try:
            await until(lambda: h.is_leader, 10, "the host leading")
            s = socket.create_connection((host, int(port)))
            s.setblocking(False)
            junk = struct.pack("i", (1 << 31) - 1) + b"\0" * (4 << 20)
            try:
                await asyncio.wait_for(loop.sock_sendall(s, junk), 30)
                closed = not await asyncio.wait_for(loop.sock_recv(s, 1), 30)
            except (ConnectionResetError, BrokenPipeError):
                closed = True
            assert closed  # dropped, not buffering 4 MiB of an unauthenticated "message"
            s.close()
            many = [socket.create_connection((host, int(port))) for _ in range(_Transport.PREAUTH_CONNECTIONS + 8)]
            for c in many:
                c.setblocking(False)

            async def refused(c) -> bool:
                try:
                    return not await asyncio.wait_for(loop.sock_recv(c, 1), 30)
                except (ConnectionResetError, BrokenPipeError):
                    return True
            # the first PREAUTH_CONNECTIONS stay (each waits for its key exchange), the rest are closed
            assert all([await refused(c) for c in many[_Transport.PREAUTH_CONNECTIONS:]])
            assert await h.submit(add_cmd("still")) == b"1"
            for c in many:
                c.close()
        finally:
            h.close()
            sm.close()
    asyncio.run(main())


def test_a_wrong_raft_password_is_logged_as_such(tmp_path, caplog):
    """A peer with another password used to look like a partition (pysyncobj drops what does
    not decrypt without a word): the replica now says a connection failed authentication."""
    import logging

    async def main():
        a_addr, b_addr = (f"127.0.0.1:{p}" for p in free_ports(2))
        sa, sb = CounterSM(str(tmp_path / "sa")), CounterSM(str(tmp_path / "sb"))
        a = RaftHost(sa, a_addr, [a_addr, b_addr], str(tmp_path / "ra"), password="a" + os.urandom(16).hex())
        b = RaftHost(sb, b_addr, [a_addr, b_addr], str(tmp_path / "rb"), password="b" + os.urandom(16).hex())
        try:
            await until(lambda: "failed authentication" in caplog.text, 30, "the warning")
            assert not a.is_leader and not b.is_leader  # neither got the other's vote
        finally:
            b.close()
            a.close()
            sb.close()
            sa.close()

    with caplog.at_level(logging.WARNING, logger="dfs.consensus.raft"):
        asyncio.run(main())


def test_a_raft_port_in_use_halts_the_replica_saying_so(tmp_path, caplog, monkeypatch):
    """pysyncobj kept retrying the bind and ran unbound, looking like a partitioned replica;
    after a bounded number of tries the replica now halts with the reason in its log."""
    import logging
    import socket

    from dfs.consensus import raft

    monkeypatch.setattr(raft, "BIND_RETRIES", 2)
    monkeypatch.setattr(raft, "BIND_RETRY_S", 0.1)

    async def main():
        port = free_ports(1)[0]
        taken = socket.socket()
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        sm = CounterSM(str(tmp_path / "sm"))
        addr = f"127.0.0.1:{port}"
        h = RaftHost(sm, addr, [addr], str(tmp_path / "raft"))
        try:
            await until(lambda: h._fatal is not None, 30, "the replica to halt")
            assert "cannot bind the Raft address" in caplog.text
            with pytest.raises(Unavailable):
                await h.submit(add_cmd("x"))
        finally:
            h.close()
            sm.close()
            taken.close()

    with caplog.at_level(logging.CRITICAL, logger="dfs.consensus.raft"):
        asyncio.run(main())


@contextlib.asynccontextmanager
async def _lone_replica(tmp_path):
    """(a RaftHost, its two peers' addresses): a replica whose peers never answer (nothing
    listens on their ports), for tests that hand it messages on pysyncobj's thread."""
    a, b, c = (f"127.0.0.1:{p}" for p in free_ports(3))
    sm = CounterSM(str(tmp_path / "sm"))
    h = RaftHost(sm, a, [a, b, c], str(tmp_path / "raft"))
    try:
        yield h, b, c
    finally:
        h.close()
        sm.close()


def _receive(h: RaftHost, sender: str, message: dict) -> None:
    """``message`` from peer ``sender``, as the transport hands it over (pysyncobj's thread)."""
    node = h._node
    peer = next(n for n in node._SyncObj__otherNodes if str(n.id) == sender)
    node._dfs_transport._onMessageReceived(peer, message)


def _last(h: RaftHost) -> tuple[int, int]:
    return h._node._SyncObj__getCurrentLogIndex(), h._node._SyncObj__getCurrentLogTerm()


def test_a_follower_keeps_the_tail_no_entry_of_a_message_conflicts_with(tmp_path):
    """Raft cuts a follower's log only from an entry that conflicts with the leader's;
    pysyncobj cuts it after ``prevLogIdx`` on every AppendEntries that overlaps it. A
    heartbeat of a new leader whose view of this follower lags then dropped entries the
    follower had acknowledged, and the follower voted as if it never had them: it could
    elect a peer lacking entries committed with its help (a lost committed write). Here one
    replica (its peers never answer) gets the messages of such leaders on pysyncobj's
    thread: the tail stays, votes count it, the commit index follows only the message's
    last entry, a membership change in the tail stays applied, and a conflict still cuts."""
    from pysyncobj import pickle as spickle
    from pysyncobj.syncobj import _COMMAND_TYPE

    noop = bytes([_COMMAND_TYPE.NO_OP])
    extra = f"127.0.0.1:{free_ports(1)[0]}"
    member = bytes([_COMMAND_TYPE.MEMBERSHIP]) + spickle.dumps(["add", extra])

    async def main():
        async with _lone_replica(tmp_path) as (h, b, _):
            def run():
                node = h._node
                sent: list[dict] = []
                node._dfs_transport.send = lambda n, m: sent.append(m) or True  # the replies, seen instead of sent

                def deliver(**m):
                    _receive(h, b, {"type": "append_entries", **m})
                    return sent[-1]

                i0, t0 = _last(h)
                commit0 = node.raftCommitIndex
                tail = [(noop, i0 + 1, 1000), (noop, i0 + 2, 1000), (member, i0 + 3, 1000),
                        (noop, i0 + 4, 1000), (noop, i0 + 5, 1000), (noop, i0 + 6, 1000)]
                deliver(term=1000, prevLogIdx=i0, prevLogTerm=t0, entries=tail, commit_index=commit0)
                out = {"after_first": _last(h), "members": {str(n.id) for n in node._SyncObj__otherNodes}}
                # a later leader's heartbeat, its view of this follower two entries in, saying
                # everything is committed: the tail stays, the commit index stops at the message
                reply = deliver(term=2000, prevLogIdx=i0 + 2, prevLogTerm=1000, entries=[], commit_index=i0 + 6)
                out["heartbeat"] = (_last(h), reply["next_node_idx"], reply["success"], node.raftCommitIndex)
                out["members_after"] = {str(n.id) for n in node._SyncObj__otherNodes}
                # a candidate lacking the tail gets no vote
                _receive(h, b, {"type": "request_vote", "term": 3000, "last_log_index": i0 + 2, "last_log_term": 1000})
                out["voted"] = node._SyncObj__votedForNodeId
                # a shorter batch of a later leader: the same
                reply = deliver(term=4000, prevLogIdx=i0 + 3, prevLogTerm=1000, entries=[(noop, i0 + 4, 1000)],
                                commit_index=i0 + 6)
                out["batch"] = (_last(h), reply["next_node_idx"], node.raftCommitIndex)
                # a conflicting entry cuts from there
                deliver(term=5000, prevLogIdx=i0 + 4, prevLogTerm=1000, entries=[(noop, i0 + 5, 5000)],
                        commit_index=i0 + 4)
                out["conflict"] = (_last(h), node.raftCommitIndex)
                return out

            out = await h._on_tick_call(run)
        i0 = out["after_first"][0] - 6
        assert out["after_first"] == (i0 + 6, 1000) and extra in out["members"]
        assert out["heartbeat"] == ((i0 + 6, 1000), i0 + 3, True, i0 + 2)
        assert extra in out["members_after"]
        assert out["voted"] is None
        assert out["batch"] == ((i0 + 6, 1000), i0 + 5, i0 + 4)
        assert out["conflict"] == ((i0 + 5, 5000), i0 + 4)
        # the file says the same
        d = tmp_path / "raft"
        j = DiskJournal(str(d / LOG_FILE), str(d / STATE_FILE), str(d / DUMP_FILE))
        try:
            assert (j[-1][1], j[-1][2]) == (i0 + 5, 5000)
        finally:
            j._destroy()

    asyncio.run(main())


def test_a_follower_that_just_answered_its_leader_votes_for_no_one_else(tmp_path, monkeypatch):
    """Leader stickiness (Raft thesis 4.2.3), which lease reads rest on: within the shortest
    election timeout of its last answer to the leader, a follower ignores a candidate's vote
    request (its term too). Afterwards it votes; and a vote the leader asked for (a
    leadership transfer's timeout_now, the candidate marks its requests) is granted at once.
    One replica (its peers never answer) gets the messages on pysyncobj's thread."""
    from pysyncobj.monotonic import monotonic as clock
    from pysyncobj.transport import TCPTransport

    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(TCPTransport, "send", lambda self, n, m: sent.append((str(n.id), m)) or True)

    async def main():
        async with _lone_replica(tmp_path) as (h, b, c):
            def run():
                node = h._node
                i, term = _last(h)

                def heartbeat(leader_term):
                    _receive(h, b, {"type": "append_entries", "term": leader_term, "prevLogIdx": i,
                                    "prevLogTerm": term, "entries": [], "commit_index": 0})

                def ask(vote_term, **kw):
                    del sent[:]
                    _receive(h, c, {"type": "request_vote", "term": vote_term, "last_log_index": i + 100,
                                    "last_log_term": vote_term - 1, **kw})
                    return node._SyncObj__raftCurrentTerm, [m["type"] for to, m in sent if to == c]

                out = {}
                heartbeat(1000)
                out["answered"] = clock() - node._dfs_answered < 1
                out["sticky"] = ask(2000)
                node._dfs_answered -= node._dfs_sticky  # as if the shortest election timeout had passed
                out["later"] = ask(2000)
                heartbeat(3000)
                out["transfer"] = ask(4000, transfer=True)
                # the leader's timeout_now: this replica's own vote requests then say so
                heartbeat(5000)
                _receive(h, b, {"type": "timeout_now", "term": 5000})
                del sent[:]
                peer_c = next(n for n in node._SyncObj__otherNodes if str(n.id) == c)
                node._dfs_transport.send(peer_c, {"type": "request_vote", "term": 5001, "last_log_index": i,
                                                  "last_log_term": term})
                out["marked"] = [m.get("transfer") for _, m in sent]
                return out

            out = await h._on_tick_call(run)
        assert out["answered"]
        assert out["sticky"] == (1000, [])
        assert out["later"] == (2000, ["response_vote"])
        assert out["transfer"] == (4000, ["response_vote"])
        assert out["marked"] == [True]

    asyncio.run(main())


def test_only_a_change_of_an_applied_entry_is_logged_critical(tmp_path, caplog):
    """pysyncobj logs CRITICAL "truncating already-applied log entries" for every AppendEntries
    overlapping applied entries: a leader resending what a follower has, thousands of lines a
    loaded run. That line is silenced; dfs logs CRITICAL only when an applied entry was
    replaced by another (a diverged state machine)."""
    from pysyncobj.syncobj import _COMMAND_TYPE

    noop = bytes([_COMMAND_TYPE.NO_OP])

    async def main():
        async with _lone_replica(tmp_path) as (h, b, _):
            def deliver(**m):
                _receive(h, b, {"type": "append_entries", **m})

            def first():
                i0, t0 = _last(h)
                deliver(term=1000, prevLogIdx=i0, prevLogTerm=t0,
                        entries=[(noop, i0 + k, 1000) for k in range(1, 5)], commit_index=i0 + 4)
                return i0

            i0 = await h._on_tick_call(first)
            await until(lambda: h._node.raftLastApplied >= i0 + 4, 10, "the entries applied")
            with caplog.at_level(logging.DEBUG):
                # the same entries again, and fewer of them: routine, nothing logged
                await h._on_tick_call(lambda: deliver(term=1000, prevLogIdx=i0 + 1, prevLogTerm=1000,
                                                      entries=[(noop, i0 + 2, 1000)], commit_index=i0 + 4))
                assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]
                # another entry in an applied one's place
                await h._on_tick_call(lambda: deliver(term=2000, prevLogIdx=i0 + 2, prevLogTerm=1000,
                                                      entries=[(noop, i0 + 3, 2000)], commit_index=i0 + 2))
            crit = [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL]
            assert len(crit) == 1 and f"replaced applied log entries from index {i0 + 3}" in crit[0], crit

    asyncio.run(main())
