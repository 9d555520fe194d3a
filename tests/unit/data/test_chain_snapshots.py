"""Snapshots on the data servers, in process (dfs/data/chain.py, dfs/data/resync.py):
every replica keeps the versions a snapshot reads, reads at a snapshot, resync
copying them, hold and resume, dropping and counting.

The harness is dfs/testing/chains.py: three ``ChainService``s with real chunk
stores over an in-process data plane, one chain ``[1, 2, 3]``, mgmt's real
commands. The test plays the snapshot coordinator: ``snap_begin`` in mgmt,
SNAP_HOLD on every server, ``snap_ready``, SNAP_RESUME on every server.
"""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from dfs.common import errors as err
from dfs.wire import dataplane as dp

from dfs.testing.chains import T1, T2, T3, Net, promoted, remove, remove_inode, run_chain, until, write

S_TS = 10**18


@pytest.fixture
def run(tmp_path):
    """run(test) runs ``await test(net, servers)`` with a fresh net of three servers."""
    return lambda test: run_chain(tmp_path, test)


def _prepare(net: Net) -> None:
    net.m.update(data_epoch=1, snap_next=1, snapshots={}, snap_usage={})


async def call(server, h: dp.Header, payload=b""):
    rh, rp = await server.svc.handle(h, payload)
    dp.raise_for(rh, rp)
    return rh, rp


async def hold(server, snap: int, lease: float = 5.0):
    return await call(server, dp.Header(dp.SNAP_HOLD, version=snap, arg=int(lease * 1000)))


async def resume(server, snap: int, epoch: int, live):
    return await call(server, dp.Header(dp.SNAP_RESUME, version=snap, epoch=epoch), msgpack.packb(list(live)))


async def snapshot(net: Net, servers, name: str = "s", *, publish=()) -> int:
    """What the coordinator does; the new map reaches only the servers in ``publish`` (the
    others learn the epochs from SNAP_RESUME alone)."""
    _, _, s = _cmd(net, "snap_begin", name, 1, "/d", S_TS + len(net.m["snapshots"]))
    for sv in servers.values():
        await hold(sv, s)
    _, _, epoch, live = _cmd(net, "snap_ready", s)
    for t in publish:
        servers[t].install(net.map)
    for sv in servers.values():
        await resume(sv, s, epoch, live)
    return s


def _cmd(net: Net, *cmd):
    return net.command(*cmd)


async def read_at(server, ino: int, index: int, at: int, *, anyrole: bool = False, blocks: bool = False) -> bytes:
    ch = server.map.chains[0]
    flags = dp.F_SNAP | (dp.F_ANY if anyrole else 0) | (dp.F_BLOCKS if blocks else 0)
    h = dp.Header(dp.READ, flags=flags, ino=ino, index=index, offset=0, arg=1 << 20, chain_id=0,
                  chain_version=ch.version, target=server.tid, epoch=at)
    rh, rp = await server.svc.handle(h, b"")
    dp.raise_for(rh, rp)
    if blocks and not isinstance(rp, bytes):  # an Extent: read what sendfile would send
        import os
        try:
            return os.pread(rp.fd, rp.count, rp.start)
        finally:
            os.close(rp.fd)
    return rp


async def truncate(net: Net, servers, ino: int, index: int, length: int) -> int:
    head = servers[net.chain()["serving"][0]]
    h = dp.Header(dp.TRUNCATE, ino=ino, index=index, offset=length, chain_id=0,
                  chain_version=head.map.chains[0].version, target=head.tid)
    rh, _ = await call(head, h)
    return rh.version


def versions(server, ino: int, index: int):
    return server.target.store.versions(ino, index)


