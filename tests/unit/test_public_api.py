"""The curated public API of the ``dfs`` package."""

from __future__ import annotations

import importlib
import subprocess
import sys

import dfs

CURATED = ["connect", "aconnect", "Client", "AsyncClient", "AsyncFile", "Mode", "StrictMode", "LazyMode", "Caller",
           "errors", "DfsError", "__version__"]


def test_all_is_the_curated_list():
    assert dfs.__all__ == CURATED


def test_every_name_imports():
    for name in dfs.__all__:
        assert getattr(dfs, name) is not None, name
    ns: dict = {}
    exec("from dfs import *", ns)
    assert set(CURATED) <= set(ns)
    assert dfs.errors is importlib.import_module("dfs.common.errors")
    assert issubclass(dfs.DfsError, OSError)
    assert issubclass(dfs.errors.NotFound, FileNotFoundError)
    from dfs.client.api import Client, connect

    assert dfs.Client is Client and dfs.connect is connect


def test_unknown_attribute():
    import pytest

    with pytest.raises(AttributeError):
        dfs.no_such_name  # noqa: B018


def test_import_is_lazy():
    """`import dfs` (every server process does it) does not load the client."""
    code = "import sys, dfs; print('dfs.client.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_fsspec_entry_point():
    from importlib.metadata import entry_points

    eps = {e.name: e.value for e in entry_points(group="fsspec.specs")}
    assert eps.get("dfs") == "dfs.client.fsspec:DfsFileSystem"
