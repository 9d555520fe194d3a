"""On a real cluster: no operation but a directory moving to another parent reaches
shard 0 or mgmt (issue 17; the in-process version, op by op, is
tests/unit/meta/test_shard_zero.py).

One LocalCluster (1 mgmt replica, 3 shards x 1 replica, 1 data server). The
library does metadata operations and file I/O in two directories placed off
shard 0. Counted: every request shard 0's replica answered (clients' and other
shards', from its ``dfs_meta_requests_total``), mgmt's requests other than the
periodic ones (servers' map polls and heartbeats), and the client's own
cluster-map fetches. No timing: counters before and after, with the client's
caches kept longer than the test (paths resolved once).
"""

from __future__ import annotations

import pytest

import dfs
from dfs.common.ids import ROOT_INO, dir_home_shard
from dfs.testing.metrics import scrape

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NSHARDS = 3
PERIODIC = {"GetClusterMap", "Heartbeat"}  # what servers send mgmt on their own schedule


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters.make(shards=NSHARDS, replicas=1, mgmt_replicas=1, data_servers=1, chain_replicas=1)


def off_zero(parent: int, prefix: str, avoid=()) -> str:
    return next(f"{prefix}{i}" for i in range(1000)
                if dir_home_shard(parent, f"{prefix}{i}".encode(), NSHARDS) not in (0, *avoid))


def shard0_requests(cluster) -> dict:
    """op -> requests shard 0's replicas answered."""
    out: dict = {}
    for p in cluster.meta_procs(0):
        for k, v in scrape(p).get("dfs_meta_requests_total", {}).items():
            op = dict(k)["op"]
            out[op] = out.get(op, 0) + v
    return out


def mgmt_requests(cluster) -> float:
    ms = [scrape(p) for p in cluster.mgmt_procs()]
    return sum(v for m in ms for k, v in m.get("dfs_mgmt_requests_total", {}).items()
               if dict(k)["op"] not in PERIODIC)


def test_only_a_directory_moving_to_another_parent_reaches_shard_zero_or_mgmt(cluster):
    # caches kept longer than the test runs: the counts do not depend on the machine's speed
    # (with the default 1 s, a path walk revalidates the root and its names on shard 0 once a
    # second per client: a rate per client, not per operation; docs/benchmarks.md, issue 17)
    c = dfs.connect(mgmt=cluster.mgmt_addresses, uid=0, gid=0, groups=(), ttl=3600)
    try:
        t = c.meta.t
        fetches = []
        refresh = t.refresh_map

        async def counted_refresh(*a, **kw):
            fetches.append(1)
            return await refresh(*a, **kw)

        t.refresh_map = counted_refresh
        c.core.data._refresh = counted_refresh  # the data path's map comes from the same transport
        a = off_zero(ROOT_INO, "a")
        ia_shard = dir_home_shard(ROOT_INO, a.encode(), NSHARDS)
        b = off_zero(ROOT_INO, "b", (ia_shard,))
        c.mkdir(f"/{a}")
        c.mkdir(f"/{b}")
        ia, ib = c.stat(f"/{a}").st_ino, c.stat(f"/{b}").st_ino
        sub = off_zero(ia, "s")
        sub2 = off_zero(ib, "t")
        c.mkdir(f"/{b}/{sub2}")
        c.sync()
        s0, m0 = shard0_requests(cluster), mgmt_requests(cluster)

        c.mkdir(f"/{a}/{sub}")
        for i in range(5):
            c.write_bytes(f"/{a}/f{i}", b"x" * 100)
            c.write_bytes(f"/{a}/big{i}", b"y" * (256 << 10))  # on the data server
        assert c.read_bytes(f"/{a}/big0") == b"y" * (256 << 10)
        assert c.read_bytes(f"/{a}/f1") == b"x" * 100
        c.stat(f"/{a}/f2")
        assert len(c.listdir(f"/{a}")) == 11
        c.chmod(f"/{a}/f0", 0o600)
        c.utime(f"/{a}/f0", (1, 2))
        c.symlink("f0", f"/{a}/l")
        c.link(f"/{a}/f1", f"/{b}/h")
        c.rename(f"/{a}/f2", f"/{a}/f2r")  # same directory
        c.rename(f"/{a}/f3", f"/{b}/f3")  # another directory, another shard
        c.rename(f"/{a}/{sub}", f"/{a}/{sub}r")  # a directory, same parent
        c.remove(f"/{a}/f4")
        c.remove(f"/{a}/big4")
        c.remove(f"/{b}/f3")
        c.rmdir(f"/{a}/{sub}r")
        c.sync()
        assert shard0_requests(cluster) == s0
        assert mgmt_requests(cluster) == m0
        assert fetches == []

        # the exception: a directory moving to another parent takes the ordering point on shard 0
        c.rename(f"/{b}/{sub2}", f"/{a}/{sub2}")
        s1 = shard0_requests(cluster)
        assert s1.get("RENAMEEPOCH", 0) > s0.get("RENAMEEPOCH", 0), (s0, s1)
        assert mgmt_requests(cluster) == m0 and fetches == []
    finally:
        c.close()
