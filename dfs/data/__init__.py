"""Data servers: the chunk store of a target, and (later) the server process,
chain replication, resync and the scrubber.

``dfs.data`` may import ``dfs.common``, ``dfs.kv``, ``dfs.wire`` and ``dfs.route``; nothing
below it imports ``dfs.data``.
"""

from dfs.data.store import ChunkMeta, ChunkStore

__all__ = ["ChunkMeta", "ChunkStore"]
