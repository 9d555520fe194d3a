"""A snapshot's manifest: its whole tree in one immutable, memory-mappable file.

Snapshot mode (dfs/client/snapmode.py) answers every lookup, getattr, readdir,
readlink and xattr from this file, and reads small files from the packs it
names, so that after the load a reader sends no metadata request at all.

The file (little-endian; every section 64-byte aligned, so numpy maps each as
an array without a copy)::

    header   256 bytes: magic "DFSMANIF", version, the snapshot (epoch, root
             inode, created), the section counts and offsets, the total
             length, a CRC-32 of the body and one of the header
    nodes    NODE records, one per inode of the snapshot (hard links share
             one): the attributes, the real inode id (data reads at the
             snapshot use it), and by type: a directory's slice of the
             dirents, a symlink's target in the strings, a small file's
             place in a pack; its xattrs in the strings
    dirents  DIRENT records, each directory's entries contiguous and ordered
             as the service orders them (the 62-bit name hash, then the name):
             a lookup is a binary search, readdir's cookie is ``hash + 1``
    packs    PACK records: the live files (under /.dfs/snapshots/<S>/) that
             hold the bytes of the small files, end to end
    strings  names, symlink targets and xattrs (u16 name length, u32 value
             length, name, value; repeated)

The view's inode numbers are ``node + 1``: the snapshot's root is node 0,
which is ``ROOT_INO`` for the snapshot-mode client.

What it costs: 104 bytes per inode, 24 per entry plus its name, 24 per pack;
a tree of files named like ``000123.bin`` is ~140 bytes per file. Loading maps
the file and checks its header: the body is checked (CRC-32) once, when the
file enters the local cache, not at each load.

The builder (``build``) walks a ``Source`` (the snapshot through the
metadata service, or anything else that answers the same: the tests give an
in-memory one) and hands each full pack to ``put_pack``.

Imports: numpy, dfs.common and this package only.
"""

from __future__ import annotations

import asyncio
import stat as S
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dfs.common import errors as err
from dfs.common.ids import name_hash
from dfs.common.records import FLAG_INLINE, Attr, DirEntry

__all__ = ["DIRENT", "MAGIC", "NODE", "PACK", "VERSION", "Manifest", "PackSpec", "Source", "build"]

MAGIC = b"DFSMANIF"
VERSION = 1
HEADER = 256
ALIGN = 64
PACK_FILE_MAX = 64 << 10  # files up to this size are packed
PACK_MAX = 64 << 20  # bytes per pack

NODE = np.dtype([
    ("ino", "<u8"), ("size", "<u8"), ("atime", "<i8"), ("mtime", "<i8"), ("ctime", "<i8"), ("layout", "<u8"),
    ("d0", "<u8"),  # dir: first dirent; symlink: target's offset; packed file: offset in its pack
    ("xoff", "<u8"),  # xattrs' offset in the strings
    ("mode", "<u4"), ("nlink", "<u4"), ("uid", "<u4"), ("gid", "<u4"), ("rdev", "<u4"), ("flags", "<u4"),
    ("d1", "<u4"),  # dir: its entry count; symlink: the target's length
    ("pack", "<i4"),  # packed file: its pack (-1: none; the data is the snapshot's chunks)
    ("xlen", "<u4"), ("pad", "<u4"),
])
DIRENT = np.dtype([("hash", "<u8"), ("name", "<u8"), ("node", "<u4"), ("nlen", "<u2"), ("type", "<u2")])
PACK = np.dtype([("ino", "<u8"), ("size", "<u8"), ("layout", "<u8")])

# magic, version, header size, snap, root, created, nodes, dirents, packs, strings length,
# offsets of nodes, dirents, packs, strings, total length, body crc
_HEAD = struct.Struct("<8sIIQQqQQQQQQQQQI")


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True, slots=True)
class PackSpec:
    """A pack as stored in dfs: a live file's inode, size and packed layout."""

    ino: int
    size: int
    layout: int


