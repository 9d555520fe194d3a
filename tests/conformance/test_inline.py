"""Small files inline in the metadata shard (Data-on-MDT): the file I/O core and
the state machine's READINLINE / WRITEINLINE / MIGRATE, on the in-memory engine
(MetaClient(LocalEngine(2)) + MemoryChunks) and on a real cluster with data
servers. See docs/design/data.md "Small files inline (Data-on-MDT)"."""

from __future__ import annotations

import asyncio
import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfs.client.connect import pair
from dfs.client.file import FileHandle, MemoryChunks
from dfs.client.meta import MetaClient
from dfs.common import errors as err
from dfs.common.ids import ROOT_INO
from dfs.common.layout import Layout
from dfs.common.limits import INLINE_MAX
from dfs.common.ops import inline_digest
from dfs.common.records import FLAG_INLINE, Caller
from dfs.meta import schema as S
from dfs.meta.local import LocalEngine
from dfs.testing.counting import CountingTransport
from dfs.testing.file_script import run_script

CHUNK = 64 * 1024
LAYOUT = Layout(chunk_size=CHUNK, stripe=3, replicas=1)
CLUSTER_LAYOUT = Layout(chunk_size=CHUNK, stripe=3, replicas=3)  # the data_cluster's chains have 3 targets
ALICE = Caller(1000, 1000)
BOB = Caller(2000, 2000)


class Env:
    def __init__(self) -> None:
        self.engine = LocalEngine(2)
        self.t = CountingTransport(self.engine)  # the operations clients send, by op name
        self.meta = MetaClient(self.t)
        self.data = MemoryChunks()

    async def inline_dir(self, name: str = "small", caller: Caller | None = None) -> int:
        d = await self.meta.mkdir(ROOT_INO, name, 0o777)
        a = await self.meta.setlayout(d.ino, LAYOUT.pack(), inline=True)
        assert a.flags & FLAG_INLINE
        return d.ino

    def fh(self, attr, **kw) -> FileHandle:
        return FileHandle(self.meta, self.data, attr, layout=LAYOUT, **kw)

    def store_of(self, ino: int):
        return self.engine.services[ino >> 48].store

    def inline_record(self, ino: int):
        st = self.store_of(ino)
        return st.view(st.kv).get(S.inline_key(ino))


def run(coro_fn):
    async def go():
        env = Env()
        try:
            await coro_fn(env)
        finally:
            await env.meta.close()
    asyncio.run(go())


def blob(n: int, seed: int = 1) -> bytes:
    return bytes((seed * 131 + i * 7) & 0xFF for i in range(n))


# ---------------------------------------------------------------- policy

def test_policy_directory_create_flag_and_inheritance():
    async def t(env: Env):
        root = await env.meta.getattr(ROOT_INO)
        assert not root.flags & FLAG_INLINE, "the root keeps files on the data servers by default"
        a, _ = await env.meta.create(ROOT_INO, "plain")
        assert not a.is_inline()
        b, _ = await env.meta.create(ROOT_INO, "forced", inline=True)
        assert b.is_inline()
        d = await env.inline_dir()
        f, _ = await env.meta.create(d, "f")
        assert f.is_inline() and (await env.meta.getattr(f.ino)).is_inline()
        g, _ = await env.meta.create(d, "g", inline=False)
        assert not g.is_inline()
        sub = await env.meta.mkdir(d, "sub")
        assert sub.flags & FLAG_INLINE and (await env.meta.getattr(sub.ino)).flags & FLAG_INLINE
        h, _ = await env.meta.create(sub.ino, "h")
        assert h.is_inline()
        await env.meta.setlayout(d, LAYOUT.pack(), inline=False)
        k, _ = await env.meta.create(d, "k")
        assert not k.is_inline()
        assert (await env.meta.lookup(d, "f")).is_inline(), "existing files keep theirs"
        sym = await env.meta.symlink(d, "s", "f")
        assert not sym.flags & FLAG_INLINE
    run(t)


# ---------------------------------------------------------------- the common path

def test_small_file_write_close_is_one_mutation_and_read_is_one_op():
    async def t(env: Env):
        d = await env.inline_dir()
        attr, _ = await env.meta.create(d, "f")
        data = blob(3000)
        env.t.take()
        fh = env.fh(attr)
        await fh.pwrite(0, data[:1000])
        await fh.pwrite(1000, data[1000:])
        await fh.close()
        assert (n := env.t.take()) == {"WRITEINLINE": 1}, n
        assert env.data.chunks == {}, "no chunk written"
        a = await env.meta.getattr(attr.ino)
        assert a.size == 3000 and a.is_inline() and a.mtime_ns >= attr.mtime_ns
        env.t.take()
        fh = env.fh(a)
        assert await fh.pread(0, 1000) == data[:1000]
        assert await fh.pread(1000, 10000) == data[1000:]
        await fh.close()
        assert (n := env.t.take()) == {"READINLINE": 1}, n
    run(t)


