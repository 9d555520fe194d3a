"""The file I/O core against a reference bytearray: random writes, overwrites,
truncates and reads at odd offsets and sizes (hypothesis), on every data engine
of the ``fio`` fixture."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfs.client.connect import pair
from dfs.client.file import FileHandle, MemoryChunks
from dfs.client.meta import MetaClient
from dfs.common.ids import ROOT_INO
from dfs.common.layout import Layout
from dfs.meta.local import LocalEngine
from dfs.testing.file_script import run_script

CHUNK = 64 * 1024
LAYOUT = Layout(chunk_size=CHUNK, stripe=3, replicas=1)
MAX = 5 * CHUNK + 1234

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, MAX), st.integers(1, 2 * CHUNK + 17)),
        st.tuples(st.just("truncate"), st.integers(0, MAX), st.just(0)),
        st.tuples(st.just("read"), st.integers(0, MAX), st.integers(0, 3 * CHUNK)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
    ),
    min_size=1, max_size=25)


class Env:
    def __init__(self, meta: MetaClient, data) -> None:
        self.meta = meta
        self.data = data


def memory_env() -> Env:
    return Env(MetaClient(LocalEngine(2)), MemoryChunks())


async def check(env: Env, script, name: str) -> None:
    attr, _ = await env.meta.create(ROOT_INO, name)
    await run_script(env.meta, env.data, attr, script, LAYOUT,
                     lambda n, seed: bytes((seed * 131 + i) & 0xFF for i in range(n)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops)
def test_random_io_matches_reference_memory(script):
    async def go():
        env = memory_env()
        await check(env, script, "f")
        await env.meta.close()
    asyncio.run(go())


_names = iter(range(10**9))


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops)
def test_random_io_matches_reference_cluster(data_cluster, script):
    """The same, through a real cluster: 3 data servers, chains of 3 replicas, 2 metadata shards."""
    from dfs.route.shards import GrpcTransport

    async def go():
        t = await GrpcTransport(data_cluster.mgmt_addresses).connect()
        env = Env(*pair(t))
        try:
            await check(env, script, f"f{next(_names)}")
        finally:
            await env.data.close()
            await env.meta.close()
    asyncio.run(go())


@pytest.mark.slow
def test_replicas_hold_identical_chunks(data_cluster):
    """After writes through the client core, every replica of every chunk has the same version and bytes."""
    from dfs.common.layout import chain_of
    from dfs.route.shards import GrpcTransport

    async def go():
        t = await GrpcTransport(data_cluster.mgmt_addresses).connect()
        meta, data = pair(t)
        try:
            attr, _ = await meta.create(ROOT_INO, f"replicated{next(_names)}")
            fh = FileHandle(meta, data, attr, layout=LAYOUT)
            blob = bytes((i * 7) & 0xFF for i in range(4 * CHUNK + 999))
            await fh.pwrite(0, blob)
            await fh.pwrite(CHUNK + 5, b"overwrite")
            await fh.close()
            nchains = len(data.map.chains)
            for index in range(5):
                chain = data.map.chains[chain_of(attr.ino, index, LAYOUT, nchains)]
                copies = {tid: await data.read_target(tid, attr.ino, index) for tid in chain.targets}
                metas = {tid: await data.stat_target(tid, attr.ino, index) for tid in chain.targets}
                assert len(chain.targets) == 3
                assert len(set(copies.values())) == 1, f"chunk {index} differs between replicas"
                assert len(set(metas.values())) == 1, f"chunk {index} meta differs: {metas}"
        finally:
            await data.close()
            await meta.close()
    asyncio.run(go())


def test_sequential_write_then_read_with_readahead():
    async def go():
        env = memory_env()
        attr, _ = await env.meta.create(ROOT_INO, "seq")
        fh = FileHandle(env.meta, env.data, attr, layout=LAYOUT)
        blob = bytes(range(256)) * (CHUNK // 256) * 7 + b"tail"
        for i in range(0, len(blob), 10000):
            await fh.pwrite(i, blob[i:i + 10000])
        await fh.close()
        attr = await env.meta.getattr(attr.ino)
        fh = FileHandle(env.meta, env.data, attr, layout=LAYOUT)
        got = bytearray()
        while len(got) < len(blob):
            got += await fh.pread(len(got), 50000)
        assert bytes(got) == blob
        assert fh._ra, "sequential reads started readahead"
        await fh.close()
        await env.meta.close()
    asyncio.run(go())


def test_append_and_deferred_errors():
    class Failing(MemoryChunks):
        async def write(self, *a, **kw):
            raise OSError(28, "No space left on device")

    async def go():
        meta = MetaClient(LocalEngine(1))
        attr, _ = await meta.create(ROOT_INO, "a")
        data = MemoryChunks()
        fh = FileHandle(meta, data, attr, layout=LAYOUT, append=True)
        await fh.pwrite(12345, b"one")  # O_APPEND ignores the offset
        await fh.pwrite(0, b"two")
        await fh.close()
        attr = await meta.getattr(attr.ino)
        assert attr.size == 6
        assert await FileHandle(meta, data, attr, layout=LAYOUT).pread(0, 10) == b"onetwo"
        fh = FileHandle(meta, Failing(), attr, layout=LAYOUT)
        await fh.pwrite(0, b"x" * 10)
        with pytest.raises(OSError) as ei:
            await fh.flush()
        assert ei.value.errno == 28
        assert (await meta.getattr(attr.ino)).size == 6, "a failed write publishes no size"
        await meta.close()
    asyncio.run(go())
