"""dfs.common.config.locate: the one resolver of "which cluster" for the library, the mount
and every command (the precedence of arguments and environment, files and folders,
addresses, client copies of a cluster file)."""

from __future__ import annotations

import pytest

from dfs.testing.keys import raft_password
from dfs.common.config import (
    ClientConfig,
    ClusterConfig,
    ReplicaAddr,
    ShardConfig,
    locate,
)


@pytest.fixture
def files(tmp_path):
    cfg = ClusterConfig("c", raft_password(), (ReplicaAddr(0, "127.0.0.1:7000", "127.0.0.1:7100"),),
                        (ShardConfig(0, (ReplicaAddr(0, "127.0.0.1:7010", "127.0.0.1:7110"),)),))
    d = tmp_path / "data"
    d.mkdir()
    cfg.save(str(d / "cluster.toml"))
    client = tmp_path / "client.toml"
    ClientConfig(("127.0.0.1:8000",)).save(str(client))
    return d, client


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DFS_MGMT", raising=False)
    monkeypatch.delenv("DFS_CLUSTER", raising=False)
    monkeypatch.setattr("dfs.common.config.DEFAULT_DATA", str(tmp_path / "default"))


def test_precedence(files, monkeypatch):
    d, client = files
    assert locate(mgmt="h:1, h:2").mgmt_addresses() == ["h:1", "h:2"]
    assert locate(str(d)).path == str(d / "cluster.toml")             # a folder
    assert locate(str(d / "cluster.toml")).mgmt_addresses() == ["127.0.0.1:7000"]  # a file
    assert locate(data=str(d)).mgmt_addresses() == ["127.0.0.1:7000"]
    assert locate("10.0.0.1:7,10.0.0.2:7").mgmt == ("10.0.0.1:7", "10.0.0.2:7")
    monkeypatch.setenv("DFS_CLUSTER", str(d))
    assert locate().path == str(d / "cluster.toml")
    monkeypatch.setenv("DFS_MGMT", "h:9")
    assert locate().mgmt == ("h:9",)                  # $DFS_MGMT before $DFS_CLUSTER
    assert locate(str(client)).mgmt_addresses() == ["127.0.0.1:8000"]  # arguments before both
    assert locate(mgmt=["h:3"]).mgmt == ("h:3",)


def test_a_client_copy_is_not_a_cluster_file(files):
    d, client = files
    assert locate(str(client)).cluster_config() is None
    assert locate(str(client)).client_config().mgmt == ("127.0.0.1:8000",)
    assert locate(str(d)).cluster_config().cluster_id == "c"


def test_nothing_there(tmp_path):
    where = locate()
    assert where.path is None and where.mgmt == ()
    with pytest.raises(FileNotFoundError, match="no dfs cluster file at .*default"):
        where.mgmt_addresses()
    with pytest.raises(FileNotFoundError):
        locate(str(tmp_path / "nope.toml")).require_file()
