"""Lower layers never import higher ones (see docs/internals.md)."""

from __future__ import annotations

import ast
import pathlib

import dfs

ROOT = pathlib.Path(dfs.__file__).parent

# package -> packages it may import (besides itself and the generated stubs)
ALLOWED = {
    "common": set(),
    "kv": {"common"},
    "consensus": {"common", "kv"},
    "mgmt": {"common", "kv", "consensus", "rpc"},  # rpc: the servers' auth (dfs.rpc.auth)
    "meta": {"common", "kv", "consensus", "rpc"},
    "data": {"common", "kv", "rpc"},
    "rpc": {"common"},
    "client": {"common", "rpc"},
    "fuse": {"common", "rpc", "client"},
}


def imports(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dfs."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("dfs."):
                    out.add(a.name.split(".")[1])
    return out


def test_import_direction():
    bad = []
    for pkg, allowed in ALLOWED.items():
        for f in (ROOT / pkg).rglob("*.py"):
            for dep in imports(f) - allowed - {pkg, "_proto", "_native"}:
                bad.append(f"{f.relative_to(ROOT)} imports dfs.{dep}")
    assert not bad, "\n".join(bad)
