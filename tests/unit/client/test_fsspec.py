"""The dfs:// fsspec filesystem against the real ``data_cluster``: fsspec's own
abstract test suite (copy, get, put, open, pipe) and direct checks, pandas and
pyarrow round trips when they are installed."""

from __future__ import annotations

import functools
import itertools
import os
import posixpath

import fsspec
import pytest
from fsspec.tests.abstract import AbstractCopyTests, AbstractFixtures, AbstractGetTests, AbstractPutTests
from fsspec.tests.abstract.common import GLOB_EDGE_CASES_TESTS

try:
    from fsspec.tests.abstract import AbstractOpenTests, AbstractPipeTests
except ImportError:  # older fsspec
    AbstractOpenTests = AbstractPipeTests = object

from dfs.client.fsspec import DfsFileSystem

_n = itertools.count()


@pytest.fixture(scope="module")
def dfs_fs(data_cluster):
    fs = fsspec.filesystem("dfs", mgmt=data_cluster.mgmt_addresses, uid=0, gid=0)
    # small files inline (docs/design/data.md): the suite's many tiny files skip the data servers
    for top in ("/fsspec-abstract", "/fsspec"):
        fs.makedirs(top, exist_ok=True)
        c = fs.client
        c.run(c.meta.setlayout(c.stat(top).st_ino, 0, inline=True))
    yield fs
    fs.close()
    DfsFileSystem.clear_instance_cache()


class DfsFixtures(AbstractFixtures):
    @pytest.fixture
    def fs(self, dfs_fs):
        return dfs_fs

    @pytest.fixture
    def fs_join(self):
        return posixpath.join

    @pytest.fixture
    def fs_path(self, dfs_fs):
        p = f"/fsspec-abstract/{next(_n)}"
        dfs_fs.makedirs(p, exist_ok=True)
        return p


def _fewer_globs(fn):
    """The glob edge cases (32 per suite, each building a tree of files on the cluster)
    cut to every third one, to keep the suite's time; DFS_FSSPEC_FULL=1 runs them all."""
    cases = GLOB_EDGE_CASES_TESTS["argvalues"]
    if not os.environ.get("DFS_FSSPEC_FULL"):
        cases = cases[::3]

    @functools.wraps(fn)
    def test(self, *a, **kw):
        return fn(self, *a, **kw)

    test.pytestmark = [m for m in getattr(fn, "pytestmark", []) if m.name != "parametrize"]
    return pytest.mark.parametrize(GLOB_EDGE_CASES_TESTS["argnames"], cases)(test)


class TestDfsCopy(AbstractCopyTests, DfsFixtures):
    test_copy_glob_edge_cases = _fewer_globs(AbstractCopyTests.test_copy_glob_edge_cases)


class TestDfsGet(AbstractGetTests, DfsFixtures):
    test_get_glob_edge_cases = _fewer_globs(AbstractGetTests.test_get_glob_edge_cases)


class TestDfsPut(AbstractPutTests, DfsFixtures):
    test_put_glob_edge_cases = _fewer_globs(AbstractPutTests.test_put_glob_edge_cases)


class TestDfsOpen(AbstractOpenTests, DfsFixtures):
    pass


class TestDfsPipe(AbstractPipeTests, DfsFixtures):
    pass


# ---------------------------------------------------------------------- direct checks
@pytest.fixture
def top(dfs_fs):
    p = f"/fsspec/{next(_n)}"
    dfs_fs.makedirs(p)
    return p


def test_protocol_and_paths(dfs_fs, top):
    assert isinstance(fsspec.filesystem("dfs", mgmt=dfs_fs.client.meta.t.mgmt_addrs), DfsFileSystem)
    assert DfsFileSystem._strip_protocol("dfs:///a/b/") == "/a/b"
    assert DfsFileSystem._strip_protocol("dfs://a/b") == "/a/b"
    assert DfsFileSystem._strip_protocol("/a//b") == "/a/b"
    assert DfsFileSystem._strip_protocol("dfs://") == "/"
    assert dfs_fs.unstrip_protocol("/a") == "dfs:///a"


