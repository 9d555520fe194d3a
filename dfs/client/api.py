"""The client library's public API, gathered from the modules that implement it (docs/design/client.md).

    import dfs
    with dfs.connect() as fs:                     # the local `dfs cluster up` cluster
        fs.makedirs("/data/x", exist_ok=True)
        with fs.open("/data/x/a.txt", "w") as f:
            f.write("hello\\n")
        print(fs.stat("/data/x/a.txt").st_size, fs.listdir("/data/x"))

Layers, bottom up (each module's opener says more):

* ``core.Core``: the inode-level client core under the library and the FUSE
  mount: open files and ``FileHandle``s, server open handles (``leases``),
  the ``Mode``, the ``ChunkIO``;
* ``mode.Mode`` / ``mode.StrictMode``: the consistency policy the core asks
  before and tells after every request; ``lazy.LazyMode`` (over
  ``writeback``): lazy mode, and the default mode's lazy trees;
* ``paths.AsyncClient``: path resolution and the path API on the core;
* ``fileio``: ``AsyncFile``, ``RawFile`` and the ``io`` stack;
* ``sync.Client``: the synchronous facade (``loop.SyncFacade``);
* ``connect``: ``connect``/``aconnect``, ``find_cluster``, ``find_credentials``.

Errors are ``dfs.common.errors.DfsError``: ``OSError`` subclasses with the
errno a local file system would give (``FileNotFoundError``, ...).
Imports: dfs.common, dfs.wire, dfs.route and this package only.
"""

from __future__ import annotations

from dfs.client.connect import DEFAULT_DATA, aconnect, connect, default_caller, find_cluster, find_credentials
from dfs.client.core import Core, FileRef
from dfs.client.fileio import AsyncFile, RawFile, parse_mode
from dfs.client.lazy import LazyMode
from dfs.client.mode import Mode, StrictMode
from dfs.client.paths import MAXSYMLINKS, AsyncClient, ScandirEntry
from dfs.client.sync import Client

__all__ = [
    "AsyncClient", "AsyncFile", "Client", "Core", "FileRef", "Mode", "StrictMode", "LazyMode", "RawFile",
    "ScandirEntry",
    "connect", "aconnect", "find_cluster", "find_credentials", "default_caller", "parse_mode", "DEFAULT_DATA",
    "MAXSYMLINKS",
]
