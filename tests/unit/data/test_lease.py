"""The membership lease (dfs/data/lease.py): a chain member that mgmt may have taken out
without its knowing serves no reads.

The stale-member test is the netns linearizability test's finding at one interleaving: the
member is cut off from mgmt and its peers, mgmt takes it out and tells the others only, a
write is acknowledged by the new chain, and a client whose map still lists the member reads
from it.
"""

from __future__ import annotations

import errno as E

import pytest

from dfs.data.lease import MembershipLease
from dfs.testing.chains import T1, T2, T3, run_chain, write
from dfs.testing.clock import FakeClock
from dfs.wire import dataplane as dp


def test_the_lease_counts_from_the_sending_of_the_answered_heartbeat():
    clock = FakeClock()
    lease = MembershipLease(1.5, clock=clock)
    assert not lease.held()  # never heard from mgmt
    sent = lease.now()
    clock.advance(1.0)        # the answer took a second
    lease.renewed(sent)
    assert lease.held() and lease.left() == pytest.approx(0.5)
    lease.renewed(sent - 1.0)  # an older heartbeat's late answer takes nothing back
    assert lease.left() == pytest.approx(0.5)
    clock.advance(0.5)
    assert not lease.held()
    with pytest.raises(ValueError):
        MembershipLease(0)


async def _read_at(server, chain_version: int, flags: int = 0):
    h = dp.Header(dp.READ, flags=flags, ino=7, index=0, offset=0, arg=1 << 20, chain_id=0,
                  chain_version=chain_version, target=server.tid)
    return await server.svc.handle(h, b"")


@pytest.mark.parametrize("gated", [True, False])
def test_a_member_taken_out_unawares_serves_no_reads_after_its_lease(tmp_path, gated):
    async def test(net, servers):
        clock = FakeClock()
        stale = servers[T3]
        if gated:
            stale.svc.lease = MembershipLease(1.5, clock=clock)
            stale.svc.lease.renewed(clock())
        await write(net, servers, 7, 0, b"old bytes")
        old = stale.map.chains[0].version
        # cut off from mgmt and peers: heartbeats go unanswered, so the lease runs out before
        # mgmt (target_timeout, twice the lease) takes the target out and tells the others
        net.down.add(stale.addr)
        clock.advance(1.5)
        net.do("target_down", T3, publish=(T1, T2))
        assert T3 not in net.chain()["serving"]
        await write(net, servers, 7, 0, b"new bytes")
        rh, rp = await _read_at(stale, old)  # a client whose map still lists the target
        if gated:
            assert rh.status == E.EAGAIN, (rh, bytes(rp))
            assert stale.svc.counters["reads_without_lease"] == 1
            # a read of this very target (repair, verification) is not a chain read
            rh, rp = await _read_at(stale, 0, dp.F_ANY)
            assert rh.status == 0 and bytes(rp) == b"old bytes"
        else:
            # what happened before the lease: the stale copy, as if it were the file's
            assert rh.status == 0 and bytes(rp) == b"old bytes"
        # the client refreshes its map and reads from the new chain
        rh, rp = await _read_at(servers[T2], net.chain()["version"])
        assert rh.status == 0 and bytes(rp) == b"new bytes"

    run_chain(tmp_path, test)
