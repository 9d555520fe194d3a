"""Chain resync, one interleaving at a time (dfs/data/resync.py, dfs/data/chain.py).

Three data servers' chain services in one event loop (dfs/testing/chains.py:
an in-process data plane that can cut a server off and hold a request, the
real mgmt commands, a map per server so that one can lag). Each test forces one
interleaving that let a syncing target be promoted without a write its
chain acknowledged (docs/design/data.md, "Failure and resync"), and checks
the target ends with exactly the tail's chunks.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from dfs.common import errors as err
from dfs.testing.chains import (
    T1,
    T2,
    T3,
    Net,
    assert_same,
    promoted,
    remove,
    remove_inode,
    run_chain,
    until,
    write,
)
from dfs.wire import dataplane as dp


@pytest.fixture
def run(tmp_path):
    """run(test) runs ``await test(net, servers)`` with a fresh net of three servers."""
    return lambda test: run_chain(tmp_path, test)



def test_a_pass_interrupted_by_a_chain_change_restarts_at_the_new_version(run):
    """Target 3 goes out mid-way through its final pass (a heartbeat lapse) and comes back:
    the pass of the old version must not report synced; writes made while it was out are copied."""
    async def test(net: Net, servers):
        for i in range(8):
            await write(net, servers, 100 + i, 0, bytes([i]) * 5000)
        net.do("target_down", T3)
        await write(net, servers, 100, 0, b"missed while out" * 400)
        hold, listed = asyncio.Event(), asyncio.Event()
        lists = []

        async def hook(stage, addr, h):
            # pass 1 copies the missed write; hold the listing reply of pass 2, which changes nothing
            if stage == "after" and h.op == dp.SYNC_LIST and addr == "s2":
                lists.append(h)
                if len(lists) == 2:
                    listed.set()
                    await hold.wait()
        net.hooks.append(hook)
        net.do("target_up", T3)  # v3: syncing
        await until(listed.is_set, "the final pass's listing")
        net.do("target_down", T3)  # out and back in while the final pass holds an old listing
        await write(net, servers, 101, 0, b"also missed!" * 500)
        await remove_inode(net, servers, 102)
        net.do("target_up", T3)
        hold.set()
        await promoted(net, servers)
        assert_same(servers)
        assert servers[T3].chunks()[(101, 0)][1] == b"also missed!" * 500
        assert (102, 0) not in servers[T3].chunks()
    run(test)


def test_a_failed_forward_to_a_syncing_member_fails_the_write(run):
    async def test(net: Net, servers):
        await write(net, servers, 7, 0, b"a" * 1000)
        net.do("target_down", T3)
        net.do("target_up", T3)  # syncing
        net.down.add("s3")
        with pytest.raises(err.Retryable):
            await write(net, servers, 7, 0, b"b" * 1000)
        net.down.clear()
        await write(net, servers, 7, 0, b"c" * 1000)  # the client's retry
        await promoted(net, servers)
        assert_same(servers)
        assert servers[T3].chunks()[(7, 0)][1] == b"c" * 1000
    run(test)


def test_the_tails_listing_waits_for_writes_admitted_under_an_older_version(run):
    """The tail (and head) still at the version where target 3 was out admit a write; target 3,
    already syncing at the next version, lists the tail before that write is applied there."""
    async def test(net: Net, servers):
        for i in range(4):
            await write(net, servers, 200 + i, 0, bytes([i]) * 4000)
        net.do("target_down", T3)
        tail_store = servers[T2].target.store
        orig = tail_store.write
        started, release = threading.Event(), threading.Event()

        def slow_write(*a, **kw):
            started.set()
            release.wait(10)
            return orig(*a, **kw)
        tail_store.write = slow_write
        w = asyncio.ensure_future(write(net, servers, 201, 0, b"old version write" * 400))
        await until(started.is_set, "the write in the tail's store")
        net.do("target_up", T3, publish=(T3,))  # only target 3 knows the new version yet
        # the resync's listing makes the tail refresh its map and wait for the older write
        await until(lambda: servers[T2].svc.gate.waiting(0), "the listing waiting at the tail")
        assert servers[T2].map.epoch == net.m["epoch"]
        assert not any(st.synced for st in servers[T3].svc.resync.syncs.values())
        release.set()
        assert await w >= 1
        tail_store.write = orig
        servers[T1].install(net.map)
        await promoted(net, servers)
        assert_same(servers)
        assert servers[T3].chunks()[(201, 0)][1] == b"old version write" * 400
    run(test)


def test_a_copy_fetched_before_a_forwarded_remove_is_not_installed(run):
    async def test(net: Net, servers):
        net.do("target_down", T3)
        for i in range(3):
            await write(net, servers, 300, i, bytes([i + 1]) * 3000)
        await write(net, servers, 301, 0, b"keep" * 1000)
        fetched, hold = asyncio.Event(), asyncio.Event()

        async def hook(stage, addr, h):
            if stage == "after" and h.op == dp.SYNC_FETCH and h.ino == 300 and not fetched.is_set():
                fetched.set()
                await hold.wait()
        net.hooks.append(hook)
        net.do("target_up", T3)
        await until(fetched.is_set, "a fetch of inode 300")
        await remove_inode(net, servers, 300)  # forwarded to target 3 while its copy is in flight
        hold.set()
        await promoted(net, servers)
        assert_same(servers)
        assert not [k for k in servers[T3].chunks() if k[0] == 300]
        assert servers[T3].chunks()[(301, 0)][1] == b"keep" * 1000
    run(test)


def test_synced_reports_name_the_version_resynced_at(run):
    async def test(net: Net, servers):
        await write(net, servers, 9, 0, b"x" * 100)
        net.do("target_down", T3)
        net.do("target_up", T3)
        v = net.chain()["version"]
        await until(lambda: servers[T3].svc.synced_chains(T3), "the resync")
        assert servers[T3].svc.synced_chains(T3) == [(0, v)]
        net.do("target_down", T3, publish=())  # mgmt moved on; target 3 has not heard yet
        net.do("target_up", T3, publish=())
        for cid, ver in servers[T3].svc.synced_chains(T3):
            net.do("chain_synced", cid, T3, ver, publish=())
        assert T3 not in net.chain()["serving"]  # the old version's report is refused
        servers[T3].install(net.map)
        assert servers[T3].svc.synced_chains(T3) == []  # a new pass, at the new version
        await promoted(net, servers)
        assert_same(servers)
    run(test)


def test_a_chunk_removed_and_written_anew_while_out_is_copied_at_its_lower_version(run):
    """Versions start again at 1 after a remove: the copy target 3 kept from before
    (a higher version of the old chunk) must not count as newer than the tail's."""
    async def test(net: Net, servers):
        for k in range(5):
            await write(net, servers, 400, 0, bytes([k]) * 2000)
        net.do("target_down", T3)
        head = servers[T1]
        h = dp.Header(dp.REMOVE, ino=400, index=0, chain_id=0, chain_version=head.map.chains[0].version,
                      target=T1)
        rh, rp = await head.svc.handle(h, b"")
        dp.raise_for(rh, rp)
        assert await write(net, servers, 400, 0, b"anew" * 500) == 1
        net.do("target_up", T3)
        await promoted(net, servers)
        assert_same(servers)
        assert servers[T3].chunks()[(400, 0)] == (1, b"anew" * 500)
    run(test)


