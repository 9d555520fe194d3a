"""The node-local cache and warm-up against a real cluster (dfs/client/nodecache.py, dfs/client/warmup.py).

A snapshot's files are warmed up (through ``PATH/.snap/NAME`` with the library and
through a snapshot-mode client with `dfs warmup --at`), a second warm-up fetches
nothing, bad paths are reported by name while the rest is warmed; then every data
server is killed and the snapshot is read whole from the cache alone, by new
clients of both kinds, with no miss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import dfs

pytestmark = pytest.mark.integration


def _dfs(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfs.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


def test_warmup_then_read_with_every_data_server_down(make_cluster, tmp_path):
    cl = make_cluster(shards=1, replicas=1, mgmt_replicas=1, data_servers=3, chain_replicas=3)
    cache = str(tmp_path / "cache")
    want: dict[str, bytes] = {}
    with dfs.connect(mgmt=cl.mgmt_addresses) as c:
        c.makedirs("/ds/sub")
        for i in range(3):  # big files: chunks on the data servers (5 MiB: two 4 MiB chunks)
            want[f"big{i}"] = os.urandom((5 << 20) + i)
        for i in range(6):  # small files (inline in the metadata, packed by the manifest)
            want[f"sub/s{i}"] = os.urandom(100 + 1000 * i)
        want["sub/mid"] = os.urandom(200_000)  # past the inline limit, packed by the manifest
        want["empty"] = b""
        for name, data in want.items():
            c.write_bytes(f"/ds/{name}", data)
        c.snapshot_create("/ds", "s1", manifest=True)
        c.write_bytes("/ds/big0", b"changed after the snapshot")

    with dfs.connect(mgmt=cl.mgmt_addresses, cache_dir=cache, cache_size="256M") as w:
        r = w.warmup("/ds", snapshot="s1")
        assert r.ok, r.errors
        assert r.files == len(want) and r.bytes == sum(map(len, want.values()))
        assert r.fetched >= 3 * (5 << 20) and r.chunks >= 3 * 2 + 1  # two chunks per big file, sub/mid
        warmed = r.chunks
        again = w.warmup(["/ds"], snapshot="s1")  # idempotent: nothing fetched again
        assert again.ok and again.fetched == 0 and again.files == len(want)
        # a missing path is reported by name; the rest is warmed, live files at their data
        # version (what a strict-mode open of that version then reads from the cache)
        mixed = w.warmup(["/ds/.snap/s1/nope", "/ds/big1", "/ds/.snap/s1/big2"])
        assert [p for p, _ in mixed.errors] == ["/ds/.snap/s1/nope"]
        assert mixed.files == 2 and mixed.fetched >= (5 << 20)
        hits = w.cache_stats()["hits"]
        assert w.read_bytes("/ds/big1") == want["big1"]
        assert w.cache_stats()["hits"] > hits
        w.write_bytes("/ds/big1", b"new")  # a new version: the warmed one is not read again
        assert w.read_bytes("/ds/big1") == b"new"
        with pytest.raises(dfs.errors.InvalidArgument):
            w.warmup("/ds", parallel=0)

    # a snapshot-mode client (manifest, packs) warmed by the command, which also loads the
    # manifest into the machine's cache; a missing path makes it exit 1, naming it
    p = _dfs("warmup", "--cluster", cl.config_path, "--at", "/ds@s1", "--cache-dir", cache, "--json", "/", "/nope")
    assert p.returncode == 1 and p.stdout, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert [e["path"] for e in out["errors"]] == ["/nope"]
    assert out["files"] == len(want) and out["fetched"] == 0  # its chunks were warmed through .snap
    p = _dfs("warmup", "--cluster", cl.config_path, "--at", "/ds@s1", "--cache-dir", cache, "--no-progress", "/")
    assert p.returncode == 0, p.stderr
    assert f"warmed {len(want)} files" in p.stdout

    for proc in cl.data_procs():
        cl.kill(proc)

    with dfs.connect(mgmt=cl.mgmt_addresses, cache_dir=cache, cache_size="256M") as r:
        for name, data in want.items():
            assert r.read_bytes(f"/ds/.snap/s1/{name}") == data, name
        st = r.cache_stats()
        assert st["misses"] == 0 and st["hits"] >= 6 and st["corrupt"] == 0
    with dfs.connect(mgmt=cl.mgmt_addresses, snapshot="/ds@s1", cache_dir=cache, cache_size="256M") as s:
        got = dict(s.read_many([f"/{n}" for n in want]))
        assert got == {f"/{n}": d for n, d in want.items()}
        assert s.cache_stats()["misses"] == 0
        with pytest.raises(dfs.errors.InvalidArgument):  # its paths are the snapshot's already
            s.warmup("/", snapshot="s1")
    # --evict drops the files' chunks (it needs no data server); a second one finds none
    with dfs.connect(mgmt=cl.mgmt_addresses, cache_dir=cache, cache_size="256M") as r:
        ev = r.warmup("/ds", snapshot="s1", evict=True)
        assert ev.ok and ev.chunks == warmed  # every chunk the first warm-up stored
        assert r.warmup("/ds", snapshot="s1", evict=True).chunks == 0


def test_cache_is_off_by_default_and_warmup_says_so(make_cluster):
    cl = make_cluster(shards=1, replicas=1, mgmt_replicas=1, data_servers=1, chain_replicas=1)
    with dfs.connect(mgmt=cl.mgmt_addresses) as c:
        assert c.cache_stats() is None
        c.makedirs("/d")
        c.snapshot_create("/d", "s")
        with pytest.raises(dfs.errors.InvalidArgument):
            c.warmup("/d", snapshot="s")


def test_mount_with_the_cache_shares_it_and_reports_counters(make_cluster, tmp_path):
    """A strict-mode mount with --cache-size reads a snapshot (PATH/.snap/NAME) warmed up by
    another process from the cache: hits, no miss, in its state file and `dfs status`."""
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/fuse")
    from dfs.cli.mount import _read_state
    from dfs.testing.wait import until

    cl = make_cluster(shards=1, replicas=1, mgmt_replicas=1, data_servers=1, chain_replicas=1)
    cache = str(tmp_path / "cache")
    data = os.urandom(9 << 20)
    with dfs.connect(cl.config_path) as c:
        c.makedirs("/m")
        c.write_bytes("/m/big", data)
        c.snapshot_create("/m", "s1")
    p = _dfs("warmup", "--cluster", cl.config_path, "--cache-dir", cache, "--cache-size", "64M",
             "--snapshot", "s1", "--no-progress", "/m")
    assert p.returncode == 0, p.stdout + p.stderr
    with dfs.connect(cl.config_path) as c:
        c.write_bytes("/m/live", data[:5 << 20])
    p = _dfs("warmup", "--cluster", cl.config_path, "--cache-dir", cache, "--no-progress", "/m/live")
    assert p.returncode == 0 and "warmed 1 files" in p.stdout, p.stdout + p.stderr
    mp_ = str(tmp_path / "mnt")
    os.mkdir(mp_)
    r = _dfs("mount", mp_, "--cluster", cl.config_path, "--cache-dir", cache, "--cache-size", "64M")
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        def counters():
            return (_read_state(mp_) or {}).get("cache") or {}

        with open(f"{mp_}/m/live", "rb") as f:  # a live file, warmed at its data version
            assert f.read() == data[:5 << 20]
        until(lambda: counters().get("hits", 0) > 0, 30, "the mount's state file showing cache hits")
        assert counters()["misses"] == 0
        with open(f"{mp_}/m/.snap/s1/big", "rb") as f:
            assert f.read() == data
        hits = counters()["hits"]
        until(lambda: counters().get("hits", 0) > hits, 30, "the mount's state file showing more cache hits")
        assert counters()["misses"] == 0
        s = _dfs("status", "--cluster", cl.config_path)
        assert "node cache: hits" in s.stdout, s.stdout + s.stderr
    finally:
        _dfs("umount", mp_)
