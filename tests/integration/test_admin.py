"""`dfs admin`: changing a running cluster under load (docs/design/operations.md,
"Changing a running cluster").

Each test runs client threads that keep writing while the operation runs and
records what was acknowledged; at the end every acknowledged write must be
there. Synchronisation is by polling with deadlines only.
"""

from __future__ import annotations

import threading

import pytest

from dfs.cli.admin.rebalance import plan_moves
from dfs.cli.main import main as dfs_main
from dfs.common.ids import ROOT_INO, shard_of
from dfs.testing.cluster import LocalCluster
from dfs.testing.wait import ThreadLoad, until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def admin(cluster: LocalCluster, *args: str) -> int:
    return dfs_main(["admin", "--cluster", cluster.config_path, *args])


class Creators(ThreadLoad):
    """``n`` threads creating files in their own directory under ``parent`` until stopped;
    ``acked[i]`` holds the names whose create was acknowledged."""

    def __init__(self, cluster: LocalCluster, parent: int, n: int = 3) -> None:
        self.cluster = cluster
        self.parent = parent
        super().__init__()
        self.acked: list[list[str]] = [[] for _ in range(n)]
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        c = self.cluster.client()
        try:
            k = 0
            while not self.stop.is_set():
                name = f"t{i}-{k}"
                k += 1
                try:
                    c.create(self.parent, name)
                except OSError as e:  # not acknowledged: the outcome is unknown, it is not counted
                    self.errors.append(e)
                    continue
                self.acked[i].append(name)
        finally:
            c.close()


    def count(self) -> int:
        return sum(len(a) for a in self.acked)


# ---------------------------------------------------------------------- the map's commands

def small_map(servers: int = 4, replicas: int = 3) -> dict:
    from dfs.mgmt.store import build_chains, targets_from_servers

    srv = [(s, f"h:{s}", [s + 1]) for s in range(servers)]
    return {"epoch": 1, "targets": targets_from_servers(srv),
            "chains": build_chains([(s, t) for s, _, t in srv], replicas)}


def test_map_commands_drain_move_remove() -> None:
    from dfs.mgmt.store import COMMANDS, CommandError

    m = small_map()
    chains_of = [c["id"] for c in m["chains"] if 4 in c["members"]]
    changed, _, stuck = COMMANDS["drain"](m, 4)
    assert changed and stuck == [] and m["targets"][4]["state"] == "draining"
    for cid in chains_of:
        c = m["chains"][cid]
        (new,) = c["syncing"]
        assert c["replacing"] == {new: 4} and 4 in c["serving"]
    assert COMMANDS["drain"](m, 4)[0] is False  # a repeat changes nothing
    with pytest.raises(CommandError):  # still serving, chains would drop below 3
        COMMANDS["remove_target"](m, 4, 3, False)
    for cid in chains_of:
        new = m["chains"][cid]["syncing"][0]
        COMMANDS["chain_synced"](m, cid, new, m["chains"][cid]["version"])
        c = m["chains"][cid]
        assert 4 not in c["members"] and new in c["serving"] and len(c["serving"]) == 3 and not c["replacing"]
    COMMANDS["target_down"](m, 4)
    COMMANDS["target_up"](m, 4)
    assert m["targets"][4]["state"] == "draining"
    assert COMMANDS["remove_target"](m, 4, 3, False)[0] and 4 not in m["targets"]
    assert COMMANDS["remove_target"](m, 4, 3, False)[0] is False
    # a new server, a move onto it, one at a time per chain
    COMMANDS["add_server"](m, 9, "h:9", [10])
    assert m["targets"][10]["state"] == "offline"
    with pytest.raises(CommandError):
        COMMANDS["add_server"](m, 8, "h:9", [11])  # another server's address
    COMMANDS["target_up"](m, 10)
    assert m["targets"][10]["state"] == "serving"
    c = m["chains"][0]
    old = c["members"][0]
    assert COMMANDS["move"](m, 0, old, 10)[0]
    assert COMMANDS["move"](m, 0, old, 10)[0] is False
    with pytest.raises(CommandError):
        COMMANDS["move"](m, 0, c["members"][1], 10)
    COMMANDS["chain_synced"](m, 0, 10, c["version"])
    assert old not in c["members"] and c["serving"][-1] == 10
    # with --force: a chain may drop below its count, never to no serving target
    victim = c["members"][0]
    assert COMMANDS["remove_target"](m, victim, 3, True)[0]
    assert all(victim not in ch["members"] for ch in m["chains"])


