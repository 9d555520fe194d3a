"""Snapshot mode and its manifest, in process: the manifest's format, its builder, its store in
dfs and the machine's cache, and a client served from it with no metadata request.

Against the in-process engine with the in-process snapshot registry and chunk reads at
a snapshot (dfs/testing/registry.py, dfs/testing/snapfake.py).
tests/integration/test_snapshot_client.py runs the same against a real cluster, with
processes and the mount."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import stat
import threading

import numpy as np
import pytest

from dfs.client.core import Core
from dfs.client.manifest import DIRENT, NODE, PACK, Manifest, build
from dfs.client.paths import AsyncClient
from dfs.client.snapmode import (
    SnapshotMode,
    SnapshotSource,
    build_and_store,
    load_manifest,
    manifest_dir,
    snapshot_core,
)
from dfs.common import errors as err
from dfs.testing.snapfake import snapshot_client


async def _tree(c: AsyncClient) -> None:
    await c.makedirs("/d/sub/deep")
    for i in range(40):
        await c.write_bytes(f"/d/sub/f{i:03d}", bytes([i]) * (100 * i + 1))
    await c.write_bytes("/d/empty", b"")
    await c.write_bytes("/d/inline", b"tiny")
    await c.write_bytes("/d/big", os.urandom(300 << 10))  # not packed: read from the snapshot's chunks
    await c.write_bytes("/d/sub/deep/mid", os.urandom(60 << 10))
    await c.symlink("sub/f001", "/d/link")
    await c.link("/d/sub/f002", "/d/hard")
    await c.setxattr("/d/sub/f003", "user.k", b"v")
    await c.chmod("/d/sub/f004", 0o600)
    await c.mkdir("/d/emptydir")
    await c.makedirs("/d/priv/in")
    await c.write_bytes("/d/priv/in/f", b"secret")  # 0644, under a 0700 directory
    await c.chmod("/d/priv", 0o700)
    await c.sync()


def run(fn):
    async def go():
        c, t, meta, chunks, registry = snapshot_client(0)
        try:
            await _tree(c)
            info = await c.snapshot_create("/d", "s1")
            await c.write_bytes("/d/sub/f001", b"after")  # not in the snapshot
            await fn(c, t, meta, chunks, info)
        finally:
            await c.close()

    asyncio.run(go())


async def _walk(c: AsyncClient, top: str) -> dict:
    """path -> (mode, nlink, uid, gid, size, mtime, content or target, xattrs) of every entry."""
    out = {}

    async def one(path, rel):
        for e in await c.readdir(path or "/"):
            p, r = f"{path}/{os.fsdecode(e.name)}", f"{rel}/{os.fsdecode(e.name)}"
            a = await c.getattr(p, follow_symlinks=False)
            body = (await c.readlink(p)).encode() if a.is_lnk() else (await c.read_bytes(p) if a.is_reg() else b"")
            x = {n: await c.getxattr(p, n) for n in await c.listxattr(p)} if not a.is_lnk() else {}
            out[r] = (a.mode, a.nlink, a.uid, a.gid, a.size, a.mtime_ns, a.ctime_ns, body, x)
            if a.is_dir():
                await one(p, r)

    await one(top.rstrip("/"), "")
    return out


def test_record_sizes_are_the_documented_ones():
    assert (NODE.itemsize, DIRENT.itemsize, PACK.itemsize) == (104, 24, 24)


def test_the_manifest_equals_a_full_walk_of_the_snapshot_and_serves_it_with_no_request(tmp_path):
    async def t(c, t, meta, chunks, info):
        stats = {}
        core = await snapshot_core(meta, chunks, info, cache_dir=str(tmp_path), stats=stats)
        assert stats["source"] == "built"
        s = AsyncClient(core=core)
        t.take()
        got = await _walk(s, "/")
        assert t.take() == {}  # lookups, getattrs, readdirs, readlinks, xattrs, opens: none sent
        want = await _walk(c, "/d/.snap/s1")  # strict mode, through the service at the snapshot
        assert got == want
        t.take()
        assert got["/sub/f001"][7] == b"\x01" * 101  # as it was
        assert (await s.stat("/hard")).st_ino == (await s.stat("/sub/f002")).st_ino
        assert (await s.stat("/")).st_ino == 1
        assert await s.read_bytes("/link") == b"\x01" * 101
        with pytest.raises(FileNotFoundError):
            await s.stat("/nope")
        with pytest.raises(NotADirectoryError):
            await s.listdir("/inline")
        assert t.take() == {}
        await core.close()
    run(t)


def test_every_change_in_snapshot_mode_is_erofs(tmp_path):
    async def t(c, t, meta, chunks, info):
        s = AsyncClient(core=await snapshot_core(meta, chunks, info, cache_dir=str(tmp_path)))
        t.take()
        calls = [s.mkdir("/x"), s.makedirs("/a/b"), s.remove("/inline"), s.rmdir("/emptydir"),
                 s.rename("/inline", "/x"), s.link("/inline", "/x"), s.symlink("a", "/x"), s.chmod("/inline", 0),
                 s.chown("/inline", 1, 1), s.utime("/inline"), s.truncate("/inline", 0),
                 s.setxattr("/inline", "user.a", b""), s.removexattr("/sub/f003", "user.k"),
                 s.open("/inline", "r+b"), s.open("/inline", "wb"), s.open("/inline", "ab"), s.open("/x", "wb"),
                 s.open("/x", "xb"), s.write_bytes("/inline", b"")]
        for call in calls:
            with pytest.raises(OSError) as ei:
                await call
            assert ei.value.errno == errno.EROFS, call
        assert t.take() == {}
        assert await s.read_bytes("/inline") == b"tiny"
        await s.core.close()
    run(t)


def test_the_manifest_is_stored_in_dfs_and_cached_on_the_machine(tmp_path):
    async def t(c, t, meta, chunks, info):
        st1, st2, st3 = {}, {}, {}
        m1 = await load_manifest(meta, chunks, info, cache_dir=str(tmp_path / "a"), stats=st1)
        assert st1["source"] == "built"
        assert await c.exists(os.fsdecode(manifest_dir(info.epoch)) + "/manifest")
        t.take()
        m2 = await load_manifest(meta, chunks, info, cache_dir=str(tmp_path / "a"), stats=st2)
        assert st2["source"] == "cache" and t.take() == {}  # nothing asked of anyone
        m3 = await load_manifest(meta, chunks, info, cache_dir=str(tmp_path / "b"), stats=st3)
        assert st3["source"] == "dfs"  # another machine: read from dfs, not built again
        assert bytes(m1.buf) == bytes(m2.buf) == bytes(m3.buf)
        files = [f for _, _, fs in os.walk(tmp_path / "a") for f in fs]
        assert len(files) == 1 and files[0] == f"{info.epoch}-{info.created}.manifest"
        # a damaged cache file is fetched again
        path = next(os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "a") for f in fs)
        with open(path, "r+b") as f:
            f.write(b"garbage!")
        st4 = {}
        await load_manifest(meta, chunks, info, cache_dir=str(tmp_path / "a"), stats=st4)
        assert st4["source"] == "dfs"
    run(t)


def test_two_builders_at_once_are_both_valid_and_one_wins():
    async def t(c, t, meta, chunks, info):
        a, b = await asyncio.gather(build_and_store(meta, chunks, info), build_and_store(meta, chunks, info))
        assert a == b  # the loser reads the winner's
        base = os.fsdecode(manifest_dir(info.epoch))
        assert sorted(await c.listdir(base))[-1] == "manifest"
        assert len(await c.listdir(base)) == 2  # the winner's packs and its manifest; the loser left nothing
        m = Manifest(a, verify=True)
        s = AsyncClient(core=Core(None, chunks, SnapshotMode(m, info.epoch, meta, chunks)))
        assert await s.read_bytes("/sub/f005") == b"\x05" * 501
    run(t)


def test_a_deleted_snapshot_keeps_what_was_loaded_and_reads_answer_estale(tmp_path):
    async def t(c, t, meta, chunks, info):
        core = await snapshot_core(meta, chunks, info, cache_dir=str(tmp_path), pack_cache=0)
        s = AsyncClient(core=core)
        assert await s.read_bytes("/sub/f007") == b"\x07" * 701  # from a pack: a live file
        await c.snapshot_delete("/d", "s1")
        assert sorted(await s.listdir("/sub"))[:2] == ["deep", "f000"]  # names and attributes stay
        with pytest.raises(OSError) as ei:
            await s.read_bytes("/big")  # the snapshot's chunks are gone
        assert ei.value.errno == errno.ESTALE
        assert core.mode.deleted
    run(t)


def test_bad_manifests_are_refused():
    async def t(c, t, meta, chunks, info):
        raw = await build(SnapshotSource(meta, chunks, info.epoch, info.root), snap=info.epoch)
        m = Manifest(raw, verify=True)
        assert len(m) > 40 and m.entries > 40 and len(m.packs) == 0
        for bad in (raw[:100], b"x" * len(raw), raw[:-1]):
            with pytest.raises(err.DfsError):
                Manifest(bad)
        flipped = bytearray(raw)
        flipped[-1] ^= 1
        Manifest(bytes(flipped))  # the header is whole: loads
        with pytest.raises(err.ChecksumError):
            Manifest(bytes(flipped), verify=True)
        wrong = bytearray(raw)
        wrong[8] = 9  # a version this client does not read
        with pytest.raises(err.DfsError):
            Manifest(bytes(wrong))
    run(t)


def test_listing_pages_and_cookies():
    async def t(c, t, meta, chunks, info):
        m = Manifest(await build(SnapshotSource(meta, chunks, info.epoch, info.root), snap=info.epoch))
        sub = m.lookup(0, b"sub")
        whole, eof = m.listing(sub, 0, 1000, True)
        assert eof and len(whole) == 41
        assert [e.cookie for e in whole] == sorted(e.cookie for e in whole)
        got, cookie = [], 0
        while True:
            page, eof = m.listing(sub, cookie, 7, False)
            got += page
            if eof:
                break
            cookie = page[-1].cookie
        assert [e.name for e in got] == [e.name for e in whole]
        assert all(e.attr is None for e in got)
        assert stat.S_ISDIR(next(e for e in whole if e.name == b"deep").type)
        assert np.all(np.diff(m.dirents["hash"].astype(np.int64)[m.nodes["d0"][sub]:][:41]) >= 0)
        assert m.lookup(sub, b"f017") == next(e.ino for e in whole if e.name == b"f017") - 1
        assert m.lookup(sub, b"nope") is None
    run(t)


def test_packed_files_are_read_with_few_data_plane_requests(tmp_path):
    async def t(c, t, meta, chunks, info):
        import random

        names = [f"/sub/f{i:03d}" for i in range(1, 40)]
        random.Random(3).shuffle(names)

        async def epoch(s):
            for n in names:  # a shuffled epoch
                i = int(n[-3:])
                assert await s.read_bytes(n) == bytes([i]) * (100 * i + 1)

        for cache, want in ((256 << 20, 1), (0, len(names))):  # in memory only
            core = await snapshot_core(meta, chunks, info, cache_dir=str(tmp_path), pack_cache=cache,
                                       pack_disk=False)
            await epoch(AsyncClient(core=core))
            assert core.mode.chunks.packs.requests == want  # all in one pack chunk: read once if it fits
            await core.close()
        core = await snapshot_core(meta, chunks, info, cache_dir=str(tmp_path), pack_cache=1, pack_disk=False)
        s = AsyncClient(core=core)
        for name in await s.listdir("/sub"):  # in pack order (the tree's): whole chunks, whatever the cache
            if name != "deep":
                await s.read_bytes(f"/sub/{name}")
        assert core.mode.chunks.packs.requests <= 3
        await core.close()
        # the machine's cache: each chunk once per machine, whatever the order and the process
        for want in (1, 0):
            core = await snapshot_core(meta, chunks, info, cache_dir=str(tmp_path / "m"), pack_cache=0)
            await epoch(AsyncClient(core=core))
            assert core.mode.chunks.packs.requests == want
            core.mode.chunks.packs.close()
            await core.close()
        packs = [f for _, _, fs in os.walk(tmp_path / "m") for f in fs if f.startswith("p")]
        assert packs == ["p0-c0"]
    run(t)


def _sync_client(tmp_path):
    """A sync ``Client`` in snapshot mode over the tree's snapshot (its manifest built into the
    machine's cache ``tmp_path``; the in-process cluster that made it is closed)."""
    from dfs.client.sync import Client

    got = {}

    async def t(c, t, meta, chunks, info):
        got["core"] = await snapshot_core(meta, chunks, info, cache_dir=str(tmp_path))

    run(t)

    async def again():  # a new in-process cluster would be another snapshot: reuse the cached manifest
        return AsyncClient(core=got["core"])

    return Client(again)


