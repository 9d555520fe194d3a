"""Layout: validation, pack/unpack, chain placement, pieces, copy_into; native == Python."""
from __future__ import annotations

import array
import collections
import dataclasses
import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from dfs.common import layout
from dfs.common.errors import InvalidArgument
from dfs.common.layout import (
    DEFAULT_LAYOUT,
    MAX_OFFSET,
    Layout,
    chain_of,
    chain_of_py,
    copy_into,
    copy_into_py,
    mix64,
    mix64_py,
    pieces,
    pieces_py,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
U64 = (1 << 64) - 1


def test_native_is_built():
    if os.environ.get("DFS_NO_NATIVE"):
        pytest.skip("native extension disabled")
    assert layout.NATIVE
    from dfs._native import datapath

    assert pieces is datapath.pieces
    assert mix64 is datapath.mix64
    assert copy_into is datapath.copy_into


# --- Layout ----------------------------------------------------------------------


def test_defaults():
    assert DEFAULT_LAYOUT == Layout() == Layout(4 * MiB, 4, 3)
    assert DEFAULT_LAYOUT.chunk_shift == 22
    assert DEFAULT_LAYOUT.pack() == (22 << 24) | (4 << 8) | 3 == 0x16000403


def test_frozen_slots():
    lay = Layout()
    with pytest.raises(dataclasses.FrozenInstanceError):
        lay.stripe = 2
    assert not hasattr(lay, "__dict__")
    assert hash(lay) == hash(Layout())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(chunk_size=32 * KiB),
        dict(chunk_size=128 * MiB),
        dict(chunk_size=3 * MiB),
        dict(chunk_size=0),
        dict(chunk_size=-4 * MiB),
        dict(chunk_size=4.0 * MiB),
        dict(chunk_size=True),
        dict(stripe=0),
        dict(stripe=65536),
        dict(stripe=-1),
        dict(stripe="4"),
        dict(replicas=0),
        dict(replicas=256),
        dict(replicas=None),
    ],
)
def test_validation(kwargs):
    with pytest.raises(InvalidArgument):
        Layout(**kwargs)


def test_bounds_accepted():
    for shift in range(16, 27):
        assert Layout(1 << shift).chunk_shift == shift
    Layout(stripe=1, replicas=1)
    Layout(stripe=65535, replicas=255)


def test_pack_unpack_round_trip_exhaustive_shifts():
    for shift in range(16, 27):
        for stripe in (1, 2, 4, 255, 256, 65535):
            for replicas in (1, 3, 255):
                lay = Layout(1 << shift, stripe, replicas)
                v = lay.pack()
                assert 0 < v <= 0xFFFFFFFF
                assert v >> 24 == shift and (v >> 8) & 0xFFFF == stripe and v & 0xFF == replicas
                assert Layout.unpack(v) == lay


@given(st.integers(16, 26), st.integers(1, 65535), st.integers(1, 255))
def test_pack_unpack_hypothesis(shift, stripe, replicas):
    lay = Layout(1 << shift, stripe, replicas)
    assert Layout.unpack(lay.pack()) == lay


def test_unpack_zero_is_default():
    assert Layout.unpack(0) is DEFAULT_LAYOUT


@pytest.mark.parametrize(
    "v",
    [
        -1,
        1 << 32,
        (15 << 24) | (4 << 8) | 3,  # chunk_shift too small
        (27 << 24) | (4 << 8) | 3,  # too large
        (22 << 24) | (0 << 8) | 3,  # stripe 0
        (22 << 24) | (4 << 8) | 0,  # replicas 0
        1,  # chunk_shift 0
        "0x16000403",
        1.0,
    ],
)
def test_unpack_invalid(v):
    with pytest.raises(InvalidArgument):
        Layout.unpack(v)


# --- mix64 / chain_of ------------------------------------------------------------------


def test_mix64_known_values():
    # SplitMix64 seeded with 0 yields 0xE220A8397B1DCDAF first (reference generator).
    for fn in (mix64, mix64_py):
        assert fn(0) == 0xE220A8397B1DCDAF
        assert fn(U64) == mix64_py(U64)


def test_mix64_native_equals_python():
    rng = random.Random(5)
    xs = list(range(1000)) + [rng.getrandbits(64) for _ in range(5000)] + [U64, U64 - 1, 1 << 63]
    assert [mix64(x) for x in xs] == [mix64_py(x) for x in xs]


def test_chain_of_formula():
    lay = Layout(stripe=5)
    for ino in (0, 1, 12345, U64):
        for k in range(20):
            assert chain_of(ino, k, lay, 7) == (mix64_py(ino) + k % 5) % 7


