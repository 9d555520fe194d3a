"""`dfs admin` membership commands of the metadata service (docs/design/operations.md,
"Changing a running cluster": add-meta-replica, remove-meta-replica,
replace-meta-replica, add-meta-shard).

Real processes on loopback (LocalCluster), except the first test, which drives
RaftHost replicas inside this process. Each change runs under client threads
that keep creating (and, for a new shard, making directories) and record what
was acknowledged; afterwards every acknowledged operation must be there, the
replicas of the changed group must hold the same RocksDB contents, and a
restart must come back with the new membership. Refused commands must say why
and change nothing. Synchronisation is by polling with deadlines only.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading

import pytest

from dfs.cli.main import main as dfs_main
from dfs.common.ids import ROOT_INO, dir_home_shard, shard_of
from dfs.common.errors import Unavailable
from dfs.consensus.raft import MEMBERS_FILE, Busy, RaftHost
from dfs.consensus.testing import CounterSM, add_cmd
from dfs.common.config import RaftOptions
from dfs.testing.cluster import LocalCluster, Proc, free_ports
from dfs.testing.wait import ThreadLoad, until, until_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def admin(cluster: LocalCluster, *args: str) -> int:
    return dfs_main(["admin", "--cluster", cluster.config_path, *args])


# ---------------------------------------------------------------------- the Raft host

def test_raft_host_membership_one_change_at_a_time(tmp_path) -> None:
    """add_member / remove_member on RaftHost replicas in this process: a second change while
    one runs is refused; the leader is not removed; a removal that would leave no majority of
    answering replicas is refused; the new replicas converge; a restart keeps the membership."""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(5)]
    hosts: dict[int, tuple[RaftHost, CounterSM]] = {}

    def start(i: int, peers: list[str]) -> RaftHost:
        sm = CounterSM(str(tmp_path / f"sm{i}"))
        hosts[i] = (RaftHost(sm, addrs[i], peers, str(tmp_path / f"raft{i}")), sm)
        return hosts[i][0]

    def stop(i: int) -> None:
        h, sm = hosts.pop(i)
        h.close()
        sm.close()

    async def leader() -> RaftHost:
        return await until_async(lambda: next((h for h, _ in hosts.values() if h.is_leader), None), 10, "a leader")

    async def main() -> None:
        for i in range(3):
            start(i, addrs[:3])
        lead = await leader()
        for k in range(20):
            await lead.submit(add_cmd(f"a{k}"))
        start(3, addrs[:4])  # a new replica knows the group it joins; it starts empty
        one, two = await asyncio.gather(lead.add_member(addrs[3], started=True),
                                        lead.add_member(addrs[3], started=True), return_exceptions=True)
        assert not isinstance(one, BaseException) and addrs[3] in one.members
        assert isinstance(two, Busy), two  # the second change waits for the first
        assert (await lead.add_member(addrs[3])).members == one.members  # a repeat: nothing to do
        start(4, addrs)
        assert set((await lead.add_member(addrs[4], started=True)).members) == set(addrs)
        for k in range(20, 40):
            await lead.submit(add_cmd(f"a{k}"))
        await until_async(lambda: len({sm.applied_index() for _, sm in hosts.values()}) == 1, 20, "convergence")
        assert len({tuple(sm.digest()) for _, sm in hosts.values()}) == 1
        # the leader leaves only after handing its role over
        with pytest.raises(Exception, match="transfer the leadership first"):
            await lead.remove_member(lead.self_address)
        # two of five down (the leader keeps its majority): removing a live one would leave
        # 2 answering of 4
        victims = [i for i, (h, _) in hosts.items() if h is not lead][:2]
        for i in victims:
            stop(i)
        live_one = next(i for i, (h, _) in hosts.items() if h is not lead)
        await until_async(lambda: _dead_seen(lead, {addrs[i] for i in victims}), 20, "the leader sees two down")
        with pytest.raises(Busy, match="not a majority"):
            await lead.remove_member(addrs[live_one])
        assert set((await lead.membership()).members) == set(addrs)
        # a dead one may go: 4 left, 3 answering
        m = await lead.remove_member(addrs[victims[0]])
        assert addrs[victims[0]] not in m.members and len(m.members) == 4
        assert int(await lead.submit(add_cmd("after"))) > 0
        m = await lead.remove_member(addrs[victims[1]])  # and the other: 3 left, all answering
        assert len(m.members) == 3
        path = tmp_path / f"raft{live_one}" / MEMBERS_FILE  # written when the follower appends the change
        await until_async(lambda: sorted(json.load(open(path))["members"]) == sorted(m.members), 20,
                          f"{MEMBERS_FILE} of a follower with the new membership")
        # a restart comes back with the new membership, whatever it is given (the other two
        # keep a majority meanwhile)
        stop(live_one)
        h = start(live_one, addrs[:3])
        assert set(h.members) == set(m.members)
        assert int(await lead.submit(add_cmd("after-restart"))) > 0
        await until_async(lambda: h.sm.applied_index() == lead.sm.applied_index(), 20, "the restarted one caught up")

    try:
        asyncio.run(main())
    finally:
        for i in list(hosts):
            stop(i)


def test_raft_host_refuses_a_change_while_one_is_uncommitted(tmp_path) -> None:
    """A group of one adds a replica that is not running: the entry cannot commit (it needs 2
    of 2), so the change stays pending in the log; another change is refused until the new
    replica starts and the first one commits."""
    a, b, c = (f"127.0.0.1:{p}" for p in free_ports(3))
    sms = [CounterSM(str(tmp_path / f"sm{i}")) for i in range(2)]
    # a leader that keeps its role without a majority for a while (as one does for up to the
    # fallback timeout), so that the entry stays uncommitted on a leader
    hosts = [RaftHost(sms[0], a, [a], str(tmp_path / "raft0"), leader_fallback_timeout=60.0)]

    async def main() -> None:
        h = hosts[0]
        await until_async(lambda: h.is_leader, 10, "the single replica leading")
        await h.submit(add_cmd("x"))
        with pytest.raises(Unavailable, match="may still commit"):
            await h.add_member(b, timeout=1.0, started=True)  # said to be started, but it is not
        m = await h.membership()
        assert m.pending and b in m.members
        with pytest.raises(Busy, match="not committed yet"):
            await h.add_member(c, started=True)
        with pytest.raises(Busy, match="not committed yet"):
            await h.remove_member(b)
        hosts.append(RaftHost(sms[1], b, [a, b], str(tmp_path / "raft1")))  # now it starts
        await until_async(lambda: _settled(h), 20, "the change committed")
        assert int(await h.submit(add_cmd("y"))) == 2
        assert set((await h.membership()).members) == {a, b}
        await until_async(lambda: sms[1].applied_index() == sms[0].applied_index(), 20, "the new replica caught up")

    try:
        asyncio.run(main())
    finally:
        for h in hosts:
            h.close()
        for sm in sms:
            sm.close()


async def _settled(h: RaftHost) -> bool:
    m = await h.membership()
    return m.is_leader and not m.pending


async def _dead_seen(lead: RaftHost, dead: set[str]) -> bool:
    m = await lead.membership()
    return m.is_leader and not (m.live() & dead)


# ---------------------------------------------------------------------- the map's commands

def test_map_membership_commands() -> None:
    from dfs.mgmt.store import COMMANDS, CommandError

    def rep(i: int) -> dict:
        return {"id": i, "address": f"h:{100 + i}", "raft": f"h:{200 + i}"}

    m = {"epoch": 1, "shards": [[rep(0), rep(1), rep(2)]], "targets": {}, "chains": []}
    add = {"op": "add", "add": "h:203", "remove": None}
    assert COMMANDS["member_begin"](m, 0, add) == (True, False, add)
    assert COMMANDS["member_begin"](m, 0, add) == (False, False, add)  # the same change resumes
    with pytest.raises(CommandError, match="in flight"):
        COMMANDS["member_begin"](m, 0, {"op": "remove", "add": None, "remove": "h:201"})
    with pytest.raises(CommandError, match="no shard"):
        COMMANDS["member_begin"](m, 1, add)
    assert COMMANDS["member_add"](m, 0, rep(3)) == (True, True)
    assert COMMANDS["member_add"](m, 0, rep(3)) == (False, False)
    with pytest.raises(CommandError, match="replica 1"):
        COMMANDS["member_add"](m, 0, {"id": 1, "address": "h:9", "raft": "h:8"})  # an id in use
    with pytest.raises(CommandError, match="shard 0 replica 2"):
        COMMANDS["member_add"](m, 0, {"id": 7, "address": "h:102", "raft": "h:8"})  # an address in use
    # abandoning the add: removing the replica it adds
    abandon = {"op": "remove", "add": None, "remove": "h:203"}
    assert COMMANDS["member_begin"](m, 0, abandon)[0] is True
    assert COMMANDS["member_remove"](m, 0, "h:203") == (True, True)
    assert COMMANDS["member_remove"](m, 0, "h:203") == (False, False)
    assert COMMANDS["member_end"](m, 0, add) == (False, False)  # not the one in flight
    assert COMMANDS["member_end"](m, 0, abandon) == (True, False) and not m["member_changes"]
    for r in ("h:200", "h:201"):
        COMMANDS["member_remove"](m, 0, r)
    with pytest.raises(CommandError, match="only replica"):
        COMMANDS["member_remove"](m, 0, "h:202")
    # shards: the next number only; the same again is a no-op
    new = [rep(10), rep(11)]
    with pytest.raises(CommandError, match="next shard is 1"):
        COMMANDS["add_shard"](m, 2, new)
    assert COMMANDS["add_shard"](m, 1, new) == (True, True) and len(m["shards"]) == 2
    assert COMMANDS["add_shard"](m, 1, list(reversed(new))) == (False, False)
    with pytest.raises(CommandError, match="exists already"):
        COMMANDS["add_shard"](m, 1, [rep(12)])
    with pytest.raises(CommandError, match="shard 1 replica 10"):
        COMMANDS["add_shard"](m, 2, [rep(10)])


# ---------------------------------------------------------------------- load and checks

class Load(ThreadLoad):
    """``n`` client threads creating files (each in its own directory) and, with ``mkdirs``,
    one thread making directories under the root; ``acked`` holds what was acknowledged:
    (directory inode, name) -> inode."""

    def __init__(self, cluster: LocalCluster, n: int = 2, mkdirs: bool = False) -> None:
        self.cluster = cluster
        super().__init__()
        self.lock = threading.Lock()
        self.acked: dict[tuple[int, str], int] = {}
        self.errors: list[BaseException] = []
        self.crashed: list[BaseException] = []
        self.client = cluster.client()
        self.dirs = [self.client.mkdir(ROOT_INO, f"load{i}-{os.urandom(3).hex()}").ino for i in range(n)]
        self.threads = [threading.Thread(target=self._creates, args=(i,), daemon=True) for i in range(n)]
        if mkdirs:
            self.threads.append(threading.Thread(target=self._mkdirs, daemon=True))

    def _loop(self, op) -> None:
        c = self.cluster.client()
        try:
            self._run(c, op)
        except BaseException as e:  # a bug in the test or the client: fail the test, not the thread
            self.crashed.append(e)
            raise
        finally:
            c.close()

    def _run(self, c, op) -> None:
        k = 0
        while not self.stop.is_set():
            k += 1
            try:
                key, ino = op(c, k)
            except OSError as e:  # not acknowledged: the outcome is unknown, it is not counted
                self.errors.append(e)
                continue
            with self.lock:
                self.acked[key] = ino

    def _creates(self, i: int) -> None:
        d = self.dirs[i]

        def op(c, k):
            name = f"f{k}"
            return (d, name), c.create(d, name)[0].ino
        self._loop(op)

    def _mkdirs(self) -> None:
        tag = os.urandom(3).hex()

        def op(c, k):
            name = f"m{tag}-{k}"
            return (ROOT_INO, name), c.mkdir(ROOT_INO, name).ino
        self._loop(op)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def more(self, n: int, what: str, timeout: float = 60) -> None:
        """Until ``n`` more operations were acknowledged (the load goes on through a change)."""
        start = self.count()
        until(lambda: self.crashed or self.count() >= start + n, timeout, f"{n} acknowledged operations {what}")
        assert not self.crashed, self.crashed


    def verify(self) -> None:
        """Every acknowledged operation is there, with the inode it was answered with."""
        assert not self.crashed, self.crashed
        c = self.client
        by_dir: dict[int, dict[str, int]] = {}
        for (d, name), ino in self.acked.items():
            by_dir.setdefault(d, {})[name] = ino
        for d, names in by_dir.items():
            listed = {e.name.decode(): e.ino for e in c.listdir(d)}
            lost = {n: i for n, i in names.items() if listed.get(n) != i}
            assert not lost, f"{len(lost)} of {len(names)} acknowledged entries of {d:#x} lost: {list(lost)[:10]}"

    def close(self) -> None:
        self.client.close()


def replica_contents(cluster: LocalCluster, shard: int) -> dict[str, list]:
    """Every live replica of ``shard``'s whole RocksDB, once they have applied the same index
    (no load may be running)."""
    cluster.wait_converged(shard, 60)
    return {p.name: cluster.read_replica(p) for p in cluster.meta_procs(shard) if p.alive}


def assert_same_contents(cluster: LocalCluster, shard: int, must_include: Proc) -> None:
    contents = replica_contents(cluster, shard)
    assert must_include.name in contents
    first = contents[must_include.name]
    assert first, "an empty replica"
    for name, pairs in contents.items():
        assert pairs == first, f"shard {shard}: {name} differs from {must_include.name}"


def members(cluster: LocalCluster, p: Proc) -> list[str] | None:
    """The Raft membership replica ``p`` works with (Membership RPC; None if it does not answer)."""
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg
    from dfs.cli.admin.common import internal

    async def go():
        async with cluster.credentials.channel(p.address) as ch:
            try:
                rep = await pbg.MetaServiceStub(ch).Membership(pb.MembershipRequest(), metadata=internal(cluster.cfg),
                                                               timeout=2.0)
            except grpc.aio.AioRpcError:
                return None
        return sorted(rep.members) if rep.status == 0 else None

    return asyncio.run(go())


def raft_of(cluster: LocalCluster, p: Proc) -> str:
    return cluster.cfg.shard(p.shard).replica(p.replica).raft


def group_of(cluster: LocalCluster, shard: int) -> list[str]:
    """The shard's membership as its leader has it."""
    lead = until(lambda: cluster.leader_of(shard), 30, f"a leader of shard {shard}")
    return until(lambda: members(cluster, lead), 30, "the leader's membership")


