"""A metadata replica's RocksDB read behind its back, for fault tests: which
database directory it uses, its pairs under a prefix, the cross-shard records
and locks left on live replicas, and whether the stopped replicas of every
shard hold the same pairs. A mixin of the test clusters (``LocalCluster``
and ``NetnsCluster`` of dfs.testing), over their ``meta_procs``.

Read-only: RocksDB's read-only mode takes no lock and sees what the process
wrote, its WAL included, as of the open, so it works on a running replica
(``replica_contents`` opens the database as its replica does: the replicas
must be stopped).
"""

from __future__ import annotations

import os

from dfs.kv import RocksKV, prefix_end


class ReplicaFiles:
    def db_path(self, p) -> str:
        """The RocksDB directory a meta replica currently uses (``<data>/db/<CURRENT_DB or db-0>``)."""
        assert p.role == "meta", p.name
        root = os.path.join(p.data, "db")
        cur = os.path.join(root, "CURRENT_DB")
        name = "db-0"
        if os.path.exists(cur):
            with open(cur) as f:
                name = f.read().strip()
        return os.path.join(root, name)

    def read_replica(self, p, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Pairs under ``prefix`` in a meta replica's RocksDB, opened read-only (running or not)."""
        import rocksdict

        path = self.db_path(p)
        if not os.path.exists(os.path.join(path, "CURRENT")):
            return []
        db = rocksdict.Rdict(path, options=rocksdict.Options(raw_mode=True),
                             access_type=rocksdict.AccessType.read_only())
        try:
            it = db.iter()
            it.seek(prefix)
            end = prefix_end(prefix) if prefix else None
            out = []
            while it.valid():
                k = it.key()
                if end is not None and k >= end:
                    break
                out.append((k, it.value()))
                it.next()
            del it
            return out
        finally:
            db.close()

    def pending_records(self) -> dict[str, list[bytes]]:
        """Cross-shard op records ('P') and locks ('K') left on live meta replicas, by replica name."""
        out: dict[str, list[bytes]] = {}
        for p in self.meta_procs():
            if p.alive:
                keys = [k for k, _ in self.read_replica(p, b"P")] + [k for k, _ in self.read_replica(p, b"K")]
                if keys:
                    out[p.name] = keys
        return out

    def replica_contents(self, shard: int) -> list[list[tuple[bytes, bytes]]]:
        """Every pair of each replica of ``shard`` (the replicas must be stopped)."""
        out = []
        for p in self.meta_procs(shard):
            assert not p.alive, p.name
            kv = RocksKV(self.db_path(p))
            try:
                out.append(list(kv.items()))
            finally:
                kv.close()
        return out

    def assert_replicas_identical(self) -> None:
        """The replicas of every shard (stopped) hold the same pairs, and no cross-shard op
        record or lock is left."""
        for s in range(self.cfg.nshards):
            reps = self.replica_contents(s)
            for i, r in enumerate(reps[1:], 1):
                if r != reps[0]:
                    a, b = dict(reps[0]), dict(r)
                    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
                    raise AssertionError(f"shard {s}: replica {i} differs from replica 0 at {len(diff)} keys: "
                                         f"{diff[:10]}")
            leftovers = [k for k, _ in reps[0] if k[:1] in (b"P", b"K")]
            assert not leftovers, f"shard {s}: op records / locks left: {leftovers}"
