"""The cluster-map state machine: chain table, target transitions, epochs, determinism."""

from __future__ import annotations

import msgpack
import pytest

from dfs.common.config import (
    ClusterConfig,
)
from dfs.mgmt.server import map_to_pb
from dfs.mgmt.store import MgmtStore, build_chains, order_targets
from dfs.common.clustermap import ClusterMap

from .stores import Mgmt, cfg


def server_of(c: ClusterConfig) -> dict[int, int]:
    return {t.id: d.id for d in c.data for t in d.targets}


# ---------------------------------------------------------------- chain table

@pytest.mark.parametrize("servers,per,replicas", [(3, 1, 3), (3, 2, 3), (4, 3, 3), (5, 2, 2), (2, 4, 3), (1, 3, 3)])
def test_chain_table_members_on_distinct_servers(servers, per, replicas):
    c = cfg(servers, per, replicas)
    m = Mgmt(c).map
    owner = server_of(c)
    n = servers * per
    r = min(replicas, servers)
    assert len(m["chains"]) == n
    assert [ch["id"] for ch in m["chains"]] == list(range(n))
    for ch in m["chains"]:
        assert len(ch["members"]) == r
        assert len({owner[t] for t in ch["members"]}) == r, ch  # distinct servers
        assert ch["serving"] == ch["members"] and ch["syncing"] == [] and ch["version"] == 1
    # every target heads exactly one chain and sits in exactly r chains
    assert sorted(ch["members"][0] for ch in m["chains"]) == sorted(owner)
    for t in owner:
        assert sum(t in ch["members"] for ch in m["chains"]) == r
    assert all(t["state"] == "serving" for t in m["targets"].values())
    assert m["targets"][1]["address"] == "127.0.0.1:9000"


def test_order_targets_round_robin():
    assert order_targets([(1, [5, 4]), (0, [1, 2, 3])]) == [1, 4, 2, 5, 3]
    assert build_chains([], 3) == []
    assert [c["members"] for c in build_chains([(0, [1]), (1, [2])], 3)] == [[1, 2], [2, 1]]


def test_map_to_pb_and_back():
    mg = Mgmt(cfg(3, 2))
    mg.do("target_down", 1)
    cm = ClusterMap.from_pb(map_to_pb(mg.map))
    assert cm.epoch == 2 and len(cm.chains) == 6 and set(cm.targets) == set(range(1, 7))
    assert cm.targets[1].state == "offline" and cm.targets[1].address == "127.0.0.1:9000"
    for ch, raw in zip(cm.chains, mg.map["chains"]):
        assert ch.targets == tuple(raw["serving"]) and ch.syncing == tuple(raw["syncing"])
        assert ch.members == tuple(raw["members"]) and ch.version == raw["version"]


def test_no_data_servers_empty_tables():
    m = Mgmt(cfg(0, 0)).map
    assert m["targets"] == {} and m["chains"] == []


# ---------------------------------------------------------------- transitions

def test_target_down_up_synced():
    mg = Mgmt(cfg(3, 2))
    tid = 3
    before = {c["id"]: c["version"] for c in mg.chains_of(tid)}
    assert mg.do("target_down", tid) == [0, 2]
    assert mg.state(tid) == "offline"
    for c in mg.chains_of(tid):
        assert tid not in c["serving"] and tid not in c["syncing"]
        assert c["version"] == before[c["id"]] + 1
        assert c["serving"] == [t for t in c["members"] if t != tid]  # order kept
    untouched = [c for c in mg.map["chains"] if tid not in c["members"]]
    assert all(c["version"] == 1 for c in untouched)
    assert mg.do("target_down", tid) == [0, 2]  # a repeat changes nothing, no new epoch

    assert mg.do("target_up", tid) == [0, 3]
    assert mg.state(tid) == "syncing"
    for c in mg.chains_of(tid):
        assert c["syncing"] == [tid] and c["version"] == before[c["id"]] + 2
    assert mg.do("target_up", tid) == [0, 3]  # not offline: no-op

    chains = mg.chains_of(tid)
    for k, c in enumerate(chains):
        assert mg.do("chain_synced", c["id"], tid, c["version"]) == [0, 4 + k]
        now = mg.chain(c["id"])
        assert now["serving"][-1] == tid and now["syncing"] == [] and now["version"] == before[c["id"]] + 3
        assert mg.state(tid) == ("serving" if k == len(chains) - 1 else "syncing")
    epoch = mg.map["epoch"]
    assert mg.do("chain_synced", chains[0]["id"], tid, chains[0]["version"]) == [0, epoch]  # a repeat


