"""MetaStore.apply of one Raft entry of 256 CREATE commands (the state machine
without Raft or gRPC), on RocksKV and on MemoryKV.

    .venv/bin/python -m pytest benchmarks/ -p no:cacheprovider --benchmark-only

Each round applies a new entry (fresh names and request ids) to the same
store, so the directory grows by 256 files a round, as it does under load.
"""

from __future__ import annotations

import itertools
import os
import stat

import pytest

from dfs.common.ids import ROOT_INO
from dfs.common.ops import Op
from dfs.common.records import ROOT
from dfs.kv import MemoryKV, RocksKV
from dfs.meta.store import MetaStore, encode_command, unpackb

N = 256
ROUNDS = 60


def _entry(seq: int, ts: int) -> list[bytes]:
    return [encode_command(Op.CREATE, os.urandom(16), ts + i, ROOT,
                           [ROOT_INO, f"f-{seq}-{i}".encode(), stat.S_IFREG | 0o644, 0, True, 0, None])
            for i in range(N)]


@pytest.fixture(params=["rocks", "memory"])
def store(request, tmp_path):
    if request.param == "rocks":
        s = MetaStore(0, 1, str(tmp_path / "db"), kv_factory=lambda p: RocksKV(p))
    else:
        s = MetaStore(0, 1, None, kv_factory=lambda p: MemoryKV())
    yield s
    s.close()


def test_apply_256_creates(benchmark, store):
    seq = itertools.count(1)
    ts = 1_700_000_000_000_000_000

    def setup():
        n = next(seq)
        return (n, _entry(n, ts + n * N)), {}

    def go(index, commands):
        res = store.apply(index, commands)
        assert unpackb(res[-1])[0] == 0
        return res

    benchmark.pedantic(go, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=2)
    benchmark.extra_info["commands_per_round"] = N