def test_overwrite_truncate_and_holes_inside_the_threshold():
    async def t(env: Env):
        d = await env.inline_dir()
        attr, _ = await env.meta.create(d, "f")
        ref = bytearray(blob(5000))
        fh = env.fh(attr)
        await fh.pwrite(0, bytes(ref))
        await fh.close()
        fh = env.fh(await env.meta.getattr(attr.ino))
        await fh.pwrite(100, b"X" * 50)  # overwrite
        ref[100:150] = b"X" * 50
        assert await fh.pread(90, 70) == bytes(ref[90:160]), "unflushed writes are visible to the handle"
        await fh.truncate(4000)  # shrink
        del ref[4000:]
        await fh.pwrite(6000, b"tail")  # a hole
        ref.extend(bytes(2000))
        ref += b"tail"
        await fh.truncate(9000)  # grow
        ref.extend(bytes(9000 - len(ref)))
        assert await fh.pread(0, 20000) == bytes(ref)
        await fh.close()
        a = await env.meta.getattr(attr.ino)
        assert a.size == len(ref) and a.is_inline()
        assert await env.fh(a).pread(0, 20000) == bytes(ref)
        assert env.data.chunks == {}
        # a sparse inline file: size far past the threshold, bytes still inline
        fh = env.fh(a)
        await fh.truncate(10 << 20)
        a = await env.meta.getattr(attr.ino)
        assert a.is_inline() and a.size == 10 << 20
        assert await env.fh(a).pread((10 << 20) - 5, 100) == bytes(5)
        assert await env.fh(a).pread(6000, 4) == b"tail"
        assert env.data.chunks == {}
    run(t)


def test_growth_migrates_to_chunks_with_content_intact():
    async def t(env: Env):
        d = await env.inline_dir()
        attr, _ = await env.meta.create(d, "f")
        small = blob(INLINE_MAX - 100)
        fh = env.fh(attr)
        await fh.pwrite(0, small)
        await fh.close()
        assert env.inline_record(attr.ino) is not None
        fh = env.fh(await env.meta.getattr(attr.ino))
        await fh.pwrite(10, b"unflushed")  # buffered while inline, goes to chunks after the move
        more = blob(3 * CHUNK, 2)
        await fh.pwrite(len(small), more)  # crosses the threshold
        assert not fh.inline
        await fh.close()
        ref = bytearray(small + more)
        ref[10:19] = b"unflushed"
        a = await env.meta.getattr(attr.ino)
        assert not a.is_inline() and a.size == len(ref)
        assert env.inline_record(attr.ino) is None, "the inline bytes are dropped with the flag"
        assert env.data.chunks, "the bytes are on the data side now"
        assert await env.fh(a).pread(0, len(ref) + 10) == bytes(ref)
        # later small writes stay on chunks (the move is one way)
        fh = env.fh(a)
        await fh.truncate(10)
        await fh.close()
        a = await env.meta.getattr(attr.ino)
        assert not a.is_inline()
        assert await env.fh(a).pread(0, 100) == bytes(ref[:10])
    run(t)


def test_write_far_past_the_threshold_migrates_an_empty_file_with_one_op():
    async def t(env: Env):
        d = await env.inline_dir()
        attr, _ = await env.meta.create(d, "big")
        env.t.take()
        fh = env.fh(attr)
        await fh.pwrite(5 * CHUNK, b"far")
        await fh.close()
        assert (n := env.t.take()) == {"MIGRATE": 1, "EXTEND": 1}, n
        a = await env.meta.getattr(attr.ino)
        assert not a.is_inline() and a.size == 5 * CHUNK + 3
        assert await env.fh(a).pread(5 * CHUNK - 2, 10) == b"\0\0far"
        # a file that had bytes once and was cut to nothing still migrates correctly
        b, _ = await env.meta.create(d, "cut")
        fh = env.fh(b)
        await fh.pwrite(0, blob(1000))
        await fh.close()
        fh = env.fh(await env.meta.getattr(b.ino))
        await fh.truncate(0)
        await fh.pwrite(INLINE_MAX + 7, b"z")
        await fh.close()
        a = await env.meta.getattr(b.ino)
        assert not a.is_inline()
        assert await env.fh(a).pread(0, a.size) == bytes(INLINE_MAX + 7) + b"z"
    run(t)