def test_a_write_after_a_snapshot_keeps_the_old_bytes_on_every_replica(run):
    async def test(net: Net, servers):
        _prepare(net)
        await write(net, servers, 10, 0, b"old" * 10_000)
        await write(net, servers, 11, 0, b"long" * 10_000)
        s = await snapshot(net, servers)  # no server has the new map: SNAP_RESUME alone
        assert s == 1 and all(sv.svc.epoch == 2 and sv.svc.live == (1,) for sv in servers.values())
        await write(net, servers, 10, 0, b"NEW")
        await truncate(net, servers, 11, 0, 7)
        await write(net, servers, 12, 0, b"born after")
        for sv in servers.values():
            assert await read_at(sv, 10, 0, s) == b"old" * 10_000
            assert await read_at(sv, 10, 0, s, blocks=True) == b"old" * 10_000
            assert await read_at(sv, 11, 0, s) == b"long" * 10_000
            assert await read_at(sv, 12, 0, s) == b""
            st = sv.target.store
            assert st.read(10, 0, 0, 9) == b"NEWoldold" and st.read(11, 0, 0, 99) == b"longlon"
            assert st.stat(10, 0).epoch == 2 and st.stat(12, 0).epoch == 2
            assert [(p.epoch, p.until) for p in versions(sv, 10, 0)] == [(1, 2)]
        assert versions(servers[T1], 11, 0) == versions(servers[T2], 11, 0) == versions(servers[T3], 11, 0)
    run(test)


def test_a_remove_and_a_remove_inode_after_a_snapshot(run):
    async def test(net: Net, servers):
        _prepare(net)
        for k in range(3):
            await write(net, servers, 20, k, bytes([k + 1]) * 3000)
        await write(net, servers, 21, 0, b"gone")
        s = await snapshot(net, servers, publish=(T1, T2, T3))
        await remove(net, servers, 21, 0)
        await remove_inode(net, servers, 20)
        for sv in servers.values():
            assert sv.target.store.stat(21, 0) is None and list(sv.target.store.list_chunks(20)) == []
            assert await read_at(sv, 21, 0, s) == b"gone"
            for k in range(3):
                assert await read_at(sv, 20, k, s) == bytes([k + 1]) * 3000
            # the chunks stay in the chain index while they have versions: resync lists them
            assert sorted(sv.target.index.chunks(0)) == [(20, 0), (20, 1), (20, 2), (21, 0)]
    run(test)


def test_a_resync_copies_the_preserved_versions(run):
    async def test(net: Net, servers):
        _prepare(net)
        await write(net, servers, 30, 0, b"a" * 4000)
        await write(net, servers, 31, 0, b"b" * 4000)
        await write(net, servers, 32, 0, b"c" * 4000)
        net.do("target_down", T3)
        s = await snapshot(net, servers)
        await write(net, servers, 30, 0, b"A" * 100)   # kept on the chain, not on target 3
        await remove(net, servers, 31, 0)
        # target 3 keeps a version the chain never made (another lineage): the resync removes it
        servers[T3].target.store.write(32, 0, 0, b"x", 9, chunk_size=1 << 20, epoch=2, keep=1)
        net.do("target_up", T3)
        await promoted(net, servers)
        st3, st2 = servers[T3].target.store, servers[T2].target.store
        for ino in (30, 31, 32):
            assert versions(servers[T3], ino, 0) == versions(servers[T2], ino, 0), ino
            assert st3.stat(ino, 0) == st2.stat(ino, 0)
        assert await read_at(servers[T3], 30, 0, s) == b"a" * 4000
        assert await read_at(servers[T3], 31, 0, s) == b"b" * 4000
        assert await read_at(servers[T3], 32, 0, s) == b"c" * 4000
        assert st3.read(30, 0, 0, 5) == b"AAAAA" and st3.stat(31, 0) is None
    run(test)


def test_a_member_that_missed_a_write_gets_the_preserved_versions_with_the_chunk(run):
    """Target 3 misses the first write after the snapshot (its forward fails); the retry
    finds it a version behind: the predecessor sends the version it kept, then the chunk."""
    async def test(net: Net, servers):
        _prepare(net)
        await write(net, servers, 40, 0, b"before" * 1000)
        s = await snapshot(net, servers)
        net.down.add("s3")
        with pytest.raises(err.Retryable):
            await write(net, servers, 40, 0, b"lost")
        net.down.clear()
        await write(net, servers, 40, 0, b"after")
        for sv in servers.values():
            assert await read_at(sv, 40, 0, s) == b"before" * 1000
            assert sv.target.store.read(40, 0, 0, 5) == b"after"
        assert versions(servers[T3], 40, 0) == versions(servers[T1], 40, 0)
    run(test)