@contextlib.contextmanager
def _loop_held(s):
    """The client's loop thread blocked for the block: what answers in it answered on this thread."""
    held, release = threading.Event(), threading.Event()

    async def hold():
        held.set()
        release.wait(60)  # blocks the loop thread itself

    s.run_later(hold())
    assert held.wait(60)
    try:
        yield
    finally:
        release.set()


def test_a_sync_read_of_a_snapshot_file_is_two_trips_to_the_loop_thread(tmp_path):
    s = _sync_client(tmp_path)
    try:
        trips = []
        real = s.run
        s.run = lambda coro: trips.append(coro) or real(coro)
        buf = bytearray(1 << 20)
        with s.open("/sub/f005", "rb", buffering=0) as f:
            n = f.readinto(buf)
            assert f.readinto(buf) == 0  # EOF from the size this open sees: no trip
        assert bytes(buf[:n]) == b"\x05" * 501
        assert len(trips) == 2  # the open and the read; the close runs on its own
    finally:
        s.run = real
        s.close()


def test_sync_namespace_reads_in_snapshot_mode_answer_on_the_callers_thread(tmp_path):
    """stat and its kin come from the manifest on the calling thread: they answer while the
    client's loop thread is held (a trip to it costs more than the answer)."""
    s = _sync_client(tmp_path)
    with _loop_held(s):
        assert s.stat("/sub/f005").st_size == 501
        assert s.lstat("/link").st_mode & 0o170000 == stat.S_IFLNK and s.readlink("/link") == "sub/f001"
        assert s.isdir("/sub") and s.isfile("/hard") and s.islink("/link") and not s.exists("/nope")
        assert s.getxattr("/sub/f003", "user.k") == b"v" and s.listxattr("/sub/f003") == ["user.k"]
        assert s.statvfs("/").f_files > 40
        with pytest.raises(FileNotFoundError):
            s.stat("/sub/nope")
        with pytest.raises(NotADirectoryError):
            s.stat("/hard/x")
    assert s.listdir("/sub/deep") == ["mid"]  # listings still page on the loop thread
    s.close()
    with pytest.raises(ValueError):
        s.stat("/sub/f005")  # closed, as on the loop thread


