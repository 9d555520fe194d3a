"""The cost of pruning expired idempotency records per Raft entry, with and without the cursor.

    .venv/bin/python benchmarks/prune_cost.py cursor
    .venv/bin/python benchmarks/prune_cost.py nocursor
"""
import stat, time, sys, tempfile
from dfs.common.ops import Op
from dfs.common.records import ROOT
from dfs.meta.store import MetaStore, encode_command, IDEMPOTENCY_TTL_NS as TTL
def create(name, rid, ts):
    return encode_command(Op.CREATE, rid, ts, ROOT, [1, name, stat.S_IFREG | 0o644, 0, True, 0, None])
s = MetaStore(0, 1, tempfile.mkdtemp() + "/db")
idx = 0
N = 60000
for j in range(0, N, 64):
    idx += 1
    s.apply(idx, [create(f"f{i}".encode(), i.to_bytes(16, "big"), 1000 + i) for i in range(j, j + 64)])
if sys.argv[1] == "nocursor":
    orig = MetaStore.apply
    def apply(self, index, cmds):
        self._prune_from = None
        return orig(self, index, cmds)
    MetaStore.apply = apply
t = time.perf_counter()
for k in range(800):   # each entry prunes 64 expired records
    idx += 1
    s.apply(idx, [create(f"g{k}".encode(), (10**7 + k).to_bytes(16, "big"), TTL + 1000 + 64 * (k + 1))])
print(sys.argv[1], f"{(time.perf_counter() - t) / 800 * 1e3:.3f} ms per entry while pruning 51,200 records")
