"""Inode ids: 64 bits whose top 16 name the home shard, so routing needs no lookup."""

from __future__ import annotations

import hashlib

SHARD_BITS = 16
LOCAL_BITS = 64 - SHARD_BITS
LOCAL_MASK = (1 << LOCAL_BITS) - 1
MAX_SHARDS = 1 << SHARD_BITS

ROOT_INO = 1  # shard 0, local id 1: FUSE's root inode number


def make_ino(shard: int, local: int) -> int:
    return (shard << LOCAL_BITS) | local


def shard_of(ino: int) -> int:
    return ino >> LOCAL_BITS


def name_hash(name: bytes) -> int:
    """A 62-bit hash of an entry name: the readdir order and the cookie space.

    62 bits so that ``hash + 1`` (the cookie that resumes after an entry) still
    fits a signed 64-bit ``off_t`` in FUSE.
    """
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big") >> 2


def dir_home_shard(parent: int, name: bytes, nshards: int) -> int:
    """Where a new directory ``name`` under ``parent`` lives: spread by hash."""
    if nshards == 1:
        return 0
    h = hashlib.blake2b(parent.to_bytes(8, "big") + name, digest_size=8, person=b"dfs-mkdir").digest()
    return int.from_bytes(h, "big") % nshards