def test_synced_report_of_another_chain_version_is_refused():
    """A resync that ran while the chain was at one version may have missed writes made
    at another (the target left and came back, another member left): its report is ignored."""
    mg = Mgmt(cfg(3, 1))
    mg.do("target_down", 2)
    mg.do("target_up", 2)
    c = mg.chains_of(2)[0]
    v = c["version"]
    mg.do("target_down", 2)   # a heartbeat lapse mid-pass: out...
    mg.do("target_up", 2)     # ...and back in at v + 2
    e = mg.map["epoch"]
    for stale in (v, v + 1, v + 3):
        assert mg.do("chain_synced", c["id"], 2, stale) == [0, e]
        assert 2 in mg.chain(c["id"])["syncing"]
    assert mg.do("chain_synced", c["id"], 2, v + 2) == [0, e + 1]
    assert 2 in mg.chain(c["id"])["serving"]


def test_syncing_target_going_down_leaves_syncing():
    mg = Mgmt(cfg(3, 1))
    mg.do("target_down", 2)
    mg.do("target_up", 2)
    mg.do("target_down", 2)
    assert mg.state(2) == "offline"
    assert all(2 not in c["syncing"] and 2 not in c["serving"] for c in mg.map["chains"])
    # a late synced report of the old resync changes nothing
    e = mg.map["epoch"]
    c = mg.chains_of(2)[0]
    assert mg.do("chain_synced", c["id"], 2, c["version"] - 2) == [0, e]


def test_last_serving_member_is_never_removed():
    mg = Mgmt(cfg(3, 1))  # 3 chains of all 3 targets
    mg.do("target_down", 1)
    mg.do("target_down", 2)
    e = mg.map["epoch"]
    assert mg.do("target_down", 3)[1] == e + 1  # the state changes: offline
    assert mg.state(3) == "offline"
    for c in mg.map["chains"]:
        assert c["serving"] == [3]  # still listed: clients see errors, not an empty chain
    # it comes back: it never left its chains, so it serves at once
    mg.do("target_up", 3)
    assert mg.state(3) == "serving"
    mg.do("target_up", 1)
    assert mg.state(1) == "syncing"
    assert all(c["serving"] == [3] and c["syncing"] == [1] for c in mg.map["chains"])
    for c in mg.map["chains"]:
        mg.do("chain_synced", c["id"], 1, c["version"])
    assert mg.state(1) == "serving"
    assert all(c["serving"] == [3, 1] for c in mg.map["chains"])


def test_capacity_does_not_bump_epoch():
    mg = Mgmt(cfg(2, 1))
    assert mg.do("capacity", 1, 1000, 400) == [0, 1]
    assert mg.map["targets"][1]["total"] == 1000 and mg.map["targets"][1]["free"] == 400


def test_bad_commands_fail_without_trace():
    mg = Mgmt(cfg(2, 1))
    m = mg.map
    assert mg.do("target_down", 99)[0] == 22
    assert mg.do("chain_synced", 7, 1, 1)[0] == 22
    assert mg.do("chain_synced", 0, 1)[0] == 22  # no version
    assert mg.do("nonsense", 1)[0] == 22
    assert mg.map == m


def test_set_keeps_targets_and_chains():
    mg = Mgmt(cfg(3, 1))
    m = mg.map
    new = {k: m[k] for k in ("cluster_id", "mgmt", "shards")}
    assert mg.do("set", new) == [0, 2]
    assert mg.map["chains"] == m["chains"] and mg.map["targets"] == m["targets"]
    assert mg.do("init", new) == [0, 2]  # init once only


def test_same_commands_same_map_on_two_stores(tmp_path):
    c = cfg(4, 2)
    a = Mgmt(c)
    for cmd in [("target_down", 1), ("target_down", 5), ("capacity", 2, 10, 5), ("target_up", 1),
                ("chain_synced", 0, 1, 3), ("target_down", 2), ("target_up", 5), ("chain_synced", 3, 5, 3),
                ("target_down", 99)]:
        a.do(*cmd)
    b = MgmtStore(str(tmp_path / "b"))
    # the same commands, grouped differently into entries
    b.apply(1, a.log[:3])
    b.apply(2, a.log[3:])
    assert b.cluster_map() == a.map
    assert msgpack.packb(b.cluster_map()) == msgpack.packb(a.map)
    b.kv.close()
