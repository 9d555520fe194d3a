"""The inode-level client core (dfs.client.core) and its Mode hooks, in process.

The core is under both faces; these tests drive it through the library
(``AsyncClient`` over a ``Core``) with a transport that counts the metadata
requests, so a change that adds a round trip to a hot path fails here. The
FUSE face's own in-process tests are in tests/unit/fuse/test_ops.py."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from dfs.client.core import Core
from dfs.client.file import MemoryChunks
from dfs.client.loop import SyncFacade
from dfs.client.meta import MetaClient
from dfs.client.mode import Change, Mode, Mutation, OpenPlan, StrictMode
from dfs.client.paths import AsyncClient
from dfs.common import errors as err
from dfs.common.ids import ROOT_INO
from dfs.common.records import ROOT
from dfs.meta.local import LocalEngine
from dfs.testing.counting import CountingTransport

S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * S

    def __call__(self) -> int:
        return self.now


def run(fn, mode: Mode | None = None):
    """``fn(client, counting transport, engine, clock)`` with /d made and its path cached (strict
    mode with a TTL no test outlives, so counts do not depend on the machine's speed)."""
    async def go():
        clock = Clock()
        eng = LocalEngine(2, clock=clock)
        t = CountingTransport(eng)
        c = AsyncClient(MetaClient(t, ROOT), MemoryChunks(), mode=mode or StrictMode(3600))
        try:
            await c.makedirs("/d")
            await c.stat("/d")
            await c.sync()
            t.take()
            await fn(c, t, eng, clock)
        finally:
            await c.close()
    asyncio.run(go())


# ---------------------------------------------------------------- round trips of the hot paths
def test_round_trips_of_the_library_hot_paths():
    async def t(c, t, eng, clock):
        f = await c.open("/d/new", "wb")  # not cached: CREATE-and-OPEN, one request
        assert t.take() == {"CREATE": 1}
        await f.write(b"hello")
        await f.close()  # the size published; the handle's CLOSE goes in the background
        assert t.take() == {"EXTEND": 1}
        await c.sync()
        assert t.take() == {"CLOSE": 1}
        await c.stat("/d/new")  # its attributes were dropped by the close that published:
        assert t.take() == {"GETATTR": 1}  # asked of the inode's shard (the name is cached)
        await c.stat("/d/new")  # cached (strict mode: within the TTL)
        assert t.take() == {}
        assert await c.read_bytes("/d/new") == b"hello"  # LOOKUPOPEN: walk's last step and open
        assert t.take() == {"LOOKUPOPEN": 1}
        await c.sync()
        assert t.take() == {"CLOSEREAD": 1}
        await c.remove("/d/new")
        assert t.take() == {"UNLINK": 1}
        assert await c.listdir("/d") == []  # the unlink dropped /d's attributes (its mtime moved)
        assert t.take() == {"GETATTR": 1, "READDIR": 1}
    run(t)


# ---------------------------------------------------------------- the open-file table
def test_opens_of_one_inode_share_one_file_handle():
    async def t(c, t, eng, clock):
        await c.write_bytes("/d/f", b"0123456789")
        a = await c.open("/d/f", "r+b")
        b = await c.open("/d/f", "rb")
        assert a.handle is b.handle and len(c.core.files) == 1
        await a.write(b"AB")  # buffered in the shared handle: the other open reads it at once
        assert await b.read() == b"AB23456789"
        assert (await c.stat("/d/f")).st_size == 10
        await a.seek(0, os.SEEK_END)
        await a.write(b"++")
        assert (await c.stat("/d/f")).st_size == 12  # this client's unflushed size
        await a.close()
        assert len(c.core.files) == 1  # b still holds it
        await b.close()
        assert c.core.files == {}
        assert await c.read_bytes("/d/f") == b"AB23456789++"
    run(t)


def test_a_write_open_of_a_read_held_file_makes_its_handle_durable():
    async def t(c, t, eng, clock):
        await c.write_bytes("/d/f", b"x")
        await c.sync()
        t.take()
        r = await c.open("/d/f", "rb")
        of = c.core.files[r.handle.ino]
        assert of.read and t.take() == {"LOOKUPOPEN": 1}
        w = await c.open("/d/f", "r+b")  # a fresh LOOKUP (close-to-open), then the same handle
        assert not of.read and t.take() == {"LOOKUP": 1, "OPEN": 1}  # id OPENed durable
        await c.sync()
        assert t.take() == {"CLOSEREAD": 1}  # the read handle goes
        await w.close()
        await r.close()
        await c.sync()
        assert t.take() == {"CLOSE": 1}
    run(t)


# ---------------------------------------------------------------- inline files: read whole at the open
def test_an_inline_file_is_opened_and_read_with_one_request_and_no_handle():
    async def t(c, t, eng, clock):
        got = await c.set_layout("/d", inline=True)
        assert got.inline and (await c.layout("/d")).inline
        await c.write_bytes("/d/small", b"tiny file")
        await c.sync()
        t.take()
        assert await c.read_bytes("/d/small") == b"tiny file"
        await c.sync()
        assert t.take() == {"LOOKUPOPEN": 1}  # no READINLINE, no OPEN, no CLOSE
        f = await c.open("/d/small", "rb")
        of = c.core.files[f.handle.ino]
        assert of.handle is None and t.take() == {"LOOKUPOPEN": 1}
        await c.remove("/d/small")  # the reader holds all of the file
        assert await f.read() == b"tiny file"
        await f.close()
        await c.sync()
        assert _handles(eng) == [] and t.take() == {"UNLINK": 1}
    run(t)


def test_a_write_open_of_an_inline_file_held_without_a_handle_takes_one():
    async def t(c, t, eng, clock):
        await c.set_layout("/d", inline=True)
        await c.write_bytes("/d/f", b"abc")
        await c.sync()
        r = await c.open("/d/f", "rb")
        of = c.core.files[r.handle.ino]
        assert of.handle is None
        w = await c.open("/d/f", "r+b")
        assert of.handle is not None and not of.read  # a durable handle: the file outlives its name
        await c.remove("/d/f")
        await w.write(b"XY")
        await w.flush()
        assert await r.read() == b"XYc"
        await w.close()
        await r.close()
        await c.sync()
        assert _handles(eng) == []
    run(t)


def test_a_reopen_of_an_inline_file_held_without_a_handle_sees_its_new_bytes():
    async def t(c, t, eng, clock):
        await c.set_layout("/d", inline=True)
        await c.write_bytes("/d/f", b"old")
        r = await c.open("/d/f", "rb")
        assert await r.read() == b"old"
        other = AsyncClient(MetaClient(t, ROOT), MemoryChunks(), mode=StrictMode(3600))
        try:
            await other.write_bytes("/d/f", b"newer")
        finally:
            await other.close()
        r2 = await c.open("/d/f", "rb")  # close-to-open: the bytes of the new version, in the open
        t.take()
        assert await r2.read() == b"newer" and t.take() == {}
        await r.close()
        await r2.close()
    run(t)


def test_set_layout_refuses_bad_input_and_changes_nothing():
    async def t(c, t, eng, clock):
        before = await c.layout("/d")
        await c.write_bytes("/d/f", b"x")
        for kw, code in (({"chunk_size": 1000}, errno.EINVAL), ({"stripe": 0}, errno.EINVAL),
                         ({"replicas": 0}, errno.EINVAL)):
            with pytest.raises(OSError) as ei:
                await c.set_layout("/d", **kw)
            assert ei.value.errno == code, kw
        with pytest.raises(NotADirectoryError):
            await c.set_layout("/d/f", stripe=2)
        with pytest.raises(FileNotFoundError):
            await c.set_layout("/nope", stripe=2)
        assert await c.layout("/d") == before
        got = await c.set_layout("/d", chunk_size=1 << 20, stripe=2)
        assert (got.layout.chunk_size, got.layout.stripe, got.layout.replicas) == (1 << 20, 2, before.layout.replicas)
        await c.write_bytes("/d/g", b"y")
        assert (await c.layout("/d/g")).layout == got.layout  # new files inherit it
        assert (await c.layout("/d/f")).layout == before.layout  # existing ones keep theirs
    run(t)


# ---------------------------------------------------------------- leases
def _handles(eng) -> list:
    return sorted(h for s in eng.services for h in s.store.handles())


def _handle_access(eng, ino: int, h: bytes) -> int:
    from dfs.meta import schema as S_

    for s in eng.services:
        v = s.store.kv.get(S_.handle_key(ino, h))
        if v is not None:
            return S_.handle_access(v)
    raise AssertionError("no such handle")


def test_opens_as_the_mount_makes_them_record_what_they_need_on_the_shared_handle():
    """The mount opens with access 0 for non-root callers (the kernel checked): the core still
    asks the service for what the flags need, so the handle records it (the data-plane
    capabilities of that handle follow it), and a later open of the same file that needs
    more (reading a file held for writing) asks for that once on the same handle."""
    async def t(c, t, eng, clock):
        await c.write_bytes("/d/f", b"x")
        a = await c.stat("/d/f")
        await c.sync()  # its close's handle is gone
        core = c.core
        w = await core.open(a.st_ino, os.O_WRONLY)
        (ino, h, _), = _handles(eng)
        assert _handle_access(eng, ino, h) == os.W_OK
        t.take()
        r = await core.open(a.st_ino, os.O_RDONLY)  # reading is new on this handle: asked once
        assert _handle_access(eng, ino, h) == os.R_OK | os.W_OK and t.take()
        r2 = await core.open(a.st_ino, os.O_RDONLY)  # nothing new: no OPEN
        assert t.take().get("OPEN", 0) == 0
        for ref in (r2, r, w):
            await ref.close()
    run(t)


def test_a_read_open_by_path_of_a_file_held_for_writing_adds_reading_to_the_kept_handle():
    """open("rb") by path (LOOKUPOPEN: a read handle of its own) while this client holds the
    file for writing: one handle is kept, the durable one, and it must now carry reading too,
    since the data-plane capabilities of both opens are asked with it."""
    async def t(c, t, eng, clock):
        await c.write_bytes("/d/f", b"x")
        await c.sync()
        w = await c.open("/d/f", "ab")
        (ino, h, _), = _handles(eng)
        assert _handle_access(eng, ino, h) == os.W_OK
        t.take()
        r = await c.open("/d/f", "rb")
        assert c.core.files[ino].handle == h and _handle_access(eng, ino, h) == os.R_OK | os.W_OK
        assert t.take() == {"LOOKUPOPEN": 1, "OPEN": 1}
        r2 = await c.open("/d/f", "rb")  # nothing new: the LOOKUPOPEN's read handle goes, no OPEN
        assert t.take() == {"LOOKUPOPEN": 1}
        for ref in (r2, r, w):
            await ref.close()
    run(t)


def test_a_lost_handle_of_an_existing_file_is_registered_again():
    async def t(c, t, eng, clock):
        f = await c.open("/d/f", "wb")
        (ino, h, _), = _handles(eng)
        clock.now += 31 * S  # this client could not renew for a whole lease
        assert await eng.expire_handles() == 1 and _handles(eng) == []
        await c.leases.renew_once()  # gone: the same handle id is registered again
        assert [x[:2] for x in _handles(eng)] == [(ino, h)]
        await f.write(b"still fine")
        await f.close()
        assert await c.read_bytes("/d/f") == b"still fine"
    run(t)


def test_a_lost_handle_that_cannot_be_registered_again_fails_the_open_with_estale():
    async def t(c, t, eng, clock):
        f = await c.open("/d/f", "wb")
        await f.write(b"data")
        await f.flush()
        await c.remove("/d/f")  # kept alive by the open handle
        clock.now += 31 * S
        assert await eng.expire_handles() == 1  # the handle expired: the file is deleted
        await c.leases.renew_once()
        with pytest.raises(OSError) as ei:
            await f.write(b"more")
        assert ei.value.errno == errno.ESTALE
        with pytest.raises(OSError):
            await f.close()  # its flush reports it too; the open is released all the same
        assert c.core.files == {}
    run(t)


# ---------------------------------------------------------------- the sync facade
def test_one_sync_facade_runs_coroutines_and_refuses_its_own_thread():
    fac = SyncFacade(lambda: _Closable())
    assert fac.run(asyncio.sleep(0, "x")) == "x"

    async def inner():
        return fac.run(asyncio.sleep(0))

    with pytest.raises(RuntimeError):
        fac.run(inner())
    fac.close()
    assert fac.aio.closed
    with pytest.raises(ValueError):
        fac.run(asyncio.sleep(0))


class _Closable:
    closed = False

    async def close(self) -> None:
        self.closed = True


# ---------------------------------------------------------------- the Mode hooks
class ReadOnlyView(StrictMode):
    """A sketch of what snapshot mode will do through the hooks: every metadata read is
    answered from what it learned once (no TTL), every change is refused before anything
    is sent, opens take no server handle."""

    name = "read-only"

    def __init__(self) -> None:
        super().__init__(ttl=3600)
        self.refused: list[Mutation] = []
        self.names: dict[int, set[bytes]] = {}  # directories listed whole: their names

    def entry(self, parent, name):
        if parent in self.names and name not in self.names[parent]:
            raise err.NotFound()  # known missing: no LOOKUP
        return super().entry(parent, name)

    def listed(self, ino, entries):
        super().listed(ino, entries)
        self.names.setdefault(ino, set()).update(e.name for e in entries)

    async def mutate(self, m, send):
        self.refused.append(m)
        raise err.DfsError("read-only view", code=errno.EROFS)

    def open_plan(self, ino, flags):
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_CREAT):
            raise err.DfsError("read-only view", code=errno.EROFS)
        return OpenPlan(revalidate=False, server_handle=False)


