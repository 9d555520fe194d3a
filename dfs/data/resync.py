"""Resync: how a syncing chain member catches up with its chain, and how the
serving members keep the catch-up honest.

A target listed in a chain's ``syncing`` receives every mutation forwarded
after the chain's tail, and meanwhile copies what it missed from the tail.
The rules below are what make "synced" true when it is reported (the race
they close is described in docs/design/data.md, "Failure and resync"):

* **A resync belongs to one chain version.** ``Resyncer.on_map`` gives every
  (local target, chain) where the target syncs a ``ChainSync`` for the chain's
  current version, with its own record of forwarded operations. Any change of
  the chain (a heartbeat lapse taking the target out and back in, another
  member leaving, a move) makes a new version: the running pass is abandoned
  at its next step and a new one starts, with a fresh record, once the old
  one has stopped. A pass that sees the chain at another version stops.
* **The tail lists at the pass's version.** SYNC_LIST carries the version;
  the tail refreshes its map to it (or answers ESTALE) and waits until the
  mutations it admitted under older versions, which are not forwarded to the
  syncing member, have finished (``InflightGate``). Every write acknowledged
  under an older version is then in the listing, and every later one is
  forwarded.
* **Forwarded operations win over copies.** Each forwarded WRITE, TRUNCATE,
  INSTALL, REMOVE and REMOVE_INODE is recorded with a sequence number, under
  the chunk's lock, before it is applied, in the resync of its own chain
  version only. A request whose chain changed while it waited for the chunk
  lock is refused (ESTALE, dfs/data/chain.py), and a pass starts only after
  the mutations this target admitted under older versions are done: a
  forward its predecessor gave up on (this server frozen and thawed) never
  lands during, or counts in, a newer resync. A copy fetched from the tail is
  installed only if nothing was forwarded for that chunk (or its inode) since
  the fetch was sent; a chunk the tail does not list is removed only if no
  forwarded operation touched it.
* **Synced is reported with the version.** A pass that changes nothing, at an
  unchanged chain version, marks the ``ChainSync`` synced; heartbeats report
  ``(chain, version)`` and mgmt promotes the target only if the chain is still
  at that version (``chain_synced`` in dfs/mgmt/store.py).
* A forward to a syncing member that fails fails the write (dfs/data/chain.py):
  a missed forward is never silent.
* **Versions do not name contents across a remove**: a chunk removed and
  written anew starts again at version 1, so the copy a target kept while it
  was out may be another lineage at the same or a higher version. Until a
  syncing member has made a chunk the chain's (copied it, compared it equal,
  or applied a forwarded op to it), a forwarded WRITE or TRUNCATE on its old
  copy answers NEED_INSTALL and gets the predecessor's whole chunk; an INSTALL
  from the predecessor always replaces what is there.

* **Preserved versions** (kept for snapshots) are listed with their chunk
  and copied the same way (SYNC_FETCH ``F_SNAP``, ``install_version``); one
  never changes once made, so a local one is right when its (until, version,
  digest) equal the tail's. A fetched copy is installed only if no forwarded
  operation touched the chunk since the fetch was sent, and a local version
  the tail does not list is removed only if none touched the chunk at all
  (a forwarded write that keeps a version, or a predecessor's INSTALL of
  one, may land here after the tail listed).

Copies are rate-limited by the cluster file's ``resync_rate`` (bytes/s; 0 is
unlimited) so that a resync stays a background load.

This module may import dfs.common, dfs.wire (the data-plane codec), dfs.route (the peer
pool) and dfs.data; the request handlers that call it are in dfs/data/chain.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as E
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack

from dfs.common.blocks import block_crcs
from dfs.common.checksum import crc32c
from dfs.wire import dataplane as dp

log = logging.getLogger("dfs.data.resync")


def digest(meta) -> int:
    """What SYNC_LIST tells of a chunk besides its version: a CRC of its length and block CRCs."""
    return crc32c(meta.crcs, meta.length & 0xFFFFFFFF) if meta is not None else 0


def vdigest(p) -> int:
    """The same of a preserved version."""
    return crc32c(p.crcs, p.length & 0xFFFFFFFF)


def committed_from(version: int, low: int) -> int:
    """The committed version of a SYNC_FETCH reply from its low 32 bits (``offset``)."""
    c = (version & ~0xFFFFFFFF) | low
    return c if c <= version else c - (1 << 32)


class Abandoned(Exception):
    """The chain changed under a pass: a pass of the new version takes over."""


class InflightGate:
    """Mutations in flight per (chain, chain version) on this server, so that a
    listing at version v can wait for the ones admitted under older versions."""

    def __init__(self) -> None:
        self._n: dict[int, dict[int, int]] = {}
        self._waiters: dict[int, list[asyncio.Future]] = {}

    @contextlib.contextmanager
    def entered(self, cid: int, version: int):
        per = self._n.setdefault(cid, {})
        per[version] = per.get(version, 0) + 1
        try:
            yield
        finally:
            n = per[version] - 1
            if n:
                per[version] = n
            else:
                del per[version]
                if not per:
                    self._n.pop(cid, None)
                for f in self._waiters.pop(cid, ()):
                    if not f.done():
                        f.set_result(None)

    def older(self, cid: int, version: int) -> int:
        """Mutations of chain ``cid`` in flight that were admitted under a version before ``version``."""
        return sum(n for v, n in self._n.get(cid, {}).items() if v < version)

    def waiting(self, cid: int) -> int:
        """Listings of chain ``cid`` waiting for older mutations."""
        return sum(1 for f in self._waiters.get(cid, ()) if not f.done())

    async def drained(self, cid: int, version: int) -> None:
        """Return once no mutation admitted under an older version of the chain is in flight."""
        loop = asyncio.get_running_loop()
        while self.older(cid, version):
            f = loop.create_future()
            self._waiters.setdefault(cid, []).append(f)
            await f


@dataclass(eq=False)
class ChainSync:
    """The resync of one local target into one chain at one chain version."""

    target: object  # dfs.data.chain.Target
    chain: int
    version: int
    touched: dict[tuple[int, int], int] = field(default_factory=dict)  # chunk -> seq of its last forwarded op
    inodes: dict[int, int] = field(default_factory=dict)                # ino -> seq of its last REMOVE_INODE
    same: set[tuple[int, int]] = field(default_factory=set)  # chunks known to be the chain's here
    vtouched: dict[tuple[int, int], int] = field(default_factory=dict)  # chunk -> seq of its last forwarded
    #                                                                     preserved-version INSTALL
    task: asyncio.Task | None = None
    abandoned: bool = False
    synced: bool = False
    passes: int = 0

    def touched_since(self, ino: int, index: int, seq: int) -> bool:
        return self.touched.get((ino, index), -1) >= seq or self.inodes.get(ino, -1) >= seq

    def was_touched(self, ino: int, index: int) -> bool:
        return (ino, index) in self.touched or ino in self.inodes

    def versions_touched_since(self, ino: int, index: int, seq: int) -> bool:
        return self.touched_since(ino, index, seq) or self.vtouched.get((ino, index), -1) >= seq

    def versions_touched(self, ino: int, index: int) -> bool:
        return self.was_touched(ino, index) or (ino, index) in self.vtouched


class Resyncer:
    """The syncing side of resync for every local target of a data server.

    ``svc`` is the server's ``ChainService`` (targets, peers, chunk locks,
    counters, the map); ``rate`` is the copy rate in bytes/s (0: unlimited)."""

    def __init__(self, svc, rate: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.svc = svc
        self.rate = rate
        self.clock = clock
        self.syncs: dict[tuple[int, int], ChainSync] = {}
        self._seq = itertools.count(1)

    # ------------------------------------------------------------------ the map
    def on_map(self, m) -> None:
        """Give every (local target, chain) where the target syncs a resync at the chain's version."""
        if m is None:
            return
        want: dict[tuple[int, int], int] = {}
        for ch in m.chains:
            for tid in ch.syncing:
                if tid in self.svc.targets:
                    want[(tid, ch.id)] = ch.version
        for key, st in list(self.syncs.items()):
            if want.get(key) != st.version:
                st.abandoned = True
                if key not in want:
                    del self.syncs[key]
        for key, version in want.items():
            old = self.syncs.get(key)
            if old is not None and old.version == version:
                continue
            st = ChainSync(self.svc.targets[key[0]], key[1], version)
            self.syncs[key] = st
            prev = old.task if old is not None else None
            st.task = self.svc.spawn(self._run(st, prev))

    def running(self) -> int:
        """Resyncs in progress on this server (safe to call from another thread)."""
        return sum(1 for st in list(self.syncs.values()) if st.task is not None and not st.task.done())

    def synced(self, tid: int) -> list[tuple[int, int]]:
        """(chain, version) of every chain target ``tid`` finished resyncing into, at the current version."""
        m = self.svc.get_map()
        out = []
        for (t, cid), st in list(self.syncs.items()):
            if t != tid or not st.synced or st.abandoned or m is None or cid >= len(m.chains):
                continue
            ch = m.chains[cid]
            if ch.version == st.version and tid in ch.syncing:
                out.append((cid, st.version))
        return out

    # ------------------------------------------------------------------ forwarded operations
    def _sync_of(self, tid: int, cid: int) -> ChainSync | None:
        return self.syncs.get((tid, cid))

    def touch(self, tid: int, cid: int, version: int, ino: int, index: int) -> None:
        """A forwarded op of chain version ``version`` on a chunk is about to be applied
        (caller holds the chunk's lock); it counts for the resync of that version only."""
        st = self.syncs.get((tid, cid))
        if st is not None and st.version == version:
            st.touched[(ino, index)] = next(self._seq)

    def touch_version(self, tid: int, cid: int, version: int, ino: int, index: int) -> None:
        """A forwarded INSTALL of a preserved version of a chunk is about to be applied."""
        st = self.syncs.get((tid, cid))
        if st is not None and st.version == version:
            st.vtouched[(ino, index)] = next(self._seq)

    def known(self, tid: int, cid: int, version: int, ino: int, index: int) -> None:
        """The chunk here is now the chain's (a forwarded op applied, an install, a remove)."""
        st = self.syncs.get((tid, cid))
        if st is not None and st.version == version:
            st.same.add((ino, index))

    def is_known(self, tid: int, cid: int, version: int, ino: int, index: int) -> bool:
        """Whether a forwarded write may apply on top of this target's copy of the chunk: always,
        unless the target syncs into the chain and has not yet made that copy the chain's. Its
        copy from before may be of another lineage at the same version (a chunk removed and
        written anew while the target was out), so the predecessor sends the whole chunk."""
        st = self.syncs.get((tid, cid))
        return st is None or st.version != version or (ino, index) in st.same

    def touch_inode(self, tid: int, cid: int, version: int, ino: int) -> None:
        """A forwarded REMOVE_INODE of chain version ``version`` is about to be applied."""
        st = self.syncs.get((tid, cid))
        if st is not None and st.version == version:
            st.inodes[ino] = next(self._seq)

    # ------------------------------------------------------------------ passes
    def _check(self, st: ChainSync) -> None:
        ch = self.svc.chain(st.chain)
        if st.abandoned or ch is None or ch.version != st.version or st.target.id not in ch.syncing:
            raise Abandoned()

    async def _run(self, st: ChainSync, prev: asyncio.Task | None) -> None:
        if prev is not None and not prev.done():
            await asyncio.wait({prev})  # one pass per (target, chain) at a time: the old one stops at its next step
        tid, cid = st.target.id, st.chain
        delay = 0.05
        while True:
            try:
                self._check(st)
            except Abandoned:
                return
            ch = self.svc.chain(cid)
            if not ch.targets or ch.targets[-1] == tid:
                await asyncio.sleep(0.2)  # no serving member to copy from: wait for a map change
                continue
            src = ch.targets[-1]
            try:
                changed = await self._pass(st, src)
            except Abandoned:
                log.info("resync of chain %d into target %d: chain left version %d; restarting", cid, tid, st.version)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure: log and start the pass again
                log.info("resync of chain %d v%d into target %d from %d: %s; again", cid, st.version, tid, src, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            st.passes += 1
            if changed == 0:
                try:
                    self._check(st)
                except Abandoned:
                    return
                st.synced = True
                log.info("target %d resynced into chain %d (v%d) from target %d in %d passes", tid, cid,
                         st.version, src, st.passes)
                return
            log.info("resync of chain %d v%d into target %d: %d changes; another pass", cid, st.version, tid, changed)

    async def _pass(self, st: ChainSync, src: int) -> int:
        """One pass: copy what differs from the tail, remove what the tail does not have.
        Returns the changes not explained by forwarded operations."""
        svc, tgt, cid = self.svc, st.target, st.chain
        addr = svc.address_of(src)
        remote: set[tuple[int, int]] = set()
        remote_versions: dict[tuple[int, int], dict] = {}  # chunk -> {t: (until, version, digest)} on the tail
        changed = 0
        copied = 0
        t0 = self.clock()
        # ops this target admitted under an older version apply before the pass looks
        # (they fail their version check under the chunk lock, or finish)
        await asyncio.wait_for(svc.gate.drained(cid, st.version), svc.forward_timeout)
        cursor = None
        while True:
            self._check(st)
            h = dp.Header(dp.SYNC_LIST, chain_id=cid, chain_version=st.version, target=src)
            if cursor is not None:
                h = h._replace(flags=dp.F_CURSOR, ino=cursor[0], index=cursor[1])
            rh, rp = await svc.peers.call(addr, h, b"", svc.forward_timeout)
            dp.raise_for(rh, rp)
            for ino, index, version, dg, epoch, pres in msgpack.unpackb(bytes(rp)):
                self._check(st)
                remote_versions[(ino, index)] = {t: (until, v, vdg) for t, until, v, vdg in pres}
                n = await self._sync_versions(st, src, addr, ino, index, remote_versions[(ino, index)])
                if n and not st.versions_touched(ino, index):
                    changed += 1
                copied += n
                if version:
                    remote.add((ino, index))
                    local = await tgt.run(tgt.store.stat, ino, index)
                    if local is not None and self._current(st, local, ino, index, version, dg, epoch):
                        if local.version == version:
                            st.same.add((ino, index))
                        n = 0
                    else:
                        n = await self._fetch_install(st, src, addr, ino, index)
                    if n and not st.was_touched(ino, index):
                        changed += 1
                    copied += n
                if self.rate and copied:
                    ahead = copied / self.rate - (self.clock() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            if not rh.flags & dp.F_MORE:
                break
            cursor = (rh.ino, rh.index)
        self._check(st)
        local_ids = await tgt.run(lambda: list(tgt.index.chunks(cid)))
        for ino, index in local_ids:
            if (ino, index) in remote and not tgt.store.has_versions():
                continue
            async with svc.locks((tgt.id, ino, index)):
                self._check(st)
                removed = 0
                if ((ino, index) not in remote and not st.was_touched(ino, index)
                        and await tgt.run(tgt.store.stat, ino, index) is not None):
                    await tgt.run(tgt.store.remove, ino, index)
                    removed += 1
                if not st.versions_touched(ino, index):
                    want = remote_versions.get((ino, index), {})
                    for p in await tgt.run(tgt.store.versions, ino, index):
                        if p.epoch not in want:
                            await tgt.run(tgt.store.remove_version, ino, index, p.epoch)
                            removed += 1
                if (ino, index) not in remote and not st.versions_touched(ino, index) and await tgt.run(
                        lambda i=ino, x=index: tgt.store.stat(i, x) is None and not tgt.store.versions(i, x)):
                    await tgt.run(tgt.index.remove, ino, index)
            if removed:
                svc.counters["resync_removed"] += removed
                changed += 1
        return changed

    async def _sync_versions(self, st: ChainSync, src: int, addr: str, ino: int, index: int, want: dict) -> int:
        """Copy the tail's preserved versions of a chunk that differ here; the bytes copied."""
        svc, tgt = self.svc, st.target
        if not want:
            return 0
        local = {p.epoch: p for p in await tgt.run(tgt.store.versions, ino, index)}
        copied = 0
        for t, (until, version, dg) in sorted(want.items()):
            p = local.get(t)
            if p is not None and (p.until, p.version, vdigest(p)) == (until, version, dg):
                continue
            seq = next(self._seq)
            h = dp.Header(dp.SYNC_FETCH, flags=dp.F_SNAP, ino=ino, index=index, target=src, epoch=t)
            rh, rp = await svc.peers.call(addr, h, b"", svc.forward_timeout)
            if rh.status == E.ENOENT:
                continue  # dropped there meanwhile
            dp.raise_for(rh, rp)
            async with svc.locks((tgt.id, ino, index)):
                self._check(st)
                if st.versions_touched_since(ino, index, seq):
                    continue
                await tgt.run(tgt.index.add, st.chain, ino, index)
                await tgt.run(tgt.store.install_version, ino, index, t, rh.snap, rp, rh.version)
            svc.counters["resync_copied"] += 1
            copied += max(1, len(rp))
        return copied

    @staticmethod
    def _current(st: ChainSync, local, ino: int, index: int, version: int, dg: int | None,
                 epoch: int | None = None) -> bool:
        """Whether the local copy needs nothing from the tail's (version, digest, epoch). A
        newer local version counts only for a chunk a forwarded op touched: versions start
        again at 1 when a chunk is removed and written anew, so an untouched copy at a higher
        version is an old one the target kept while it was out."""
        if (local.version == version and (dg is None or digest(local) == dg)
                and (epoch is None or local.epoch == epoch)):
            return True
        return local.version > version and st.was_touched(ino, index)

    async def _fetch_install(self, st: ChainSync, src: int, addr: str, ino: int, index: int) -> int:
        """Copy one chunk from the tail; the bytes installed (0: nothing to do, or a
        forwarded op on the chunk since the fetch was sent made the copy obsolete)."""
        svc, tgt = self.svc, st.target
        seq = next(self._seq)
        rh, rp = await svc.peers.call(addr, dp.Header(dp.SYNC_FETCH, ino=ino, index=index, target=src), b"",
                                      svc.forward_timeout)
        if rh.status == E.ENOENT:
            return 0  # removed meanwhile (the remove is forwarded to us as well)
        dp.raise_for(rh, rp)
        async with svc.locks((tgt.id, ino, index)):
            self._check(st)
            if st.touched_since(ino, index, seq):
                return 0
            local = await tgt.run(tgt.store.stat, ino, index)
            if local is not None:
                if local.version > rh.version and st.was_touched(ino, index):
                    return 0
                if (local.version == rh.version and local.length == len(rp) and local.epoch == rh.epoch
                        and local.crcs == block_crcs(rp, tgt.store.block_size)):
                    st.same.add((ino, index))
                    return 0
            await tgt.run(tgt.index.add, st.chain, ino, index)
            await tgt.run(tgt.store.install, ino, index, rp, rh.version,
                          committed=committed_from(rh.version, rh.offset), epoch=rh.epoch)
            st.same.add((ino, index))
        svc.counters["resync_copied"] += 1
        return max(1, len(rp))
