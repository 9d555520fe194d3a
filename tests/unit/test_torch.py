"""dfs.torch with a real torch: datasets under DataLoader workers (fork and spawn), safetensors.

The datasets run against the real ``data_cluster`` (workers are processes, each
with its own client); skipped when torch is not installed."""

from __future__ import annotations

import errno
import itertools
import json
import os
import struct
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import dfs  # noqa: E402
from dfs.torch import DfsDataset, DfsIterableDataset, load_safetensors  # noqa: E402

_n = itertools.count()
N = 24


def decode_index(path: str, data: bytearray) -> int:
    """Module-level (picklable for spawn): the file's number, checked against its contents."""
    i = int(path.rsplit("f", 1)[1])
    assert bytes(data) == str(i).encode() * 50
    return i


@pytest.fixture(scope="module")
def conn(data_cluster):
    return {"cluster": data_cluster.config_path, "uid": 0, "gid": 0, "groups": ()}


@pytest.fixture(scope="module")
def fs(conn):
    c = dfs.connect(**conn)
    yield c
    c.close()


@pytest.fixture(scope="module")
def tree(fs):
    top = f"/torch{next(_n)}"
    for i in range(N):
        d = f"{top}/{'ab'[i % 2]}"
        fs.makedirs(d, exist_ok=True)
        fs.write_bytes(f"{d}/f{i}", str(i).encode() * 50)
    return top


def test_importing_dfs_never_imports_torch():
    code = ("import sys, dfs, dfs.client.api, dfs.client.fsspec; dfs.connect; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_map_dataset_lists_a_tree_and_decodes(tree, conn):
    ds = DfsDataset(tree, decode_index, connect=conn)
    assert len(ds) == N and ds.files == sorted(ds.files)
    assert sorted(ds[i] for i in range(N)) == list(range(N))
    assert ds.__getitems__([3, 0, 3]) == [ds[3], ds[0], ds[3]]
    ds.close()


# A training script's process: no dfs client runs when the DataLoader forks its workers (the
# datasets close the one they list with). The test process itself has clients running, so
# the script runs as a process of its own.
SCRIPT = """
import json, sys, torch
from dfs.torch import DfsDataset, DfsIterableDataset
from tests.unit.test_torch import decode_index
conn, top, ctx = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
out = {}
ds = DfsDataset(top, decode_index, connect=conn)
dl = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True, num_workers=2, multiprocessing_context=ctx,
                                 generator=torch.Generator().manual_seed(1), persistent_workers=True)
out["map"] = [[int(x) for b in dl for x in b] for _epoch in range(2)]
out["iter"] = []
for rank in range(2):
    ids = DfsIterableDataset(top, decode_index, connect=conn, rank=rank, world_size=2, seed=7)
    dl = torch.utils.data.DataLoader(ids, batch_size=None, num_workers=2, multiprocessing_context=ctx)
    out["iter"].append([int(x) for x in dl])
    out["len"] = len(ids)
print(json.dumps(out))
"""


@pytest.mark.slow  # spawned workers import torch: minutes on a loaded machine
@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_datasets_under_dataloader_workers(tree, conn, ctx):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(conn), tree, ctx], capture_output=True,
                       text=True, cwd=root, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for epoch in out["map"]:
        assert sorted(epoch) == list(range(N))  # every file once per epoch, across the workers
    a, b = out["iter"]
    assert len(a) == len(b) == N // 2 == out["len"]
    assert sorted(a + b) == list(range(N))  # every file once, across ranks and workers


def test_a_worker_forked_while_a_client_runs_says_so(tree, conn, fs):
    assert fs is not None  # a client runs in this process
    ds = DfsDataset(tree, decode_index, connect=conn)
    dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context="fork")
    with pytest.raises(Exception, match="forked while"):
        next(iter(dl))


def test_iterable_dataset_orders_by_seed_and_epoch(tree, conn, fs):
    ds = DfsIterableDataset(tree, decode_index, client=fs, seed=3)
    first = list(ds)
    assert sorted(first) == list(range(N))
    assert list(ds) == first  # the same epoch, the same order
    ds.set_epoch(1)
    second = list(ds)
    assert sorted(second) == list(range(N)) and second != first
    assert [int(p.rsplit("f", 1)[1]) for p in ds.order()] == second
    unshuffled = DfsIterableDataset(tree, decode_index, client=fs, shuffle=False)
    assert [int(p.rsplit("f", 1)[1]) for p in unshuffled.order()] == [decode_index(p, fs.read_bytes(p))
                                                                       for p in sorted(unshuffled.files)]


def test_uneven_split_pads_every_rank_to_the_same_length(fs, tree):
    files = DfsDataset(tree, client=fs).files[:5]
    lens = [len(DfsIterableDataset(files, client=fs, rank=r, world_size=3).order()) for r in range(3)]
    assert lens == [2, 2, 2]
    from dfs.common import errors as err
    with pytest.raises(err.InvalidArgument):
        DfsIterableDataset(files, client=fs, rank=3, world_size=3)


def test_safetensors_load_matches_the_reference(fs, tmp_path):
    st = pytest.importorskip("safetensors.torch")
    tensors = {
        "w": torch.randn(300, 257),
        "b": torch.arange(17, dtype=torch.int64),
        "h": torch.randn(5, 3).to(torch.bfloat16),
        "m": torch.tensor([True, False, True]),
        "s": torch.tensor(3.5),
        "e": torch.empty(0, 4),
        "big": torch.randn(3 << 20),  # 12 MiB: several chunks read in parallel
    }
    local = tmp_path / "m.safetensors"
    st.save_file(tensors, str(local), metadata={"format": "pt"})
    p = f"/torch{next(_n)}.safetensors"
    fs.write_bytes(p, local.read_bytes())
    got, meta = load_safetensors(p, client=fs, metadata=True)
    ref = st.load_file(str(local))
    assert meta == {"format": "pt"}
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape
        assert torch.equal(got[k], ref[k])