def test_a_forward_that_waited_out_a_chain_change_is_refused(run):
    """A forward admitted at one chain version that gets the chunk lock only after the chain
    moved on (a frozen server thawing with requests queued) is refused, not applied."""
    async def test(net: Net, servers):
        await write(net, servers, 500, 0, b"one" * 1000)
        net.do("target_down", T3)
        net.do("target_up", T3)
        await until(lambda: servers[T3].svc.synced_chains(T3), "the resync")
        held = servers[T3].svc.locks((T3, 500, 0))
        await held.__aenter__()
        w = asyncio.ensure_future(write(net, servers, 500, 0, b"two" * 1000))
        v = net.chain()["version"]
        await until(lambda: servers[T3].svc.gate.older(0, v + 1), "the forward waiting on target 3")
        net.do("target_down", T3)
        net.do("target_up", T3)
        await held.__aexit__(None, None, None)
        with pytest.raises(err.Stale):
            await w
        assert servers[T3].chunks()[(500, 0)] == (1, b"one" * 1000)
        await promoted(net, servers)
        assert_same(servers)
    run(test)


async def _hold_passes(net: Net):
    """Hold every resync listing until the returned event is set."""
    go = asyncio.Event()

    async def hook(stage, addr, h):
        if stage == "before" and h.op == dp.SYNC_LIST:
            await go.wait()
    net.hooks.append(hook)
    return go


def test_an_install_replaces_a_higher_version_of_another_lineage(run):
    """Target 3 kept v5 of a chunk that was removed and written anew (v1, v2) while it was out;
    the next write (v3) is forwarded to it while it syncs: the predecessor's whole chunk replaces
    the old one, although its version is lower."""
    async def test(net: Net, servers):
        for k in range(5):
            await write(net, servers, 600, 0, bytes([k]) * 3000)
        net.do("target_down", T3)
        await remove(net, servers, 600, 0)
        await write(net, servers, 600, 0, b"new" * 300)
        await write(net, servers, 600, 0, b"NEW" * 300)
        go = await _hold_passes(net)
        net.do("target_up", T3)
        assert await write(net, servers, 600, 0, b"3") == 3
        assert servers[T3].chunks()[(600, 0)] == servers[T2].chunks()[(600, 0)]
        go.set()
        await promoted(net, servers)
        assert_same(servers)
    run(test)


def test_a_forwarded_write_never_lands_on_an_old_copy_of_another_lineage(run):
    """Same version, other contents: target 3 kept v1 of the old chunk (3000 bytes); the chunk
    was removed and written anew (v1, 900 bytes); a partial write (v2) forwarded to target 3
    must not be applied on top of the old bytes."""
    async def test(net: Net, servers):
        await write(net, servers, 700, 0, b"o" * 3000)
        net.do("target_down", T3)
        await remove(net, servers, 700, 0)
        await write(net, servers, 700, 0, b"n" * 900)
        go = await _hold_passes(net)
        net.do("target_up", T3)
        assert await write(net, servers, 700, 0, b"PATCH") == 2
        assert servers[T3].chunks()[(700, 0)] == (2, b"PATCH" + b"n" * 895)
        go.set()
        await promoted(net, servers)
        assert_same(servers)
    run(test)
