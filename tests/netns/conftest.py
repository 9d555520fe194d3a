"""The fixtures of the tests on a 3-host deployment in network namespaces (dfs.testing.netns):
the switch the hosts hang off (``fabric``) and the cluster on it (``cluster``). A module here
is skipped where namespaces cannot be made (not root, no ip(8), ...).

Everything is torn down in the fixtures' finalizers, also when a test fails: the processes
the cluster started (by PID), then the namespaces (their veths and the bridge go with them).
"""

from __future__ import annotations

import pytest

from dfs.testing.netns import Fabric, NetnsCluster, unavailable


@pytest.fixture(scope="module", autouse=True)
def _needs_netns():
    why = unavailable()
    if why:
        pytest.skip(why)


@pytest.fixture
def fabric():
    f = Fabric()
    try:
        yield f
    finally:
        f.close()


@pytest.fixture
def cluster(fabric, tmp_path):
    """3 server hosts (10.213.0.11-13) and a client host (10.213.0.100); 3 mgmt, 2 shards x 3, 3 data servers."""
    hosts = [fabric.add_host(f"h{i}", 11 + i) for i in range(3)]
    client = fabric.add_host("c", 100)
    c = NetnsCluster(str(tmp_path / "cluster"), hosts, client, shards=2, replicas=3, mgmt_replicas=3,
                     data_servers=3)
    try:
        c.start(timeout=120)
        yield c
    finally:
        c.stop()
