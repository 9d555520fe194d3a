"""The cluster file's data servers, targets and chain options; LocalCluster's data-server config."""

from __future__ import annotations

import sys

import pytest

from dfs.testing.keys import raft_password
from dfs.common.config import ClusterConfig, DataServerConfig, ReplicaAddr, ShardConfig, TargetConfig

R = ReplicaAddr(0, "127.0.0.1:1", "127.0.0.1:2")


def make(data, **kw) -> ClusterConfig:
    return ClusterConfig("c", raft_password(), (R,), (ShardConfig(0, (R,)),), data=tuple(data), **kw)


def test_round_trip(tmp_path):
    c = make([DataServerConfig(0, "h:7200", (TargetConfig(1, "/a"), TargetConfig(2, "/b"))),
              DataServerConfig(1, "h:7201", (TargetConfig(7, "/c"),))], chain_replicas=2, target_timeout=1.5)
    assert ClusterConfig.from_dict(c.to_dict()) == c
    c.save(str(tmp_path / "c.toml"))
    assert ClusterConfig.load(str(tmp_path / "c.toml")) == c
    assert c.replicas_per_chain == 2 and c.data_server(1).targets[0].id == 7


def test_defaults_and_old_files(tmp_path):
    c = make([])
    d = c.to_dict()
    assert "data" not in d
    del d["chain_replicas"], d["target_timeout"]
    old = ClusterConfig.from_dict(d)  # a file written before data servers existed
    assert old == c and old.data == () and old.chain_replicas == 3 and old.target_timeout == 3.0
    assert make([DataServerConfig(0, "h:1", (TargetConfig(1, "/a"),))]).replicas_per_chain == 1  # capped


@pytest.mark.parametrize("data,kw,msg", [
    ([DataServerConfig(0, "h:1", (TargetConfig(1, "/a"),)), DataServerConfig(0, "h:2", (TargetConfig(2, "/b"),))],
     {}, "data server id 0 appears twice"),
    ([DataServerConfig(0, "h:1", (TargetConfig(1, "/a"),)), DataServerConfig(1, "h:2", (TargetConfig(1, "/b"),))],
     {}, "target id 1 appears twice"),
    ([DataServerConfig(0, "h:1", ())], {}, "at least one"),
    ([DataServerConfig(0, "nohostport", (TargetConfig(1, "/a"),))], {}, "host:port"),
    ([DataServerConfig(0, "h:1", (TargetConfig(2**32, "/a"),))], {}, "u32"),
    ([DataServerConfig(0, "h:1", (TargetConfig(1, ""),))], {}, "empty path"),
    ([], {"chain_replicas": 0}, "chain_replicas"),
    ([], {"target_timeout": 0}, "target_timeout"),
])
def test_validation(data, kw, msg):
    with pytest.raises(ValueError, match=msg):
        make(data, **kw)


def test_from_dict_rejects_incomplete_entries():
    d = make([]).to_dict()
    with pytest.raises(ValueError, match="needs id and path"):
        ClusterConfig.from_dict({**d, "data": [{"id": 0, "address": "h:1", "targets": [{"id": 1}]}]})
    with pytest.raises(ValueError, match="needs id and address"):
        ClusterConfig.from_dict({**d, "data": [{"id": 0}]})
    with pytest.raises(ValueError, match="integer"):
        ClusterConfig.from_dict({**d, "data": [{"id": "x", "address": "h:1", "targets": [{"id": 1, "path": "/a"}]}]})


def test_local_cluster_generates_data_servers(tmp_path):
    from dfs.testing.cluster import LocalCluster

    c = LocalCluster(str(tmp_path / "c"), shards=1, replicas=1, mgmt_replicas=1, data_servers=3,
                     targets_per_server=2, chain_replicas=2, target_timeout=2.0)  # not started
    assert [d.id for d in c.cfg.data] == [0, 1, 2]
    assert [t.id for d in c.cfg.data for t in d.targets] == [1, 2, 3, 4, 5, 6]
    assert c.cfg.data[1].targets[1].path == str(tmp_path / "c" / "data1" / "t1")
    assert c.cfg.chain_replicas == 2 and c.cfg.target_timeout == 2.0
    procs = c.data_procs()
    assert [p.name for p in procs] == ["data.0", "data.1", "data.2"]
    assert c._argv(procs[2]) == [sys.executable, "-m", "dfs.data.server", "--config", c.config_path, "--server", "2"]
    again = LocalCluster(str(tmp_path / "c"))  # the same cluster from its file
    assert again.cfg == c.cfg and len(again.data_procs()) == 3
    assert LocalCluster(str(tmp_path / "c"), spawn_data=False).data_procs() == []
    assert LocalCluster(str(tmp_path / "d"), shards=1, replicas=1, mgmt_replicas=1).data_procs() == []
