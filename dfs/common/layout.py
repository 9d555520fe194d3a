"""File layout: chunk size, striping over chains, replication; layout arithmetic.

A layout is ``(chunk_size, stripe, replicas)`` (docs/design/data.md, "Layout"):

* ``chunk_size`` -- bytes per chunk, a power of two in [64 KiB, 64 MiB];
  chunk ``k`` of a file covers bytes ``[k * chunk_size, (k + 1) * chunk_size)``;
* ``stripe`` -- how many chains a file's consecutive chunks rotate over
  (1 .. 65535);
* ``replicas`` -- targets per chain (1 .. 255).

Invalid values raise :class:`dfs.common.errors.InvalidArgument` (EINVAL).

It packs into a u32 stored in the inode, most significant field first::

    bits 31..24  chunk_shift   (log2 chunk_size, 16 .. 26)
    bits 23..8   stripe
    bits  7..0   replicas

A packed 0 means "inherit / default" and unpacks to :data:`DEFAULT_LAYOUT`
(4 MiB chunks, stripe 4, 3 replicas); every valid layout packs to non-zero.

Placement: chunk ``index`` of inode ``ino`` lives on chain table entry

    ``chain_of(ino, index, layout, nchains) == (mix64(ino) + index % stripe) % nchains``

where :func:`mix64` is the SplitMix64 output function (add the golden gamma
0x9E3779B97F4A7C15, then the Stafford "mix13" finalizer), all mod 2**64.  It
is part of the on-disk contract: changing it moves every chunk.

:func:`pieces` splits a byte range of a file into per-chunk pieces; and
:func:`copy_into` copies a buffer into a writable buffer at an offset (to
assemble a read from its pieces).

``pieces``, ``chain_of``, ``mix64`` and ``copy_into`` use the compiled
``dfs._native.datapath`` (native/datapath.pyx) when it is importable, else the
pure-Python ``*_py`` references below; ``NATIVE`` tells which.  Both give
identical results and raise the same exceptions.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from dfs.common.errors import InvalidArgument

__all__ = [
    "Layout",
    "DEFAULT_LAYOUT",
    "MIN_CHUNK_SHIFT",
    "MAX_CHUNK_SHIFT",
    "MIN_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_STRIPE",
    "MAX_REPLICAS",
    "MAX_OFFSET",
    "mix64",
    "chain_of",
    "pieces",
    "copy_into",
    "mix64_py",
    "chain_of_py",
    "pieces_py",
    "copy_into_py",
    "NATIVE",
]

MIN_CHUNK_SHIFT = 16  # 64 KiB
MAX_CHUNK_SHIFT = 26  # 64 MiB
MIN_CHUNK_SIZE = 1 << MIN_CHUNK_SHIFT
MAX_CHUNK_SIZE = 1 << MAX_CHUNK_SHIFT
MAX_STRIPE = 0xFFFF
MAX_REPLICAS = 0xFF
#: ``pieces`` ranges must end at or below this (fits a signed 64-bit offset).
MAX_OFFSET = (1 << 63) - 1

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def _int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgument(f"{name} must be an int, not {type(v).__name__}")
    return int(v)


@dataclass(frozen=True, slots=True)
class Layout:
    chunk_size: int = 4 << 20
    stripe: int = 4
    replicas: int = 3

    def __post_init__(self) -> None:
        cs = _int("chunk_size", self.chunk_size)
        if not MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE or cs & (cs - 1):
            raise InvalidArgument(f"chunk_size must be a power of two in [64 KiB, 64 MiB], not {cs}")
        st = _int("stripe", self.stripe)
        if not 1 <= st <= MAX_STRIPE:
            raise InvalidArgument(f"stripe must be in [1, {MAX_STRIPE}], not {st}")
        rp = _int("replicas", self.replicas)
        if not 1 <= rp <= MAX_REPLICAS:
            raise InvalidArgument(f"replicas must be in [1, {MAX_REPLICAS}], not {rp}")

    @property
    def chunk_shift(self) -> int:
        """log2(chunk_size)."""
        return self.chunk_size.bit_length() - 1

    def pack(self) -> int:
        """The u32 ``chunk_shift:8 | stripe:16 | replicas:8`` (never 0)."""
        return (self.chunk_shift << 24) | (self.stripe << 8) | self.replicas

    @classmethod
    def unpack(cls, v: int) -> Layout:
        """Inverse of :meth:`pack`; 0 gives :data:`DEFAULT_LAYOUT`."""
        v = _int("packed layout", v)
        if not 0 <= v <= _U32:
            raise InvalidArgument(f"packed layout must be a u32, not {v}")
        if v == 0:
            return DEFAULT_LAYOUT
        shift = v >> 24
        if not MIN_CHUNK_SHIFT <= shift <= MAX_CHUNK_SHIFT:
            raise InvalidArgument(f"packed layout {v:#010x}: chunk_shift {shift} out of range")
        return cls(1 << shift, (v >> 8) & 0xFFFF, v & 0xFF)


DEFAULT_LAYOUT = Layout()


# --- pure-Python references ---------------------------------------------------


def mix64_py(x: int) -> int:
    """SplitMix64 output of ``x`` (a u64): a bijective, well-mixed u64 hash."""
    x = _int("ino", x)
    if not 0 <= x <= _U64:
        raise InvalidArgument(f"ino must be a u64, not {x}")
    z = (x + 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def _chain_args(index, nchains) -> tuple[int, int]:
    index = _int("index", index)
    if not 0 <= index <= _U64:
        raise InvalidArgument(f"chunk index must be a non-negative u64, not {index}")
    nchains = _int("nchains", nchains)
    if not 1 <= nchains <= _U32:
        raise InvalidArgument(f"nchains must be in [1, 2**32), not {nchains}")
    return index, nchains


def chain_of_py(ino: int, index: int, layout: Layout, nchains: int) -> int:
    """Position in the chain table of chunk ``index`` of ``ino``."""
    h = mix64_py(ino)
    index, nchains = _chain_args(index, nchains)
    return (h + index % layout.stripe) % nchains


def pieces_py(offset: int, length: int, chunk_size: int) -> list[tuple[int, int, int, int]]:
    """Split ``[offset, offset + length)`` into per-chunk pieces, in file order.

    Each piece is ``(chunk index, offset in chunk, length, offset in the
    caller's buffer)``; the pieces tile the range exactly.  Empty for
    ``length == 0``.  ``chunk_size`` need only be positive here.
    """
    offset = _int("offset", offset)
    length = _int("length", length)
    chunk_size = _int("chunk_size", chunk_size)
    if offset < 0 or length < 0:
        raise InvalidArgument(f"negative offset or length ({offset}, {length})")
    if chunk_size <= 0:
        raise InvalidArgument(f"chunk_size must be positive, not {chunk_size}")
    if offset + length > MAX_OFFSET:
        raise InvalidArgument(f"range end {offset + length} beyond 2**63 - 1")
    out = []
    pos = 0
    index, off = divmod(offset, chunk_size)
    while pos < length:
        n = min(chunk_size - off, length - pos)
        out.append((index, off, n, pos))
        pos += n
        index += 1
        off = 0
    return out


def copy_into_py(dst, dst_offset: int, src) -> int:
    """Copy the bytes of ``src`` into writable ``dst`` at ``dst_offset``; returns len(src).

    Raises ValueError if ``dst_offset`` is negative or the copy would overrun
    ``dst``, TypeError if ``dst`` is read-only.
    """
    d = memoryview(dst)
    if d.readonly:
        raise TypeError("copy_into: dst must be a writable buffer")
    if d.format != "B" or d.ndim != 1:
        d = d.cast("B")
    s = memoryview(src)
    if s.format != "B" or s.ndim != 1:
        s = s.cast("B")
    dst_offset = operator.index(dst_offset)
    n = len(s)
    if dst_offset < 0 or dst_offset + n > len(d):
        raise ValueError(f"copy_into: {n} bytes at offset {dst_offset} do not fit a buffer of {len(d)}")
    d[dst_offset:dst_offset + n] = s
    return n


# --- native dispatch -------------------------------------------------------------

try:
    from dfs._native.datapath import (
        chain_of as _native_chain_of,
        copy_into as _native_copy_into,
        mix64 as _native_mix64,
        pieces as _native_pieces,
    )
except ImportError:  # extension not built (e.g. DFS_NO_NATIVE=1)
    _native_chain_of = _native_copy_into = _native_mix64 = _native_pieces = None

NATIVE: bool = _native_pieces is not None

if NATIVE:
    pieces = _native_pieces
    mix64 = _native_mix64
    copy_into = _native_copy_into

    def chain_of(ino: int, index: int, layout: Layout, nchains: int) -> int:
        """Position in the chain table of chunk ``index`` of ``ino``."""
        return _native_chain_of(ino, index, layout.chunk_shift, layout.stripe, nchains)

else:
    pieces = pieces_py
    mix64 = mix64_py
    copy_into = copy_into_py
    chain_of = chain_of_py
