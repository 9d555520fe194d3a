"""RocksDB engine (rocksdict in raw mode: keys and values are plain bytes).

Durability: ``write(batch)`` goes to RocksDB's write-ahead log without syncing
it, ``write(batch, sync=True)`` syncs the log before it returns. After a power
cut RocksDB recovers a prefix of the batches written (point-in-time recovery
of the log, set explicitly below): never a part of a batch, never a later batch
without an earlier one. The Raft state machines rely on exactly that and sync
nothing themselves: their applied index lives in the same batch as the effects,
and the synced Raft journal replays whatever the prefix lacks
(docs/design/durability.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import rocksdict

from dfs.kv.base import KV, WriteBatch


def _options() -> rocksdict.Options:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_max_background_jobs(2)
    # RocksDB's default, and what the durability argument above needs: a log torn by a power
    # cut is replayed up to its last whole batch; absolute consistency would refuse to open.
    opts.set_wal_recovery_mode(rocksdict.DBRecoveryMode.point_in_time())
    opts.increase_parallelism(2)
    # State machines probe many keys that do not exist (a new name, a request
    # id never seen): bloom filters answer those without reading SST blocks,
    # and the memtable gets one too for keys written since the last flush.
    table = rocksdict.BlockBasedOptions()
    table.set_bloom_filter(10, False)
    table.set_cache_index_and_filter_blocks(True)
    table.set_block_cache(rocksdict.Cache(64 << 20))
    opts.set_block_based_table_factory(table)
    opts.set_memtable_prefix_bloom_ratio(0.1)
    return opts


class RocksKV(KV):
    def __init__(self, path: str) -> None:
        self.path = path
        self._db = rocksdict.Rdict(path, options=_options())
        self._wopt_sync = rocksdict.WriteOptions()
        self._wopt_sync.sync = True
        self._wopt = rocksdict.WriteOptions()

    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def scan(self, start: bytes, end: bytes, limit: int | None = None) -> Iterator[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(start)
        n = 0
        while it.valid():
            k = it.key()
            if k >= end or (limit is not None and n >= limit):
                break
            yield k, it.value()
            n += 1
            it.next()

    def write(self, batch: WriteBatch, sync: bool = False) -> None:
        wb = rocksdict.WriteBatch(raw_mode=True)
        for k, v in batch.ops:
            if v is None:
                wb.delete(k)
            else:
                wb.put(k, v)
        self._db.write(wb, self._wopt_sync if sync else self._wopt)

    def checkpoint(self, path: str) -> None:
        rocksdict.Checkpoint(self._db).create_checkpoint(path)

    def close(self) -> None:
        self._db.close()
