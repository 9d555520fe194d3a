"""Key encoding and inode records (dfs.meta.schema).

    .venv/bin/python -m pytest benchmarks/ -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

import stat

from dfs.meta import schema as S
from dfs.meta.schema import Inode

NAMES = [f"file-{i:06d}.dat".encode() for i in range(1000)]
INODE = Inode(0x1234, stat.S_IFREG | 0o644, 1, 1000, 1000, 0, 4096, 1, 2, 3, 0x10, 0)
PACKED = INODE.pack()


def test_dentry_key_x1000(benchmark):
    def go():
        k = S.dentry_key
        for n in NAMES:
            k(42, n)

    benchmark(go)


def test_inode_key_x1000(benchmark):
    def go():
        k = S.inode_key
        for i in range(1000):
            k(i)

    benchmark(go)


def test_inode_pack_x1000(benchmark):
    def go():
        p = INODE.pack
        for _ in range(1000):
            p()

    benchmark(go)


def test_inode_unpack_x1000(benchmark):
    def go():
        u = Inode.unpack
        for _ in range(1000):
            u(PACKED)

    benchmark(go)
