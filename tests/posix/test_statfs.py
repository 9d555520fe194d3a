"""`df` on dfs: the space is the data servers' (their file systems, from the heartbeats mgmt
keeps in the cluster map, divided by the copies a chain keeps), the inode counts are the
shards', through the library and through a mount."""

from __future__ import annotations

import os

import pytest

import dfs
from dfs.testing.wait import until

pyfuse3 = pytest.importorskip("pyfuse3")

NOMINAL = 1 << 50  # what a client says before any target reported its space


def test_df_shows_the_data_servers_space(data_cluster, dfs_mount):
    cfg = data_cluster.cfg
    paths = [t.path for d in cfg.data for t in d.targets]
    devices = {os.stat(p).st_dev for p in paths}
    assert len(devices) == 1, "the test cluster keeps every target on one file system"
    disk = os.statvfs(paths[0])
    copies = min(cfg.chain_replicas, len(cfg.data))
    want_total = len(paths) * disk.f_blocks * disk.f_frsize // copies

    with dfs.connect(data_cluster.config_path) as c:
        s = until(lambda: (v := c.statfs("/")) and v.f_blocks * v.f_frsize < NOMINAL and v,
                  60, "the targets' space in statfs")
        assert s.f_blocks == want_total // s.f_frsize
        assert 0 < s.f_bavail <= s.f_blocks
        assert s.f_files > s.f_ffree > 0

    m = until(lambda: (v := os.statvfs(dfs_mount)) and v.f_blocks * v.f_frsize < NOMINAL and v,
              60, "the targets' space through the mount")
    assert m.f_blocks == want_total // m.f_frsize
    assert 0 < m.f_bavail <= m.f_blocks
