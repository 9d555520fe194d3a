"""Typed records that clients see. Protobuf and msgpack stay at the edges."""

from __future__ import annotations

import stat
from dataclasses import dataclass

# Attr.flags bits (the client-visible part of the inode's flags word)
FLAG_INLINE = 2  # the file's bytes live in its metadata shard (``B`` record), not on data servers
FLAG_LAZY = 4  # a directory whose tree clients change in lazy mode (SETLAZY; inherited by new subdirectories)


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    layout: int = 0  # the packed dfs.common.layout.Layout (0 = the default)
    flags: int = 0  # FLAG_* bits (FLAG_INLINE)
    dver: int = 0  # regular files: the data version (changes whenever the bytes may; 0: never written)

    @classmethod
    def from_wire(cls, w: list) -> Attr:
        return cls(*w)

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def is_inline(self) -> bool:
        return bool(self.flags & FLAG_INLINE)

    def is_lazy(self) -> bool:
        return bool(self.flags & FLAG_LAZY)


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: bytes
    ino: int
    type: int  # S_IFMT bits of the entry's mode
    cookie: int  # pass to readdir to continue after this entry
    attr: Attr | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


ROOT = Caller(0, 0, ())


def squash_root(c: Caller, uid: int, gid: int) -> Caller:
    """``c`` under root squashing (as NFS ``root_squash``): uid 0 acts as ``uid``, and gid 0,
    as the primary group or a supplementary one, as ``gid``; anyone else is unchanged."""
    if c.uid != 0 and c.gid != 0 and 0 not in c.groups:
        return c
    groups = tuple(dict.fromkeys(gid if g == 0 else g for g in c.groups))
    return Caller(uid if c.uid == 0 else c.uid, gid if c.gid == 0 else c.gid, groups)


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    files: int
    files_free: int
    name_max: int = 255