def test_a_client_write_waits_out_a_hold_and_lands_at_the_new_epoch(run):
    async def test(net: Net, servers):
        _prepare(net)
        await write(net, servers, 50, 0, b"cut" * 1000)
        _, _, s = _cmd(net, "snap_begin", "h", 1, "/d", S_TS)
        for sv in servers.values():
            await hold(sv, s)
        w = asyncio.ensure_future(write(net, servers, 50, 0, b"WAITED"))
        await until(lambda: servers[T1].svc.waiting_on_hold == 1, "the write waiting at the head")
        assert not w.done() and servers[T1].target.store.read(50, 0, 0, 3) == b"cut"
        _, _, epoch, live = _cmd(net, "snap_ready", s)
        for sv in servers.values():
            await resume(sv, s, epoch, live)
        assert await w == 2
        for sv in servers.values():
            assert sv.target.store.stat(50, 0).epoch == epoch
            assert await read_at(sv, 50, 0, s) == b"cut" * 1000
    run(test)


def test_a_forwarded_write_is_never_held(run):
    async def test(net: Net, servers):
        _prepare(net)
        await hold(servers[T2], 1)  # the middle of the chain holds; the head does not
        await hold(servers[T3], 1)
        assert await write(net, servers, 60, 0, b"through") == 1
        for sv in servers.values():
            assert sv.target.store.read(60, 0, 0, 99) == b"through"
        assert servers[T2].svc.holding() == 1
    run(test)


def test_a_hold_waits_for_the_mutations_in_flight(run):
    async def test(net: Net, servers):
        _prepare(net)
        gate, entered = asyncio.Event(), asyncio.Event()

        async def hook(stage, addr, h):
            if stage == "before" and h.op == dp.WRITE and addr == "s3":
                entered.set()
                await gate.wait()
        net.hooks.append(hook)
        w = asyncio.ensure_future(write(net, servers, 70, 0, b"in flight"))
        await until(entered.is_set, "the write forwarded to the tail")
        h = asyncio.ensure_future(hold(servers[T1], 1))
        await until(lambda: servers[T1].svc.holding() == 1, "the hold placed")
        assert not h.done()  # it answers only once the head's write is done
        gate.set()
        await w
        await h
        assert servers[T1].svc.holding() == 1
        await resume(servers[T1], 1, 1, [])
        assert servers[T1].svc.holding() is None
    run(test)


def test_an_expired_hold_asks_mgmt_and_releases(run):
    async def test(net: Net, servers):
        _prepare(net)
        await write(net, servers, 80, 0, b"x" * 100)
        _, _, s = _cmd(net, "snap_begin", "e", 1, "/d", S_TS)
        asked = []

        async def resolve(snap):  # what the data server asks mgmt: snap_abort
            asked.append(snap)
            _, _, _state, epoch, live = _cmd(net, "snap_abort", snap)
            return epoch, live
        for sv in servers.values():
            sv.svc.resolve_hold = resolve
            await hold(sv, s, lease=0.2)
        w = asyncio.ensure_future(write(net, servers, 80, 0, b"later"))
        assert await w == 2  # once the lease ran out
        assert asked and s not in net.m["snapshots"]  # the snapshot was aborted
        assert all(sv.svc.holding() is None and sv.svc.epoch == 1 for sv in servers.values())
        # a snapshot made ready just before the lease ran out, its resume lost: the new epoch
        _, _, s2 = _cmd(net, "snap_begin", "f", 1, "/d", S_TS + 1)
        for sv in servers.values():
            await hold(sv, s2, lease=0.2)
        _cmd(net, "snap_ready", s2)
        assert await write(net, servers, 80, 0, b"after ready") == 3
        for sv in servers.values():
            assert sv.svc.epoch == s2 + 1 and sv.svc.live == (s2,)
            assert await read_at(sv, 80, 0, s2) == b"later" + b"x" * 95
    run(test)


