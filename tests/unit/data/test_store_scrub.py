"""Scrubber: a pass finds bad chunks, hands them to the repair callback,
counts what it did, and honours its rate."""

from __future__ import annotations

import asyncio
import os

import pytest

from dfs.data.scrub import Scrubber
from dfs.data.store import ChunkStore
from dfs.testing.damage import flip_byte


@pytest.fixture
def store(tmp_path):
    s = ChunkStore(str(tmp_path / "t"), 1, block_size=4096)
    yield s
    s.close()


def test_pass_finds_and_repairs(store):
    good = {}
    for ino in (1, 2):
        for idx in range(5):
            good[ino, idx] = os.urandom(10_000 + idx)
            store.write(ino, idx, 0, good[ino, idx], 1, chunk_size=1 << 20)
    flip_byte(store._file(1, 3), 5000, 1)
    flip_byte(store._file(2, 0), 9000, 1)
    calls = []

    async def repair(ino, index):  # stands in for "fetch from a replica and install"
        calls.append((ino, index))
        store.install(ino, index, good[ino, index], 2)

    sc = Scrubber(store, repair, None, page=3)  # small pages: exercise paging
    st = asyncio.run(sc.run_once())
    assert sorted(calls) == [(1, 3), (2, 0)]
    assert st.chunks == 10 and st.bytes == sum(len(v) for v in good.values())
    assert (st.bad_chunks, st.bad_blocks, st.repaired, st.repair_failures) == (2, 2, 2, 0)
    assert sorted(st.bad) == [(1, 3, [1]), (2, 0, [2])]
    st = asyncio.run(sc.run_once())
    assert st.passes == 2 and st.bad == [] and st.chunks == 20 and len(calls) == 2


def test_failed_repair_is_counted(store):
    store.write(1, 0, 0, b"a" * 5000, 1, chunk_size=1 << 20)
    store.write(1, 1, 0, b"b" * 5000, 1, chunk_size=1 << 20)
    flip_byte(store._file(1, 0), 10, 1)
    flip_byte(store._file(1, 1), 10, 1)

    async def repair(ino, index):
        if index == 0:
            raise OSError("no replica")
        # "repairs" nothing: the chunk stays bad

    st = asyncio.run(Scrubber(store, repair, None).run_once())
    assert (st.bad_chunks, st.repaired, st.repair_failures) == (2, 0, 2)


def test_rate_is_honoured(store):
    """A pass asks to sleep exactly as long as the rate requires (a clock that
    the test advances only through the sleeps: no real time, no timing)."""
    for idx in range(4):
        store.write(1, idx, 0, b"z" * 25_000, 1, chunk_size=1 << 20)

    async def repair(ino, index):
        raise AssertionError("nothing is bad")

    now = [0.0]
    slept = []

    async def fake_sleep(dt):
        slept.append(dt)
        now[0] += dt

    st = asyncio.run(Scrubber(store, repair, 500_000, clock=lambda: now[0], sleep=fake_sleep).run_once())
    assert st.bytes == 100_000
    assert abs(sum(slept) - 100_000 / 500_000) < 1e-9  # 100 KB at 500 KB/s: 0.2 s of pacing
    assert len(slept) == 4
