"""Damage done behind a data server's back, for tests of checksums, scrubbing and
repair: where a chunk's file lies on a target's disk, and a byte of it flipped.

Only for test clusters this process started (dfs.testing.cluster.LocalCluster);
it knows the chunk store's file layout, nothing else of the servers.
"""

from __future__ import annotations

import glob
import os


def target_path(cluster, tid: int) -> str:
    """The directory of target ``tid`` in ``cluster``'s config."""
    return next(t.path for d in cluster.cfg.data for t in d.targets if t.id == tid)


def chunk_file(cluster, tid: int, ino: int, index: int) -> str:
    """The file of chunk ``index`` of inode ``ino`` on target ``tid`` (exactly one must exist)."""
    hits = glob.glob(os.path.join(target_path(cluster, tid), "chunks", "*", f"{ino:016x}.{index:08x}"))
    assert len(hits) == 1, hits
    return hits[0]


def flip_byte(path: str, pos: int, mask: int = 0xFF) -> None:
    """XOR the byte at ``pos`` of the file at ``path`` with ``mask``, in place."""
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ mask]))
