"""dfs/checkpoint.py: staging, the commit marker and rename, ``latest``, cleanup (in process).

The crash tests (kill -9 of a writer and of a data server mid-save) are in
tests/fault/test_checkpoint_crash.py; torch.distributed.checkpoint over it in
tests/unit/test_torch.py."""

from __future__ import annotations

import errno
import json

import pytest

from dfs.checkpoint import COMMIT, CheckpointDir
from dfs.client.api import AsyncClient, Client
from dfs.client.file import MemoryChunks
from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.records import ROOT


@pytest.fixture
def fs():
    from dfs.meta.local import LocalEngine

    c = Client(lambda: AsyncClient(MetaClient(LocalEngine(2), ROOT), MemoryChunks()))
    yield c
    c.close()


def _save(fs, ck, name, ranks=3):
    staging = ck.stage(name)
    for r in range(ranks):
        with fs.open(f"{staging}/rank{r}.bin", "wb") as f:
            f.write(bytes([r]) * (1000 + r))
    fs.makedirs(f"{staging}/sub")
    fs.write_bytes(f"{staging}/sub/meta.json", b"{}")
    return staging


def test_a_staged_checkpoint_is_invisible_until_its_commit(fs):
    ck = CheckpointDir(fs, "/ckpt")
    assert ck.latest() is None and ck.names() == []
    staging = _save(fs, ck, "step1")
    assert staging.startswith("/ckpt/.step1.staging-")
    assert ck.latest() is None and ck.names() == [] and not fs.exists("/ckpt/step1")
    assert ck.commit(staging, "step1") == "/ckpt/step1"
    assert not fs.exists(staging)
    assert ck.latest() == "step1" and ck.names() == ["step1"]
    m = ck.manifest("step1")
    assert m["files"] == {"rank0.bin": 1000, "rank1.bin": 1001, "rank2.bin": 1002, "sub/meta.json": 2}
    ck.verify("step1")
    assert fs.read_bytes("/ckpt/step1/rank2.bin") == bytes([2]) * 1002


def test_latest_moves_only_at_a_commit_and_abandoned_saves_are_cleaned(fs):
    ck = CheckpointDir(fs, "/ckpt")
    ck.commit(_save(fs, ck, "a"), "a")
    dead = _save(fs, ck, "b")  # a save whose writers died before the commit
    assert ck.latest() == "a"
    assert ck.abandoned() == [dead]
    assert ck.cleanup(older_than=3600) == []  # may still be running
    assert ck.cleanup() == [dead] and not fs.exists(dead)
    ck.commit(_save(fs, ck, "b"), "b")
    assert ck.latest() == "b" and ck.names() == ["a", "b"]
    assert [n for n in fs.listdir("/ckpt") if n.startswith(".")] == []


def test_a_commit_again_after_a_crash_between_rename_and_pointer_finishes(fs):
    ck = CheckpointDir(fs, "/ckpt")
    ck.commit(_save(fs, ck, "a"), "a")
    staging = _save(fs, ck, "b")
    real = ck._point_latest
    ck._point_latest = lambda name: (_ for _ in ()).throw(err.Unavailable("crash"))
    with pytest.raises(err.Unavailable):
        ck.commit(staging, "b")
    ck._point_latest = real
    assert ck.latest() == "a"  # renamed, not yet pointed to: still the previous one
    assert ck.commit(staging, "b") == "/ckpt/b" and ck.latest() == "b"


def test_bad_names_and_collisions_are_errno_errors_that_change_nothing(fs):
    ck = CheckpointDir(fs, "/ckpt")
    for bad in ("", "a/b", ".hidden", "latest", "x\0y"):
        with pytest.raises(err.InvalidArgument):
            ck.stage(bad)
    with pytest.raises(err.InvalidArgument):
        ck.stage("ok", token="../x")
    staging = _save(fs, ck, "a")
    ck.commit(_save(fs, ck, "a"), "a")  # another save of "a" committed first
    with pytest.raises(FileExistsError) as e:
        ck.commit(staging, "a")
    assert e.value.errno == errno.EEXIST
    assert fs.exists(staging) and ck.latest() == "a"
    with pytest.raises(FileExistsError):
        ck.stage("a")
    with pytest.raises(err.InvalidArgument):
        ck.commit(staging, "other")  # not a staging directory of "other"
    with pytest.raises(FileNotFoundError):
        ck.commit("/ckpt/.c.staging-0000", "c")
    with pytest.raises(FileNotFoundError):
        ck.manifest("nope")


def test_verify_finds_a_file_that_differs_from_the_marker(fs):
    ck = CheckpointDir(fs, "/ckpt")
    ck.commit(_save(fs, ck, "a"), "a")
    fs.write_bytes("/ckpt/a/rank1.bin", b"short")
    with pytest.raises(OSError) as e:
        ck.verify("a")
    assert e.value.errno == errno.EIO
    assert json.loads(fs.read_bytes(f"/ckpt/a/{COMMIT}"))["name"] == "a"