def state(cluster: LocalCluster, shard: int) -> tuple:
    """What a refused command must leave as it was: the cluster file, the map's replicas of
    the shard, the Raft membership."""
    with open(cluster.config_path, "rb") as f:
        text = f.read()
    m = cluster.cluster_map()
    return text, list(m.shards[shard]) if m else None, group_of(cluster, shard)


@pytest.fixture
def cluster(make_cluster):
    return make_cluster(shards=1, replicas=3, mgmt_replicas=1)


# ---------------------------------------------------------------------- replicas

@pytest.fixture
def compacting_cluster(make_cluster):
    """Raft logs compacted every 200 entries: a replica that joins later gets a snapshot."""
    return make_cluster(shards=1, replicas=3, mgmt_replicas=1, raft=RaftOptions(log_compaction_min_entries=200))


def snapshots_restored(p: Proc) -> float:
    from dfs.cli.status import scrape, value

    return value(scrape(p.metrics), "dfs_raft_snapshots_restored_total") or 0


def test_add_replace_remove_replicas_under_load(compacting_cluster: LocalCluster, capsys) -> None:
    cluster = compacting_cluster
    shard = 0
    load = Load(cluster)
    try:
        with load:
            load.more(300, "before the changes (the log is compacted)")
            # add: a new replica in the cluster file, started empty, joins and catches up
            new = cluster.add_meta_replica(shard)
            assert admin(cluster, "add-meta-replica", "--shard", str(shard), str(new.replica)) == 0
            assert admin(cluster, "add-meta-replica", "--shard", str(shard), str(new.replica)) == 0  # a repeat
            assert snapshots_restored(new) >= 1  # it joined from a snapshot (RocksDB checkpoint), then the log
            cluster.reload()
            assert raft_of(cluster, new) in group_of(cluster, shard) and len(group_of(cluster, shard)) == 4
            assert new.address in cluster.cluster_map().shards[shard]
            load.more(30, "after the add")
            # replace a live follower by a replica given by its addresses (appended to the file)
            lead = cluster.leader_of(shard)
            old = next(p for p in cluster.meta_procs(shard) if p is not lead and p is not new)
            old_raft = raft_of(cluster, old)
            host = "127.0.0.1"
            g, r, mt = free_ports(3)
            spec = f"{host}:{g},{host}:{r},{host}:{mt}"
            rc = {}
            t = threading.Thread(target=lambda: rc.setdefault("rc", admin(
                cluster, "replace-meta-replica", "--shard", str(shard), str(old.replica), spec)))
            t.start()
            # the command appends the replica to the cluster file; it is started from there
            until(lambda: any(x.raft == f"{host}:{r}" for x in cluster.reload().shard(shard).replicas), 60,
                  "the new replica in the cluster file")
            rid = next(x.id for x in cluster.cfg.shard(shard).replicas if x.raft == f"{host}:{r}")
            repl = cluster._meta_proc(shard, cluster.cfg.shard(shard).replica(rid))
            cluster.procs.append(repl)
            cluster.spawn(repl)
            t.join(180)
            assert rc.get("rc") == 0
            cluster.remove_meta_replica(old)
            group = group_of(cluster, shard)
            assert old_raft not in group and f"{host}:{r}" in group and len(group) == 4
            load.more(30, "after the replacement")
            # remove the leader: it hands its role over first
            lead = cluster.leader_of(shard)
            lead_raft = raft_of(cluster, lead)
            assert admin(cluster, "remove-meta-replica", "--shard", str(shard), str(lead.replica)) == 0
            assert admin(cluster, "remove-meta-replica", "--shard", str(shard), lead.address) == 0  # a repeat
            cluster.remove_meta_replica(lead)
            load.more(30, "after the leader left")
            # replace a dead replica: it leaves first (adding first would leave 2 answering of 4)
            lead = cluster.leader_of(shard)
            dead = next(p for p in cluster.meta_procs(shard) if p is not lead)
            dead_raft = raft_of(cluster, dead)
            cluster.kill(dead)
            until(lambda: _not_live(cluster, cluster.leader_of(shard), dead_raft), 30, "the leader to see it down")
            fresh = cluster.add_meta_replica(shard)
            assert admin(cluster, "replace-meta-replica", "--shard", str(shard), str(dead.replica),
                         str(fresh.replica)) == 0
            cluster.remove_meta_replica(dead)
            load.more(30, "after the dead replica's replacement")
        out = capsys.readouterr().out
        assert "not answering) left the Raft group" in out
        assert "replaced replica" in out and "is out of the group" in out
        load.verify()
        group = group_of(cluster, shard)
        assert len(group) == 3 and not {lead_raft, old_raft, dead_raft} & set(group)
        assert sorted(x.raft for x in cluster.reload().shard(shard).replicas) == group
        in_file = sorted(x.address for x in cluster.cfg.shard(shard).replicas)
        assert sorted(cluster.cluster_map().shards[shard]) == in_file
        # the new replicas hold what the others hold
        joined = [p for p in (new, repl, fresh) if p in cluster.procs]  # (dead may have been one)
        assert fresh in joined and len(joined) >= 2
        for p in joined:
            assert_same_contents(cluster, shard, p)
        # `dfs status` finds them (through the map)
        assert dfs_main(["status", "--cluster", cluster.config_path, "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        reps = {r["address"]: r for r in st["shards"][shard]["replicas"]}
        assert reps.keys() == {p.address for p in cluster.meta_procs(shard)}
        assert all(reps[p.address]["reachable"] and reps[p.address]["id"] == p.replica for p in joined)
        # the removed replicas are out: with one of the three left stopped, the other two (a
        # majority of the new group, not of the old one of 4 or 5) still commit
        victim = fresh
        cluster.kill(victim)
        c = cluster.client()
        try:
            d = c.mkdir(ROOT_INO, "after-removal")
            c.create(d.ino, "x")
            # a restart of every replica comes back with the new membership (kill -9, spawn), also
            # where a Raft dump (log compaction) is loaded at the start
            assert any(os.path.exists(os.path.join(p.data, "raft", "raft.dump")) for p in cluster.meta_procs(shard))
            cluster.spawn(victim)
            for p in cluster.meta_procs(shard):
                cluster.restart(p)
            cluster.wait_healthy(60)
            for p in cluster.meta_procs(shard):
                assert until(lambda p=p: members(cluster, p), 30, f"{p.name}'s membership") == group
            c.create(d.ino, "y")
            assert {e.name for e in c.listdir(d.ino)} == {b"x", b"y"}
        finally:
            c.close()
        load.verify()
        assert_same_contents(cluster, shard, fresh)
    finally:
        load.close()


def test_refusals_change_nothing(cluster: LocalCluster, capsys) -> None:
    shard = 0
    before = state(cluster, shard)
    capsys.readouterr()

    def refused(*args: str, says: str) -> None:
        assert admin(cluster, *args) != 0, args
        err = capsys.readouterr().err
        assert says in err, (args, err)
        assert state(cluster, shard) == before, f"{args} changed something"

    lead = cluster.leader_of(shard)
    follower = next(p for p in cluster.meta_procs(shard) if p is not lead)
    taken = cluster.cfg.shard(shard).replica(follower.replica)
    # bad addresses
    refused("add-meta-replica", "--shard", "0", "nonsense", says="GRPC_HOST:PORT,RAFT_HOST:PORT")
    refused("add-meta-replica", "--shard", "0", "127.0.0.1:1", says="GRPC_HOST:PORT,RAFT_HOST:PORT")
    refused("add-meta-replica", "--shard", "0", "127.0.0.1:70000,127.0.0.1:5", says="host:port")
    refused("add-meta-replica", "--shard", "0", "127.0.0.1:7,127.0.0.1:7", says="must differ")
    refused("add-meta-replica", "--shard", "0", f"127.0.0.1:9,{taken.raft}", says=f"replica {taken.id}")
    refused("add-meta-replica", "--shard", "0", f"{taken.address},127.0.0.1:9", says=f"replica {taken.id}")
    refused("add-meta-replica", "--shard", "0", "42", says="no replica 42")
    refused("add-meta-replica", "--shard", "7", "127.0.0.1:8,127.0.0.1:9", says="no shard 7")
    refused("remove-meta-replica", "--shard", "0", "no:such:thing", says="not 'no:such:thing'")
    assert admin(cluster, "remove-meta-replica", "--shard", "0", "42") == 0  # nothing to do (safe to repeat)
    assert "nothing to do" in capsys.readouterr().out and state(cluster, shard) == before
    # below the majority: with one replica down, removing a live one leaves 1 answering of 2
    down = follower
    cluster.kill(down)
    other = next(p for p in cluster.meta_procs(shard) if p is not lead and p is not down)
    try:
        until(lambda: _not_live(cluster, lead, raft_of(cluster, down)), 30, "the leader to see the replica down")
        before = state(cluster, shard)
        refused("remove-meta-replica", "--shard", "0", str(other.replica), says="not a majority")
        refused("replace-meta-replica", "--shard", "0", str(other.replica), "127.0.0.1:8,127.0.0.1:9",
                says="not a majority")
    finally:
        cluster.spawn(down)
    cluster.wait_healthy(60)
    until(lambda: not _not_live(cluster, cluster.leader_of(shard), raft_of(cluster, down)), 30,
          "the replica back")
    # a change in flight: a new replica added but never started cannot catch up
    pending = cluster.add_meta_replica(shard, spawn=False)
    pending_raft = raft_of(cluster, pending)
    assert admin(cluster, "add-meta-replica", "--shard", "0", str(pending.replica), "--timeout", "2") != 0
    assert "Is it running?" in capsys.readouterr().err
    assert pending_raft in group_of(cluster, shard)  # it is a member, catching up
    before = state(cluster, shard)
    refused("remove-meta-replica", "--shard", "0", str(other.replica), says="in flight")
    refused("replace-meta-replica", "--shard", "0", str(other.replica), "127.0.0.1:8,127.0.0.1:9", says="in flight")
    refused("add-meta-replica", "--shard", "0", "127.0.0.1:8,127.0.0.1:9", says="in flight")
    # abandoning it: the replica being added may be removed
    assert admin(cluster, "remove-meta-replica", "--shard", "0", str(pending.replica)) == 0
    cluster.remove_meta_replica(pending)
    assert pending_raft not in group_of(cluster, shard) and len(group_of(cluster, shard)) == 3
    assert len(cluster.cluster_map().shards[shard]) == 3 and len(cluster.cfg.shard(shard).replicas) == 3
    # and with nothing in flight, changes go again
    c = cluster.client()
    try:
        c.create(c.mkdir(ROOT_INO, "still").ino, "ok")
    finally:
        c.close()


def _not_live(cluster: LocalCluster, lead: Proc | None, raft: str) -> bool:
    """The leader's Membership says ``raft`` does not answer."""
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg
    from dfs.cli.admin.common import internal

    if lead is None:
        return False

    async def go():
        async with cluster.credentials.channel(lead.address) as ch:
            try:
                return await pbg.MetaServiceStub(ch).Membership(pb.MembershipRequest(),
                                                                metadata=internal(cluster.cfg), timeout=2.0)
            except grpc.aio.AioRpcError:
                return None

    rep = asyncio.run(go())
    if rep is None or rep.status != 0 or not rep.peers:
        return False
    return any(p.raft == raft and not p.live for p in rep.peers)


# ---------------------------------------------------------------------- shards

def test_add_meta_shard_under_load(cluster: LocalCluster) -> None:
    load = Load(cluster, n=2, mkdirs=True)
    try:
        with load:
            load.more(40, "before the new shard")
            before = dict(load.acked)
            # nothing to register yet
            assert admin(cluster, "add-meta-shard") == 0
            assert len(cluster.cluster_map().shards) == 1
            ps = cluster.add_meta_shard()
            assert admin(cluster, "add-meta-shard") == 0
            assert len(cluster.cluster_map().shards) == 2
            assert admin(cluster, "add-meta-shard") == 0  # a repeat: nothing to do
            # the running clients learn the new count from the replies: their new directories
            # start landing on the new shard, without a restart
            until(lambda: any(shard_of(ino) == 1 for (d, _), ino in list(load.acked.items()) if d == ROOT_INO),
                  60, "a directory on the new shard made by a running client")
            load.more(40, "after the new shard")
        load.verify()
        # existing directories stayed where they were
        assert all(shard_of(ino) == 0 for ino in before.values())
        for (d, name), ino in before.items():
            if d == ROOT_INO:
                assert load.client.lookup(ROOT_INO, name).ino == ino
        c = cluster.client()
        try:
            # a new client places by the new count
            homes = {}
            for i in range(40):
                name = f"new-{i}"
                homes[name] = shard_of(c.mkdir(ROOT_INO, name).ino)
                assert homes[name] == dir_home_shard(ROOT_INO, name.encode(), 2)
            assert set(homes.values()) == {0, 1}
            # and everything resolves across the two: files in a directory of the new shard,
            # a rename of a file from shard 0 into it, a subdirectory, a lookup path
            d1 = next(n for n, s in homes.items() if s == 1)
            d1_ino = c.lookup(ROOT_INO, d1).ino
            c.create(d1_ino, "a")
            (src, name), ino = next(((d, n), i) for (d, n), i in load.acked.items() if d == load.dirs[0])
            c.rename(src, name, d1_ino, "moved")
            assert c.lookup(d1_ino, "moved").ino == ino
            sub = c.mkdir(d1_ino, "sub")
            c.create(sub.ino, "deep")
            assert {e.name for e in c.listdir(d1_ino)} == {b"a", b"moved", b"sub"}
            names = {e.name.decode() for e in c.listdir(ROOT_INO)}
            assert set(homes) <= names
            assert c.statfs().files >= len(load.acked)
        finally:
            c.close()
        cluster.wait_all_converged(60)
        for p in ps:
            assert p.alive
        assert_same_contents(cluster, 1, ps[0])
        assert_same_contents(cluster, 0, cluster.meta_procs(0)[0])
        # a restart of an old replica comes back knowing both shards
        p0 = cluster.leader_of(0)
        cluster.restart(p0)
        cluster.wait_healthy(60)
        c = cluster.client()
        try:
            for i in range(10):
                c.mkdir(ROOT_INO, f"after-restart-{i}")
        finally:
            c.close()
    finally:
        load.close()


def test_add_meta_shard_start_on_this_machine(cluster: LocalCluster) -> None:
    """--start appends a shard to a local cluster's file and starts its replicas here."""
    with open(os.path.join(cluster.root, "pids.json"), "w") as f:
        json.dump([], f)
    started: list[int] = []
    try:
        assert admin(cluster, "add-meta-shard", "--start") == 0
        with open(os.path.join(cluster.root, "pids.json")) as f:
            started = [p["pid"] for p in json.load(f)]
        assert len(started) == 3
        cluster.reload()
        assert cluster.cfg.nshards == 2 and len(cluster.cluster_map().shards) == 2
        c = cluster.client()
        try:
            homes = {shard_of(c.mkdir(ROOT_INO, f"s{i}").ino) for i in range(20)}
            assert homes == {0, 1}
        finally:
            c.close()
    finally:
        for pid in started:  # the processes the command started (not ours to reap)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
