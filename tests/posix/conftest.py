"""A dfs mount of the session's data cluster, made and removed with `dfs mount` / `dfs umount`."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

pyfuse3 = pytest.importorskip("pyfuse3")

_n = itertools.count()


def _dfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfs.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)


@pytest.fixture(scope="session")
def dfs_mount(data_cluster, tmp_path_factory):
    """The mount point of the data cluster (one mount for the session)."""
    if not _fuse_usable():
        pytest.skip("no usable /dev/fuse")
    mp = str(tmp_path_factory.mktemp("mnt"))
    log = str(tmp_path_factory.mktemp("mntlog") / "mount.log")
    r = _dfs("mount", mp, "--cluster", data_cluster.config_path, "--log-file", log)
    try:
        assert r.returncode == 0, f"dfs mount failed: {r.stdout}{r.stderr}"
        yield mp
    finally:
        u = _dfs("umount", mp)
        if u.returncode != 0:
            subprocess.run(["fusermount3", "-uz", mp], check=False, capture_output=True)
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                errors = [ln for ln in f if " ERROR " in ln]
            assert not errors, "errors in the mount log:\n" + "".join(errors[-20:])


@pytest.fixture
def mdir(dfs_mount, request):
    """A fresh directory in the mount for one test."""
    d = os.path.join(dfs_mount, f"t{next(_n)}-{request.node.name[:60]}")
    os.mkdir(d)
    return d
