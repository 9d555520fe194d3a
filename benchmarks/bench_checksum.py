"""CRC32C of a 64 KiB buffer: the compiled extension vs the pure-Python fallback.

    .venv/bin/python -m pytest benchmarks/ -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

import os

import pytest

from dfs.common import checksum

BUF = os.urandom(64 * 1024)


@pytest.mark.skipif(not checksum.NATIVE, reason="native crc32c extension not built")
def test_crc32c_native_64k(benchmark):
    benchmark(checksum.crc32c, BUF)


def test_crc32c_python_64k(benchmark):
    benchmark.pedantic(checksum.crc32c_py, args=(BUF,), rounds=5, iterations=1)
