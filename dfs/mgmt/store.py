"""The cluster map state machine. Commands (msgpack): ["init", map] sets the
map if there is none yet; ["set", map] replaces it and bumps the epoch.
The map is a plain dict: {"epoch", "cluster_id", "shards": [[{id,address,raft}...]...], "mgmt": [...]}."""

from __future__ import annotations

import msgpack

from dfs.consensus.api import StateMachine
from dfs.kv import KV, MemoryKV, RocksKV, WriteBatch

K_APPLIED = b"M:applied"
K_MAP = b"C:map"


class MgmtStore(StateMachine):
    def __init__(self, path: str | None) -> None:
        self.path = path
        self.kv: KV = MemoryKV() if path is None else RocksKV(path)
        b = self.kv.get(K_APPLIED)
        self._applied = int.from_bytes(b, "big") if b else 0

    def applied_index(self) -> int:
        return self._applied

    def cluster_map(self) -> dict | None:
        b = self.kv.get(K_MAP)
        return None if b is None else msgpack.unpackb(b, raw=False)

    def apply(self, index: int, commands: list[bytes]) -> list[bytes]:
        batch = WriteBatch()
        results = []
        cur = self.cluster_map()
        for raw in commands:
            try:
                kind, m = msgpack.unpackb(raw, raw=False)
                if kind == "init" and cur is not None:
                    results.append(msgpack.packb([0, cur["epoch"]]))
                    continue
                if kind not in ("init", "set"):
                    raise ValueError(kind)
                m = dict(m)
                m["epoch"] = (cur["epoch"] if cur else 0) + 1
                cur = m
                batch.put(K_MAP, msgpack.packb(m))
                results.append(msgpack.packb([0, m["epoch"]]))
            except Exception as e:  # deterministic: same on every replica
                results.append(msgpack.packb([22, str(e)]))
        batch.put(K_APPLIED, index.to_bytes(8, "big"))
        self.kv.write(batch)
        self._applied = index
        return results

    def snapshot(self, path: str) -> None:
        self.kv.checkpoint(path)

    def restore(self, path: str) -> None:
        src = MemoryKV(path) if isinstance(self.kv, MemoryKV) else RocksKV(path)
        b = WriteBatch()
        for k, _ in list(self.kv.items()):
            b.delete(k)
        for k, v in src.items():
            b.put(k, v)
        src.close()
        self.kv.write(b, sync=True)
        bb = self.kv.get(K_APPLIED)
        self._applied = int.from_bytes(bb, "big") if bb else 0
