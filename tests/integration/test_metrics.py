"""Every server process's Prometheus endpoint, and `dfs status`.

One LocalCluster (3 mgmt, 2 shards x 3 replicas, 3 data servers); the tests
do metadata operations and file I/O through the library, scrape every
process over HTTP, parse with prometheus_client's parser and check that the
counters moved and the Raft gauges agree with each other. Conditions that
settle asynchronously (one leader per group) are polled with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import dfs
from dfs.testing.keys import raft_password
from dfs.common.config import (
    ClusterConfig,
    DataServerConfig,
    ReplicaAddr,
    ShardConfig,
    TargetConfig,
)
from dfs.testing.metrics import get, scrape, total
from dfs.testing.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters.make(shards=2, replicas=3, mgmt_replicas=3, data_servers=3)


@pytest.fixture(scope="module")
def fs(cluster):
    c = dfs.connect(mgmt=cluster.mgmt_addresses, uid=0, gid=0, groups=())
    yield c
    c.close()


def role(m: dict) -> str:
    return next(r for r in ("leader", "follower", "candidate") if get(m, "dfs_raft_role", role=r) == 1)


# ---------------------------------------------------------------------- endpoints
def test_every_process_has_an_endpoint(cluster):
    assert all(p.metrics for p in cluster.procs)
    assert len({p.metrics for p in cluster.procs}) == len(cluster.procs)
    for p in cluster.procs:
        m = scrape(p)
        info = next(iter(m["dfs_process_info"]))
        assert dict(info)["role"] == p.role and dict(info)["cluster"] == cluster.cfg.cluster_id
        assert "process_resident_memory_bytes" in m


def test_raft_gauges_make_sense(cluster):
    groups = {"mgmt": cluster.mgmt_procs(), **{f"shard {s}": cluster.meta_procs(s) for s in range(2)}}
    for name, procs in groups.items():
        def one_leader(procs=procs):
            ms = [scrape(p) for p in procs]
            leaders = [m for m in ms if role(m) == "leader"]
            terms = {get(m, "dfs_raft_term") for m in ms}
            return ms if len(leaders) == 1 and len(terms) == 1 else None

        ms = until(one_leader, 30, f"{name}: exactly one leader, one term")
        for m in ms:
            assert get(m, "dfs_raft_term") >= 1
            assert get(m, "dfs_raft_commit_index") >= get(m, "dfs_raft_applied_index") \
                >= get(m, "dfs_raft_state_machine_applied_index")
            assert sum(get(m, "dfs_raft_role", role=r) for r in ("leader", "follower", "candidate")) == 1
            assert get(m, "dfs_raft_halted") == 0
            assert len(m["dfs_raft_peer_connected"]) == 2
        leader = next(m for m in ms if role(m) == "leader")
        assert get(leader, "dfs_raft_has_quorum") == 1


def test_meta_op_counters_move(cluster, fs):
    before = [scrape(p) for p in cluster.meta_procs()]
    for i in range(5):
        fs.mkdir(f"/m{i}")
    with pytest.raises(FileNotFoundError):
        fs.stat("/m0/missing")
    assert fs.stat("/m1").st_mode
    after = [scrape(p) for p in cluster.meta_procs()]

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("dfs_meta_requests_total", op="MKDIR", result="ok") >= 5
    assert delta("dfs_meta_requests_total", op="LOOKUP", result="error") >= 1  # ENOENT is an answer too
    assert delta("dfs_meta_request_seconds_count", op="MKDIR") >= 5
    assert delta("dfs_meta_request_seconds_bucket", op="MKDIR", le="+Inf") >= 5
    assert delta("dfs_meta_request_seconds_sum", op="MKDIR") > 0
    # the mkdirs went through Raft on some leader: its commit histogram and command counter moved
    assert delta("dfs_raft_commit_seconds_count") >= 1 and delta("dfs_raft_commands_total") >= 5
    assert total(after, "dfs_meta_clients") >= 1  # this test's client, a moment ago
    assert total(after, "dfs_meta_inodes") >= 6 + 1  # / and /m0../m4 at least (replicas of shard 0 count 3x)


def test_data_bytes_and_targets(cluster, fs):
    before = [scrape(p) for p in cluster.data_procs()]
    data = os.urandom(3 << 20)  # well past inline: chunks on the data servers
    with fs.open("/big", "wb") as f:
        f.write(data)
    with fs.open("/big", "rb") as f:
        assert f.read() == data
    after = [scrape(p) for p in cluster.data_procs()]
    written = total(after, "dfs_data_written_bytes_total") - total(before, "dfs_data_written_bytes_total")
    read = total(after, "dfs_data_read_bytes_total") - total(before, "dfs_data_read_bytes_total")
    # every byte is stored on each of the chain's 3 targets before the write is acknowledged
    assert written >= 3 * len(data)
    assert read >= len(data)
    for op in ("WRITE", "READ"):
        assert total(after, "dfs_data_requests_total", op=op, result="ok") > \
            total(before, "dfs_data_requests_total", op=op, result="ok")
        assert total(after, "dfs_data_request_seconds_count", op=op) > 0
    for p, m in zip(cluster.data_procs(), after):
        for t in cluster.cfg.data_server(p.replica).targets:
            assert get(m, "dfs_data_target_capacity_bytes", target=str(t.id)) > 0
            assert get(m, "dfs_data_target_free_bytes", target=str(t.id)) >= 0
            assert (("target", str(t.id)),) in m["dfs_data_target_chunks"]
        assert get(m, "dfs_data_inflight_requests") >= 0


def test_mgmt_sees_the_chain_table(cluster):
    m = scrape(cluster.mgmt_procs()[0])
    assert get(m, "dfs_mgmt_chains") == 3
    assert get(m, "dfs_mgmt_chains_degraded") == 0
    assert get(m, "dfs_mgmt_targets", state="serving") == 3
    assert get(m, "dfs_mgmt_map_epoch") >= 1
    assert get(m, "dfs_mgmt_requests_total", op="GetClusterMap", result="ok") >= 1


# ---------------------------------------------------------------------- dfs status
def test_dfs_status_json(cluster, fs):
    fs.stat("/")
    r = subprocess.run([sys.executable, "-m", "dfs.cli", "status", "--data", cluster.root, "--json"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(r.stdout)
    assert st["cluster_id"] == cluster.cfg.cluster_id
    assert len(st["shards"]) == 2
    for sh in st["shards"]:
        assert sh["leader"] == until(lambda s=sh["shard"]: cluster.leader_of(s), 30, "a leader").address
        assert sorted(r["role"] for r in sh["replicas"]) == ["follower", "follower", "leader"]
        for r in sh["replicas"]:
            assert r["reachable"] and r["lag"] is not None and r["commit_index"] >= 1
    assert st["mgmt_leader"] in cluster.mgmt_addresses
    assert sorted(m["role"] for m in st["mgmt"]) == ["follower", "follower", "leader"]
    assert sorted(t["id"] for t in st["targets"]) == [1, 2, 3]
    assert all(t["state"] == "serving" for t in st["targets"])
    assert [len(d["targets"]) for d in st["data_servers"]] == [1, 1, 1]
    assert all(d["up"] for d in st["data_servers"])
    assert st["degraded_chains"] == 0 and len(st["chains"]) == 3
    assert st["problems"] == []
    text = subprocess.run([sys.executable, "-m", "dfs.cli", "status", "--cluster", cluster.config_path],
                          capture_output=True, text=True, timeout=60, check=False)
    assert text.returncode == 0 and "healthy" in text.stdout and "shard 1" in text.stdout, text.stdout
    # a client's file (mgmt and credentials, no server list): the map names the rest
    client = subprocess.run([sys.executable, "-m", "dfs.cli", "status", "--cluster",
                             os.path.join(cluster.root, "client.toml"), "--json"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert client.returncode == 0, client.stdout + client.stderr
    assert len(json.loads(client.stdout)["shards"]) == 2


# ---------------------------------------------------------------------- the cluster file
def test_config_round_trips_metrics_addresses(tmp_path):
    r0 = ReplicaAddr(0, "h:1", "h:2", "h:9100")
    r1 = ReplicaAddr(0, "h:3", "h:4")  # no endpoint
    d = DataServerConfig(0, "h:5", (TargetConfig(1, "/t"),), "h:9200")
    c = ClusterConfig("c", raft_password(), (r0,), (ShardConfig(0, (r1,)),), data=(d,))
    dd = c.to_dict()
    assert dd["mgmt"][0]["metrics"] == "h:9100" and "metrics" not in dd["shards"][0]["replicas"][0]
    assert dd["data"][0]["metrics"] == "h:9200"
    assert ClusterConfig.from_dict(dd) == c
    c.save(str(tmp_path / "c.toml"))
    assert ClusterConfig.load(str(tmp_path / "c.toml")) == c
    with pytest.raises(ValueError, match="host:port"):
        ClusterConfig("c", raft_password(), (ReplicaAddr(0, "h:1", "h:2", "nohostport"),), (ShardConfig(0, (r1,)),))
    with pytest.raises(ValueError, match="also"):
        ClusterConfig("c", raft_password(), (r0,), (ShardConfig(0, (ReplicaAddr(0, "h:3", "h:4", "h:9100"),)),))


def test_local_cluster_config_has_the_endpoints(cluster):
    cfg = ClusterConfig.load(cluster.config_path)
    assert cfg == cluster.cfg
    addrs = [m.metrics for m in cfg.mgmt] + [r.metrics for s in cfg.shards for r in s.replicas] \
        + [d.metrics for d in cfg.data]
    assert sorted(addrs) == sorted(p.metrics for p in cluster.procs)


# ---------------------------------------------------------------------- structured logs
def test_logs_are_json_lines_with_operation_ids(tmp_path, monkeypatch, make_cluster):
    """Every server process writes one JSON object per line to its own log file, naming
    itself; a request's lines carry its id (here every request is logged as slow)."""
    monkeypatch.setenv("DFS_SLOW_OP_MS", "0")
    c = make_cluster(shards=1, replicas=3, mgmt_replicas=1, data_servers=1, chain_replicas=1)
    with dfs.connect(mgmt=c.mgmt_addresses, uid=0, gid=0, groups=()) as fs:
        fs.write_bytes("/logged", b"x" * 1000)
        assert fs.read_bytes("/logged") == b"x" * 1000
    c.stop()
    ops = set()
    for p in c.procs:
        with open(p.log) as f:
            lines = [json.loads(ln) for ln in f if ln.strip()]
        assert lines, f"{p.name} wrote nothing"
        kind = {"mgmt": "mgmt", "meta": "meta", "data": "data"}[p.role]
        assert all(ln["proc"].startswith(kind + "[") and ln["level"] and ln["time"] for ln in lines), p.name
        ops |= {ln["op"] for ln in lines if ln["message"].startswith("slow CREATE") and "op" in ln}
    assert ops and all(len(op) == 32 for op in ops)  # 16-byte request ids, in hex