def test_plan_moves_balances() -> None:
    from dfs.mgmt.server import map_to_pb
    from dfs.common.clustermap import ClusterMap

    m = small_map(3)
    m["targets"][4] = {"server": 3, "address": "h:3", "state": "serving", "total": 0, "free": 0}
    m.update(cluster_id="x", mgmt=[], shards=[])
    moves = plan_moves(ClusterMap.from_pb(map_to_pb(m)))
    assert len(moves) == 2 and all(new == 4 for _, _, new in moves)
    assert len({cid for cid, _, _ in moves}) == 2


@pytest.fixture
def cluster(make_cluster):
    return make_cluster(shards=2, replicas=3, mgmt_replicas=3)


def test_transfer_leader_under_create_load(cluster: LocalCluster, capsys) -> None:
    c = cluster.client()
    try:
        d = c.mkdir(ROOT_INO, "load")
        shard = shard_of(d.ino)
        old = cluster.leader_of(shard)
        assert old is not None
        with Creators(cluster, d.ino) as load:
            until(lambda: load.count() >= 50, 60, "creates acknowledged before the transfer")
            # to a named replica
            to = next(p.replica for p in cluster.meta_procs(shard) if p.replica != old.replica)
            assert admin(cluster, "transfer-leader", "--shard", str(shard), "--to", str(to)) == 0
            lead = cluster.leader_of(shard)
            assert lead is not None and lead.replica == to
            n = load.count()
            until(lambda: load.count() >= n + 50, 60, "creates acknowledged at the new leader")
            # again to the same replica: nothing to do
            assert admin(cluster, "transfer-leader", "--shard", str(shard), "--to", str(to)) == 0
            assert cluster.leader_of(shard).replica == to
            # to any other replica
            assert admin(cluster, "transfer-leader", "--shard", str(shard)) == 0
            assert cluster.leader_of(shard).replica != to
            # the mgmt group too
            assert admin(cluster, "transfer-leader", "--mgmt") == 0
            n = load.count()
            until(lambda: load.count() >= n + 50, 60, "creates acknowledged after the transfers")
        out = capsys.readouterr().out
        assert f"shard {shard}: replica {to}" in out and "mgmt: replica" in out
        names = {e.name.decode() for e in c.listdir(d.ino)}
        acked = [x for a in load.acked for x in a]
        missing = [x for x in acked if x not in names]
        assert not missing, f"{len(missing)} acknowledged creates lost: {missing[:10]}"
        cluster.wait_all_converged(60)
    finally:
        c.close()


def test_transfer_leader_refuses_bad_arguments(cluster: LocalCluster) -> None:
    assert admin(cluster, "transfer-leader") != 0
    assert admin(cluster, "transfer-leader", "--shard", "7") != 0
    assert admin(cluster, "transfer-leader", "--shard", "0", "--to", "9") != 0


# ---------------------------------------------------------------------- data targets

