"""The layers of dfs: which package may import which (docs/internals.md shows this table).

Every module of every package under dfs/ is checked, the commands (cli, bench)
and the test support (testing) included: its imports -- absolute, relative,
inside functions, and ``importlib.import_module("dfs....")`` -- may only name
the packages its row allows. A new package fails the test until it has a row.
No production module may name dfs.testing at all (not even as a ``python -m``
argument): production code runs without the test support.
"""

from __future__ import annotations

import ast
import pathlib
import re

import dfs

ROOT = pathlib.Path(dfs.__file__).parent
DOCS = ROOT.parent / "docs" / "internals.md"
GENERATED = {"_proto", "_native"}  # made by the build, importable by every layer
TEST_SUPPORT = {"testing"}

# package -> the packages it may import (besides itself and the generated code).
# "dfs" is the package root, dfs/__init__.py: the public API (dfs.connect, dfs.errors).
# Rows are in layer order: a package imports only packages of rows above it.
LAYERS: dict[str, set[str]] = {
    # the foundation: records, errors, config, the cluster map; storage; consensus
    "common": set(),
    "kv": {"common"},
    "consensus": {"common", "kv"},
    # what every process speaks (frames, credentials), then how a client reaches servers
    "wire": {"common"},
    "route": {"common", "wire"},
    # the servers (route: a server calling others, as a client does)
    "mgmt": {"common", "kv", "consensus", "wire"},
    "meta": {"common", "kv", "consensus", "wire", "route"},
    "data": {"common", "kv", "wire", "route"},
    # the clients: one core, its public face, the FUSE adapter
    "client": {"common", "wire", "route"},
    "dfs": {"common", "client"},
    "fuse": {"common", "client"},
    # running and exercising a cluster: the launcher, the model-checked workload
    "local": {"common", "wire"},
    "stress": {"common", "dfs"},
    # the commands
    "bench": {"common", "wire", "route", "client", "dfs", "local", "stress"},
    "cli": {"common", "consensus", "wire", "route", "mgmt", "meta", "data", "client", "dfs", "fuse", "local",
            "bench"},
    # test support: any production package, never a command
    "testing": {"common", "kv", "consensus", "wire", "route", "mgmt", "meta", "data", "client", "dfs", "fuse",
                "local", "stress"},
}


def package_of(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else "dfs"


def modules() -> list[pathlib.Path]:
    return sorted(f for f in ROOT.rglob("*.py") if package_of(f) not in GENERATED)


def _layer(module: str) -> str | None:
    """The table's name for an imported module (None: not part of dfs)."""
    parts = module.split(".")
    if parts[0] != "dfs":
        return None
    if len(parts) == 1:
        return "dfs"
    sub = parts[1]
    return sub if sub in LAYERS or sub in GENERATED or (ROOT / sub).is_dir() else "dfs"


def imports(source: str, path: pathlib.Path) -> set[str]:
    """The dfs packages ``source`` (the module at ``path``) imports, by the table's names."""
    here = ("dfs", *path.relative_to(ROOT).parent.parts)  # the package a relative import starts from
    names: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ((base,) if base else ()))
            # `from dfs import x` imports the subpackage x when there is one
            names += [f"{base}.{a.name}" for a in node.names] if base == "dfs" else [base]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names.append(node.args[0].value)
    return {x for x in map(_layer, names) if x is not None}


def violations(path: pathlib.Path, source: str) -> list[str]:
    pkg = package_of(path)
    if pkg not in LAYERS:
        return [f"{path.relative_to(ROOT)}: package dfs.{pkg} has no row in LAYERS (place it in a layer)"]
    bad = [f"{path.relative_to(ROOT)} imports dfs.{dep}" if dep != "dfs" else
           f"{path.relative_to(ROOT)} imports dfs (the public API)"
           for dep in sorted(imports(source, path) - LAYERS[pkg] - {pkg} - GENERATED)]
    if pkg not in TEST_SUPPORT:
        bad += [f"{path.relative_to(ROOT)} names {m} (production code may not use the test support)"
                for m in _testing_names(source)]
    return bad


def _testing_names(source: str) -> list[str]:
    """Strings in ``source`` that are a dfs.testing module path (e.g. a ``-m`` argument), docstrings aside."""
    tree = ast.parse(source)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs and re.fullmatch(r"dfs\.testing(\.\w+)*", n.value)]


def test_every_package_imports_only_the_layers_below_it():
    bad = [v for f in modules() for v in violations(f, f.read_text())]
    assert not bad, "\n".join(bad)


def test_the_table_is_layered():
    """Every row names only rows above it: the table is an order, not a tangle."""
    seen: set[str] = set()
    for pkg, allowed in LAYERS.items():
        assert allowed <= seen, f"dfs.{pkg} may import {sorted(allowed - seen)}, which are not below it"
        seen.add(pkg)
    assert not TEST_SUPPORT & set().union(*LAYERS.values()), "a package may import the test support"


def test_every_package_has_a_row():
    pkgs = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()} - GENERATED
    assert pkgs | {"dfs"} == set(LAYERS)


def test_the_check_catches_what_it_is_for():
    assert violations(ROOT / "cli" / "x.py", "from dfs.testing.cluster import LocalCluster\n") == \
        ["cli/x.py imports dfs.testing"]
    assert violations(ROOT / "bench" / "x.py", "def f():\n    import dfs.testing.wait\n") == \
        ["bench/x.py imports dfs.testing"]
    assert violations(ROOT / "local" / "x.py", "ARGV = ['python', '-m', 'dfs.testing.netns']\n") == \
        ["local/x.py names dfs.testing.netns (production code may not use the test support)"]
    assert violations(ROOT / "kv" / "x.py", "def f():\n    from dfs.client.api import connect\n") == \
        ["kv/x.py imports dfs.client"]
    assert violations(ROOT / "meta" / "x.py", "from ..client import meta\n") == ["meta/x.py imports dfs.client"]
    assert violations(ROOT / "mgmt" / "x.py", "import importlib\nimportlib.import_module('dfs.meta.store')\n") == \
        ["mgmt/x.py imports dfs.meta"]
    assert violations(ROOT / "data" / "x.py", "import dfs\n") == ["data/x.py imports dfs (the public API)"]
    assert violations(ROOT / "local" / "x.py", "from dfs import client\n") == ["local/x.py imports dfs.client"]
    assert violations(ROOT / "newpkg" / "x.py", "")[0].startswith("newpkg/x.py: package dfs.newpkg has no row")
    assert violations(ROOT / "cli" / "x.py", '"""Unlike dfs.testing, ..."""\nfrom dfs.local import probe\n') == []
    assert violations(ROOT / "testing" / "x.py", "import subprocess\nARGV = ['-m', 'dfs.testing.netns']\n") == []


def test_the_docs_show_this_table():
    """docs/internals.md's layer table lists the same rows, with the same packages, in the same order."""
    text = DOCS.read_text()
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|", text.split("<!-- layers -->")[1], re.M)
    table = {pkg: set(re.findall(r"`(\w+)`", deps)) for pkg, deps in rows}
    assert list(table) == list(LAYERS) and table == LAYERS, "update the layer table in docs/internals.md"
