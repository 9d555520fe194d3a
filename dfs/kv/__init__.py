"""Ordered key-value engines: one interface, a RocksDB engine and an in-memory one.

Nothing here knows about files, shards or Raft; the metadata and mgmt state
machines are written against :class:`KV` and run unchanged on either engine.
"""

from dfs.kv.base import KV, WriteBatch, prefix_end
from dfs.kv.memory import MemoryKV
from dfs.kv.rocks import RocksKV

__all__ = ["KV", "WriteBatch", "MemoryKV", "RocksKV", "prefix_end", "open_kv"]


def open_kv(path: str | None) -> KV:
    """A RocksDB engine at ``path``, or an in-memory one for ``None``."""
    return MemoryKV() if path is None else RocksKV(path)
