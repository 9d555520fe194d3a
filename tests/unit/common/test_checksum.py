"""CRC32C: known vectors, native == pure Python, composition."""
from __future__ import annotations

import array
import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from dfs.common import checksum
from dfs.common.checksum import crc32c, crc32c_py

# (input, CRC32C) -- RFC 3720 (iSCSI) B.4 and the usual check value.
VECTORS = [
    (b"", 0x00000000),
    (b"a", 0xC1D04330),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
]

IMPLS = [pytest.param(crc32c_py, id="python"), pytest.param(crc32c, id="default")]


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("data,expected", VECTORS)
def test_known_vectors(fn, data, expected):
    assert fn(data) == expected


@pytest.mark.parametrize("fn", IMPLS)
def test_buffer_types(fn):
    data = b"123456789"
    for buf in (bytearray(data), memoryview(data), memoryview(b"xx" + data + b"yy")[2:-2]):
        assert fn(buf) == 0xE3069283
    arr = array.array("I", range(100))
    assert fn(arr) == crc32c_py(arr.tobytes())


@pytest.mark.parametrize("fn", IMPLS)
def test_rejects_bad_input(fn):
    with pytest.raises(TypeError):
        fn("not bytes")
    with pytest.raises((ValueError, OverflowError)):
        fn(b"x", 1 << 32)


def test_native_is_built():
    # The package build always compiles the extension unless DFS_NO_NATIVE is set.
    if os.environ.get("DFS_NO_NATIVE"):
        pytest.skip("native extension disabled")
    assert checksum.NATIVE
    from dfs._native.crc32c import crc32c as native

    assert native is crc32c


def test_native_matches_python_odd_sizes():
    rng = random.Random(1234)
    for size in list(range(0, 70)) + [127, 128, 129, 1023, 4097, 65535, 65536, 65537, 200_003]:
        data = rng.randbytes(size)
        seed = rng.getrandbits(32)
        assert crc32c(data) == crc32c_py(data), size
        assert crc32c(data, seed) == crc32c_py(data, seed), size


def test_unaligned_views_match():
    rng = random.Random(99)
    base = rng.randbytes(4096 + 16)
    mv = memoryview(base)
    for off in range(16):
        for size in (0, 1, 7, 8, 9, 63, 4096):
            assert crc32c(mv[off : off + size]) == crc32c_py(base[off : off + size])


def test_large_buffer_releases_gil_path():
    data = os.urandom(1 << 20)  # above the GIL-release threshold
    whole = crc32c(data)
    assert whole == crc32c(data[512 * 1024 :], crc32c(data[: 512 * 1024]))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_native_equals_python(data, seed):
    assert crc32c(data, seed) == crc32c_py(data, seed)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.binary(max_size=2000))
def test_composition(a, b):
    for fn in (crc32c, crc32c_py):
        assert fn(b, fn(a)) == fn(a + b)
    assert crc32c(b, crc32c(a)) == crc32c_py(a + b)
