"""CAPS and the capabilities opens carry (dfs.meta.ops.caps): what a shard signs, and for whom.

In process: a one-shard ``LocalEngine`` whose service signs (``svc.signer``),
a ``MetaClient`` per user. Each case is a rule of the op: an open handle's
rights (recorded by its open, or both for the creator: a file made 0444 is
written through the descriptor that made it; a chmod after the open changes
nothing), the caller's access now without a handle, a lazy session's
delegated block, a snapshot's directory, and nothing when capabilities are off.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from dfs.client.meta import MetaClient
from dfs.common import caps as C
from dfs.common.ids import ROOT_INO, shard_of
from dfs.common.records import ROOT, Caller
from dfs.meta.local import LocalEngine
from dfs.meta.ops.caps import granted_with
from dfs.common import messages as m

ALICE, BOB = Caller(1000, 1000, ()), Caller(1001, 1001, ())
KEY = C.cap_key("the tests' internal token")


def run(coro):
    return asyncio.run(coro)


def _engine(signing: bool = True) -> tuple[LocalEngine, C.Signer]:
    eng = LocalEngine(1)
    signer = C.Signer(KEY)
    if signing:
        eng.services[0].signer = signer
    return eng, signer


async def _setup(eng) -> tuple[MetaClient, MetaClient, int]:
    root = MetaClient(eng, ROOT)
    d = await root.mkdir(ROOT_INO, "pub", 0o777)
    await root.setattr(d.ino, mode=0o777)
    return MetaClient(eng, ALICE), MetaClient(eng, BOB), d.ino


def _cap(signer: C.Signer, tok: bytes | None) -> C.Cap:
    assert tok is not None
    return signer.verify(tok)


def test_a_handle_grants_what_its_open_checked_and_the_creator_both():
    async def main():
        eng, signer = _engine()
        alice, bob, pub = await _setup(eng)
        # created 0444 and opened: the creator may write it through that handle
        a, created, h, _ = await alice.create_open(pub, "ro", 0o444, access=os.W_OK)
        assert created
        cap = _cap(signer, await alice.caps(a.ino, C.WRITE, handle=h))
        assert cap.covers(a.ino, C.WRITE)
        # a chmod after the open changes nothing for the handle
        await alice.setattr(a.ino, mode=0o000)
        assert _cap(signer, await alice.caps(a.ino, C.READ | C.WRITE, handle=h)).covers(a.ino, C.READ | C.WRITE)
        # without the handle the caller's access now decides: none
        with pytest.raises(PermissionError):
            await alice.caps(a.ino, C.WRITE)
        # bob's open for reading of a 0644 file of alice's: reading, not writing
        f, _, _, _ = await alice.create_open(pub, "rw", 0o644)
        _, hb, _ = await bob.open_read(f.ino, access=os.R_OK)
        assert _cap(signer, await bob.caps(f.ino, C.READ, handle=hb)).covers(f.ino, C.READ)
        with pytest.raises(PermissionError):
            await bob.caps(f.ino, C.WRITE, handle=hb)
        # a durable handle records what its OPEN checked (reading only here)
        _, hd = await bob.open_file(f.ino, access=os.R_OK)
        with pytest.raises(PermissionError):
            await bob.caps(f.ino, C.WRITE, handle=hd)
        # a handle id that is not one grants nothing more than access now
        assert _cap(signer, await bob.caps(f.ino, C.READ, handle=os.urandom(16))).covers(f.ino, C.READ)
        with pytest.raises(PermissionError):
            await bob.caps(f.ino, C.WRITE, handle=os.urandom(16))

    run(main())


def test_without_a_handle_the_callers_access_decides_and_only_for_files():
    async def main():
        eng, signer = _engine()
        alice, bob, pub = await _setup(eng)
        f, _, _, _ = await alice.create_open(pub, "secret", 0o600)
        assert _cap(signer, await alice.caps(f.ino, C.READ | C.WRITE)).covers(f.ino, C.READ | C.WRITE)
        for rights in (C.READ, C.WRITE):
            with pytest.raises(PermissionError):
                await bob.caps(f.ino, rights)
        with pytest.raises(IsADirectoryError):
            await alice.caps(pub, C.READ)
        with pytest.raises(FileNotFoundError):
            await alice.caps(f.ino + 1000, C.READ)
        with pytest.raises(OSError):  # neither reading nor writing
            await alice.caps(f.ino, 0)

    run(main())


def test_a_snapshot_capability_needs_the_snapshot_directory_readable():
    async def main():
        eng, signer = _engine()
        alice, bob, pub = await _setup(eng)
        d = await alice.mkdir(pub, "mine", 0o700)
        cap = _cap(signer, await alice.caps(d.ino, C.READ, snap=7))
        assert cap.covers(12345, C.READ, snap=7) and not cap.covers(12345, C.READ)
        with pytest.raises(PermissionError):
            await bob.caps(d.ino, C.READ, snap=7)
        with pytest.raises(OSError):  # snapshots are read-only
            await alice.caps(d.ino, C.WRITE, snap=7)

    run(main())


def test_a_lazy_session_writes_its_delegated_block():
    async def main():
        eng, signer = _engine()
        alice, bob, pub = await _setup(eng)
        session = os.urandom(16)
        g = await alice.delegate(0, session, 10)
        ino = g.lo + 5  # not created yet: the session may write its chunks already
        cap = _cap(signer, await alice.caps(ino, C.WRITE, session=session))
        assert cap.covers(g.lo, C.READ | C.WRITE) and cap.covers(g.hi - 1, C.WRITE) and not cap.covers(g.hi, C.READ)
        with pytest.raises(FileNotFoundError):  # another session's: no inode, no grant
            await bob.caps(ino, C.WRITE, session=os.urandom(16))

    run(main())


def test_a_shard_that_does_not_sign_answers_none():
    async def main():
        eng, _ = _engine(signing=False)
        alice, _, pub = await _setup(eng)
        f, _, _, _ = await alice.create_open(pub, "f", 0o600)
        assert await alice.caps(f.ino, C.READ) is None

    run(main())


def test_opens_carry_what_they_checked():
    signer = C.Signer(KEY)
    attr = None

    def covers(req, reply, ino, rights):
        """Whether the reply carries one capability, for exactly ``rights`` on ``ino``."""
        toks = granted_with(signer, req, reply)
        return len(toks) == 1 and signer.verify(toks[0]) == signer.verify(toks[0])._replace(
            kind=C.INODES, a=ino, b=ino + 1, rights=rights)

    h = os.urandom(16)
    assert covers(m.Open(5, h, 30.0, os.R_OK | os.W_OK), attr, 5, C.READ | C.WRITE)
    assert covers(m.Open(5, h, 30.0, os.W_OK), attr, 5, C.WRITE)
    assert granted_with(signer, m.Open(5, h, 30.0, 0), attr) == []  # nothing checked: nothing granted
    assert covers(m.OpenRead(5, h, 30.0, os.R_OK), m.OpenReadReply(attr, False), 5, C.READ)
    assert granted_with(signer, m.LookupOpen(1, b"n", h, 30.0, os.R_OK),
                        m.LookupOpenReply(6, 0o100644, attr, m.Opened.NO)) == []
    assert covers(m.LookupOpen(1, b"n", h, 30.0, os.R_OK), m.LookupOpenReply(6, 0o100644, attr, m.Opened.READ),
                  6, C.READ)
    create = m.Create(1, b"n", 0o100444, 0, True, 0, None, None, h, 30.0, 0)
    assert covers(create, m.CreateReply(attr, True, 7, True, attr), 7, C.READ | C.WRITE)
    assert granted_with(signer, create, m.CreateReply(attr, False, 7, True, attr)) == []  # existing, unchecked
    assert granted_with(signer, m.Getattr(5), attr) == []


def test_caps_many_asks_one_batch_per_shard_and_answers_each_file_in_order():
    """Snapshot mode's open asks every pack's capability at once (MetaClient.caps_many): one
    ExecuteBatch per shard, and per file what CAPS alone would answer (a refusal is that
    file's error, the others are granted)."""
    async def main():
        eng = LocalEngine(2)
        signer = C.Signer(KEY)
        for svc in eng.services:
            svc.signer = signer
        root = MetaClient(eng, ROOT)
        inos = []
        for s in range(2):  # files on both shards: a directory homed on each
            j = 0
            while True:
                d = await root.mkdir(ROOT_INO, f"d{s}.{j}", 0o777)
                j += 1
                if shard_of(d.ino) == s:
                    break
            for k in range(3):
                a, _, _, _ = await root.create_open(d.ino, f"f{k}", 0o600 if k == 1 else 0o644)
                inos.append(a.ino)
        assert {shard_of(i) for i in inos} == {0, 1}
        bob = MetaClient(eng, BOB)
        batches = []
        call_many = eng.call_many

        async def counted(shard, ops):
            batches.append((shard, len(ops)))
            return await call_many(shard, ops)

        eng.call_many = counted
        got = await bob.caps_many(inos, C.READ)
        assert sorted(batches) == [(0, 3), (1, 3)]
        for ino, g in zip(inos, got):
            if ino in (inos[1], inos[4]):  # the 0600 files
                assert isinstance(g, PermissionError)
            else:
                assert _cap(signer, g).covers(ino, C.READ) and not _cap(signer, g).covers(ino, C.WRITE)
        assert await bob.caps_many([], C.READ) == []

    run(main())
