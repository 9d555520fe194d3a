"""Micro benchmarks (pytest-benchmark). Not part of the test run: pytest's
testpaths is ``tests``, and files here are named ``bench_*.py``, which only
this conftest collects. Run them with

    .venv/bin/python -m pytest benchmarks/ -p no:cacheprovider --benchmark-only

(add ``--benchmark-json=out.json`` to keep the figures; see docs/benchmarks.md).
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
