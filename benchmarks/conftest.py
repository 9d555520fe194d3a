"""Micro benchmarks (pytest-benchmark). Not part of the test run: pytest's
testpaths is ``tests``, and files here are named ``bench_*.py``, which only
this conftest collects. Run them with

    .venv/bin/python -m pytest benchmarks/ -p no:cacheprovider --benchmark-only

(add ``--benchmark-json=out.json`` to keep the figures; see docs/benchmarks.md).

``bench_cluster`` is a real LocalCluster for the benchmarks that need servers
(bench_dataplane's loopback round trips, bench_fuse): started on first use,
once per run, and stopped at the end of the run even when a benchmark fails.
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def bench_cluster(tmp_path_factory):
    """The smallest real cluster: 1 mgmt, 1 shard of 1 replica, 1 data server with
    1 target (chains of 1), client token on. Small on purpose: the benchmarks
    measure one request's path, and every extra process competes for the CPUs."""
    from dfs.testing.cluster import LocalCluster

    c = LocalCluster(str(tmp_path_factory.mktemp("benchcluster")), shards=1, replicas=1, mgmt_replicas=1,
                     data_servers=1, chain_replicas=1, metrics=False)
    try:
        c.start()
        yield c
    finally:
        c.stop()
