"""dfs: a distributed file system.

The public API (docs/design/client.md)::

    import dfs
    with dfs.connect() as fs:               # or dfs.connect(mgmt=["host:port"]), dfs.connect("path/cluster.toml")
        with fs.open("/hello.txt", "w") as f:
            f.write("hi")
        fs.listdir("/")

``connect`` returns a synchronous ``Client``; ``aconnect`` an ``AsyncClient`` for
asyncio code. Errors are ``DfsError`` (``dfs.errors``): ``OSError`` subclasses
with the errno a local file system gives. fsspec finds the ``dfs://`` protocol
through its entry point (``dfs.client.fsspec.DfsFileSystem``).

Names load lazily, so the server processes that import ``dfs.*`` do not pay for
the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "connect",
    "aconnect",
    "Client",
    "AsyncClient",
    "AsyncFile",
    "Mode",
    "StrictMode",
    "LazyMode",
    "Caller",
    "errors",
    "DfsError",
    "__version__",
]

_LAZY = {
    "connect": "dfs.client.api",
    "aconnect": "dfs.client.api",
    "Client": "dfs.client.api",
    "AsyncClient": "dfs.client.api",
    "AsyncFile": "dfs.client.api",
    "Mode": "dfs.client.api",
    "StrictMode": "dfs.client.api",
    "LazyMode": "dfs.client.api",
    "Caller": "dfs.common.records",
    "DfsError": "dfs.common.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from dfs.client.api import AsyncClient, AsyncFile, Client, LazyMode, Mode, StrictMode, aconnect, connect
    from dfs.common import errors
    from dfs.common.errors import DfsError
    from dfs.common.records import Caller


def __getattr__(name: str):
    if name == "errors":
        mod = importlib.import_module("dfs.common.errors")
        globals()["errors"] = mod
        return mod
    modname = _LAZY.get(name)
    if modname is None:
        raise AttributeError(f"module 'dfs' has no attribute {name!r}")
    value = getattr(importlib.import_module(modname), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
