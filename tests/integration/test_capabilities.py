"""Data-plane capabilities on a real cluster, through the client (docs/design/security.md).

The data servers serve a client's chunk request only under a capability the
metadata service signed (``[security] data_capabilities``, on by default;
``dfs.common.caps``). What a user must not notice: opens bring their
capabilities (no extra round trip per file), a file created 0444 is written
through the descriptor that made it and a chmod after an open changes nothing
for it (POSIX; tar and git rely on both), even when the capability has to be
asked for again (a new connection to a data server); truncate by path, lazy
mode's ingest and snapshot mode work and ask little. A cluster with the
setting off works as before.
"""

from __future__ import annotations

import os

import pytest

import dfs
from dfs.common import caps as C
from dfs.common.config import SecurityConfig
from dfs.testing.metrics import scrape, total

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

OPTIONS = dict(shards=2, replicas=1, mgmt_replicas=1, data_servers=2, chain_replicas=1)
MB = 1 << 20


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters.make("caps", **OPTIONS)


def _caps_asked(c) -> float:
    """CAPS requests the shards served so far (each asked for a capability an open did not bring)."""
    return total([scrape(p) for p in c.procs if p.role == "meta"], "dfs_meta_requests_total", op="CAPS")


def _forget(fs) -> None:
    """Drop the client's capabilities and its data-plane connections: the next chunk request of
    each file must ask for its capability again (as after a data server restart, or a
    capability that ran out)."""
    data = fs.aio.data
    while "pool" not in vars(data):  # through the wrappers (snapshot directories, node cache),
        data = data.inner  # which forward attributes to what they wrap
    data.caps = C.CapBook()
    fs.run(data.pool.close())


def _shared_dir(c, path: str) -> None:
    with dfs.connect(c.config_path) as fs:  # root
        fs.mkdir(path, 0o777)
        fs.chmod(path, 0o777)


def test_opens_bring_their_capabilities(cluster):
    with dfs.connect(cluster.config_path) as fs:
        fs.makedirs("/many")
        before = _caps_asked(cluster)
        blobs = {f"/many/f{i}": os.urandom(1000 + i * 4096) for i in range(20)}
        for p, b in blobs.items():
            fs.write_bytes(p, b)
        for p, b in blobs.items():
            assert fs.read_bytes(p) == b
        assert _caps_asked(cluster) == before  # creates and opens carried them
        _forget(fs)
        # read_many's opens leave for a shard together (one ExecuteBatch): each answer in
        # the batch carries its capability as a lone open's does
        assert {p: bytes(d) for p, d in fs.read_many(list(blobs), ahead=20)} == blobs
        assert _caps_asked(cluster) == before


def test_a_file_created_read_only_is_written_through_its_descriptor_after_a_chmod(cluster):
    """open(O_CREAT, 0444), write, fchmod 0000, and go on writing: POSIX allows it (the open
    decided), so does the data plane, even when the capability is asked for anew mid-way."""
    first, second = os.urandom(5 * MB), os.urandom(3 * MB)
    _shared_dir(cluster, "/tar")
    with dfs.connect(cluster.config_path, uid=1000, gid=1000, groups=()) as fs:
        with fs.open("/tar/ro", "wb", buffering=0, perm=0o444) as f:
            f.write(first)
            fs.chmod("/tar/ro", 0o000)
            _forget(fs)
            f.write(second)
        fs.chmod("/tar/ro", 0o400)
        assert fs.read_bytes("/tar/ro") == first + second
    with dfs.connect(cluster.config_path, uid=1001, gid=1001, groups=()) as other:
        with pytest.raises(PermissionError):
            other.read_bytes("/tar/ro")


def test_a_second_open_with_other_rights_keeps_them_after_a_chmod(cluster):
    """Two opens of one file in one client share one server handle: a read open after a
    write open asks the service for reading on that handle (once), so the read keeps working
    through a chmod 000 even when its capability is asked for anew."""
    _shared_dir(cluster, "/two")
    body = os.urandom(5 * MB)
    with dfs.connect(cluster.config_path, uid=1000, gid=1000, groups=()) as fs:
        fs.write_bytes("/two/f", body)
        with fs.open("/two/f", "ab", buffering=0) as w, fs.open("/two/f", "rb") as r:
            fs.chmod("/two/f", 0o000)
            _forget(fs)
            assert r.read() == body
            w.write(b"more")
        fs.chmod("/two/f", 0o600)
        assert fs.read_bytes("/two/f") == body + b"more"


def test_truncate_by_path_asks_for_the_callers_access(cluster):
    _shared_dir(cluster, "/trunc")
    with dfs.connect(cluster.config_path, uid=1000, gid=1000, groups=()) as fs:
        fs.write_bytes("/trunc/f", os.urandom(6 * MB))
        fs.chmod("/trunc/f", 0o644)
        _forget(fs)
        fs.truncate("/trunc/f", 1000)
        assert fs.stat("/trunc/f").st_size == 1000 and len(fs.read_bytes("/trunc/f")) == 1000
    with dfs.connect(cluster.config_path, uid=1001, gid=1001, groups=()) as other:
        with pytest.raises(PermissionError):
            other.truncate("/trunc/f", 10)
    with dfs.connect(cluster.config_path, uid=1000, gid=1000, groups=()) as fs:
        assert fs.stat("/trunc/f").st_size == 1000


def test_lazy_ingest_and_snapshot_reads_ask_little(cluster, tmp_path):
    with dfs.connect(cluster.config_path, consistency="lazy") as fs:
        fs.makedirs("/ingest")
        blobs = {f"/ingest/f{i}": os.urandom(70_000 + i) for i in range(40)}  # beyond inline size
        before = _caps_asked(cluster)
        for p, b in blobs.items():
            fs.write_bytes(p, b)
        fs.sync()
        asked = _caps_asked(cluster) - before
        assert asked <= 2, asked  # a delegated block's capability per shard at most
    with dfs.connect(cluster.config_path) as fs:
        for p, b in blobs.items():
            assert fs.read_bytes(p) == b
        fs.snapshot_create("/ingest", "s1")
        fs.write_bytes("/ingest/f0", b"changed")
    with dfs.connect(cluster.config_path, snapshot="/ingest@s1", cache_dir=str(tmp_path)) as s:
        before = _caps_asked(cluster)
        for p, b in blobs.items():
            assert s.read_bytes(p[len("/ingest"):]) == b
        assert _caps_asked(cluster) == before  # one capability, asked at the open, reads the snapshot


def test_a_cluster_without_capabilities_serves_as_before(module_clusters):
    c = module_clusters.make("nocaps", security=SecurityConfig(data_capabilities=False), **OPTIONS)
    with dfs.connect(c.config_path) as fs:
        fs.write_bytes("/f", os.urandom(3 * MB))
        _forget(fs)
        assert len(fs.read_bytes("/f")) == 3 * MB
        assert _caps_asked(c) == 0
