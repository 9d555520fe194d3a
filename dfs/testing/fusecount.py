"""A dfs mount that counts the kernel's FUSE requests, for tests and benchmarks.

    with CountingMount(mountpoint, cluster_file) as m:
        before = m.counts()
        os.stat(os.path.join(mountpoint, "f"))
        m.counts() - before                # Counter({"getattr": 1, ...}) or lookups

The mount is a child process serving ``run_mount`` as ``dfs mount --foreground``
does (the production options and handlers) whose ``DfsOperations`` is a subclass
that counts every handler called by pyfuse3 (one call per kernel request)
and, for ``read`` and ``write``, the request sizes (``read_bytes:N``,
``write_bytes:N``: requests of N bytes). Reading the extended attribute
``COUNTS_XATTR`` of the mount point answers the counts so far as JSON (that
request itself is not counted).

Test support: may import any production package.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

COUNTS_XATTR = "user.dfs-test.fuse-counts"
_NOT_REQUESTS = {"close_all", "stacktrace", "init"}


def counting_operations(base):
    """``base`` (``DfsOperations``) with every request handler counted."""
    import pyfuse3

    names = [n for n in dir(pyfuse3.Operations) if not n.startswith("_") and n not in _NOT_REQUESTS]
    counts: collections.Counter = collections.Counter()

    def wrap(name):
        inner = getattr(base, name)

        async def handler(self, *a):
            if name == "getxattr" and a[1] == COUNTS_XATTR.encode():
                return json.dumps(counts).encode()
            counts[name] += 1
            if name == "read":
                counts[f"read_bytes:{a[2]}"] += 1
            elif name == "write":
                counts[f"write_bytes:{len(a[2])}"] += 1
            return await inner(self, *a)

        handler.__name__ = name
        return handler

    return type("CountingOperations", (base,), {n: wrap(n) for n in names if hasattr(base, n)})


def main(argv: list[str]) -> int:
    """``python -m dfs.testing.fusecount MOUNTPOINT CLUSTER_FILE [--log-file F] [--read-ahead-kb N]
    [--profile F]``:
    serve a counting mount (``run_mount`` as ``dfs mount --foreground`` runs it) until unmounted."""
    import argparse
    import asyncio
    import logging

    import dfs.fuse.mount as mount_mod
    from dfs.common import logs
    from dfs.common.config import ClusterConfig
    from dfs.wire import auth

    ap = argparse.ArgumentParser(prog="python -m dfs.testing.fusecount")
    ap.add_argument("mountpoint")
    ap.add_argument("cluster")
    ap.add_argument("--log-file")
    ap.add_argument("--read-ahead-kb", type=int, default=mount_mod.DEFAULT_READ_AHEAD_KB)
    ap.add_argument("--profile", help="write a cProfile of the whole mount's life to this file")
    a = ap.parse_args(argv)
    logs.setup(f"mount[{os.getpid()}]", logging.INFO,
               stream=open(a.log_file, "a", buffering=1) if a.log_file else None)  # noqa: SIM115 - the process's log
    cfg = ClusterConfig.load(a.cluster)
    creds = auth.remember_config(cfg)
    mount_mod.DfsOperations = counting_operations(mount_mod.DfsOperations)
    serve = mount_mod.run_mount(a.mountpoint, [m.address for m in cfg.mgmt], auth=creds, read_ahead_kb=a.read_ahead_kb)
    if a.profile:
        import cProfile

        cProfile.runctx("asyncio.run(serve)", globals(), {"asyncio": asyncio, "serve": serve}, a.profile)
    else:
        asyncio.run(serve)
    return 0


class CountingMount:
    """A counting mount of the cluster file ``cluster`` at ``mountpoint`` (``options``: more
    ``dfs mount`` arguments), unmounted when the block ends."""

    def __init__(self, mountpoint: str, cluster: str, *options: str, log_file: str | None = None,
                 timeout: float = 60.0) -> None:
        self.mountpoint = os.path.abspath(mountpoint)
        argv = [sys.executable, "-m", "dfs.testing.fusecount", self.mountpoint, cluster, *options]
        if log_file:
            argv += ["--log-file", log_file]
        self.timeout = timeout
        self._argv = argv
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> CountingMount:
        from dfs.fuse.mount import is_mounted

        self.proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"counting mount exited {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"{self.mountpoint} not mounted after {self.timeout:.0f}s")
            time.sleep(0.02)  # polling the mount table until the child has mounted
        return self

    def counts(self) -> collections.Counter:
        """Requests handled so far, by handler name (and request sizes of reads and writes)."""
        return collections.Counter(json.loads(os.getxattr(self.mountpoint, COUNTS_XATTR)))

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        subprocess.run(["fusermount3", "-u", self.mountpoint], check=False, capture_output=True)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(30)
        self.proc = None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
