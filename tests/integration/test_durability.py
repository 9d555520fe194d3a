"""The cluster file's ``durability`` reaches every Raft group: the mgmt and metadata
replicas of a LocalCluster run their journals with it (each says so when it starts)."""

from __future__ import annotations

import pytest

from dfs.common.ids import ROOT_INO
from dfs.testing.cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.mark.parametrize("durability", ["async", "sync"])
def test_replicas_run_with_the_cluster_files_durability(tmp_path, durability):
    c = LocalCluster(str(tmp_path / "c"), shards=1, replicas=1, mgmt_replicas=1, durability=durability)
    c.start()
    try:
        cl = c.client()
        try:
            assert cl.mkdir(ROOT_INO, "d").ino  # the groups commit
        finally:
            cl.close()
        procs = c.mgmt_procs() + c.meta_procs()
        assert len(procs) == 2
        for p in procs:
            with open(p.log) as f:
                text = f.read()
            assert f"durability {durability}" in text, (p.name, text[-2000:])
    finally:
        c.stop()
