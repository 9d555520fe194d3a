"""PyTorch data loading from dfs: datasets that survive DataLoader workers, and safetensors loads.

* ``DfsDataset``: map-style, a list of files (or every file under a directory)
  plus a ``decode(path, data)`` function. A DataLoader with batching calls
  ``__getitems__`` with the sampler's indices of one batch: the batch's files
  are fetched concurrently (``Client.read_many``) instead of one by one.
* ``DfsIterableDataset``: the same files, the epoch's order decided here
  (shuffled by ``seed`` and ``set_epoch``), split across ranks and then across
  DataLoader workers; each worker streams its share through ``read_many`` so
  the next files are on their way while the current one is decoded.
* ``DfsStorageWriter`` / ``DfsStorageReader``: ``torch.distributed.checkpoint``
  storage that commits a checkpoint of many ranks' files atomically
  (dfs/checkpoint.py: staging directory, commit marker, one rename, ``latest``).
* ``load_safetensors``: the header first, then every tensor's bytes with one
  read of the data region, which the file handle splits into chunk reads sent
  in parallel into one buffer; tensors are views of that buffer.

Worker safety: a dataset never carries a client across a process boundary. It
keeps the ``dfs.connect`` arguments and makes its client lazily in the process
that uses it (a forked worker sees the parent's pid in the dataset and makes
its own; a spawned one unpickles a dataset without a client). ``decode`` must
be picklable for the spawn start method (a module-level function).

This is the only module of dfs that imports torch; ``import dfs`` never does
(torch is the optional ``ai`` extra). Imports: torch, dfs.common, dfs.client, dfs.checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno as E
import json
import os
import posixpath
import random
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.distributed.checkpoint.filesystem import FileSystemBase, FileSystemReader, FileSystemWriter, _StoragePrefix
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from dfs.checkpoint import CheckpointDir, check_name
from dfs.client.loop import live_at_fork
from dfs.client.prefetch import DEFAULT_MAX_BYTES
from dfs.common import errors as err

__all__ = ["DfsDataset", "DfsIterableDataset", "DfsStorageWriter", "DfsStorageReader", "load_safetensors", "list_files",
           "raw"]


def raw(path: str, data: bytearray) -> bytearray:
    """The default decode: the file's bytes as they are."""
    return data


