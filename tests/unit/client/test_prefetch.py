"""``Client.read_many`` / ``AsyncClient.read_many`` (dfs/client/prefetch.py): files in the
order given, fetched ahead within a bound, errors at their turn.

On both engines: the in-process one (LocalEngine + MemoryChunks) and the real
``data_cluster``."""

from __future__ import annotations

import errno
import itertools
import os

import pytest

from dfs.client import prefetch
from dfs.client.api import AsyncClient, Client
from dfs.client.file import MemoryChunks
from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.records import ROOT

_n = itertools.count()


class _CountingClient(AsyncClient):
    """Counts the opens of read_many that are in progress (opened, not yet closed)."""

    open_now = 0
    open_max = 0

    async def open_handle(self, path, flags=os.O_RDONLY, mode=0o666):
        cls = type(self)
        ref = _Counted(await super().open_handle(path, flags, mode), cls)
        cls.open_now += 1
        cls.open_max = max(cls.open_max, cls.open_now)
        return ref


class _Counted:
    def __init__(self, ref, counter) -> None:
        self.ref = ref
        self.counter = counter

    def __getattr__(self, name):
        return getattr(self.ref, name)

    async def close(self):
        self.counter.open_now -= 1
        await self.ref.close()


@pytest.fixture(params=["memory", "cluster"])
def fs(request):
    c = request.getfixturevalue(f"{request.param}_client")
    top = f"/prefetch{next(_n)}"
    c.mkdir(top)
    yield c, top


def _files(c, top, n, size=lambda i: 100 + i):
    paths = []
    for i in range(n):
        p = f"{top}/f{i:03d}"
        c.write_bytes(p, bytes([i % 251]) * size(i))
        paths.append(p)
    return paths


def test_yields_every_file_in_the_given_order(fs):
    c, top = fs
    paths = _files(c, top, 40)
    order = paths[::-1] + paths[::3]  # repeats are read again
    got = list(c.read_many(order, ahead=7))
    assert [p for p, _ in got] == order
    for p, data in got:
        i = int(p[-3:])
        assert bytes(data) == bytes([i % 251]) * (100 + i)


def test_empty_files_and_an_empty_list(fs):
    c, top = fs
    c.write_bytes(f"{top}/empty", b"")
    assert [(p, bytes(d)) for p, d in c.read_many([f"{top}/empty"] * 3)] == [(f"{top}/empty", b"")] * 3
    assert list(c.read_many([])) == []


def test_a_file_larger_than_the_budget_is_still_read(fs):
    c, top = fs
    big = os.urandom(300_000)
    c.write_bytes(f"{top}/big", big)
    small = _files(c, top, 3)
    got = dict(c.read_many([small[0], f"{top}/big", small[1], small[2]], ahead=4, max_bytes=1000))
    assert bytes(got[f"{top}/big"]) == big


def test_an_error_is_raised_at_its_turn_with_its_path(fs):
    c, top = fs
    a, b = _files(c, top, 2)
    it = c.read_many([a, f"{top}/missing", b], ahead=3)
    assert next(it)[0] == a  # the missing file, already tried, does not fail the first one
    with pytest.raises(FileNotFoundError) as e:
        next(it)
    assert e.value.errno == errno.ENOENT and e.value.filename == f"{top}/missing"
    c.mkdir(f"{top}/d")
    with pytest.raises(IsADirectoryError):
        list(c.read_many([f"{top}/d"]))


def test_bad_arguments_are_einval(fs):
    c, top = fs
    for kw in ({"ahead": 0}, {"ahead": -1}, {"max_bytes": 0}, {"ahead": 1.5}):
        with pytest.raises(err.InvalidArgument) as e:
            list(c.read_many([f"{top}/x"], **kw))
        assert e.value.errno == errno.EINVAL


def test_closing_early_cancels_and_closes_what_was_fetched_ahead(fs):
    c, top = fs
    paths = _files(c, top, 20)
    it = c.read_many(paths, ahead=8)
    assert next(it)[0] == paths[0]
    it.close()
    assert c.core.files == {}  # every open of the window was closed
    assert bytes(c.read_bytes(paths[5])) == bytes([5]) * 105  # the client goes on


def test_paths_are_consumed_lazily(fs):
    c, top = fs
    (p,) = _files(c, top, 1)
    taken = []

    def endless():
        for i in itertools.count():
            taken.append(i)
            yield p

    it = c.read_many(endless(), ahead=5)
    for _ in range(10):
        next(it)
    it.close()
    assert len(taken) <= 10 + 5 + 1


def test_the_window_is_bounded_in_files_and_bytes(monkeypatch):
    from dfs.meta.local import LocalEngine

    used_max = []
    take = prefetch.Budget.take

    async def recording_take(self, seq, n):
        await take(self, seq, n)
        used_max.append(self.used)

    monkeypatch.setattr(prefetch.Budget, "take", recording_take)
    _CountingClient.open_now = _CountingClient.open_max = 0
    with Client(lambda: _CountingClient(MetaClient(LocalEngine(2), ROOT), MemoryChunks())) as c:
        c.mkdir("/w")
        paths = _files(c, "/w", 30, size=lambda i: 1000)
        got = [p for p, _ in c.read_many(paths, ahead=6, max_bytes=3500)]
        assert got == paths
        assert _CountingClient.open_max <= 6
        # max_bytes, plus the file at the consumer's turn, which may always go (prefetch.Budget):
        # which file that is when the budget is full depends on the order opens complete in
        assert max(used_max) <= 3500 + 1000


def test_lists_hold_what_is_fetched_and_stop_before_an_error(memory_client):
    """``read_batches`` (what the sync Client reads through: one trip to the loop per list):
    each list starts with the file waited for and holds the files after it that are already
    fetched; a failing file ends the list before it and raises on the next step."""
    c = memory_client
    c.mkdir("/lists")
    paths = _files(c, "/lists", 12)
    order = paths[:5] + ["/lists/missing"] + paths[5:]

    async def collect():
        got, error = [], None
        agen = prefetch.read_batches(c.aio, order, ahead=4)
        try:
            async for batch in agen:
                got.append([p for p, _ in batch])
        except FileNotFoundError as e:
            error = e
        finally:
            await agen.aclose()
        return got, error

    got, error = c.run(collect())
    flat = [p for b in got for p in b]
    assert flat == paths[:5] and error.filename == "/lists/missing"
    assert all(b for b in got) and max(map(len, got)) <= 4
    assert c.core.files == {}
    assert [p for p, _ in c.read_many(paths, ahead=4)] == paths


def test_a_list_handed_over_counts_against_the_budget_until_the_next_is_asked(memory_client, monkeypatch):
    budgets = []

    class Recorded(prefetch.Budget):
        def __init__(self, limit: int) -> None:
            super().__init__(limit)
            budgets.append(self)

    monkeypatch.setattr(prefetch, "Budget", Recorded)
    c = memory_client
    c.mkdir("/budget")
    paths = _files(c, "/budget", 12, size=lambda i: 1000)

    async def go():
        got = []
        async for batch in prefetch.read_batches(c.aio, paths, ahead=8, max_bytes=3000):
            held = sum(len(d) for _, d in batch)
            # the consumer's list is still counted; the bound is max_bytes plus the file at the
            # consumer's turn (prefetch.Budget)
            assert held <= budgets[0].used <= 3000 + 1000
            got += [p for p, _ in batch]
        return got

    assert c.run(go()) == paths
