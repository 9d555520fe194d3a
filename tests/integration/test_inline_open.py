"""Small files inline, opened with their bytes (no handle), against a real cluster: the
`dfs layout` command that turns the policy on, and the mount's opens of such files (an
unlink under an open reader, a writer of a file read-held without a handle)."""

from __future__ import annotations

import os

import pytest

import dfs
from dfs.testing.mount import dfs_cli as _dfs
from dfs.testing.mount import mounted

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters.make("inlineopen", shards=1, replicas=3, mgmt_replicas=1, data_servers=3,
                                chain_replicas=3)


def test_the_layout_command_shows_and_changes_a_directory_policy(cluster):
    with dfs.connect(cluster.config_path) as c:
        c.makedirs("/lay/small")
        c.write_bytes("/lay/file", b"x")
    r = _dfs("layout", "/lay/small", "--inline", "--chunk-size", "1M", "--cluster", cluster.config_path)
    assert r.returncode == 0 and "chunk_size=1048576" in r.stdout and "inline=on" in r.stdout, r.stdout + r.stderr
    r = _dfs("layout", "/lay/small", "--cluster", cluster.config_path)
    assert "inline=on" in r.stdout and "stripe=4" in r.stdout, r.stdout + r.stderr
    for bad, says in ((["/lay/nope", "--stripe", "2"], "No such file"), (["/lay/file", "--inline"], "Not a directory"),
                      (["/lay/small", "--chunk-size", "1000"], "power of two"),
                      (["/lay/small", "--chunk-size", "huge"], "not a size")):
        r = _dfs("layout", *bad, "--cluster", cluster.config_path)
        assert r.returncode != 0 and says in r.stdout + r.stderr, (bad, r.stdout + r.stderr)
    with dfs.connect(cluster.config_path) as c:
        assert c.layout("/lay/small").inline and c.layout("/lay/small").layout.chunk_size == 1 << 20
        c.write_bytes("/lay/small/f", b"hello")
        assert c.getattr("/lay/small/f").is_inline() and c.read_bytes("/lay/small/f") == b"hello"


def test_through_the_mount(cluster, tmp_path):
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/fuse")
    with dfs.connect(cluster.config_path) as c:
        c.makedirs("/mnt/small")
        c.set_layout("/mnt/small", inline=True)
        for i in range(20):
            c.write_bytes(f"/mnt/small/f{i}", bytes([i]) * (100 * i + 1))
    mp = str(tmp_path / "m")
    os.mkdir(mp)
    with mounted(cluster.config_path, mp, str(tmp_path / "mount.log")):
        d = f"{mp}/mnt/small"
        for i in range(20):
            with open(f"{d}/f{i}", "rb") as f:
                assert f.read() == bytes([i]) * (100 * i + 1)
        with open(f"{d}/f3", "rb") as f:
            os.unlink(f"{d}/f3")  # the reader holds all of the file
            assert f.read() == bytes([3]) * 301
        r_fd = os.open(f"{d}/f4", os.O_RDONLY)
        w_fd = os.open(f"{d}/f4", os.O_RDWR)  # a write open of a file read-held without a handle
        try:
            os.unlink(f"{d}/f4")
            os.pwrite(w_fd, b"XY", 0)
            os.fsync(w_fd)
            assert os.pread(w_fd, 4, 0) == b"XY\x04\x04"
        finally:
            os.close(w_fd)
            os.close(r_fd)
        assert sorted(os.listdir(d)) == sorted(f"f{i}" for i in range(20) if i not in (3, 4))