def test_a_mode_answers_reads_and_refuses_changes_before_anything_is_sent():
    async def t(c, t, eng, clock):
        await c.write_bytes("/d/f", b"snap")
        await c.symlink("f", "/d/l")
        await c.sync()
        view = ReadOnlyView()
        ro = AsyncClient(core=Core(c.meta, c.data, view))
        assert await ro.read_bytes("/d/l") == b"snap"  # learns the path once
        assert await ro.listdir("/d") == ["f", "l"]
        t.take()
        assert await ro.read_bytes("/d/l") == b"snap"  # then: no metadata request at all
        assert (await ro.stat("/d/f")).st_size == 4
        assert t.take() == {}
        for call in (ro.mkdir("/d/x"), ro.remove("/d/f"), ro.rename("/d/f", "/d/g"), ro.chmod("/d/f", 0o600),
                     ro.open("/d/f", "r+b"), ro.open("/d/new", "wb"), ro.setxattr("/d/f", "user.a", b"1")):
            with pytest.raises(OSError) as ei:
                await call
            assert ei.value.errno == errno.EROFS
        assert t.take() == {}
        assert [m.op for m in view.refused] == [Change.MKDIR, Change.UNLINK, Change.RENAME, Change.SETATTR,
                                                Change.SETXATTR]
        assert await ro.core.getattr(ROOT_INO)
    run(t)