def test_forced_threshold_zero_and_non_inline_files_use_chunks():
    async def t(env: Env):
        d = await env.inline_dir()
        attr, _ = await env.meta.create(d, "f")
        fh = env.fh(attr, inline_max=0)
        await fh.pwrite(0, b"abc")
        await fh.close()
        a = await env.meta.getattr(attr.ino)
        assert not a.is_inline() and env.data.chunks
        assert await env.fh(a).pread(0, 10) == b"abc"
        g, _ = await env.meta.create(d, "g", inline=False)
        env.t.take()
        fh = env.fh(g)
        await fh.pwrite(0, b"abc")
        await fh.close()
        assert env.t.take() == {"EXTEND": 1}
    run(t)


def test_two_handles_one_migrates_the_other_follows():
    async def t(env: Env):
        d = await env.inline_dir()
        attr, _ = await env.meta.create(d, "f")
        a = env.fh(attr)
        await a.pwrite(0, b"A" * 100)
        await a.flush()
        b = env.fh(await env.meta.getattr(attr.ino))
        assert await b.pread(0, 100) == b"A" * 100  # b reads inline
        await b.pwrite(INLINE_MAX, b"B" * 10)  # b moves the file to chunks
        await b.close()
        await a.pwrite(50, b"a" * 10)  # a still thinks inline: its flush finds out and uses chunks
        await a.close()
        assert not a.inline
        got = await env.meta.getattr(attr.ino)
        ref = bytearray(b"A" * 100 + bytes(INLINE_MAX - 100) + b"B" * 10)
        ref[50:60] = b"a" * 10
        assert got.size == len(ref)
        assert await env.fh(got).pread(0, len(ref)) == bytes(ref)
        # a reader opened while inline switches over too
        c = env.fh(attr)
        c.size = got.size
        assert await c.pread(0, len(ref)) == bytes(ref)
    run(t)


# ---------------------------------------------------------------- namespace

def test_links_rename_and_unlink_remove_inline_data():
    async def t(env: Env):
        d = await env.inline_dir()
        other = await env.meta.mkdir(ROOT_INO, "other")  # another shard, possibly
        attr, _ = await env.meta.create(d, "f")
        fh = env.fh(attr)
        await fh.pwrite(0, b"hello")
        await fh.close()
        await env.meta.link(attr.ino, other.ino, "hard")
        await env.meta.rename(d, "f", other.ino, "moved")
        for parent, name in ((other.ino, "hard"), (other.ino, "moved")):
            a = await env.meta.lookup(parent, name)
            assert a.is_inline() and await env.fh(a).pread(0, 10) == b"hello"
        await env.meta.unlink(other.ino, "hard")
        assert env.inline_record(attr.ino) is not None
        await env.meta.unlink(other.ino, "moved")
        store = env.store_of(attr.ino)
        assert env.inline_record(attr.ino) is None, "inline bytes go with the inode"
        assert store.orphans() == [], "an inline file leaves no orphan record"
        with pytest.raises(FileNotFoundError):
            await env.meta.read_inline(attr.ino)
        # rename over an inline file deletes it too
        x, _ = await env.meta.create(d, "x")
        fh = env.fh(x)
        await fh.pwrite(0, b"x")
        await fh.close()
        await env.meta.create(d, "y")
        await env.meta.rename(d, "y", d, "x")
        assert env.inline_record(x.ino) is None
    run(t)


# ---------------------------------------------------------------- errors

def test_errors_of_the_inline_ops():
    async def t(env: Env):
        d = await env.inline_dir()
        m = env.meta
        missing = (await m.create(d, "gone"))[0].ino
        await m.unlink(d, "gone")
        for call in (m.read_inline(missing), m.write_inline(missing, [(0, b"x")], 1),
                     m.migrate_inline(missing, None)):
            with pytest.raises(FileNotFoundError):
                await call
        f, _ = await m.create(d, "f", 0o600, caller=ALICE)
        await m.write_inline(f.ino, [(0, b"secret")], 6, caller=ALICE)
        with pytest.raises(PermissionError) as ei:
            await m.read_inline(f.ino, caller=BOB)
        assert ei.value.errno == errno.EACCES
        for call in (m.write_inline(f.ino, [(0, b"x")], 1, caller=BOB),
                     m.migrate_inline(f.ino, inline_digest(b"secret"), caller=BOB)):
            with pytest.raises(PermissionError):
                await call
        # the owner keeps access through mode 0 (an open descriptor checked at open), root too
        await m.setattr(f.ino, mode=0, caller=ALICE)
        assert (await m.read_inline(f.ino, caller=ALICE))[0] == b"secret"
        await m.write_inline(f.ino, [(0, b"S")], 1, caller=ALICE)
        assert (await m.read_inline(f.ino))[0] == b"Secret"
        with pytest.raises(IsADirectoryError):
            await m.read_inline(d)
        with pytest.raises(err.DfsError) as ei:
            await m.write_inline(f.ino, [(INLINE_MAX - 1, b"xy")], 0)
        assert ei.value.errno == errno.EFBIG
        with pytest.raises(err.DfsError) as ei:
            await m.migrate_inline(f.ino, inline_digest(b"other"))
        assert ei.value.errno == errno.ECANCELED
        with pytest.raises(err.DfsError) as ei:
            await m.migrate_inline(f.ino, None)
        assert ei.value.errno == errno.ECANCELED
        a = await m.migrate_inline(f.ino, inline_digest(b"Secret"))
        assert not a.is_inline()
        assert (await m.migrate_inline(f.ino, None)).ino == f.ino, "migrating twice is a no-op"
        for call in (m.read_inline(f.ino), m.write_inline(f.ino, [(0, b"x")], 1)):
            with pytest.raises(err.DfsError) as ei:
                await call
            assert ei.value.errno == errno.ENOTSUP
        sym = await m.symlink(d, "s", "f")
        with pytest.raises(err.DfsError) as ei:
            await m.write_inline(sym.ino, [(0, b"x")], 1)
        assert ei.value.errno == errno.EINVAL
    run(t)