class Source(Protocol):
    """A snapshot's tree, as the builder reads it."""

    async def root(self) -> Attr: ...

    async def entries(self, ino: int) -> list[DirEntry]:
        """Every entry of directory ``ino``, with attributes."""

    async def readlink(self, ino: int) -> bytes: ...

    async def xattrs(self, ino: int) -> dict[bytes, bytes]: ...

    async def read_small(self, attr: Attr) -> bytes:
        """The whole content of a small regular file (``attr.size`` bytes)."""


def _xattr_blob(x: dict[bytes, bytes]) -> bytes:
    return b"".join(struct.pack("<HI", len(k), len(v)) + k + v for k, v in sorted(x.items()))


class Manifest:
    """A loaded manifest (bytes, or a read-only mmap of the cached file). Node ``n`` is the
    view's inode ``n + 1``."""

    def __init__(self, buf, *, verify: bool = False) -> None:
        mv = memoryview(buf)
        if len(mv) < HEADER:
            raise err.DfsError("manifest too short", code=5)
        h = _HEAD.unpack_from(mv, 0)
        (magic, version, hsize, self.snap, self.root_ino, self.created, nn, nd, npk, ns,
         onodes, odirents, opacks, ostrings, total, body_crc) = h
        if magic != MAGIC:
            raise err.DfsError("not a dfs manifest", code=5)
        if version != VERSION:
            raise err.DfsError(f"manifest version {version}, this client reads {VERSION}", code=95)
        hcrc = struct.unpack_from("<I", mv, HEADER - 4)[0]
        if zlib.crc32(mv[:_HEAD.size]) != hcrc or hsize != HEADER or total != len(mv):
            raise err.ChecksumError("manifest header damaged or truncated")
        if verify and zlib.crc32(mv[HEADER:]) != body_crc:
            raise err.ChecksumError("manifest body checksum mismatch")
        self.buf = buf
        self.nodes = np.frombuffer(buf, NODE, nn, onodes)
        self.dirents = np.frombuffer(buf, DIRENT, nd, odirents)
        self.packs = np.frombuffer(buf, PACK, npk, opacks)
        self.strings = mv[ostrings:ostrings + ns]
        # column views (no copies): one field of one record is then a cheap index
        self._hash = self.dirents["hash"]
        self._dnode = self.dirents["node"]
        self._dir_cols = self.nodes[["mode", "d0", "d1"]]  # a view: one record's three fields in one call
        self.size_bytes = len(mv)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def entries(self) -> int:
        return len(self.dirents)

    # ------------------------------------------------------------------ reads
    def node_of(self, ino: int) -> int:
        n = ino - 1
        if not 0 <= n < len(self.nodes):
            raise err.Stale(f"no inode {ino} in the snapshot")
        return n

    def attr(self, n: int) -> Attr:
        (ino, size, atime, mtime, ctime, layout, _d0, _x, mode, nlink, uid, gid, rdev, flags, _d1, pack,
         _xl, _p) = self.nodes.item(n)
        if pack >= 0:
            flags &= ~FLAG_INLINE  # its bytes are in a pack, read through the chunk side
        return Attr(n + 1, mode, nlink, uid, gid, rdev, size, atime, mtime, ctime, layout, flags)

    def real_ino(self, n: int) -> int:
        return int(self.nodes["ino"][n])

    def _dir(self, n: int) -> tuple[int, int]:
        mode, d0, d1 = self._dir_cols[n].tolist()
        if not S.S_ISDIR(mode):
            raise err.NotADirectory()
        return d0, d1

    def name(self, d: int) -> bytes:
        off = int(self.dirents["name"][d])
        return bytes(self.strings[off:off + int(self.dirents["nlen"][d])])

    def lookup(self, n: int, name: bytes) -> int | None:
        """The node ``name`` names in directory node ``n`` (None: no such entry)."""
        first, count = self._dir(n)
        if not count:
            return None
        hashes = self._hash[first:first + count]
        h = name_hash(name)
        i = int(hashes.searchsorted(np.uint64(h)))  # a Python int would compare as a float
        while i < count and int(hashes[i]) == h:
            if self.name(first + i) == name:
                return int(self._dnode[first + i])
            i += 1
        return None

    def listing(self, n: int, cookie: int, limit: int, plus: bool) -> tuple[list[DirEntry], bool]:
        """The entries of directory node ``n`` after ``cookie`` (``hash + 1`` of the last one seen)."""
        first, count = self._dir(n)
        hashes = self._hash[first:first + count]
        start = int(hashes.searchsorted(np.uint64(cookie))) if cookie else 0  # hash >= cookie: after it
        end = min(count, start + limit)
        rows = self.dirents[first + start:first + end].tolist()
        strings = self.strings
        out = []
        for h, off, node, nlen, typ in rows:
            out.append(DirEntry(bytes(strings[off:off + nlen]), node + 1, typ << 12, h + 1,
                                self.attr(node) if plus else None))
        return out, end >= count

    def children(self, n: int) -> Iterator[tuple[bytes, int]]:
        first, count = self._dir(n)
        for d in range(first, first + count):
            yield self.name(d), int(self._dnode[d])

    def readlink(self, n: int) -> bytes:
        rec = self.nodes[n]
        if not S.S_ISLNK(int(rec["mode"])):
            raise err.InvalidArgument("not a symlink")
        off = int(rec["d0"])
        return bytes(self.strings[off:off + int(rec["d1"])])

    def xattrs(self, n: int) -> dict[bytes, bytes]:
        rec = self.nodes[n]
        off, end = int(rec["xoff"]), int(rec["xoff"]) + int(rec["xlen"])
        out = {}
        s = self.strings
        while off < end:
            kl, vl = struct.unpack_from("<HI", s, off)
            off += 6
            k = bytes(s[off:off + kl])
            out[k] = bytes(s[off + kl:off + kl + vl])
            off += kl + vl
        return out

    def packed(self, n: int) -> tuple[int, int] | None:
        """(pack, offset in it) of a packed file's bytes; None if it is not packed."""
        rec = self.nodes[n]
        p = int(rec["pack"])
        return None if p < 0 else (p, int(rec["d0"]))

    def pack(self, p: int) -> PackSpec:
        ino, size, layout = self.packs[p].tolist()
        return PackSpec(ino, size, layout)

    def walk(self) -> Iterator[tuple[bytes, Attr]]:
        """(path, attributes) of every entry under the root, depth first."""
        todo = [(b"", 0)]
        while todo:
            base, n = todo.pop()
            for name, c in self.children(n):
                p = base + b"/" + name
                a = self.attr(c)
                yield p, a
                if a.is_dir():
                    todo.append((p, c))