def test_sync_reads_of_packed_files_at_hand_answer_on_the_callers_thread(tmp_path):
    """read_bytes of a packed file whose pack chunk is in the machine's cache answers on the
    calling thread (a trip to the loop thread cost 6x the read: 233 -> 35 us a file); any other
    file (not packed, or its chunk not fetched yet) goes to the loop thread as before."""
    s = _sync_client(tmp_path)
    try:
        assert s.read_bytes("/sub/f007") == b"\x07" * 701  # its pack chunk, fetched on the loop thread
        assert len(s.read_bytes("/big")) == 300 << 10  # not packed: the loop thread
        with _loop_held(s):
            for i in (5, 9, 30):  # the same pack chunk: from the machine's cache, on this thread
                assert s.read_bytes(f"/sub/f{i:03d}") == bytes([i]) * (100 * i + 1)
            assert s.read_bytes("/hard") == b"\x02" * 201 and s.read_bytes("/sub/../sub/f011") == b"\x0b" * 1101
            with s.open("/sub/f012", "rb") as f:  # opens for reading too, every io layer
                assert f.name == "/sub/f012" and f.read(5) == b"\x0c" * 5 and f.tell() == 5
                f.seek(-3, os.SEEK_END)
                assert f.read() == b"\x0c" * 3 and f.read() == b""
            buf = bytearray(4096)
            with s.open("/sub/f013", "rb", buffering=0) as f:
                assert f.readinto(buf) == 1301 and f.readinto(buf) == 0
                with pytest.raises(io.UnsupportedOperation):
                    f.write(b"x")
                with pytest.raises(io.UnsupportedOperation):
                    f.fileno()
            with s.open("/sub/f020", "r", encoding="latin-1") as f:
                assert f.read() == "\x14" * 2001
        assert s.read_bytes("/empty") == b""
        with pytest.raises(IsADirectoryError):
            s.read_bytes("/sub")
        with pytest.raises(FileNotFoundError):
            s.read_bytes("/sub/nope")
    finally:
        s.close()


