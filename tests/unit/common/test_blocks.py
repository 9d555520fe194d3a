"""Per-block CRC32C: native (dfs._native.datapath) == pure Python, byte for byte."""
from __future__ import annotations

import array
import os
import random
import struct

import pytest
from hypothesis import given, settings, strategies as st

from dfs.common import blocks
from dfs.common.blocks import BLOCK_SIZE, block_crcs, block_crcs_py, first_bad_block, first_bad_block_py
from dfs.common.checksum import crc32c

IMPLS = [
    pytest.param((block_crcs_py, first_bad_block_py), id="python"),
    pytest.param((block_crcs, first_bad_block), id="default"),
]

SIZES = [0, 1, 7, 4095, 4096, 4097, 65535, 65536, 65537, 3 * 65536 + 11, 1_000_003]


def test_native_is_built():
    if os.environ.get("DFS_NO_NATIVE"):
        pytest.skip("native extension disabled")
    assert blocks.NATIVE
    from dfs._native import datapath

    assert block_crcs is datapath.block_crcs
    assert first_bad_block is datapath.first_bad_block


@pytest.mark.parametrize("fns", IMPLS)
def test_format(fns):
    bc, _ = fns
    data = b"123456789" * 1000  # 9000 bytes: two full 4 KiB blocks and a short one
    out = bc(data, 4096)
    assert len(out) == 12
    assert struct.unpack("<3I", out) == (crc32c(data[:4096]), crc32c(data[4096:8192]), crc32c(data[8192:]))
    assert bc(b"", 4096) == b""
    assert bc(b"123456789", 4096) == struct.pack("<I", 0xE3069283)
    assert bc(data) == bc(data, BLOCK_SIZE) == struct.pack("<I", crc32c(data))


@pytest.mark.parametrize("block_size", [4096, 65536])
def test_block_crcs_native_matches_python(block_size):
    rng = random.Random(block_size)
    for size in SIZES + [rng.randrange(1, 300_000) | 1 for _ in range(10)]:
        data = rng.randbytes(size)
        assert block_crcs(data, block_size) == block_crcs_py(data, block_size), size


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=20_000), st.sampled_from([1, 3, 64, 4096, 65536]))
def test_block_crcs_equal_hypothesis(data, block_size):
    assert block_crcs(data, block_size) == block_crcs_py(data, block_size)


@pytest.mark.parametrize("fns", IMPLS)
def test_buffer_types(fns):
    bc, fb = fns
    raw = os.urandom(10_000)
    want = block_crcs_py(raw, 4096)
    mv = memoryview(b"xx" + raw + b"yy")[2:-2]
    for buf in (bytearray(raw), memoryview(raw), mv):
        assert bc(buf, 4096) == want
        assert fb(buf, want, 4096) == -1
    arr = array.array("I", range(3000))
    assert bc(arr, 4096) == block_crcs_py(arr.tobytes(), 4096)
    assert fb(arr, memoryview(bytearray(bc(arr, 4096))), 4096) == -1


@pytest.mark.parametrize("block_size", [4096, 65536])
def test_first_bad_block_corruption(block_size):
    rng = random.Random(7 * block_size)
    for size in SIZES[1:] + [rng.randrange(1, 400_000) for _ in range(10)]:
        data = bytearray(rng.randbytes(size))
        crcs = block_crcs_py(data, block_size)
        assert first_bad_block(data, crcs, block_size) == first_bad_block_py(data, crcs, block_size) == -1
        for _ in range(5):
            pos = rng.randrange(size)
            bad = bytearray(data)
            bad[pos] ^= 1 << rng.randrange(8)
            want = pos // block_size
            assert first_bad_block_py(bad, crcs, block_size) == want
            assert first_bad_block(bad, crcs, block_size) == want
        # Two corruptions: the first one wins.
        p1, p2 = sorted(rng.sample(range(size), 2)) if size > 1 else (0, 0)
        bad = bytearray(data)
        bad[p1] ^= 0xFF
        bad[p2] ^= 0x0F if p2 != p1 else 0
        assert first_bad_block(bad, crcs, block_size) == first_bad_block_py(bad, crcs, block_size)


@pytest.mark.parametrize("fns", IMPLS)
def test_first_bad_block_crc_list_shape(fns):
    bc, fb = fns
    data = os.urandom(10 * 4096 + 5)  # 11 blocks
    crcs = bc(data, 4096)
    assert fb(b"", b"", 4096) == -1
    assert fb(b"", crcs, 4096) == -1
    assert fb(data, crcs + b"\0" * 8, 4096) == -1  # extra entries are ignored
    assert fb(data, crcs[:-4], 4096) == 10  # missing entry for the last block
    assert fb(data, crcs[:-1], 4096) == 10  # truncated entry
    assert fb(data, b"", 4096) == 0
    flipped = bytearray(crcs)
    flipped[4 * 3 + 2] ^= 1  # corrupt the stored CRC of block 3
    assert fb(data, flipped, 4096) == 3


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=20_000), st.sampled_from([1, 7, 4096]), st.data())
def test_first_bad_block_equal_hypothesis(data, block_size, draw):
    crcs = bytearray(block_crcs_py(data, block_size))
    if draw.draw(st.booleans()):
        pos = draw.draw(st.integers(0, len(data) - 1))
        data = bytearray(data)
        data[pos] ^= draw.draw(st.integers(1, 255))
    cut = draw.draw(st.integers(0, len(crcs)))
    crcs = bytes(crcs[:cut])
    assert first_bad_block(data, crcs, block_size) == first_bad_block_py(data, crcs, block_size)


def test_native_rejects_bad_input():
    if not blocks.NATIVE:
        pytest.skip("native extension not built")
    with pytest.raises(ValueError):
        block_crcs(b"x", 0)
    with pytest.raises(ValueError):
        first_bad_block(b"x", b"xxxx", -1)
    with pytest.raises(TypeError):
        block_crcs("not bytes", 4096)
    with pytest.raises(TypeError):
        first_bad_block(b"x", "not bytes", 4096)


def test_large_buffer_gil_released_path():
    data = os.urandom(8 << 20)
    crcs = block_crcs(data)
    assert len(crcs) == 4 * 128
    assert crcs[:8] == block_crcs_py(data[: 2 * BLOCK_SIZE])
    assert crcs == b"".join(
        struct.pack("<I", crc32c(data[i:i + BLOCK_SIZE])) for i in range(0, len(data), BLOCK_SIZE)
    )
    assert first_bad_block(data, crcs) == -1
    bad = bytearray(data)
    bad[5 * BLOCK_SIZE + 3] ^= 1
    assert first_bad_block(bad, crcs) == 5