class Writers(ThreadLoad):
    """``n`` threads writing files of 100 KB (chunks on the data servers, not inline) through
    the library, every other write overwriting one of their earlier files; ``acked`` maps
    each path to the content of its last acknowledged write."""

    def __init__(self, cluster: LocalCluster, n: int = 3) -> None:
        import dfs

        self.fs = dfs.connect(cluster.config_path, uid=0, gid=0, groups=())
        super().__init__()
        self.acked: dict[str, bytes] = {}
        self.writes = 0
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]
        for i in range(n):
            self.fs.makedirs(f"/w{i}", exist_ok=True)

    def _run(self, i: int) -> None:
        import random

        rnd = random.Random(i)
        k = 0
        mine: list[str] = []
        while not self.stop.is_set():
            if mine and k % 2:
                path = rnd.choice(mine)
            else:
                path = f"/w{i}/f{k}"
            data = rnd.randbytes(100_000)
            k += 1
            try:
                self.fs.write_bytes(path, data)
            except OSError as e:  # not acknowledged: not counted (a retry may still have written it)
                self.errors.append(e)
                self.acked.pop(path, None)  # its content is unknown now
                continue
            if path not in mine:
                mine.append(path)
            self.acked[path] = data
            self.writes += 1


    def verify(self) -> None:
        bad = [p for p, d in sorted(self.acked.items()) if self.fs.read_bytes(p) != d]
        assert not bad, f"{len(bad)} of {len(self.acked)} acknowledged writes lost: {bad[:10]}"


def chain_listings(cluster: LocalCluster, m) -> dict[tuple[int, int], list]:
    """(chain, serving target) -> the target's chunks of the chain (SYNC_LIST: id, version, digest)."""
    import asyncio

    import msgpack

    from dfs.wire import dataplane as dp
    from dfs.route.data import Pool

    async def go():
        pool = Pool(auth=cluster.server_credentials)  # SYNC_LIST: a server's request
        out = {}
        try:
            for c in m.chains:
                for tid in c.targets:
                    items, cursor = [], None
                    while True:
                        h = dp.Header(dp.SYNC_LIST, chain_id=c.id, target=tid)
                        if cursor is not None:
                            h = h._replace(flags=dp.F_CURSOR, ino=cursor[0], index=cursor[1])
                        rh, rp = await pool.call(m.targets[tid].address, h, b"", 10.0)
                        dp.raise_for(rh, rp)
                        items += [tuple(x) for x in msgpack.unpackb(bytes(rp))]
                        if not rh.flags & dp.F_MORE:
                            break
                        cursor = (rh.ino, rh.index)
                    out[(c.id, tid)] = sorted(items)
        finally:
            await pool.close()
        return out

    return asyncio.run(go())


def assert_fully_replicated(cluster: LocalCluster, replicas: int, gone: set[int]) -> None:
    """Every chain has ``replicas`` serving targets, none of ``gone``, all holding the same chunks
    at the same versions (no writes may be running)."""
    def healthy():
        m = cluster.cluster_map()
        return m if m is not None and all(not c.syncing and len(c.targets) == replicas for c in m.chains) else None

    m = until(healthy, 60, f"every chain with {replicas} serving targets")  # (a heartbeat may lapse under load)
    for c in m.chains:
        assert not gone & set(c.members), f"chain {c.id} still has {gone & set(c.members)}"
    lists = chain_listings(cluster, m)
    total = 0
    for c in m.chains:
        first = lists[(c.id, c.targets[0])]
        total += len(first)
        for tid in c.targets[1:]:
            assert lists[(c.id, tid)] == first, f"chain {c.id}: target {tid} differs from {c.targets[0]}"
    assert total > 0


@pytest.fixture
def data_cluster(make_cluster):
    return make_cluster(shards=1, replicas=3, mgmt_replicas=3, data_servers=4, chain_replicas=3)


def test_drain_and_remove_under_write_load(data_cluster: LocalCluster) -> None:
    cluster = data_cluster
    victim = 3  # data server 3, target 4
    tid = cluster.cfg.data_server(victim).targets[0].id
    m = cluster.cluster_map()
    assert any(tid in c.members for c in m.chains)
    # a target that chains still need is not removed without --force
    assert admin(cluster, "remove-target", str(tid)) != 0
    w = Writers(cluster)
    try:
        with w:
            until(lambda: w.writes >= 20, 60, "writes acknowledged before the drain")
            assert admin(cluster, "drain-server", str(victim), "--timeout", "120") == 0
            m = cluster.cluster_map()
            assert m.targets[tid].state in ("draining", "offline")  # offline only if a heartbeat lapsed
            assert not any(tid in c.members for c in m.chains)
            n = w.writes
            until(lambda: w.writes >= n + 20, 60, "writes acknowledged after the drain")
            # again: nothing left to do
            assert admin(cluster, "drain-target", str(tid), "--timeout", "30") == 0
        cluster.wait_all_converged(60)
        assert_fully_replicated(cluster, 3, {tid})
        # the drained server stops (kill -9) with nothing lost; it leaves the map
        dp = next(p for p in cluster.data_procs() if p.replica == victim)
        cluster.kill(dp)
        assert admin(cluster, "remove-target", str(tid)) == 0
        assert admin(cluster, "remove-target", str(tid)) == 0  # safe to repeat
        assert tid not in cluster.cluster_map().targets
        w.verify()
        assert_fully_replicated(cluster, 3, {tid})
    finally:
        w.fs.close()