def test_chain_of_native_equals_python():
    rng = random.Random(11)
    for _ in range(20_000):
        ino = rng.choice([rng.getrandbits(64), rng.randrange(1 << 20)])
        index = rng.choice([rng.randrange(1 << 32), rng.randrange(64), rng.getrandbits(64)])
        lay = Layout(1 << rng.randrange(16, 27), rng.randrange(1, 65536), rng.randrange(1, 256))
        n = rng.choice([1, 2, 3, 12, 1000, rng.randrange(1, 1 << 32)])
        assert chain_of(ino, index, lay, n) == chain_of_py(ino, index, lay, n)


@settings(max_examples=300)
@given(
    st.integers(0, U64),
    st.integers(0, U64),
    st.integers(1, 65535),
    st.integers(1, 0xFFFFFFFF),
)
def test_chain_of_equal_hypothesis(ino, index, stripe, nchains):
    lay = Layout(stripe=stripe)
    r = chain_of(ino, index, lay, nchains)
    assert r == chain_of_py(ino, index, lay, nchains)
    assert 0 <= r < nchains


def test_chain_of_rotates_over_stripe():
    lay = Layout(stripe=4)
    for ino in range(50):
        first = chain_of(ino, 0, lay, 12)
        assert [chain_of(ino, k, lay, 12) for k in range(8)] == [(first + k % 4) % 12 for k in range(8)]


@pytest.mark.parametrize("fn", [chain_of, chain_of_py])
def test_chain_of_distribution(fn):
    nchains, n = 12, 10_000
    counts = collections.Counter(fn(ino, 0, DEFAULT_LAYOUT, nchains) for ino in range(1, n + 1))
    assert set(counts) == set(range(nchains))
    expected = n / nchains
    # Binomial sd ~ 27.6; allow ~5 sd.
    assert all(abs(c - expected) < 0.2 * expected for c in counts.values()), counts
    # Chi-square with 11 dof: 99.9th percentile ~ 31.3.
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 31.3, chi2
    # Sequential inodes also spread over chains when striping (every chunk of the file).
    counts = collections.Counter(
        fn(ino, k, Layout(stripe=3), nchains) for ino in range(1, 2001) for k in range(6)
    )
    assert set(counts) == set(range(nchains))


@pytest.mark.parametrize("fn", [chain_of, chain_of_py])
@pytest.mark.parametrize(
    "args",
    [
        (-1, 0, 12),
        (1 << 64, 0, 12),
        (1, -1, 12),
        (1, 1 << 64, 12),
        (1, 0, 0),
        (1, 0, -3),
        (1, 0, 1 << 32),
        (1.0, 0, 12),
        (1, True, 12),
        (1, 0, "12"),
    ],
)
def test_chain_of_invalid(fn, args):
    ino, index, n = args
    with pytest.raises(InvalidArgument):
        fn(ino, index, DEFAULT_LAYOUT, n)


def test_native_chain_of_validates_layout_fields():
    if not layout.NATIVE:
        pytest.skip("native extension not built")
    from dfs._native.datapath import chain_of as native_chain_of

    assert native_chain_of(5, 3, 22, 4, 12) == chain_of_py(5, 3, DEFAULT_LAYOUT, 12)
    for shift, stripe in ((15, 4), (27, 4), (22, 0), (22, 65536)):
        with pytest.raises(InvalidArgument):
            native_chain_of(5, 3, shift, stripe, 12)


# --- pieces ----------------------------------------------------------------------------


def _check_tiling(ps, offset, length, cs):
    pos = 0
    for idx, off, n, buf in ps:
        assert buf == pos
        assert 0 <= off < cs and 0 < n <= cs - off
        assert idx * cs + off == offset + pos
        pos += n
    assert pos == length
    # All pieces but the first start at a chunk boundary; indices are consecutive.
    assert all(off == 0 for _, off, _, _ in ps[1:])
    assert [p[0] for p in ps] == list(range(ps[0][0], ps[0][0] + len(ps))) if ps else True


@pytest.mark.parametrize("fn", [pieces, pieces_py])
def test_pieces_examples(fn):
    cs = 64 * KiB
    assert fn(0, 0, cs) == []
    assert fn(12345, 0, cs) == []
    assert fn(0, cs, cs) == [(0, 0, cs, 0)]
    assert fn(cs, cs, cs) == [(1, 0, cs, 0)]
    assert fn(100, 300_000, cs) == [
        (0, 100, cs - 100, 0),
        (1, 0, cs, cs - 100),
        (2, 0, cs, 2 * cs - 100),
        (3, 0, cs, 3 * cs - 100),
        (4, 0, 300_000 - (4 * cs - 100), 4 * cs - 100),
    ]
    assert fn(cs - 1, 2, cs) == [(0, cs - 1, 1, 0), (1, 0, 1, 1)]
    assert fn(5, 10, 1) == [(5 + i, 0, 1, i) for i in range(10)]


