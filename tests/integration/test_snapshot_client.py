"""Snapshots through the client against a real cluster: the library and the mount.

* ``PATH/.snap/NAME`` through the library and the strict-mode mount: the tree as it
  was, EROFS on every mutating call, the snapshot commands (``dfs snapshot ...``);
* snapshot mode (``dfs.connect(snapshot=...)``, ``dfs mount --snapshot``): the
  manifest's contents equal to a full walk of the snapshot in strict mode, EROFS
  everywhere, and 8 client processes on one snapshot costing the metadata service
  nothing after their manifest loads (its Prometheus request counters);
* a snapshot deleted under a snapshot-mode client: what it loaded stays, reads of
  what the data servers dropped answer ESTALE, the mount's state file says so.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import re
import subprocess
import sys

import pytest

import dfs
from dfs.testing.metrics import scrape, total
from dfs.testing.wait import until

pytestmark = pytest.mark.integration


def _dfs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfs.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cluster(module_clusters):
    return module_clusters.make("snapclient", shards=2, replicas=1, mgmt_replicas=1, data_servers=3,
                                chain_replicas=3)


def _make_tree(c, top: str) -> None:
    c.makedirs(f"{top}/sub/deep")
    for i in range(30):
        c.write_bytes(f"{top}/sub/f{i:03d}", bytes([i]) * (1000 * i + 1))
    c.write_bytes(f"{top}/big", os.urandom(5 << 20))
    c.write_bytes(f"{top}/tiny", b"tiny")
    c.symlink("sub/f001", f"{top}/link")
    c.link(f"{top}/sub/f002", f"{top}/hard")
    c.setxattr(f"{top}/sub/f003", "user.k", b"v")
    c.mkdir(f"{top}/emptydir")


def _walk(c, top: str) -> dict:
    out = {}

    def one(path, rel):
        for e in c.readdir(path):
            name = os.fsdecode(e.name)
            p, r = f"{path.rstrip('/')}/{name}", f"{rel}/{name}"
            a = c.getattr(p, follow_symlinks=False)
            body = c.readlink(p).encode() if a.is_lnk() else (c.read_bytes(p) if a.is_reg() else b"")
            x = {n: c.getxattr(p, n) for n in c.listxattr(p)} if not a.is_lnk() else {}
            out[r] = (a.mode, a.nlink, a.uid, a.gid, a.size, a.mtime_ns, a.ctime_ns, body, x)
            if a.is_dir():
                one(p, r)

    one(top, "")
    return out


def _mutations(c, base: str, live: str | None = None) -> list:
    """Every mutating call of the library on paths under ``base`` (a snapshot); with ``live``
    (a directory of the live tree), the calls that cross from one to the other too."""
    f = f"{base}/tiny"
    calls = [lambda: c.mkdir(f"{base}/x"), lambda: c.makedirs(f"{base}/x/y"), lambda: c.remove(f),
             lambda: c.rmdir(f"{base}/emptydir"), lambda: c.rename(f, f"{base}/y"), lambda: c.link(f, f"{base}/y"),
             lambda: c.symlink("a", f"{base}/y"), lambda: c.chmod(f, 0o600), lambda: c.chown(f, 1, 1),
             lambda: c.utime(f), lambda: c.utime(f"{base}/link", (1, 1), follow_symlinks=False),
             lambda: c.truncate(f, 0), lambda: c.setxattr(f, "user.a", b"1"),
             lambda: c.removexattr(f"{base}/sub/f003", "user.k"), lambda: c.open(f, "r+b"),
             lambda: c.open(f, "wb"), lambda: c.open(f, "ab"), lambda: c.open(f"{base}/new", "wb"),
             lambda: c.open(f"{base}/new", "xb"), lambda: c.write_bytes(f, b""),
             lambda: c.unlink(f), lambda: c.replace(f, f"{base}/y"),
             lambda: c.run(c.aio.open_handle(f, os.O_RDWR)),
             lambda: c.run(c.aio.open_handle(f, os.O_RDONLY | os.O_TRUNC)),
             lambda: c.run(c.aio.open_handle(f"{base}/new", os.O_WRONLY | os.O_CREAT))]
    if live is not None:
        calls += [lambda: c.rename(f, f"{live}/y"), lambda: c.rename(f"{live}/tiny", f"{base}/y"),
                  lambda: c.link(f, f"{live}/y"), lambda: c.link(f"{live}/tiny", f"{base}/y")]
    return calls


def test_snap_directories_and_commands_through_the_library(cluster):
    with dfs.connect(cluster.config_path) as c:
        _make_tree(c, "/lib")
        info = c.snapshot_create("/lib", "s1")
        c.write_bytes("/lib/tiny", b"changed")
        c.remove("/lib/sub/f004")
        assert ".snap" not in c.listdir("/lib")
        assert c.listdir("/lib/.snap") == ["s1"]
        assert c.read_bytes("/lib/.snap/s1/tiny") == b"tiny"
        assert c.read_bytes("/lib/.snap/s1/sub/f004") == b"\x04" * 4001
        assert c.read_bytes("/lib/.snap/s1/link") == b"\x01" * 1001
        want = c.listdir("/lib/.snap/s1")
        for call in _mutations(c, "/lib/.snap/s1", "/lib"):
            with pytest.raises(OSError) as ei:
                call()
            assert ei.value.errno == errno.EROFS
        assert c.read_bytes("/lib/.snap/s1/tiny") == b"tiny" and c.read_bytes("/lib/tiny") == b"changed"
        assert c.listdir("/lib/.snap/s1") == want and c.getxattr("/lib/.snap/s1/sub/f003", "user.k") == b"v"
        for name, code in (("a/b", errno.EINVAL), ("x" * 256, errno.ENAMETOOLONG), ("s1", errno.EEXIST)):
            with pytest.raises(OSError) as ei:
                c.snapshot_create("/lib", name)
            assert ei.value.errno == code
        with pytest.raises(NotADirectoryError):
            c.snapshot_create("/lib/tiny", "s2")
        with pytest.raises(FileNotFoundError):
            c.snapshot_delete("/lib", "nope")
        d = c.snapshot_diff("/lib", "s1")
        assert d.removed == ["/sub/f004"] and "/tiny" in d.modified
        assert [i.epoch for i in c.snapshot_list("/lib")] == [info.epoch]
    r = _dfs("snapshot", "--cluster", cluster.config_path, "list", "/lib")
    assert r.returncode == 0 and "s1" in r.stdout, r.stderr
    r = _dfs("snapshot", "--cluster", cluster.config_path, "create", "/lib", "s1")
    assert r.returncode != 0 and "exists" in r.stderr.lower()
    r = _dfs("snapshot", "--cluster", cluster.config_path, "diff", "/lib", "s1")
    assert r.returncode == 0 and "- /sub/f004" in r.stdout


def test_snapshot_mode_equals_a_strict_walk_and_refuses_every_change(cluster, tmp_path):
    with dfs.connect(cluster.config_path) as c:
        _make_tree(c, "/mode")
        c.snapshot_create("/mode", "s1")
        c.write_bytes("/mode/tiny", b"changed")
        want = _walk(c, "/mode/.snap/s1")
    metas = [p for p in cluster.procs if p.role == "meta"]
    with dfs.connect(cluster.config_path, snapshot="/mode@s1", cache_dir=str(tmp_path)) as s:
        before = total([scrape(p) for p in metas], "dfs_meta_requests_total")
        assert _walk(s, "/") == want  # names, attributes, link targets, xattrs and bytes
        assert s.stat("/hard").st_ino == s.stat("/sub/f002").st_ino
        for call in _mutations(s, ""):
            with pytest.raises(OSError) as ei:
                call()
            assert ei.value.errno == errno.EROFS, call
        # the walk came from the manifest and the refusals from the client: nothing was asked
        assert total([scrape(p) for p in metas], "dfs_meta_requests_total") == before


def _reader(cfg: str, spec: str, cache: str, ready, go, out) -> None:
    with dfs.connect(cfg, snapshot=spec, cache_dir=cache) as s:
        ready.put(os.getpid())
        go.wait(120)
        n = 0
        for top, dirs, files in s.walk("/"):
            for f in files:
                p = f"{top.rstrip('/')}/{f}"
                s.stat(p)
                if not s.islink(p):
                    n += len(s.read_bytes(p))
        out.put(n)


def test_eight_clients_on_one_snapshot_send_no_metadata_request_after_the_load(cluster, tmp_path):
    with dfs.connect(cluster.config_path) as c:
        _make_tree(c, "/many")
        c.snapshot_create("/many", "s1", manifest=True)
    cache = str(tmp_path / "cache")
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    ps = [ctx.Process(target=_reader, args=(cluster.config_path, "/many@s1", cache, ready, go, out))
          for _ in range(8)]
    for p in ps:
        p.start()
    try:
        for _ in ps:
            ready.get(timeout=120)
        metas = [p for p in cluster.procs if p.role == "meta"]
        before = total([scrape(p) for p in metas], "dfs_meta_requests_total")
        go.set()
        sizes = [out.get(timeout=120) for _ in ps]
        after = total([scrape(p) for p in metas], "dfs_meta_requests_total")
        assert len(set(sizes)) == 1 and sizes[0] > 5 << 20
        assert after == before, f"{after - before} metadata requests after the manifest loads"
        files = [f for _, _, fs in os.walk(cache) for f in fs]
        # one manifest on the machine, shared by the 8 processes, and the pack chunks they
        # fetched (each once, by name), no temporary file left behind
        assert len([f for f in files if f.endswith(".manifest")]) == 1, files
        assert all(f.endswith(".manifest") or re.fullmatch(r"p\d+-c\d+", f) for f in files), files
    finally:
        for p in ps:
            p.join(30)
            if p.is_alive():
                p.kill()


def _mount(mp_: str, *args: str) -> None:
    r = _dfs("mount", mp_, *args)
    assert r.returncode == 0, r.stdout + r.stderr


def test_through_the_mount(cluster, tmp_path):
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/fuse")
    with dfs.connect(cluster.config_path) as c:
        _make_tree(c, "/mnt")
        c.snapshot_create("/mnt", "s1")
        c.write_bytes("/mnt/tiny", b"changed")
    live, snap = str(tmp_path / "live"), str(tmp_path / "snap")
    os.mkdir(live)
    os.mkdir(snap)
    _mount(live, "--cluster", cluster.config_path)
    try:
        base = f"{live}/mnt/.snap/s1"
        assert ".snap" not in os.listdir(f"{live}/mnt") and os.listdir(f"{live}/mnt/.snap") == ["s1"]
        with open(f"{base}/tiny", "rb") as f:
            assert f.read() == b"tiny"
        _posix_erofs(base, f"{live}/mnt")
        _mount(snap, "--cluster", cluster.config_path, "--snapshot", "/mnt@s1", "--cache-dir",
               str(tmp_path / "cache"))
        try:
            assert sorted(os.listdir(snap)) == sorted(os.listdir(base))
            for rel in ("tiny", "sub/f007", "big", "link"):
                with open(f"{snap}/{rel}", "rb") as a, open(f"{base}/{rel}", "rb") as b:
                    assert a.read() == b.read()
            assert os.stat(f"{snap}/hard").st_ino == os.stat(f"{snap}/sub/f002").st_ino
            _posix_erofs(snap)
            with dfs.connect(cluster.config_path) as c:
                c.snapshot_delete("/mnt", "s1")
            from dfs.cli.mount import _read_state

            until(lambda: (_read_state(snap) or {}).get("snapshot_state") == "deleted", 30,
                  "the mount's state saying the snapshot is deleted")
            assert sorted(os.listdir(snap))  # what it loaded stays
            r = _dfs("status", "--cluster", cluster.config_path)
            assert "snapshot /mnt@s1 was deleted" in r.stdout, r.stdout + r.stderr
        finally:
            _dfs("umount", snap)
    finally:
        _dfs("umount", live)


def _posix_erofs(base: str, live: str | None = None) -> None:
    f = f"{base}/tiny"
    calls = [lambda: os.mkdir(f"{base}/x"), lambda: os.unlink(f), lambda: os.rmdir(f"{base}/emptydir"),
             lambda: os.rename(f, f"{base}/y"), lambda: os.link(f, f"{base}/y"), lambda: os.symlink("a", f"{base}/y"),
             lambda: os.mkfifo(f"{base}/fifo"), lambda: os.mknod(f"{base}/node", 0o100644),
             lambda: os.chmod(f, 0o600), lambda: os.chown(f, 1, 1), lambda: os.utime(f),
             lambda: os.truncate(f, 0), lambda: os.setxattr(f, "user.a", b"1"),
             lambda: os.removexattr(f"{base}/sub/f003", "user.k"),
             lambda: open(f, "r+b"), lambda: open(f, "ab"), lambda: open(f"{base}/new", "wb"),
             lambda: open(f"{base}/new", "xb"), lambda: os.open(f, os.O_RDONLY | os.O_TRUNC)]
    if live is not None:
        calls += [lambda: os.rename(f, f"{live}/y"), lambda: os.rename(f"{live}/tiny", f"{base}/y"),
                  lambda: os.link(f, f"{live}/y"),
                  lambda: os.link(f"{live}/tiny", f"{base}/y")]
    for call in calls:
        with pytest.raises(OSError) as ei:
            call()
        assert ei.value.errno == errno.EROFS, call
    with open(f, "rb") as r:
        assert r.read() == b"tiny"  # nothing changed


def test_a_deleted_snapshot_leaves_nothing_in_the_machines_caches(cluster, tmp_path):
    """The manifest, the pack chunks and the node cache's chunks of a snapshot go from the
    machine's cache once the snapshot is deleted (at the next client that opens one), and
    another snapshot's stay."""
    cache = str(tmp_path / "cache")
    with dfs.connect(cluster.config_path) as c:
        _make_tree(c, "/gone")
        epochs = {name: c.snapshot_create("/gone", name, manifest=True).epoch for name in ("s1", "s2")}
    for name in ("s1", "s2"):
        with dfs.connect(cluster.config_path, snapshot=f"/gone@{name}", cache_dir=cache, cache_size="64M") as s:
            assert len(s.read_bytes("/big")) == 5 << 20  # its chunks, at the snapshot, into the node cache
            assert s.read_bytes("/sub/f010") == bytes([10]) * 10001  # a packed file: its pack chunk too

    def kept() -> set[int]:
        out = set()
        for _, dirs, files in os.walk(cache):
            for n in dirs + files:
                m = re.fullmatch(r"(?:s)?(\d+)-\d+(?:\.manifest|\.packs)?", n)
                if m:
                    out.add(int(m.group(1)))
        return out

    assert kept() == set(epochs.values())
    with dfs.connect(cluster.config_path) as c:
        c.snapshot_delete("/gone", "s1")
    with dfs.connect(cluster.config_path, snapshot="/gone@s2", cache_dir=cache, cache_size="64M") as s:
        assert s.read_bytes("/tiny") == b"tiny"
    assert kept() == {epochs["s2"]}