def test_read_many_in_snapshot_mode_reads_files_at_hand_on_the_callers_thread(tmp_path):
    """Client.read_many (the DataLoader's batch read): packed files whose pack chunk is in the
    machine's cache are read on the calling thread (a trip to the loop thread and back for
    each file cost 6x the file: 3,300 -> 22,000 files/s in a warm epoch); the others are
    fetched ahead on the loop thread; all come in the order given, errors at their turn."""
    s = _sync_client(tmp_path)
    try:
        s.read_bytes("/sub/f007")  # the pack chunk in the machine's cache
        warm = [f"/sub/f{i:03d}" for i in (9, 3, 30, 12)]
        with _loop_held(s):
            assert [(p, bytes(d)) for p, d in s.read_many(warm, ahead=2)] == \
                [(p, bytes([int(p[-3:])]) * (100 * int(p[-3:]) + 1)) for p in warm]
        # files at hand and others (not packed: the loop), interleaved, in order
        mixed = ["/sub/f001", "/big", "/sub/f002", "/sub/deep/mid", "/empty", "/hard", "/big"]
        got = list(s.read_many(mixed, ahead=3))
        assert [p for p, _ in got] == mixed
        assert [bytes(d) for _, d in got] == [s.read_bytes(p) for p in mixed]
        assert all(isinstance(d, bytearray) for _, d in got)  # writable, as from the loop
        # an error at its turn, with its path; what came before it is handed over
        it = s.read_many(["/sub/f005", "/sub/nope", "/big"], ahead=3)
        assert next(it)[0] == "/sub/f005"
        with pytest.raises(FileNotFoundError) as e:
            next(it)
        assert e.value.filename == "/sub/nope"
        it = s.read_many(["/big", "/sub", "/sub/f005"], ahead=3)
        assert len(next(it)[1]) == 300 << 10
        with pytest.raises(IsADirectoryError):
            next(it)
        # closing early cancels what was fetched ahead; the client goes on
        it = s.read_many(["/sub/f005", "/big", "/sub/deep/mid"] * 4, ahead=6, max_bytes=1 << 20)
        assert next(it)[0] == "/sub/f005"
        it.close()
        assert len(s.read_bytes("/big")) == 300 << 10
        with pytest.raises(err.InvalidArgument):
            s.read_many(warm, ahead=0)
    finally:
        s.close()


