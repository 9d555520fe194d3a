"""`dfs admin`: changing a running cluster under load (docs/design/operations.md,
"Changing a running cluster").

Each test runs client threads that keep writing while the operation runs and
records what was acknowledged; at the end every acknowledged write must be
there. Synchronisation is by polling with deadlines only.
"""

from __future__ import annotations

import threading
import time

import pytest

from dfs.cli.main import main as dfs_main
from dfs.common.ids import ROOT_INO, shard_of
from dfs.testing.cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def until(cond, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # polling interval of a deadline-bounded wait, not synchronisation


def admin(cluster: LocalCluster, *args: str) -> int:
    return dfs_main(["admin", "--cluster", cluster.config_path, *args])


class Creators:
    """``n`` threads creating files in their own directory under ``parent`` until stopped;
    ``acked[i]`` holds the names whose create was acknowledged."""

    def __init__(self, cluster: LocalCluster, parent: int, n: int = 3) -> None:
        self.cluster = cluster
        self.parent = parent
        self.stop = threading.Event()
        self.acked: list[list[str]] = [[] for _ in range(n)]
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, i: int) -> None:
        c = self.cluster.client()
        try:
            k = 0
            while not self.stop.is_set():
                name = f"t{i}-{k}"
                k += 1
                try:
                    c.create(self.parent, name)
                except OSError as e:  # not acknowledged: the outcome is unknown, it is not counted
                    self.errors.append(e)
                    continue
                self.acked[i].append(name)
        finally:
            c.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def count(self) -> int:
        return sum(len(a) for a in self.acked)


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(str(tmp_path / "c"), shards=2, replicas=3, mgmt_replicas=3)
    c.start(timeout=90)
    try:
        yield c
    finally:
        c.stop()


def test_transfer_leader_under_create_load(cluster: LocalCluster, capsys) -> None:
    c = cluster.client()
    try:
        d = c.mkdir(ROOT_INO, "load")
        shard = shard_of(d.ino)
        old = cluster.leader_of(shard)
        assert old is not None
        with Creators(cluster, d.ino) as load:
            until(lambda: load.count() >= 50, 60, "creates acknowledged before the transfer")
            # to a named replica
            to = next(p.replica for p in cluster.meta_procs(shard) if p.replica != old.replica)
            assert admin(cluster, "transfer-leader", "--shard", str(shard), "--to", str(to)) == 0
            lead = cluster.leader_of(shard)
            assert lead is not None and lead.replica == to
            n = load.count()
            until(lambda: load.count() >= n + 50, 60, "creates acknowledged at the new leader")
            # again to the same replica: nothing to do
            assert admin(cluster, "transfer-leader", "--shard", str(shard), "--to", str(to)) == 0
            assert cluster.leader_of(shard).replica == to
            # to any other replica
            assert admin(cluster, "transfer-leader", "--shard", str(shard)) == 0
            assert cluster.leader_of(shard).replica != to
            # the mgmt group too
            assert admin(cluster, "transfer-leader", "--mgmt") == 0
            n = load.count()
            until(lambda: load.count() >= n + 50, 60, "creates acknowledged after the transfers")
        out = capsys.readouterr().out
        assert f"shard {shard}: replica {to}" in out and "mgmt: replica" in out
        names = {e.name.decode() for e in c.listdir(d.ino)}
        acked = [x for a in load.acked for x in a]
        missing = [x for x in acked if x not in names]
        assert not missing, f"{len(missing)} acknowledged creates lost: {missing[:10]}"
        cluster.wait_all_converged(60)
    finally:
        c.close()


def test_transfer_leader_refuses_bad_arguments(cluster: LocalCluster) -> None:
    assert admin(cluster, "transfer-leader") != 0
    assert admin(cluster, "transfer-leader", "--shard", "7") != 0
    assert admin(cluster, "transfer-leader", "--shard", "0", "--to", "9") != 0