def list_files(client, root: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Every regular file under ``root`` (recursively), sorted, optionally only those
    ending in one of ``suffixes``."""
    out = []
    for top, _dirs, files in client.walk(root):
        for f in files:
            if suffixes is None or f.endswith(suffixes):
                out.append(os.path.join(top, f))
    out.sort()
    return out


class _ClientPerProcess:
    """A dfs client made on first use in each process, never pickled, never shared across fork."""

    def __init__(self, connect: dict | None, client=None) -> None:
        self._connect = dict(connect or {})
        self._client = client
        self._pid = os.getpid() if client is not None else None

    def client(self):
        if self._client is None or self._pid != os.getpid():
            _check_fork()
            # A forked child's copy of the parent's client has no loop thread: drop it, unclosed
            # (closing it would wait on a thread that does not exist here).
            self._client = _connect(self._connect)
            self._pid = os.getpid()
        return self._client

    def lister(self):
        """The client to list ``files`` with in the constructor: the one given, else one made
        for it and closed after (a client left running in the parent would make forked
        DataLoader workers unable to use gRPC)."""
        if self._client is not None:
            return contextlib.nullcontext(self._client)
        return contextlib.closing(_connect(self._connect))

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None

    def __getstate__(self):
        return {"_connect": self._connect, "_client": None, "_pid": None}


def _check_fork() -> None:
    n = live_at_fork()
    if n:
        raise err.DfsError(
            f"this process was forked while {n} dfs client(s) ran in its parent: gRPC cannot be used "
            "after such a fork. Close the parent's clients before the DataLoader starts its workers "
            "(the datasets keep none open), or use multiprocessing_context='spawn' or 'forkserver'",
            code=E.EBUSY)


def _files_of(files: Sequence[str] | str, clients: _ClientPerProcess, suffixes) -> list[str]:
    if isinstance(files, (str, bytes, os.PathLike)):
        with clients.lister() as c:
            return list_files(c, os.fsdecode(files), suffixes)
    return [os.fsdecode(f) for f in files]


class DfsDataset(Dataset):
    """Map-style dataset: ``files`` (a list of paths, or a directory listed recursively) and
    ``decode(path, data) -> sample``. ``connect``: the ``dfs.connect`` keyword arguments each
    process's client is made with (``client``: one to use in this process only)."""

    def __init__(self, files: Sequence[str] | str, decode: Callable[[str, bytearray], Any] = raw, *,
                 connect: dict | None = None, client=None, suffixes: tuple[str, ...] | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._clients = _ClientPerProcess(connect, client)
        self.files = _files_of(files, self._clients, suffixes)
        self.decode = decode
        self.max_bytes = max_bytes

    @property
    def client(self):
        return self._clients.client()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        p = self.files[index]
        return self.decode(p, self.client.read_bytes(p))

    def __getitems__(self, indices: Sequence[int]) -> list:
        """One batch (the sampler's indices): its files fetched concurrently, in its order."""
        paths = [self.files[i] for i in indices]
        return [self.decode(p, d) for p, d in
                self.client.read_many(paths, ahead=max(1, len(paths)), max_bytes=self.max_bytes)]

    def close(self) -> None:
        self._clients.close()


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class DfsIterableDataset(IterableDataset):
    """Iterable dataset over ``files`` (a list or a directory): the epoch's order (shuffled
    with ``seed`` + the epoch given to ``set_epoch`` when ``shuffle``), then this rank's share
    (``order[rank::world_size]``, padded by wrapping around so that every rank gets as many
    samples, as DistributedSampler does), then this DataLoader worker's share of that;
    streamed through ``read_many`` with ``ahead`` files in flight. ``rank``/``world_size``:
    default torch.distributed's when initialised, else $RANK/$WORLD_SIZE, else 0/1."""

    def __init__(self, files: Sequence[str] | str, decode: Callable[[str, bytearray], Any] = raw, *,
                 connect: dict | None = None, client=None, suffixes: tuple[str, ...] | None = None,
                 shuffle: bool = True, seed: int = 0, rank: int | None = None, world_size: int | None = None,
                 ahead: int = 64, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._clients = _ClientPerProcess(connect, client)
        self.files = _files_of(files, self._clients, suffixes)
        self.decode = decode
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise err.InvalidArgument(f"rank {self.rank} is not in [0, {self.world_size})")
        self.ahead = ahead
        self.max_bytes = max_bytes

    @property
    def client(self):
        return self._clients.client()

    def set_epoch(self, epoch: int) -> None:
        """The next iteration's order (call it before each epoch, as with DistributedSampler)."""
        self.epoch = epoch

    def order(self) -> list[str]:
        """This process's files for the current epoch, in the order they are yielded."""
        files = list(self.files)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(files)
        per_rank = -(-len(files) // self.world_size) if files else 0
        if files and len(files) < per_rank * self.world_size:
            files += files[:per_rank * self.world_size - len(files)]
        mine = files[self.rank::self.world_size]
        w = get_worker_info()
        return mine if w is None else mine[w.id::w.num_workers]

    def __len__(self) -> int:
        return -(-len(self.files) // self.world_size) if self.files else 0

    def __iter__(self) -> Iterator:
        for p, data in self.client.read_many(self.order(), ahead=self.ahead, max_bytes=self.max_bytes):
            yield self.decode(p, data)

    def close(self) -> None:
        self._clients.close()


# ---------------------------------------------------------------------------- safetensors
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_HEADER_MAX = 100 << 20  # as the safetensors library's own limit


def _bad(path, why: str) -> err.InvalidArgument:
    e = err.InvalidArgument(f"not a safetensors file: {why}")
    e.filename = path
    return e


def _parse_header(path, header: bytes, data_len: int) -> tuple[dict, list[tuple[str, torch.dtype, list, int, int]]]:
    try:
        h = json.loads(header)
    except (UnicodeDecodeError, ValueError):
        raise _bad(path, "the header is not JSON") from None
    if not isinstance(h, dict):
        raise _bad(path, "the header is not a JSON object")
    meta = h.pop("__metadata__", None) or {}
    out = []
    for name, t in h.items():
        try:
            dtype = _DTYPES[t["dtype"]]
            shape = [int(d) for d in t["shape"]]
            begin, end = (int(x) for x in t["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _bad(path, f"tensor {name!r} has a bad entry") from None
        n = 1
        for d in shape:
            if d < 0:
                raise _bad(path, f"tensor {name!r} has a negative dimension")
            n *= d
        if not 0 <= begin <= end <= data_len or end - begin != n * dtype.itemsize:
            raise _bad(path, f"tensor {name!r} has offsets outside the file or of the wrong size")
        out.append((name, dtype, shape, begin, end))
    return meta, out


def load_safetensors(path: str, *, client=None, connect: dict | None = None, metadata: bool = False):
    """The tensors of a safetensors file on dfs, as ``safetensors.torch.load_file`` gives them
    (CPU tensors by name), read as: the 8-byte header length, the header, then the whole
    data region with one read that the file handle sends as parallel chunk reads into one
    buffer (no per-tensor round trip, no copy after the data plane's). The tensors share
    that buffer. ``metadata=True``: ``(tensors, the header's __metadata__)``. A malformed
    file is EINVAL."""
    own = client is None
    c = client if client is not None else _connect(connect)
    try:
        tensors, meta = c.run(_load(c.aio, path))
    finally:
        if own:
            c.close()
    return (tensors, meta) if metadata else tensors


def _connect(connect: dict | None):
    import dfs

    return dfs.connect(**(connect or {}))


async def _load(aio, path) -> tuple[dict, dict]:
    ref = await aio.open_handle(path, os.O_RDONLY)
    try:
        size = ref.size
        if size < 8:
            raise _bad(path, "shorter than its header length")
        head = await ref.pread(0, 8)
        (n,) = struct.unpack("<Q", bytes(head))
        if n > _HEADER_MAX or 8 + n > size:
            raise _bad(path, "the header length is larger than the file")
        meta, specs = _parse_header(path, bytes(await ref.pread(8, n)), size - 8 - n)
        buf = bytearray(size - 8 - n)
        got = await ref.preadinto(8 + n, buf) if buf else 0
        if got != len(buf):
            raise _bad(path, "the file shrank while it was read")
    finally:
        await ref.close()
    tensors = {}
    for name, dtype, shape, begin, end in specs:
        if end == begin:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(buf, dtype=dtype, count=(end - begin) // dtype.itemsize,
                                             offset=begin).reshape(shape)
    return tensors, meta


# ---------------------------------------------------------------------------- torch.distributed.checkpoint
# The writer and reader of atomic checkpoints (dfs/checkpoint.py): the coordinator makes the
# staging directory while planning and sends its name to every rank with the plan; the ranks
# write their files there (torch's own file format and writer threads, over the dfs library);
# the coordinator's ``finish`` writes torch's ``.metadata`` there and commits (one rename).


class _DcpFs(FileSystemBase):
    """torch.distributed.checkpoint's file system interface over a dfs ``Client``; a written
    file is fsync'd before its close (torch's own fsync needs a descriptor)."""

    def __init__(self, client) -> None:
        self.client = client

    @contextlib.contextmanager
    def create_stream(self, path, mode: str):
        f = self.client.open(os.fspath(path), mode)
        if any(ch in mode for ch in "wax+"):
            f = _SyncedOnClose(f)
        try:
            yield f
        finally:
            f.close()

    def concat_path(self, path, suffix: str) -> str:
        return posixpath.join(os.fspath(path), suffix)

    def init_path(self, path) -> str:
        return os.fspath(path)

    def rename(self, path, new_path) -> None:
        self.client.replace(os.fspath(path), os.fspath(new_path))

    def mkdir(self, path) -> None:
        self.client.makedirs(os.fspath(path), exist_ok=True)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id) -> bool:
        return False

    def exists(self, path) -> bool:
        return self.client.exists(os.fspath(path))

    def rm_file(self, path) -> None:
        self.client.remove(os.fspath(path))

    def ls(self, path) -> list[str]:
        p = os.fspath(path)
        return [posixpath.join(p, n) for n in self.client.listdir(p)]

@dataclasses.dataclass
class _Staged(_StoragePrefix):
    staging: str = ""

class DfsStorageWriter(FileSystemWriter):
    """A ``torch.distributed.checkpoint`` writer that saves checkpoint ``name`` under ``root``
    on dfs atomically (see the module's docstring). Every rank builds it with the same
    ``root`` and ``name``; ``client`` (this process's) or ``connect`` (``dfs.connect``
    arguments). Other arguments as torch's ``FileSystemWriter`` (``sync_files`` is dfs's
    fsync at each file's close)."""

    def __init__(self, root: str, name: str, *, client=None, connect: dict | None = None,
                 single_file_per_rank: bool = True, sync_files: bool = True, thread_count: int = 1,
                 per_thread_copy_ahead: int = 10_000_000, **kw: Any) -> None:
        super().__init__(root, single_file_per_rank, False, thread_count, per_thread_copy_ahead,
                         overwrite=False, **kw)
        self.client = client if client is not None else _connect(connect)
        self._own = client is None
        self.fs = _DcpFs(self.client) if sync_files else _NoSyncFs(self.client)
        self.dir = CheckpointDir(self.client, root)
        self.name = check_name(name)
        self.path = self.dir.root
        self.committed: str | None = None

    def prepare_local_plan(self, plan):
        return plan  # no mkdir of a final directory, no "exists" probe: the staging dir is the coordinator's

    def prepare_global_plan(self, plans):
        staging = self.dir.stage(self.name)
        self.path = staging
        return [dataclasses.replace(p, storage_data=_Staged(f"__{i}_", staging)) for i, p in enumerate(plans)]

    def write_data(self, plan, planner):
        self.path = plan.storage_data.staging
        return super().write_data(plan, planner)

    def finish(self, metadata, results) -> None:
        super().finish(metadata, results)  # .metadata into the staging directory
        self.committed = self.dir.commit(self.path, self.name)

    def close(self) -> None:
        if self._own:
            self.client.close()

class _NoSyncFs(_DcpFs):
    @contextlib.contextmanager
    def create_stream(self, path, mode: str):
        with self.client.open(os.fspath(path), mode) as f:
            yield f


class _SyncedOnClose:
    """A dfs file whose close fsyncs first (torch's writer closes the stream itself)."""

    def __init__(self, f) -> None:
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def close(self) -> None:
        if not self._f.closed:
            try:
                self._f.flush()
                self._f.fsync()
            finally:
                self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

class DfsStorageReader(FileSystemReader):
    """A ``torch.distributed.checkpoint`` reader of checkpoint ``name`` under ``root`` (None:
    the one ``latest`` names; ENOENT when there is none)."""

    def __init__(self, root: str, name: str | None = None, *, client=None, connect: dict | None = None,
                 **kw: Any) -> None:
        super().__init__(root, **kw)
        self.client = client if client is not None else _connect(connect)
        self._own = client is None
        self.fs = _DcpFs(self.client)
        self.dir = CheckpointDir(self.client, root)
        if name is None:
            name = self.dir.latest()
            if name is None:
                e = err.NotFound(f"no checkpoint under {self.dir.root}")
                e.filename = self.dir.root
                raise e
        self.dir.manifest(name)
        self.name = name
        self.path = self.dir.path(name)

    def close(self) -> None:
        if self._own:
            self.client.close()
