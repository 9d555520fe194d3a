"""kill -9 of a shard leader while a lazy client flushes: the client's batches and coordinated
operations are resent to the new leader with their request ids, so nothing a barrier
acknowledged is lost and nothing is applied twice (a create or link applied twice would be
refused as EEXIST at the barrier, a rename or unlink twice as ENOENT; the tree would differ)."""

from __future__ import annotations

import pytest

import dfs
from dfs.client.lazy import LazyMode
from dfs.testing.wait import until


def _round(c, top: str, r: int) -> None:
    d = f"{top}/r{r}"
    c.mkdir(d)
    for i in range(30):
        c.write_bytes(f"{d}/f{i}", f"{r}/{i}\n".encode() * (i + 1))
    c.rename(f"{d}/f0", f"{d}/g0")
    c.link(f"{d}/f1", f"{d}/h1")
    c.remove(f"{d}/f2")
    c.chmod(f"{d}/f3", 0o600)


def _want(r: int) -> dict[str, bytes]:
    w = {f"f{i}": f"{r}/{i}\n".encode() * (i + 1) for i in range(30)}
    w["g0"] = w.pop("f0")
    w["h1"] = w["f1"]
    del w["f2"]
    return w


@pytest.mark.timeout(900)
def test_kill_9_of_a_shard_leader_while_a_lazy_client_flushes(make_cluster):
    cluster = make_cluster(shards=2, replicas=3, mgmt_replicas=1, data_servers=3, chain_replicas=3)
    lazy = dfs.connect(cluster.config_path, mode=LazyMode(delay=0.2))
    strict = dfs.connect(cluster.config_path, ttl=0)
    top = "/fo"
    try:
        lazy.mkdir(top)
        for r in range(2):
            _round(lazy, top, r)
        lazy.sync()
        _round(lazy, top, 2)  # queued and being sent while the leader dies
        for shard in (0, 1):
            old = cluster.leader_of(shard)
            cluster.kill(old)
            until(lambda: (p := cluster.leader_of(shard)) is not None and p is not old, 120,
                  f"a new leader of shard {shard}")
            _round(lazy, top, 3 + shard)
        lazy.sync()  # raises if anything was refused (a double apply would be)
        assert sorted(strict.listdir(top)) == [f"r{r}" for r in range(5)]
        for r in range(5):
            d = f"{top}/r{r}"
            assert {n: strict.read_bytes(f"{d}/{n}") for n in strict.listdir(d)} == _want(r), r
            assert strict.stat(f"{d}/f1").st_nlink == 2
            assert strict.stat(f"{d}/f3").st_mode & 0o777 == 0o600
    finally:
        lazy.close()
        strict.close()