def test_fsspec_open_url(dfs_fs, data_cluster, top):
    so = {"mgmt": data_cluster.mgmt_addresses, "uid": 0, "gid": 0}
    with fsspec.open(f"dfs://{top}/hello.txt", "w", **so) as f:
        f.write("hi there\n")
    with fsspec.open(f"dfs://{top}/hello.txt", "r", **so) as f:
        assert f.read() == "hi there\n"
    assert dfs_fs.cat_file(f"{top}/hello.txt", start=3, end=-1) == b"there"
    assert dfs_fs.cat_file(f"{top}/hello.txt", start=-6) == b"there\n"


def test_ls_info_and_times(dfs_fs, top):
    dfs_fs.pipe_file(f"{top}/a/b.bin", b"12345")
    dfs_fs.mkdir(f"{top}/empty")
    with pytest.raises(FileExistsError):
        dfs_fs.mkdir(f"{top}/empty")
    dfs_fs.symlink(f"{top}/a/b.bin", f"{top}/lnk")
    names = dfs_fs.ls(top, detail=False)
    assert names == [f"{top}/a", f"{top}/empty", f"{top}/lnk"]
    infos = {i["name"]: i for i in dfs_fs.ls(top)}
    assert infos[f"{top}/a"]["type"] == "directory"
    assert infos[f"{top}/lnk"]["type"] == "file" and infos[f"{top}/lnk"]["islink"]
    info = dfs_fs.info(f"dfs://{top}/a/b.bin")
    assert info["size"] == 5 and info["type"] == "file" and info["name"] == f"{top}/a/b.bin"
    assert dfs_fs.created(f"{top}/a/b.bin").tzinfo is not None
    assert dfs_fs.modified(f"{top}/a/b.bin").timestamp() > 0
    assert dfs_fs.find(top) == [f"{top}/a/b.bin", f"{top}/lnk"]
    assert dfs_fs.du(f"{top}/a") == 5
    with pytest.raises(FileNotFoundError):
        dfs_fs.info(f"{top}/missing")


def test_mv_cp_rm(dfs_fs, top):
    dfs_fs.pipe_file(f"{top}/src/f1", b"one")
    dfs_fs.pipe_file(f"{top}/src/sub/f2", b"two")
    dfs_fs.cp_file(f"{top}/src/f1", f"{top}/f1copy")
    assert dfs_fs.cat(f"{top}/f1copy") == b"one"
    dfs_fs.mv(f"{top}/f1copy", f"{top}/moved")
    assert not dfs_fs.exists(f"{top}/f1copy") and dfs_fs.cat(f"{top}/moved") == b"one"
    dfs_fs.mv(f"{top}/src", f"{top}/dst", recursive=True)  # one rename
    assert dfs_fs.cat(f"{top}/dst/sub/f2") == b"two" and not dfs_fs.exists(f"{top}/src")
    dfs_fs.copy(f"{top}/dst", f"{top}/dst2", recursive=True)
    assert dfs_fs.cat(f"{top}/dst2/sub/f2") == b"two"
    dfs_fs.rm(f"{top}/dst", recursive=True)
    assert not dfs_fs.exists(f"{top}/dst")
    dfs_fs.touch(f"{top}/t")
    assert dfs_fs.size(f"{top}/t") == 0
    dfs_fs.touch(f"{top}/t", truncate=False)
    dfs_fs.rm_file(f"{top}/t")
    dfs_fs.rmdir(f"{top}/dst2/sub") if not dfs_fs.ls(f"{top}/dst2/sub") else None


def test_pandas_csv_and_parquet(dfs_fs, data_cluster, top):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    so = {"mgmt": data_cluster.mgmt_addresses, "uid": 0, "gid": 0}
    df = pd.DataFrame({"x": range(1000), "y": [f"v{i}" for i in range(1000)]})
    df.to_csv(f"dfs://{top}/t.csv", index=False, storage_options=so)
    assert pd.read_csv(f"dfs://{top}/t.csv", storage_options=so).equals(df)
    df.to_parquet(f"dfs://{top}/t.parquet", storage_options=so)
    assert pd.read_parquet(f"dfs://{top}/t.parquet", storage_options=so).equals(df)