# ---------------------------------------------------------------- a close that does not wait
class GatedChunks(MemoryChunks):
    """Chunk writes wait for ``gate``; with ``fail`` set they fail with ENOSPC."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.fail = False

    async def write(self, ino, index, offset, data, layout) -> None:
        await self.gate.wait()
        if self.fail:
            raise err.DfsError("no space", code=errno.ENOSPC)
        await super().write(ino, index, offset, data, layout)


class CloseInBackground(StrictMode):
    """What lazy mode's close will be (OpenPlan.close_waits=False); strict in all else."""

    def open_plan(self, ino, flags):
        return OpenPlan(close_waits=False)


def test_a_close_that_does_not_wait_is_covered_by_the_next_barrier():
    async def t(c, t, eng, clock):
        chunks = GatedChunks()
        lazy = AsyncClient(core=Core(c.meta, chunks, CloseInBackground(ttl=3600)))
        f = await lazy.open("/d/f", "wb", 0o644)
        await f.write(b"x" * 100_000)
        # the data cannot reach the data servers yet: a close that waited would never return
        await asyncio.wait_for(f.close(), 30)
        done = asyncio.ensure_future(lazy.sync())  # a barrier: waits for the background close
        assert not done.done()
        chunks.gate.set()
        await asyncio.wait_for(done, 30)
        assert (await c.meta.getattr((await lazy.stat("/d/f")).st_ino)).size == 100_000
        chunks.fail = True
        for name in ("g", "h"):
            g = await lazy.open(f"/d/{name}", "wb", 0o644)
            await g.write(b"y" * 10)
            await g.close()  # returns; the flush fails in the background
            await lazy.core.wait_background()
        g = await lazy.open("/d/g", "rb")
        with pytest.raises(OSError) as ei:
            await g.close()  # reported at the file's next close...
        assert ei.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as ei:
            await lazy.sync()  # ... or at the next barrier
        assert ei.value.errno == errno.ENOSPC
        await lazy.sync()  # each error once
        await lazy.core.close()
    run(t)