def test_holds_and_resumes_refuse_what_is_stale(run):
    async def test(net: Net, servers):
        _prepare(net)
        s = await snapshot(net, servers)
        sv = servers[T1]
        with pytest.raises(err.Stale):
            await hold(sv, s)  # older than the epoch: a coordinator that lost its snapshot
        with pytest.raises(err.InvalidArgument):
            await hold(sv, 5, lease=0)
        with pytest.raises(err.InvalidArgument):
            await resume(sv, 0, 3, [3])  # a live snapshot must be older than the epoch
        await resume(sv, 0, 1, [])  # older than what the server has: ignored
        assert (sv.svc.epoch, sv.svc.live) == (2, (1,))
        await hold(sv, 7)
        await resume(sv, 6, 9, [1, 7])  # another snapshot's resume: epochs taken, the hold stays
        assert sv.svc.holding() == 7 and sv.svc.epoch == 9
        await resume(sv, 7, 9, [1, 7])
        assert sv.svc.holding() is None
    run(test)


def test_deleting_a_snapshot_drops_its_versions_and_counts_them_first(run):
    async def test(net: Net, servers):
        _prepare(net)
        await write(net, servers, 90, 0, b"1" * 1000)
        await write(net, servers, 91, 0, b"2" * 500)
        s1 = await snapshot(net, servers, "a")
        await write(net, servers, 90, 0, b"one")
        s2 = await snapshot(net, servers, "b")
        await write(net, servers, 90, 0, b"two")
        await remove(net, servers, 91, 0)
        for sv in servers.values():
            await sv.svc.refresh_usage()
            # 90.0: (1, 2) read by s1 only; (2, 3) by s2 only; 91.0: (1, 3) by both
            assert sv.svc.usage[sv.tid] == {s1: (1000, 500), s2: (1000, 500)}
        _cmd(net, "snap_delete", s1)
        net.do("capacity", T1, 0, 0)  # publishes the map
        for sv in servers.values():
            await until(lambda sv=sv: len(sv.target.store.versions(90, 0)) == 1, "the drop")
            assert [(p.epoch, p.until) for p in sv.target.store.versions(90, 0)] == [(2, 3)]
            assert await read_at(sv, 91, 0, s2) == b"2" * 500
            with pytest.raises(err.Stale):
                await read_at(sv, 90, 0, s1)  # deleted: the server says so rather than guess
            await sv.svc.refresh_usage()
            assert sv.svc.usage[sv.tid] == {s2: (1500, 0)}
        _cmd(net, "snap_delete", s2)
        net.do("capacity", T1, 1, 1)
        for sv in servers.values():
            await until(lambda sv=sv: not sv.target.store.has_versions(), "the second drop")
            # nothing left of it: unindexed (the index entry goes after the versions, past an await)
            await until(lambda sv=sv: (91, 0) not in set(sv.target.index.chunks(0)), "91.0 unindexed")
    run(test)


def test_a_server_that_starts_during_a_creation_holds_until_resumed(run):
    """Its hold, given before a restart, is gone with the old process: it holds again."""
    async def test(net: Net, servers):
        _prepare(net)
        await write(net, servers, 95, 0, b"z" * 10)
        _, _, s = _cmd(net, "snap_begin", "r", 1, "/d", S_TS)
        fresh = servers[T1]
        fresh.map = None
        fresh.svc._epochs_known = False  # as a new process: its first map
        fresh.install(net.map)
        assert fresh.svc.holding() == s
        w = asyncio.ensure_future(write(net, servers, 95, 0, b"Z"))
        await until(lambda: fresh.svc.waiting_on_hold == 1, "the write waiting")
        _, _, epoch, live = _cmd(net, "snap_ready", s)
        for sv in servers.values():
            await resume(sv, s, epoch, live)
        await w
        assert await read_at(fresh, 95, 0, s) == b"z" * 10
    run(test)


def test_a_map_that_shows_the_snapshot_ready_ends_its_hold(run):
    async def test(net: Net, servers):
        _prepare(net)
        _, _, s = _cmd(net, "snap_begin", "m", 1, "/d", S_TS)
        await hold(servers[T1], s)
        _cmd(net, "snap_ready", s)
        servers[T1].install(net.map)  # the resume was lost; the next map says enough
        assert servers[T1].svc.holding() is None and servers[T1].svc.epoch == s + 1
    run(test)
