"""The kernel's FUSE requests per operation through a dfs mount (``dfs.testing.fusecount``).

A counting mount of the session's data cluster (the production ``run_mount``
with every handler counted) answers how many requests each system call cost:
a create and close, a stat, an unlink, a listing by names (``os.listdir``)
and with attributes (``ls -l``), and the size of the requests of buffered
sequential writes and reads. The bounds are what the mount costs today, so
that a change that adds requests fails here (docs/benchmarks.md has the
figures). A path walk may add one revalidation (a LOOKUP or GETATTR) per
component whose kernel cache timed out: the bounds allow for it, never more.
"""

from __future__ import annotations

import os
import subprocess

import pytest

import dfs
from dfs.fuse.mount import DEFAULT_READ_AHEAD_KB, mount_device
from dfs.testing.fusecount import CountingMount
from dfs.testing.wait import until

pytestmark = pytest.mark.timeout(600)

MIB = 1 << 20
WALK = ("lookup", "getattr")  # what revalidating a path component costs


@pytest.fixture(scope="module")
def counted(data_cluster, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the read-ahead and request sizes need a root mount")
    mp = str(tmp_path_factory.mktemp("countmnt"))
    log = str(tmp_path_factory.mktemp("countlog") / "mount.log")
    with CountingMount(mp, data_cluster.config_path, log_file=log) as m:
        yield m


def _cost(m: CountingMount, fn) -> dict:
    before = m.counts()
    fn()
    return dict(m.counts() - before)


def _walk(c: dict) -> int:
    return sum(c.get(k, 0) for k in WALK)


def test_requests_per_create_stat_unlink(counted, request):
    d = os.path.join(counted.mountpoint, f"ops-{request.node.name}")
    os.mkdir(d)
    os.listdir(d)
    f = os.path.join(d, "f")

    def create():
        os.close(os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))

    c = _cost(counted, create)
    # a negative lookup of the name, CREATE (create-open: one request), FLUSH and RELEASE at close
    assert (c.get("create"), c.get("flush"), c.get("release")) == (1, 1, 1), c
    assert c.get("lookup", 0) <= 1 + 2 and _walk(c) <= 3 and sum(c.values()) <= 3 + 3, c
    c = _cost(counted, lambda: os.stat(f))
    assert _walk(c) <= 2 and sum(c.values()) == _walk(c), c  # the file's attributes, maybe its directory's
    c = _cost(counted, lambda: os.unlink(f))
    assert c.get("unlink") == 1 and c.get("forget", 0) <= 1 and _walk(c) <= 2, c
    assert sum(c.values()) <= 1 + 1 + 2, c


def test_a_names_only_listing_costs_no_more_than_ls_l(counted, data_cluster, request):
    """One READDIRPLUS per page of entries, whether the caller wants names or attributes
    (pyfuse3 asks the kernel for READDIRPLUS always); ``ls -l`` then finds every entry's
    attributes in the kernel's cache: no LOOKUP or GETATTR per entry."""
    n = 1500
    name = f"ls-{request.node.name}"
    with dfs.connect(data_cluster.config_path, uid=0, gid=0, groups=()) as fs:
        fs.mkdir(f"/{name}")
        for i in range(n):
            fs.write_bytes(f"/{name}/f{i}", b"")
    d = os.path.join(counted.mountpoint, name)
    names = _cost(counted, lambda: os.listdir(d))
    long = _cost(counted, lambda: subprocess.run(["ls", "-l", d], check=True, capture_output=True))
    for c in (names, long):
        assert c.get("opendir") == 1 and c.get("releasedir") == 1, c
        assert 1 <= c.get("readdir", 0) <= n // 500 + 3, c  # pages of hundreds of entries
        assert _walk(c) <= 3, c  # the directory itself: never per entry
    assert sum(names.values()) <= sum(v for k, v in long.items() if k != "getxattr"), (names, long)


def test_buffered_sequential_io_in_1_mib_requests(counted, data_cluster, request):
    """Writes arrive in 1 MiB requests (libfuse negotiates max_pages 256); cold buffered reads
    too once the mount has raised its read-ahead after INIT (before, the kernel's INIT reply
    put it back to 128 KiB, and reads came in 128 KiB requests)."""
    dev = mount_device(counted.mountpoint)
    ra = f"/sys/class/bdi/{dev}/read_ahead_kb"
    until(lambda: open(ra).read().strip() == str(DEFAULT_READ_AHEAD_KB), 30, "the mount's read-ahead raised")
    path = os.path.join(counted.mountpoint, f"seq-{request.node.name}")
    data = os.urandom(MIB)

    def write():
        with open(path, "wb", buffering=0) as f:
            for _ in range(16):
                f.write(data)

    c = _cost(counted, write)
    sizes = {k: v for k, v in c.items() if k.startswith("write_bytes:")}
    assert sizes == {f"write_bytes:{MIB}": 16}, c
    # read what another client wrote: nothing of it is in this mount's page cache
    name = f"/cold-{request.node.name}"
    with dfs.connect(data_cluster.config_path, uid=0, gid=0, groups=()) as fs:
        fs.write_bytes(name, data * 16)

    def read():
        with open(counted.mountpoint + name, "rb", buffering=0) as f:
            while f.read(MIB):
                pass

    c = _cost(counted, read)
    sizes = {k: v for k, v in c.items() if k.startswith("read_bytes:")}
    assert sizes == {f"read_bytes:{MIB}": 16}, c