@pytest.mark.parametrize("fn", [pieces, pieces_py])
@pytest.mark.parametrize(
    "args",
    [(-1, 10, 4096), (0, -1, 4096), (0, 10, 0), (0, 10, -4096), (MAX_OFFSET, 1, 4096),
     (1.0, 10, 4096), (0, 10.0, 4096), (0, 10, None), (False, 10, 4096)],
)
def test_pieces_invalid(fn, args):
    with pytest.raises(InvalidArgument):
        fn(*args)


@pytest.mark.parametrize("fn", [pieces, pieces_py])
def test_pieces_extremes(fn):
    assert fn(MAX_OFFSET - 10, 10, 1 << 26) == pieces_py(MAX_OFFSET - 10, 10, 1 << 26)
    assert fn(MAX_OFFSET, 0, 4096) == []
    assert fn(5, 10, 1 << 80) == [(0, 5, 10, 0)]
    ps = fn(MAX_OFFSET - 3 * MiB, 3 * MiB, MiB)
    assert len(ps) == 4
    _check_tiling(ps, MAX_OFFSET - 3 * MiB, 3 * MiB, MiB)


def test_pieces_native_equals_python_random():
    rng = random.Random(3)
    for _ in range(3000):
        cs = rng.choice([1 << rng.randrange(16, 27), rng.randrange(1, 1 << 20)])
        offset = rng.choice([rng.randrange(1 << 40), rng.randrange(4 * cs), 0])
        length = rng.choice([0, 1, rng.randrange(1, 3 * cs), rng.randrange(1, 64 * cs)])
        ps = pieces(offset, length, cs)
        assert ps == pieces_py(offset, length, cs)
        _check_tiling(ps, offset, length, cs)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 1 << 50), st.integers(1, 1 << 26), st.data())
def test_pieces_equal_hypothesis(offset, cs, data):
    length = data.draw(st.integers(0, min(1 << 24, 300 * cs)))  # at most ~300 pieces
    ps = pieces(offset, length, cs)
    assert ps == pieces_py(offset, length, cs)
    _check_tiling(ps, offset, length, cs)
    assert all(type(x) is int for p in ps for x in p)


def test_pieces_1gib_4mib():
    ps = pieces(0, GiB, 4 * MiB)
    assert len(ps) == 256 and ps == pieces_py(0, GiB, 4 * MiB)
    _check_tiling(ps, 0, GiB, 4 * MiB)


# --- copy_into ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [copy_into, copy_into_py])
def test_copy_into_basic(fn):
    dst = bytearray(16)
    assert fn(dst, 3, b"abc") == 3
    assert dst == b"\0\0\0abc" + bytes(10)
    assert fn(dst, 13, bytearray(b"xyz")) == 3
    assert dst[13:] == b"xyz"
    assert fn(dst, 16, b"") == 0
    assert fn(memoryview(dst)[4:], 0, memoryview(b"QQ")) == 2
    assert dst[4:6] == b"QQ"
    arr = array.array("I", [0] * 4)
    assert fn(arr, 4, array.array("I", [0x01020304])) == 4
    assert arr.tobytes()[4:8] == (0x01020304).to_bytes(4, "little")


@pytest.mark.parametrize("fn", [copy_into, copy_into_py])
def test_copy_into_bounds(fn):
    dst = bytearray(8)
    for off, src in ((-1, b"a"), (6, b"abc"), (9, b""), (8, b"a"), (0, bytes(9))):
        with pytest.raises(ValueError):
            fn(dst, off, src)
    assert dst == bytes(8)
    with pytest.raises(TypeError):
        fn(b"immutable", 0, b"x")
    with pytest.raises(TypeError):
        fn(dst, 0, "str")
    with pytest.raises(TypeError):
        fn(dst, 1.0, b"x")


def test_copy_into_assembles_large_read():
    # Assemble a 9 MiB read from its 1 MiB chunk pieces (above the GIL threshold).
    src = os.urandom(9 * MiB + 123)
    offset = 777
    out = bytearray(len(src) - offset)
    for idx, off, n, buf in pieces(offset, len(out), MiB):
        start = idx * MiB + off
        assert copy_into(out, buf, memoryview(src)[start:start + n]) == n
    assert out == src[offset:]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 300), st.binary(max_size=300), st.integers(0, 400))
def test_copy_into_equal_hypothesis(size, src, off):
    a, b = bytearray(b"\x5a" * size), bytearray(b"\x5a" * size)
    try:
        ra = copy_into(a, off, src)
    except ValueError:
        ra = "ValueError"
    try:
        rb = copy_into_py(b, off, src)
    except ValueError:
        rb = "ValueError"
    assert ra == rb and a == b
