"""The chain-resync race on real processes: a syncing data server frozen (SIGSTOP)
for longer than the target timeout in the middle of a resync pass, under a
load of chunk writes and removes; afterwards every chain member holds exactly
the same chunks, and every acknowledged write reads back from every member.

The resync is rate-limited (``resync_rate``) so that the pass is still running
when the server is frozen: the test waits until the server's metrics show it
copying (``resync_copied``) with a resync in progress. Everything else is
polled with deadlines.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal

import msgpack
import pytest

from dfs.common.checksum import crc32c
from dfs.common.layout import Layout
from dfs.wire import dataplane as dp
from dfs.route.data import DataClient
from dfs.route.shards import GrpcTransport
from dfs.testing.metrics import get, scrape
from dfs.testing.wait import until_async

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.timeout(300)]

LAYOUT = Layout(chunk_size=1 << 20, stripe=3, replicas=3)
SLOTS = [(1000 + i, k) for i in range(24) for k in range(3)]
CHUNK = 96 * 1024


class Load:
    """Writers that each own a share of the slots: whole-chunk writes and removes,
    with the acknowledged state of every slot (bytes, None when removed)."""

    def __init__(self, dc: DataClient, writers: int = 3) -> None:
        self.dc = dc
        self.acked: dict[tuple[int, int], bytes | None] = {}
        self.unknown: set[tuple[int, int]] = set()
        self.ops = 0
        self.stop = asyncio.Event()
        self.tasks = [asyncio.ensure_future(self._run(w, SLOTS[w::writers])) for w in range(writers)]

    async def _run(self, w: int, slots: list[tuple[int, int]]) -> None:
        rnd = random.Random(w)
        while not self.stop.is_set():
            slot = rnd.choice(slots)
            ino, index = slot
            remove = rnd.random() < 0.15 and self.acked.get(slot) is not None
            data = None if remove else rnd.randbytes(CHUNK)
            try:
                if remove:
                    await self.dc.remove(ino, index, LAYOUT)
                else:
                    await self.dc.write(ino, index, 0, data, LAYOUT)
            except OSError:
                self.unknown.add(slot)  # not acknowledged: either outcome is allowed until rewritten
                continue
            self.unknown.discard(slot)
            self.acked[slot] = data
            self.ops += 1

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def listing(dc: DataClient, tid: int, cid: int) -> dict[tuple[int, int], tuple[int, int]]:
    """Every chunk of chain ``cid`` on target ``tid``: version and CRC of its bytes."""
    out, cursor = {}, None
    addr = dc.map.targets[tid].address
    while True:
        h = dp.Header(dp.SYNC_LIST, chain_id=cid, target=tid)
        if cursor is not None:
            h = h._replace(flags=dp.F_CURSOR, ino=cursor[0], index=cursor[1])
        rh, rp = await dc.pool.call(addr, h, b"", 10.0)
        dp.raise_for(rh, rp)
        for ino, index, version, *_ in msgpack.unpackb(bytes(rp)):  # then digest, epoch, preserved versions
            _, data = await dc.read_target(tid, ino, index)
            out[(ino, index)] = (version, crc32c(data))
        if not rh.flags & dp.F_MORE:
            return out
        cursor = (rh.ino, rh.index)


def test_syncing_server_frozen_mid_pass_under_load(make_cluster):
    c = make_cluster(shards=1, replicas=1, mgmt_replicas=1, data_servers=3, target_timeout=1.0,
                     resync_rate=1 << 20)
    victim = next(p for p in c.data_procs() if p.replica == 2)
    tid = c.cfg.data_server(2).targets[0].id
    frozen = False

    def freeze(on: bool) -> None:
        nonlocal frozen
        os.kill(victim.pid, signal.SIGSTOP if on else signal.SIGCONT)
        frozen = on

    async def main():
        tr = await GrpcTransport(c.mgmt_addresses, deadline=10.0).connect()
        dc = DataClient(tr.map, tr.refresh_map, deadline=60.0, attempt_timeout=5.0,
                        auth=c.server_credentials)  # listing() sends SYNC_LIST, a server's request

        async def state() -> str:
            m = await tr.refresh_map()
            if any(tid in ch.syncing for ch in m.chains):
                return "syncing"
            return "serving" if all(tid in ch.targets for ch in m.chains) else "out"

        async def offline() -> None:
            freeze(True)
            await until_async(lambda: _is(state, "out"), 30, f"target {tid} taken out of its chains")

        async def copying() -> None:
            async def busy():
                m = await asyncio.to_thread(scrape, victim)
                return get(m, "dfs_data_resyncs") > 0 and get(m, "dfs_data_chain_events_total", event="resync_copied") > 0
            await until_async(busy, 60, f"target {tid} copying in a resync pass")

        load = Load(dc)
        try:
            await until_async(lambda: len(load.acked) >= len(SLOTS) // 2, 60, "the first writes")
            for _ in range(2):  # out, back, frozen mid-pass, back, ...
                await offline()
                n = load.ops
                await until_async(lambda: load.ops >= n + 40, 60, "writes while the target is out")
                freeze(False)
                await copying()
                await offline()
                n = load.ops
                await until_async(lambda: load.ops >= n + 20, 60, "writes while the frozen target is out")
                freeze(False)
            await until_async(lambda: _is(state, "serving"), 120, f"target {tid} resynced and serving")
            n = load.ops
            await until_async(lambda: load.ops >= n + 20, 60, "writes after the resync")
        finally:
            if frozen:
                freeze(False)
            await load.finish()
        m = await tr.refresh_map()
        assert all(len(ch.targets) == 3 and not ch.syncing for ch in m.chains), [
            (ch.id, ch.targets, ch.syncing) for ch in m.chains]
        for ch in m.chains:
            lists = {t: await listing(dc, t, ch.id) for t in ch.targets}
            first = lists[ch.targets[0]]
            for t in ch.targets[1:]:
                assert lists[t] == first, f"chain {ch.id}: target {t} differs from target {ch.targets[0]}: " \
                    f"{sorted(set(lists[t].items()) ^ set(first.items()))[:6]}"
        for slot, data in load.acked.items():
            if slot in load.unknown:
                continue
            ch = dc.chain_for(*slot, LAYOUT)
            for t in ch.targets:
                got = await dc.stat_target(t, *slot)
                if data is None:
                    assert got is None, f"removed chunk {slot} is on target {t}"
                else:
                    _, have = await dc.read_target(t, *slot)
                    assert bytes(have) == data, f"chunk {slot} on target {t} is not the acknowledged write"
        await dc.close()
        await tr.close()

    try:
        asyncio.run(main())
    finally:
        if frozen:
            os.kill(victim.pid, signal.SIGCONT)


async def _is(state, want: str) -> bool:
    return await state() == want
