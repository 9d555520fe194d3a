"""In-memory KV engine for unit tests and the one-process namespace engine."""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator

from sortedcontainers import SortedDict

from dfs.kv.base import KV, WriteBatch

_CHECKPOINT_FILE = "memory.kv"


class MemoryKV(KV):
    def __init__(self, path: str | None = None) -> None:
        self._d: SortedDict = SortedDict()
        if path is not None:  # open a checkpoint written by checkpoint()
            with open(os.path.join(path, _CHECKPOINT_FILE), "rb") as f:
                self._d.update(pickle.load(f))

    def get(self, key: bytes) -> bytes | None:
        return self._d.get(key)

    def scan(self, start: bytes, end: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        # Lazy: the caller must not write to this engine while iterating
        # (state machines write through an overlay and flush at the end).
        n = 0
        d = self._d
        for k in d.irange(start, end, inclusive=(True, False)):
            if limit is not None and n >= limit:
                return
            n += 1
            yield k, d[k]

    def write(self, batch: WriteBatch, sync: bool = False) -> None:
        d = self._d
        for k, v in batch.ops:
            if v is None:
                d.pop(k, None)
            else:
                d[k] = v

    def checkpoint(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, _CHECKPOINT_FILE), "wb") as f:
            pickle.dump(dict(self._d), f)
