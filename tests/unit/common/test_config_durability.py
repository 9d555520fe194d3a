"""The cluster file's ``durability`` ("sync" by default, "async" for scratch data):
validated, round-tripped, absent from older files, and LocalCluster's option."""

from __future__ import annotations

import pytest

from dfs.testing.keys import raft_password
from dfs.common.config import DURABILITY, ClusterConfig, ReplicaAddr, ShardConfig

R = ReplicaAddr(0, "127.0.0.1:1", "127.0.0.1:2")


def make(**kw) -> ClusterConfig:
    return ClusterConfig("c", raft_password(), (R,), (ShardConfig(0, (R,)),), **kw)


def test_sync_by_default_and_in_older_files():
    c = make()
    assert c.durability == "sync" and DURABILITY == ("sync", "async")
    d = c.to_dict()
    assert d["durability"] == "sync"
    del d["durability"]  # a file from before the setting
    assert ClusterConfig.from_dict(d).durability == "sync"


def test_async_round_trips(tmp_path):
    c = make(durability="async")
    assert ClusterConfig.from_dict(c.to_dict()) == c
    c.save(str(tmp_path / "c.toml"))
    assert 'durability = "async"' in (tmp_path / "c.toml").read_text()
    assert ClusterConfig.load(str(tmp_path / "c.toml")).durability == "async"


@pytest.mark.parametrize("bad", ["fsync", "SYNC", "", True, 1, None])
def test_anything_else_is_refused(bad):
    with pytest.raises(ValueError, match="durability"):
        make(durability=bad)
    with pytest.raises(ValueError, match="durability"):
        ClusterConfig.from_dict({**make().to_dict(), "durability": bad})


def test_local_cluster_option(tmp_path):
    from dfs.testing.cluster import LocalCluster

    c = LocalCluster(str(tmp_path / "a"), shards=1, replicas=1, mgmt_replicas=1, durability="async")  # not started
    assert c.cfg.durability == "async"
    assert LocalCluster(str(tmp_path / "a")).cfg.durability == "async"  # the same cluster from its file
    assert LocalCluster(str(tmp_path / "b"), shards=1, replicas=1, mgmt_replicas=1).cfg.durability == "sync"