# ---------------------------------------------------------------------- building
async def build(source: Source, *, snap: int, created: int = 0,
                put_pack: Callable[[int, bytes], Awaitable[PackSpec]] | None = None,
                skip_root: frozenset[bytes] = frozenset(), pack_file_max: int = PACK_FILE_MAX,
                pack_max: int = PACK_MAX, concurrency: int = 32, xattrs: bool = True) -> bytes:
    """The manifest of ``source``'s tree. Files of at most ``pack_file_max`` bytes are read
    and packed, in tree order, into packs of up to ``pack_max`` bytes that ``put_pack(k,
    bytes)`` stores (None: nothing is packed). ``skip_root``: names of the root not to
    include (the system directory, when the snapshot is of the whole tree)."""
    root = await source.root()
    attrs: list[Attr] = [root]
    node_of: dict[int, int] = {root.ino: 0}
    slices: dict[int, tuple[int, int]] = {}
    dirents: list[tuple[int, bytes, int, int]] = []
    sem = asyncio.Semaphore(concurrency)

    async def bounded(coro):
        async with sem:
            return await coro

    # breadth first, one level's directories listed at once; numbered in the order a
    # one-at-a-time walk would number them (the manifest does not depend on the timing)
    level = [0]
    while level:
        listed = await asyncio.gather(*(bounded(source.entries(attrs[n].ino)) for n in level))
        below = []
        for n, entries in zip(level, listed):
            rows = []
            for e in entries:
                if e.attr is None or (n == 0 and e.name in skip_root):
                    continue
                c = node_of.get(e.ino)
                if c is None:
                    c = node_of[e.ino] = len(attrs)
                    attrs.append(e.attr)
                    if e.attr.is_dir():
                        below.append(c)
                rows.append((name_hash(e.name), e.name, c, S.S_IFMT(e.attr.mode) >> 12))
            rows.sort()
            slices[n] = (len(dirents), len(rows))
            dirents.extend(rows)
        level = below

    strings = bytearray()

    def put(b: bytes) -> int:
        off = len(strings)
        strings.extend(b)
        return off

    links: dict[int, bytes] = {}
    xa: dict[int, bytes] = {}
    lnodes = [n for n, a in enumerate(attrs) if a.is_lnk()]
    for n, t in zip(lnodes, await asyncio.gather(*(bounded(source.readlink(attrs[n].ino)) for n in lnodes))):
        links[n] = t
    if xattrs:
        got = await asyncio.gather(*(bounded(source.xattrs(a.ino)) for a in attrs))
        xa = {n: _xattr_blob(x) for n, x in enumerate(got) if x}

    # small files into packs, in tree order (a directory's files end to end)
    placed: dict[int, tuple[int, int]] = {}
    packs: list[PackSpec] = []
    if put_pack is not None:
        small = [n for n, a in enumerate(attrs) if a.is_reg() and 0 < a.size <= pack_file_max]
        buf = bytearray()
        batch = 256
        for i in range(0, len(small), batch):
            group = small[i:i + batch]
            datas = await asyncio.gather(*(bounded(source.read_small(attrs[n])) for n in group))
            for n, data in zip(group, datas):
                if len(data) != attrs[n].size:
                    raise err.DfsError(f"inode {attrs[n].ino}: read {len(data)} of {attrs[n].size} bytes", code=5)
                if len(buf) + len(data) > pack_max and buf:
                    packs.append(await put_pack(len(packs), bytes(buf)))
                    buf = bytearray()
                placed[n] = (len(packs), len(buf))
                buf += data
        if buf:
            packs.append(await put_pack(len(packs), bytes(buf)))

    dir_names = [put(name) for _h, name, _c, _t in dirents]
    node_arr = np.zeros(len(attrs), NODE)
    rows_n = []
    for n, a in enumerate(attrs):
        d0, d1, pack = 0, 0, -1
        if n in slices:
            d0, d1 = slices[n]
        elif n in links:
            d0, d1 = put(links[n]), len(links[n])
        elif n in placed:
            pack, d0 = placed[n]
        x = xa.get(n, b"")
        xoff = put(x) if x else 0
        rows_n.append((a.ino, a.size, a.atime_ns, a.mtime_ns, a.ctime_ns, a.layout, d0, xoff, a.mode, a.nlink,
                       a.uid, a.gid, a.rdev, a.flags, d1, pack, len(x), 0))
    if rows_n:
        node_arr[:] = rows_n
    dir_arr = np.zeros(len(dirents), DIRENT)
    if dirents:
        dir_arr[:] = [(h, off, c, len(name), t) for (h, name, c, t), off in zip(dirents, dir_names)]
    pack_arr = np.zeros(len(packs), PACK)
    if packs:
        pack_arr[:] = [(p.ino, p.size, p.layout) for p in packs]
    return _serialize(snap, root.ino, created, node_arr, dir_arr, pack_arr, bytes(strings))


def _serialize(snap: int, root: int, created: int, nodes: np.ndarray, dirents: np.ndarray, packs: np.ndarray,
               strings: bytes) -> bytes:
    onodes = HEADER
    odirents = _align(onodes + nodes.nbytes)
    opacks = _align(odirents + dirents.nbytes)
    ostrings = _align(opacks + packs.nbytes)
    total = ostrings + len(strings)
    out = bytearray(total)
    out[onodes:onodes + nodes.nbytes] = nodes.tobytes()
    out[odirents:odirents + dirents.nbytes] = dirents.tobytes()
    out[opacks:opacks + packs.nbytes] = packs.tobytes()
    out[ostrings:] = strings
    body_crc = zlib.crc32(memoryview(out)[HEADER:])
    _HEAD.pack_into(out, 0, MAGIC, VERSION, HEADER, snap, root, created, len(nodes), len(dirents), len(packs),
                    len(strings), onodes, odirents, opacks, ostrings, total, body_crc)
    struct.pack_into("<I", out, HEADER - 4, zlib.crc32(memoryview(out)[:_HEAD.size]))
    return bytes(out)
