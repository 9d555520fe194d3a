"""One request through the kernel: a real `dfs mount` of a real LocalCluster
against a local directory.

For each of

* ``local``: a temporary directory on this machine's disk (the reference);
* ``dfs``: a `dfs mount` with its defaults (the kernel caches names and
  attributes for 1 s and keeps file pages in its page cache while a file is
  open), what users get;
* ``dfs-nocache``: a second mount of the same cluster with
  ``--entry-timeout 0 --attr-timeout 0 --negative-timeout 0 --direct-io``, so
  that every operation below is a FUSE request to the mount process;

it measures ``os.stat`` of one file, a 4 KiB ``os.pread`` of an open file
(the same 4 KiB each time) and ``os.open`` + ``os.close``. The cluster is
``bench_cluster`` (benchmarks/conftest.py). Both mounts are made with
`dfs mount` and removed with `dfs umount` (``fusermount3 -uz`` if that
fails) in the fixture's ``finally``, whatever happened in between.

    .venv/bin/python -m pytest benchmarks/ -k fuse -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest

pytest.importorskip("pyfuse3")

FILE_SIZE = 64 << 10
NOCACHE = ("--entry-timeout", "0", "--attr-timeout", "0", "--negative-timeout", "0", "--direct-io")
WHERE = ("local", "dfs", "dfs-nocache")


def _dfs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dfs.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False)


@contextlib.contextmanager
def _mounted(cluster, mp: str, log: str, *opts: str):
    os.makedirs(mp)
    try:
        r = _dfs("mount", mp, "--cluster", cluster.config_path, "--log-file", log, *opts)
        if r.returncode != 0:
            raise RuntimeError(f"dfs mount {mp} failed: {r.stdout}{r.stderr}")
        yield mp
    finally:
        if _dfs("umount", mp).returncode != 0:
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True, check=False)


@pytest.fixture(scope="module")
def places(bench_cluster, tmp_path_factory):
    """where -> the path of a FILE_SIZE file there."""
    if not (os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)):
        pytest.skip("no usable /dev/fuse")
    root = tmp_path_factory.mktemp("fuse")
    data = os.urandom(FILE_SIZE)
    with contextlib.ExitStack() as stack:
        dfs = stack.enter_context(_mounted(bench_cluster, str(root / "mnt"), str(root / "mount.log")))
        nocache = stack.enter_context(_mounted(bench_cluster, str(root / "mnt-nocache"),
                                               str(root / "mount-nocache.log"), *NOCACHE))
        os.makedirs(root / "local")
        out = {"local": str(root / "local" / "f"), "dfs": os.path.join(dfs, "f"),
               "dfs-nocache": os.path.join(nocache, "f")}
        for path in (out["local"], out["dfs"]):  # one file in dfs, seen by both mounts
            with open(path, "wb") as f:
                f.write(data)
                os.fsync(f.fileno())
        for path in out.values():
            with open(path, "rb") as f:
                assert f.read() == data, path
        yield out


@pytest.mark.parametrize("where", WHERE)
def test_stat(benchmark, places, where):
    assert benchmark(os.stat, places[where]).st_size == FILE_SIZE


@pytest.mark.parametrize("where", WHERE)
def test_pread_4k(benchmark, places, where):
    fd = os.open(places[where], os.O_RDONLY)
    try:
        assert len(benchmark(os.pread, fd, 4096, 8192)) == 4096
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", WHERE)
def test_open_close(benchmark, places, where):
    path = places[where]
    benchmark(lambda: os.close(os.open(path, os.O_RDONLY)))