# ---------------------------------------------------------------- strict-mode files in the node cache
class _CountingChunks(MemoryChunks):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def read(self, ino, index, offset, length, layout):
        self.reads += 1
        return await super().read(ino, index, offset, length, layout)


def test_strict_files_are_read_from_the_node_cache_while_their_data_version_holds(tmp_path):
    """Two clients of one machine share a node cache (two processes in real life): a file read
    once is read again from it while its data version holds; a change made elsewhere is seen
    at the next open (close-to-open), and a handle's own writes never come from the cache."""
    from dfs.client.nodecache import CachedChunks, NodeCache

    async def go():
        eng = LocalEngine(2, clock=Clock())
        chunks = _CountingChunks()  # the data servers, shared

        def client() -> AsyncClient:
            cache = CachedChunks(chunks, NodeCache(str(tmp_path / "cache"), "c@x", 1 << 30))
            return AsyncClient(MetaClient(eng, ROOT), cache, mode=StrictMode(3600))

        a, b = client(), client()
        try:
            await a.makedirs("/d")
            await a.write_bytes("/d/f", b"1" * 5000)
            chunks.reads = 0
            assert await a.read_bytes("/d/f") == b"1" * 5000
            assert chunks.reads == 1
            assert await b.read_bytes("/d/f") == b"1" * 5000  # the other process: a hit
            assert await a.read_bytes("/d/f") == b"1" * 5000
            assert chunks.reads == 1
            async with await b.open("/d/f", "r+b") as w:  # overwritten in place, same size
                await w.write(b"2" * 100)
                assert await w.pread(0, 3) == b"222"  # its own writes, not the cache
            assert await a.read_bytes("/d/f") == b"2" * 100 + b"1" * 4900
            assert chunks.reads >= 2
            n = chunks.reads
            assert await b.read_bytes("/d/f") == b"2" * 100 + b"1" * 4900
            assert chunks.reads == n
            r = await a.open("/d/f", "rb")  # held open across another's change: its version
            assert await r.read(3) == b"222"
            await b.write_bytes("/d/f", b"3" * 10)  # O_TRUNC and a write: new versions
            assert await a.read_bytes("/d/f") == b"3" * 10
            await r.close()
        finally:
            await a.close()
            await b.close()
    asyncio.run(go())