def test_pyarrow_dataset(dfs_fs, top):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    pafs = PyFileSystem(FSSpecHandler(dfs_fs))
    table = pa.table({"a": list(range(100)), "b": [str(i) for i in range(100)]})
    pq.write_table(table, f"{top}/p.parquet", filesystem=pafs)
    assert pq.read_table(f"{top}/p.parquet", filesystem=pafs).equals(table)


def test_pyarrow_dataset_over_a_directory(dfs_fs, top):
    """A hive-partitioned parquet dataset written to a dfs directory, discovered, counted and
    read back with a partition filter and a column projection by ``pyarrow.dataset``."""
    pa = pytest.importorskip("pyarrow")
    ds = pytest.importorskip("pyarrow.dataset")
    pq = pytest.importorskip("pyarrow.parquet")
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    pafs = PyFileSystem(FSSpecHandler(dfs_fs))
    for part in range(4):
        rows = range(part * 100, part * 100 + 100)
        pafs.create_dir(f"{top}/ds/part={part}")
        pq.write_table(pa.table({"x": list(rows), "y": [f"v{i}" for i in rows]}),
                       f"{top}/ds/part={part}/data.parquet", filesystem=pafs)
    d = ds.dataset(f"{top}/ds", filesystem=pafs, format="parquet", partitioning="hive")
    assert len(d.files) == 4 and d.count_rows() == 400
    t = d.to_table(filter=ds.field("part") == 2, columns=["x"])
    assert t.column_names == ["x"] and sorted(t.column("x").to_pylist()) == list(range(200, 300))
    assert d.to_table().num_rows == 400


def test_hugging_face_datasets_load_parquet_and_webdataset_shards_through_dfs_urls(dfs_fs, data_cluster, top,
                                                                                  tmp_path, monkeypatch):
    """Hugging Face ``datasets`` loads parquet shards and WebDataset tar shards from ``dfs://``
    URLs, with the cluster in ``storage_options``, as it would from s3:// or gs://. (Its offline
    mode refuses every non-local URL, so the Hub is pointed at a closed loopback port instead:
    nothing leaves the machine, and a Hub request would fail at once.)"""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    datasets = pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import io
    import tarfile

    so = {"mgmt": data_cluster.mgmt_addresses, "uid": 0, "gid": 0}
    for shard in range(2):
        rows = range(shard * 100, shard * 100 + 100)
        with dfs_fs.open(f"{top}/pq/train-{shard:05d}.parquet", "wb") as f:
            pq.write_table(pa.table({"x": list(rows), "text": [f"row {i}" for i in rows]}), f)
    ds = datasets.load_dataset("parquet", data_files=f"dfs://{top}/pq/*.parquet", storage_options=so,
                               cache_dir=str(tmp_path / "hf"), split="train")
    assert len(ds) == 200 and sorted(ds["x"]) == list(range(200)) and ds[0]["text"].startswith("row ")

    for shard in range(2):  # WebDataset: samples as key.ext members, grouped by key, in tar shards
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(shard * 10, shard * 10 + 10):
                for ext, body in (("txt", f"caption {i}".encode()), ("cls", str(i % 3).encode())):
                    info = tarfile.TarInfo(f"sample{i:05d}.{ext}")
                    info.size = len(body)
                    tar.addfile(info, io.BytesIO(body))
        with dfs_fs.open(f"{top}/wds/shard-{shard:05d}.tar", "wb") as f:
            f.write(buf.getvalue())
    wds = datasets.load_dataset("webdataset", data_files=f"dfs://{top}/wds/*.tar", storage_options=so,
                                cache_dir=str(tmp_path / "hf"), split="train")
    assert len(wds) == 20 and {"txt", "cls"} <= set(wds.column_names)
    assert sorted(wds["txt"]) == sorted(f"caption {i}" for i in range(20))
