"""What snapshots cost the metadata write path (docs/design/snapshots.md), on MetaStore.apply
without Raft or gRPC, RocksKV:

* SETATTR of 256 existing inodes per entry: never a snapshot (the tag strip and one read of
  the old value are all there is), the first change of each inode after a snapshot (its old
  value moves to the history), and a second change in the same epoch (in place again);
* CREATE of 256 new files per entry with a live snapshot (nothing to keep: new keys).

    .venv/bin/python -m pytest benchmarks/bench_snapshots.py -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

import itertools
import os
import stat

import pytest

from dfs.common import messages as m
from dfs.common.ids import ROOT_INO
from dfs.common.ops import SET_MODE, Op
from dfs.common.records import ROOT
from dfs.kv import RocksKV
from dfs.meta.store import MetaStore, encode_command, unpackb

N = 256
ROUNDS = 30
_seq = itertools.count()


def _apply(store: MetaStore, cmds: list[bytes]) -> list:
    return [unpackb(r) for r in store.apply(store.applied_index() + 1, cmds)]


def _creates(n: int) -> list[bytes]:
    k = next(_seq)
    return [encode_command(Op.CREATE, os.urandom(16), 10**18 + i, ROOT,
                           [ROOT_INO, f"f-{k}-{i}".encode(), stat.S_IFREG | 0o644, 0, True, 0, None])
            for i in range(n)]


def _setattrs(inos: list[int], mode: int) -> list[bytes]:
    return [encode_command(Op.SETATTR, os.urandom(16), 10**18, ROOT, [ino, SET_MODE, mode, 0, 0, 0, 0, 0])
            for ino in inos]


@pytest.fixture
def store(tmp_path):
    s = MetaStore(0, 1, str(tmp_path / "db"), kv_factory=lambda p: RocksKV(p))
    yield s
    s.close()


def _files(store: MetaStore, rounds: int) -> list[list[int]]:
    out = []
    for _ in range(rounds):
        res = _apply(store, _creates(N))
        out.append([r[1][0][0] for r in res])  # CreateReply: attr (wire) first, its ino first
    return out


def _snapshot(store: MetaStore, s: int) -> None:
    cmd = encode_command(Op.SNAPBEGIN, b"", 10**18, ROOT, m.SnapBegin(s).to_wire())
    assert unpackb(store.apply(store.applied_index() + 1, [cmd])[0])[0] == 0


@pytest.mark.parametrize("case", ["no-snapshot", "first-after-snapshot", "again-same-epoch"])
def test_setattr(benchmark, store, case):
    groups = _files(store, ROUNDS + 2)
    if case != "no-snapshot":
        _snapshot(store, 1)
    if case == "again-same-epoch":
        for g in groups:
            _apply(store, _setattrs(g, 0o600))
    it = iter(groups)
    benchmark.extra_info["commands_per_round"] = N
    benchmark.pedantic(lambda: _apply(store, _setattrs(next(it), 0o640)), rounds=ROUNDS, iterations=1)


@pytest.mark.parametrize("case", ["no-snapshot", "live-snapshot"])
def test_create(benchmark, store, case):
    _files(store, 2)
    if case == "live-snapshot":
        _snapshot(store, 1)
    benchmark.extra_info["commands_per_round"] = N
    benchmark.pedantic(lambda: _apply(store, _creates(N)), rounds=ROUNDS, iterations=1)