# ---------------------------------------------------------------- property

MAX = 2 * INLINE_MAX + 1000
sizes = st.one_of(st.integers(1, 2000), st.integers(INLINE_MAX - 2000, INLINE_MAX + 2000), st.integers(1, CHUNK))
offsets = st.one_of(st.integers(0, 4000), st.integers(INLINE_MAX - 3000, INLINE_MAX + 100), st.integers(0, MAX))
script_st = st.lists(
    st.one_of(
        st.tuples(st.just("write"), offsets, sizes),
        st.tuples(st.just("truncate"), offsets, st.just(0)),
        st.tuples(st.just("read"), offsets, st.integers(0, 2 * CHUNK)),
        st.tuples(st.just("flush"), st.just(0), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    min_size=1, max_size=20)


async def check_script(meta: MetaClient, data, parent: int, name: str, script) -> bool:
    """Run the script against a FileHandle and a bytearray; True if the file is still inline."""
    attr, _ = await meta.create(parent, name, inline=True)
    attr = await run_script(meta, data, attr, script, LAYOUT, blob)
    wrote_past = any(k == "write" and o + n > INLINE_MAX for k, o, n in script)
    assert attr.is_inline() == (not wrote_past), "inline exactly while no write reached past INLINE_MAX"
    return attr.is_inline()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=script_st)
def test_random_io_mixing_small_and_crossing_sizes_memory(script):
    async def t(env: Env):
        still_inline = await check_script(env.meta, env.data, ROOT_INO, "f", script)
        if still_inline:
            assert env.data.chunks == {}, "an inline file never touches the data side"
    run(t)


# ---------------------------------------------------------------- a real cluster

_names = iter(range(10**9))


@pytest.mark.slow
def test_inline_on_a_real_cluster(data_cluster):
    """Through gRPC, Raft and data servers: inline small files, a migration, reads after reopen."""
    from dfs.route.shards import GrpcTransport

    async def go():
        t = await GrpcTransport(data_cluster.mgmt_addresses).connect()
        meta, data = pair(t)
        try:
            d = await meta.mkdir(ROOT_INO, f"inl{next(_names)}")
            await meta.setlayout(d.ino, CLUSTER_LAYOUT.pack(), inline=True)
            files = {}
            for i, n in enumerate((1, 4096, 16 << 10, INLINE_MAX)):
                a, _ = await meta.create(d.ino, f"s{i}")
                fh = FileHandle(meta, data, a)
                await fh.pwrite(0, blob(n, i))
                await fh.close()
                files[a.ino] = blob(n, i)
            for ino, want in files.items():
                a = await meta.getattr(ino)
                assert a.is_inline() and a.size == len(want)
                assert await FileHandle(meta, data, a).pread(0, len(want) + 1) == want
                assert (await data.read(ino, 0, 0, 100, LAYOUT)) == b"", "no chunk on the data servers"
            ino, want = next(iter(files.items()))
            a = await meta.getattr(ino)
            fh = FileHandle(meta, data, a)
            extra = blob(2 * CHUNK, 9)
            await fh.pwrite(len(want), extra)
            await fh.close()
            a = await meta.getattr(ino)
            assert not a.is_inline()
            assert await FileHandle(meta, data, a).pread(0, a.size) == want + extra
        finally:
            await data.close()
            await meta.close()
    asyncio.run(go())


@pytest.mark.slow
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=script_st)
def test_random_io_mixing_small_and_crossing_sizes_cluster(data_cluster, script):
    from dfs.route.shards import GrpcTransport

    async def go():
        t = await GrpcTransport(data_cluster.mgmt_addresses).connect()
        meta, data = pair(t)
        try:
            await check_script(meta, data, ROOT_INO, f"p{next(_names)}", script)
        finally:
            await data.close()
            await meta.close()
    asyncio.run(go())
