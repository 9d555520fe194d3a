"""Data-path hot loops: the compiled dfs._native.datapath vs the pure-Python references.

* block_crcs of a 4 MiB chunk (64 per-64 KiB-block CRC32Cs);
* pieces of a 1 GiB range with 4 MiB chunks (256 pieces);
* chain_of for one chunk.

    .venv/bin/python -m pytest benchmarks/ -k datapath -p no:cacheprovider --benchmark-only

(name the directory, not the file: benchmarks/conftest.py collects bench_*.py
files, so naming the file collects it twice.)
"""

from __future__ import annotations

import os

import pytest

from dfs.common import blocks, layout

CHUNK = os.urandom(4 << 20)
CRCS = blocks.block_crcs(CHUNK) if blocks.NATIVE else b""
GIB = 1 << 30

native_blocks = pytest.mark.skipif(not blocks.NATIVE, reason="native datapath extension not built")
native_layout = pytest.mark.skipif(not layout.NATIVE, reason="native datapath extension not built")


@native_blocks
def test_block_crcs_native_4m(benchmark):
    benchmark(blocks.block_crcs, CHUNK)


def test_block_crcs_python_4m(benchmark):
    # The reference calls crc32c per block, so it is only as slow as that crc32c
    # (native when dfs._native.crc32c is built): this measures the Python loop
    # + join overhead on top of native CRCs.
    benchmark(blocks.block_crcs_py, CHUNK)


def test_block_crcs_pure_python_4m(benchmark, monkeypatch):
    # What a DFS_NO_NATIVE build gets: the reference loop over crc32c_py.
    from dfs.common.checksum import crc32c_py

    monkeypatch.setattr(blocks, "crc32c", crc32c_py)
    benchmark.pedantic(blocks.block_crcs_py, args=(CHUNK,), rounds=2, iterations=1)


@native_blocks
def test_first_bad_block_native_4m(benchmark):
    assert benchmark(blocks.first_bad_block, CHUNK, CRCS) == -1


def test_first_bad_block_python_4m(benchmark):
    assert benchmark(blocks.first_bad_block_py, CHUNK, CRCS or blocks.block_crcs_py(CHUNK)) == -1


@native_layout
def test_pieces_native_1g_4m(benchmark):
    assert len(benchmark(layout.pieces, 0, GIB, 4 << 20)) == 256


def test_pieces_python_1g_4m(benchmark):
    assert len(benchmark(layout.pieces_py, 0, GIB, 4 << 20)) == 256


@native_layout
def test_chain_of_native(benchmark):
    benchmark(layout.chain_of, 123456789, 7, layout.DEFAULT_LAYOUT, 12)


def test_chain_of_python(benchmark):
    benchmark(layout.chain_of_py, 123456789, 7, layout.DEFAULT_LAYOUT, 12)
