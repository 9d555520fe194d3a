"""The records a target's chunk store keeps in RocksDB, and their encoding: ``ChunkMeta``
(the current version of a chunk, key ``b"C" + ino + index``), ``Preserved`` (a version kept
for snapshots, key ``b"V" + ino + index + ~epoch``: newest first per chunk), the store's
settings, and the checks of chunk ids and epochs every store call makes. The formats are
described in dfs/data/store.py (chunks) and dfs/data/versions.py (preserved versions);
nothing outside those two modules reads these keys.

This module may import only ``dfs.common``; it does no I/O.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from dfs.common import errors as err

_KEY = struct.Struct(">QI")
_VKEY = struct.Struct(">QII")
_VAL = struct.Struct("<QQII")
_VAL1 = struct.Struct("<QQI")  # format 1, before epochs
_PVAL = struct.Struct("<QII")
_U32 = struct.Struct("<I")
_CHUNK_PREFIX = b"C"
_VERSION_PREFIX = b"V"
_SETTING_BLOCK_SIZE = b"S:block_size"
_SETTING_TARGET_ID = b"S:target_id"
_SETTING_FORMAT = b"S:format"
_FORMAT = 2  # 1: chunk meta without an epoch
_U64 = (1 << 64) - 1
_U32MAX = 0xFFFFFFFF


class ChunkMeta(NamedTuple):
    version: int  # version of the last write applied
    committed: int  # highest version known committed (the tail has it)
    length: int  # logical length in bytes
    crcs: bytes  # one CRC32C (u32 LE) per block up to length
    epoch: int = 0  # the epoch the content was written in (0: before epochs)


class Preserved(NamedTuple):
    """A version of a chunk kept for snapshots: its content as written in epoch
    ``epoch`` and current until epoch ``until`` (exclusive); read by every
    snapshot ``S`` with ``epoch <= S < until``."""

    epoch: int
    until: int
    version: int  # the chunk version it was
    length: int
    crcs: bytes


def _key(ino: int, index: int) -> bytes:
    return _CHUNK_PREFIX + _KEY.pack(ino, index)


def _vkey(ino: int, index: int, epoch: int) -> bytes:
    return _VERSION_PREFIX + _VKEY.pack(ino, index, _U32MAX - epoch)


def _vprefix(ino: int, index: int | None = None) -> bytes:
    return _VERSION_PREFIX + (ino.to_bytes(8, "big") if index is None else _KEY.pack(ino, index))


def _vid(k: bytes) -> tuple[int, int, int]:
    ino, index, neg = _VKEY.unpack_from(k, 1)
    return ino, index, _U32MAX - neg


def _pack(m: ChunkMeta) -> bytes:
    return _VAL.pack(m.version, m.committed, m.length, m.epoch) + m.crcs


def _unpack(v: bytes) -> ChunkMeta:
    version, committed, length, epoch = _VAL.unpack_from(v)
    return ChunkMeta(version, committed, length, bytes(v[_VAL.size:]), epoch)


def _ppack(p: Preserved) -> bytes:
    return _PVAL.pack(p.version, p.length, p.until) + p.crcs


def _punpack(epoch: int, v: bytes) -> Preserved:
    version, length, until = _PVAL.unpack_from(v)
    return Preserved(epoch, until, version, length, bytes(v[_PVAL.size:]))


def _check_epoch(epoch: int, what: str = "epoch") -> None:
    if not 0 <= epoch <= _U32MAX:
        raise err.InvalidArgument(f"bad {what} {epoch}")


def _check_id(ino: int, index: int) -> None:
    if not (0 <= ino <= _U64 and 0 <= index <= 0xFFFFFFFF):
        raise err.InvalidArgument(f"bad chunk id {ino}.{index}")
