"""kill -9 of a lazy client mid-stream: nothing a barrier acknowledged is lost, the namespace
is whole (every name resolves, every file reads), and the inode ids delegated to the dead
client's session are reclaimed by the shard leaders once its lease ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import dfs
from dfs.common import errors as err
from dfs.testing.wait import until

CHILD = r"""
import sys
import dfs
from dfs.client.lazy import LazyMode

cfg, top = sys.argv[1], sys.argv[2]
c = dfs.connect(cfg, mode=LazyMode(lease_s=3.0, delay=0.2))
c.mkdir(top)
c.sync()
print("session", c.core.mode.session.hex(), flush=True)
r = 0
while True:
    d = f"{top}/r{r:04d}"
    c.mkdir(d)
    for i in range(20):
        c.write_bytes(f"{d}/f{i}", f"round {r} file {i}\n".encode() * (i + 1))
    c.rename(f"{d}/f0", f"{d}/g0")
    c.chmod(f"{d}/f1", 0o600)
    c.remove(f"{d}/f2")
    c.sync()
    print("synced", r, flush=True)
    r += 1
"""


def _want(r: int) -> dict[str, bytes]:
    files = {f"f{i}": f"round {r} file {i}\n".encode() * (i + 1) for i in range(20)}
    files["g0"] = files.pop("f0")
    del files["f2"]
    return files


@pytest.mark.timeout(600)
def test_kill_9_of_a_lazy_client_mid_stream(data_cluster, tmp_path):
    top = f"/crash-{os.getpid()}"
    env = dict(os.environ)
    p = subprocess.Popen([sys.executable, "-c", CHILD, data_cluster.config_path, top], stdout=subprocess.PIPE,
                         text=True, env=env)
    synced = -1
    try:
        first = p.stdout.readline().split()
        assert first and first[0] == "session", first
        session = bytes.fromhex(first[1])
        while synced < 3:
            line = p.stdout.readline()
            assert line, "the lazy client ended early"
            synced = int(line.split()[1])
    finally:
        p.send_signal(signal.SIGKILL)  # mid-stream: its next round is being made
        p.wait()
    c = dfs.connect(data_cluster.config_path, ttl=0)
    try:
        rounds = sorted(c.listdir(top))
        for r in range(synced + 1):  # acknowledged by a barrier: all there
            d = f"{top}/r{r:04d}"
            assert {n: c.read_bytes(f"{d}/{n}") for n in c.listdir(d)} == _want(r)
            assert c.stat(f"{d}/f1").st_mode & 0o777 == 0o600
        for name in rounds:  # the rest: whole operations only, every name resolves
            r = int(name[1:])
            if r <= synced:
                continue
            want = _want(r) | {"f0": _want(r)["g0"], "f2": f"round {r} file 2\n".encode() * 3}
            for n in c.listdir(f"{top}/{name}"):
                data = c.read_bytes(f"{top}/{name}/{n}")
                assert data in (b"", want[n]), (name, n, data[:40])

        # the dead session's delegated ids: dropped by the leaders once the lease ends
        def reclaimed() -> bool:
            for shard in range(2):
                try:
                    c.run(c.meta.renew_delegation(shard, session, 0.001))
                    return False
                except err.NotFound:
                    pass
            return True
        until(reclaimed, 120, "the dead client's delegations to expire")
    finally:
        c.close()