def test_a_snapshot_mode_open_checks_the_callers_access(tmp_path):
    """A file another user may not read (0600) is refused with EACCES in snapshot mode, on the
    caller's thread and through the loop alike; its owner and root read it."""
    from dfs.client.meta import MetaClient
    from dfs.client.sync import Client
    from dfs.common.records import Caller

    got = {}

    async def t(c, t, meta, chunks, info):
        got["args"] = (t, chunks, info)
        got["core"] = await snapshot_core(meta, chunks, info, cache_dir=str(tmp_path))

    run(t)
    tr, chunks, info = got["args"]

    async def as_user():
        alice = MetaClient(tr, Caller(1000, 1000, (1000,)))
        return AsyncClient(core=await snapshot_core(alice, chunks, info, cache_dir=str(tmp_path)))

    async def as_root():
        return AsyncClient(core=got["core"])

    root, alice = Client(as_root), Client(as_user)
    try:
        want = b"\x04" * 401
        assert root.read_bytes("/sub/f004") == want  # on the loop, then at hand
        assert root.read_bytes("/sub/f004") == want
        for _ in range(2):
            with pytest.raises(PermissionError):
                alice.read_bytes("/sub/f004")
        with pytest.raises(PermissionError):
            alice.open("/sub/f004", "rb")
        assert alice.read_bytes("/sub/f005") == b"\x05" * 501  # 0644: readable
        # a directory she may not search or list (0700): nothing under it, on either thread
        assert root.read_bytes("/priv/in/f") == b"secret"  # its pack chunk at hand
        for read in (alice.read_bytes, alice.stat, alice.listdir, lambda p: list(alice.read_many([p]))):
            with pytest.raises(PermissionError) as e:
                read("/priv/in/f")
            assert e.value.filename == "/priv/in/f"
        with pytest.raises(PermissionError):
            alice.listdir("/priv")
        assert "priv" in alice.listdir("/")  # the name itself is in a directory she may list
    finally:
        alice.close()
        root.close()


