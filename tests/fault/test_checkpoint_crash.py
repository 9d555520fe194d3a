"""Atomic checkpoints (dfs/checkpoint.py) under kill -9: of a writer process mid-save, and of a
data server mid-save. Either way ``latest`` names a checkpoint whose every file is there,
whole and with the bytes that save wrote; a save that did not commit leaves only an
abandoned staging directory, which cleanup removes.

The writer is a real process (the script below): it commits ``c0``, stages ``c1``, writes
half of every rank's file, says so, and waits for the test's word before the rest -- so the
kill lands mid-save without any sleep."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

import dfs
from dfs.checkpoint import CheckpointDir

pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]

RANKS = 3
HALF = 3 << 20  # each rank writes 2 x 3 MiB: chunks on several chains

WRITER = r"""
import hashlib, sys
import dfs
from dfs.checkpoint import CheckpointDir

cluster, root, ranks, half = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def block(name, r, part):
    seed = hashlib.sha256(f"{name}/{r}/{part}".encode()).digest()
    return (seed * (half // len(seed) + 1))[:half]

with dfs.connect(cluster, uid=0, gid=0, groups=()) as fs:
    ck = CheckpointDir(fs, root)
    for name in ("c0", "c1"):
        staging = ck.stage(name)
        files = [fs.open(f"{staging}/rank{r}.bin", "wb") for r in range(ranks)]
        for r, f in enumerate(files):
            f.write(block(name, r, 0))
            f.flush()
        if name == "c1":
            print("half", staging, flush=True)
            sys.stdin.readline()  # the test kills something here
        for r, f in enumerate(files):
            f.write(block(name, r, 1))
            f.flush()
            f.fsync()
            f.close()
        ck.commit(staging, name)
        print("committed", name, flush=True)
"""


def expected(name: str, r: int) -> bytes:
    out = b""
    for part in (0, 1):
        seed = hashlib.sha256(f"{name}/{r}/{part}".encode()).digest()
        out += (seed * (HALF // len(seed) + 1))[:HALF]
    return out


def start_writer(c, root):
    p = subprocess.Popen([sys.executable, "-c", WRITER, c.config_path, root, str(RANKS), str(HALF)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in p.stdout:
        lines.append(line.split())
        if line.startswith("half"):
            return p, lines
    p.wait()
    raise AssertionError(f"the writer ended before mid-save: {lines}")


def check_latest_is_whole(fs, root) -> str:
    ck = CheckpointDir(fs, root)
    name = ck.latest()
    assert name is not None
    ck.verify(name)
    for r in range(RANKS):
        assert bytes(fs.read_bytes(f"{root}/{name}/rank{r}.bin")) == expected(name, r), (name, r)
    return name


def test_kill_9_of_a_writer_mid_save_leaves_the_previous_checkpoint_latest(make_cluster):
    c = make_cluster(shards=2, replicas=1, mgmt_replicas=1, data_servers=2, chain_replicas=2)
    root = "/ckpts"
    p, lines = start_writer(c, root)
    staging = lines[-1][1]
    p.kill()  # kill -9, mid-save
    p.wait()
    with dfs.connect(c.config_path, uid=0, gid=0, groups=()) as fs:
        assert check_latest_is_whole(fs, root) == "c0"
        ck = CheckpointDir(fs, root)
        assert ck.names() == ["c0"] and not fs.exists(f"{root}/c1")
        assert ck.abandoned() == [staging]
        assert ck.cleanup() == [staging]
        assert ck.abandoned() == [] and ck.latest() == "c0"


def test_kill_9_of_a_data_server_mid_save(make_cluster):
    c = make_cluster(shards=1, replicas=1, mgmt_replicas=1, data_servers=3, chain_replicas=3,
                     target_timeout=1.5)
    root = "/ckpts"
    p, _ = start_writer(c, root)
    c.kill(c.data_procs()[1])  # kill -9 of a chain member while the ranks' files are half written
    out, _ = p.communicate("go\n", timeout=300)
    with dfs.connect(c.config_path, uid=0, gid=0, groups=()) as fs:
        name = check_latest_is_whole(fs, root)
        if p.returncode == 0:  # the chains went on without the server: the save committed
            assert name == "c1" and "committed c1" in out
        else:  # the save failed: nothing of it is visible
            assert name == "c0" and not fs.exists(f"{root}/c1")