@pytest.mark.parametrize("blob", [
    b"",
    struct.pack("<Q", 1 << 40),
    struct.pack("<Q", 4) + b"nope",
    struct.pack("<Q", 2) + b"[]",
    (lambda h: struct.pack("<Q", len(h)) + h)(json.dumps({"t": {"dtype": "F32", "shape": [4],
                                                                "data_offsets": [0, 16]}}).encode()),
    (lambda h: struct.pack("<Q", len(h)) + h + bytes(8))(json.dumps({"t": {"dtype": "F32", "shape": [4],
                                                                           "data_offsets": [0, 8]}}).encode()),
    (lambda h: struct.pack("<Q", len(h)) + h + bytes(8))(json.dumps({"t": {"dtype": "Q9", "shape": [2],
                                                                           "data_offsets": [0, 8]}}).encode()),
])
def test_a_malformed_safetensors_file_is_einval(fs, blob):
    p = f"/torch{next(_n)}.bad"
    fs.write_bytes(p, blob)
    with pytest.raises(OSError) as e:
        load_safetensors(p, client=fs)
    assert e.value.errno == errno.EINVAL and e.value.filename == p


def test_safetensors_of_a_missing_file_is_enoent(fs):
    with pytest.raises(FileNotFoundError):
        load_safetensors("/no/such.safetensors", client=fs)


# ---------------------------------------------------------------------------- torch.distributed.checkpoint
def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(256, 64, generator=g), "b": torch.randn(64, generator=g)},
            "step": torch.tensor(seed), "big": torch.randn(1 << 20, generator=g)}


def test_dcp_save_commits_atomically_and_load_reads_latest(fs):
    import torch.distributed.checkpoint as dcp

    from dfs.checkpoint import CheckpointDir
    from dfs.torch import DfsStorageReader, DfsStorageWriter

    root = f"/dcp{next(_n)}"
    for step in (1, 2):
        w = DfsStorageWriter(root, f"step{step}", client=fs, thread_count=2)
        dcp.save(_state(step), storage_writer=w)
        assert w.committed == f"{root}/step{step}"
    ck = CheckpointDir(fs, root)
    assert ck.latest() == "step2" and ck.names() == ["step1", "step2"] and ck.abandoned() == []
    ck.verify("step2")
    assert ".metadata" in ck.manifest("step2")["files"]
    got = _state(0)
    dcp.load(got, storage_reader=DfsStorageReader(root, client=fs))
    want = _state(2)
    assert torch.equal(got["model"]["w"], want["model"]["w"]) and torch.equal(got["big"], want["big"])
    assert int(got["step"]) == 2
    older = _state(0)
    dcp.load(older, storage_reader=DfsStorageReader(root, "step1", client=fs))
    assert torch.equal(older["big"], _state(1)["big"])
    with pytest.raises(dcp.api.CheckpointException, match="File exists"):  # a name is committed once
        dcp.save(_state(3), storage_writer=DfsStorageWriter(root, "step2", client=fs))
    assert ck.latest() == "step2" and ck.abandoned() == []
    with pytest.raises(FileNotFoundError):
        DfsStorageReader(f"/dcp{next(_n)}", client=fs)


def test_torch_fsspec_writer_and_reader_work_on_dfs_urls(conn, fs):
    """The other route the issue names: torch's own fsspec storage on dfs:// (not atomic)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    url = f"dfs:///dcpfs{next(_n)}/c"
    opts = {"cluster": conn["cluster"], "uid": 0, "gid": 0}
    dcp.save(_state(5), storage_writer=FsspecWriter(url, sync_files=False, **opts))
    got = _state(0)
    dcp.load(got, storage_reader=FsspecReader(url, **opts))
    assert torch.equal(got["big"], _state(5)["big"])


DCP_RANKS = """
import json, os, sys
import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
import dfs
from dfs.torch import DfsStorageReader, DfsStorageWriter

def rank_main(rank, conn, root, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    with dfs.connect(**conn) as fs:
        state = {f"r{rank}": torch.full((1000,), float(rank)), "shared": torch.arange(10)}
        dcp.save(state, storage_writer=DfsStorageWriter(root, "s1", client=fs))
        got = {f"r{rank}": torch.zeros(1000), "shared": torch.zeros(10, dtype=torch.int64)}
        dcp.load(got, storage_reader=DfsStorageReader(root, client=fs))
        assert torch.equal(got[f"r{rank}"], state[f"r{rank}"]) and torch.equal(got["shared"], torch.arange(10))
    dist.destroy_process_group()

if __name__ == "__main__":
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    torch.multiprocessing.spawn(rank_main, args=(json.loads(sys.argv[1]), sys.argv[2], port), nprocs=2)
    print("ok")
"""


@pytest.mark.slow  # two spawned ranks import torch
def test_dcp_from_two_ranks_commits_one_checkpoint(conn, fs, tmp_path):
    from dfs.checkpoint import CheckpointDir

    root = f"/dcp{next(_n)}"
    script = tmp_path / "ranks.py"
    script.write_text(DCP_RANKS)
    r = subprocess.run([sys.executable, str(script), json.dumps(conn), root], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    ck = CheckpointDir(fs, root)
    assert ck.latest() == "s1" and ck.abandoned() == []
    files = ck.manifest("s1")["files"]
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(files)  # both ranks' files, one commit
    ck.verify("s1")
