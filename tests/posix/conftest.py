"""A dfs mount of the session's data cluster, made and removed with `dfs mount` / `dfs umount`."""

from __future__ import annotations

import itertools
import os

import pytest

from dfs.testing.mount import mounted

pyfuse3 = pytest.importorskip("pyfuse3")

_n = itertools.count()


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)


@pytest.fixture(scope="session")
def dfs_mount(data_cluster, tmp_path_factory):
    """The mount point of the data cluster (one mount for the session)."""
    if not _fuse_usable():
        pytest.skip("no usable /dev/fuse")
    mp = str(tmp_path_factory.mktemp("mnt"))
    log = str(tmp_path_factory.mktemp("mntlog") / "mount.log")
    with mounted(data_cluster.config_path, mp, log):
        yield mp


@pytest.fixture
def mdir(dfs_mount, request):
    """A fresh directory in the mount for one test."""
    d = os.path.join(dfs_mount, f"t{next(_n)}-{request.node.name[:60]}")
    os.mkdir(d)
    return d
