"""msgpack command encoding (dfs.meta.store.encode_command) and decoding.

    .venv/bin/python -m pytest benchmarks/ -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

import os
import stat

import msgpack

from dfs.common.ops import Op
from dfs.common.records import ROOT
from dfs.meta.store import encode_command, unpackb

ARGS = [[1, f"file-{i:06d}.dat".encode(), stat.S_IFREG | 0o644, 0, True, 0, None] for i in range(256)]
RIDS = [os.urandom(16) for _ in range(256)]
CMDS = [encode_command(Op.CREATE, RIDS[i], 1_700_000_000_000_000_000 + i, ROOT, ARGS[i]) for i in range(256)]
ENTRY = msgpack.packb(CMDS, use_bin_type=True)


def test_encode_create_command_x256(benchmark):
    def go():
        for i in range(256):
            encode_command(Op.CREATE, RIDS[i], 1_700_000_000_000_000_000 + i, ROOT, ARGS[i])

    benchmark(go)


def test_decode_create_command_x256(benchmark):
    def go():
        for c in CMDS:
            unpackb(c)

    benchmark(go)


def test_decode_entry_of_256(benchmark):
    """What RaftHost does once per entry (dfs.consensus.raft.decode_entry)."""
    benchmark(msgpack.unpackb, ENTRY, raw=False)