def test_add_data_server_and_rebalance_under_write_load(make_cluster) -> None:
    cluster = make_cluster(shards=1, replicas=3, mgmt_replicas=3, data_servers=3, chain_replicas=3)
    w = None
    try:
        w = Writers(cluster)
        with w:
            until(lambda: w.writes >= 20, 60, "writes acknowledged before the new server")
            # a server appended to the cluster file, not running yet: its targets enter the map
            # (offline) and the command says to start it
            p = cluster.add_data_server(spawn=False)
            tid = cluster.cfg.data_server(p.replica).targets[0].id
            assert admin(cluster, "add-data-server", str(p.replica), "--timeout", "1") != 0
            assert cluster.cluster_map().targets[tid].state == "offline"
            cluster.spawn(p)
            assert admin(cluster, "add-data-server", str(p.replica)) == 0
            assert admin(cluster, "add-data-server", str(p.replica)) == 0  # safe to repeat
            assert admin(cluster, "rebalance", "--timeout", "120") == 0
            m = cluster.cluster_map()
            load = {t: sum(1 for c in m.chains if t in c.members) for t in m.targets}
            assert load[tid] >= 2 and max(load.values()) - min(load.values()) <= 1, load
            n = w.writes
            until(lambda: w.writes >= n + 20, 60, "writes acknowledged after the rebalance")
            assert admin(cluster, "rebalance") == 0  # balanced: nothing to move
            assert plan_moves(cluster.cluster_map()) == []
        cluster.wait_all_converged(60)
        assert_fully_replicated(cluster, 3, set())
        w.verify()
    finally:
        if w is not None:
            w.fs.close()


def test_replace_a_failed_data_server_under_write_load(make_cluster) -> None:
    """A data server dies (kill -9) while clients write; the operator adds a new one, drains
    the dead one (its chains re-replicate onto the new one from their surviving members)
    and removes it. Nothing acknowledged is lost and every chain ends with 3 full copies."""
    cluster = make_cluster(shards=1, replicas=3, mgmt_replicas=3, data_servers=3, chain_replicas=3)
    w = None
    try:
        dead = 2
        dead_tid = cluster.cfg.data_server(dead).targets[0].id
        w = Writers(cluster)
        with w:
            until(lambda: w.writes >= 20, 60, "writes acknowledged before the failure")
            cluster.kill(next(p for p in cluster.data_procs() if p.replica == dead))
            until(lambda: cluster.cluster_map().targets[dead_tid].state == "offline", 60,
                  "the dead server's target offline")
            n = w.writes
            until(lambda: w.writes >= n + 10, 60, "writes acknowledged on the degraded chains")
            p = cluster.add_data_server()
            new_tid = cluster.cfg.data_server(p.replica).targets[0].id
            assert admin(cluster, "add-data-server", str(p.replica)) == 0
            assert admin(cluster, "drain-server", str(dead), "--timeout", "120") == 0
            m = cluster.cluster_map()
            assert not any(dead_tid in c.members for c in m.chains)
            assert all(new_tid in c.members for c in m.chains)  # 3 servers left, chains of 3
            assert admin(cluster, "remove-target", str(dead_tid)) == 0
            n = w.writes
            until(lambda: w.writes >= n + 10, 60, "writes acknowledged after the replacement")
        assert_fully_replicated(cluster, 3, {dead_tid})
        w.verify()
    finally:
        if w is not None:
            w.fs.close()