def test_the_builder_numbers_a_tree_the_same_however_its_listings_interleave():
    """A level's directories are listed at once; the manifest does not depend on which
    listing answers first (here: in an order set by the inode numbers, then one at a time)."""

    class Delayed(SnapshotSource):
        def __init__(self, *a, order: int, **kw) -> None:
            super().__init__(*a, **kw)
            self.order = order

        async def entries(self, ino):
            for _ in range(ino % 7 if self.order < 0 else 0):
                await asyncio.sleep(0)  # yields only: the listings finish in another order than asked
            return await super().entries(ino)

    async def t(c, t, meta, chunks, info):
        built = [await build(Delayed(meta, chunks, info.epoch, info.root, order=o), snap=info.epoch,
                             created=info.created, concurrency=c_) for o, c_ in ((-1, 32), (1, 1))]
        assert built[0] == built[1]
        m = Manifest(built[0], verify=True)
        assert m.attr(m.lookup(m.lookup(0, b"sub"), b"deep")).is_dir()
    run(t)


def test_walks_reuse_the_directories_they_went_through():
    """A snapshot never changes: the directories a walk goes through keep their entry and their
    attributes as made (a random stat then looks up and builds only its own file's)."""
    async def t(c, t, meta, chunks, info):
        m = Manifest(await build(SnapshotSource(meta, chunks, info.epoch, info.root), snap=info.epoch))
        s = AsyncClient(core=Core(None, chunks, SnapshotMode(m, info.epoch, meta, chunks)))
        looked, made = [], []
        lookup, attr = m.lookup, m.attr
        m.lookup = lambda n, name: (looked.append(name), lookup(n, name))[1]
        m.attr = lambda n: (made.append(n), attr(n))[1]
        a = await s.stat("/sub/f001")
        b = await s.stat("/sub/f002")
        assert looked == [b"sub", b"f001", b"f002"]  # "sub" once
        assert len(made) == 4  # the root and /sub once, then each file's
        assert (a.st_size, b.st_size) == (101, 201) and a.st_ino != b.st_ino
        assert (await s.stat("/sub")).st_ino == (await s.stat("/sub/.")).st_ino  # the same, made once
        assert len(made) == 4
    run(t)
