"""Lazy mode (dfs.client.lazy over dfs.client.writeback), in process, on the in-memory engine.

A lazy client and a strict one share a LocalEngine; a transport counts the lazy
client's requests. What is checked: this client sees its changes at once and sends
nothing for them until the flush; the flush is ordered batches that respect
dependencies across shards; a barrier leaves the service equal to what the client
sees; what the service refuses is reported at the barrier and at the close of the
file concerned, with its errno, operation and path, and nothing that depends on it
is applied; back-pressure bounds the log and the write-behind; the default mode is
strict except under directories marked lazy."""

from __future__ import annotations

import asyncio
import errno
import os
import stat

import pytest

from dfs.client.core import Core
from dfs.client.file import MemoryChunks, WriteBudget
from dfs.client.lazy import LazyMode
from dfs.client.meta import MetaClient
from dfs.client.mode import StrictMode
from dfs.client.paths import AsyncClient
from dfs.common.ids import ROOT_INO, shard_of
from dfs.common.records import FLAG_LAZY, ROOT, Caller
from dfs.meta.local import LocalEngine
from dfs.testing.counting import CountingTransport

ALICE = Caller(1000, 1000, (1000,))


def run(fn, *, nshards: int = 3, mode_kw: dict | None = None, caller=ROOT, setup=None):
    """``fn(lazy client, counting transport, strict client, engine)``."""
    async def go():
        eng = LocalEngine(nshards)
        chunks = MemoryChunks()
        t = CountingTransport(eng, close_engine=False)
        strict = AsyncClient(MetaClient(eng, ROOT), chunks, mode=StrictMode(0))
        if setup is not None:
            await setup(strict)
        lazy = AsyncClient(MetaClient(t, caller), chunks, mode=LazyMode(**(mode_kw or {})))
        try:
            await fn(lazy, t, strict, eng)
        finally:
            try:
                await lazy.close()
            except OSError:
                pass
            await strict.close()
            await eng.close()
    asyncio.run(go())


async def tree(c: AsyncClient, top: str = "/") -> dict:
    """Path -> ("d",) / ("l", target) / ("f", bytes, mode) of everything under ``top``."""
    out = {}
    async for dp, dns, fns in c.walk(top):
        for n in dns + fns:
            p = os.path.join(dp, n)
            st = await c.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[p] = ("l", await c.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[p] = ("d", stat.S_IMODE(st.st_mode))
            else:
                out[p] = ("f", await c.read_bytes(p), stat.S_IMODE(st.st_mode), st.st_size)
    return out


def expect_errno(code, e):
    assert isinstance(e, OSError) and e.errno == code, f"expected {errno.errorcode[code]}, got {e!r}"


# ---------------------------------------------------------------- seen here at once, sent later
def test_changes_are_seen_at_once_and_sent_in_batches_at_the_barrier():
    async def t(lazy, t, strict, eng):
        t.gate.clear()  # nothing reaches the service: every call below completes all the same
        await lazy.makedirs("/out/a/b")
        for i in range(50):
            await lazy.write_bytes(f"/out/a/b/f{i:02d}", b"x" * i)
        await lazy.symlink("f01", "/out/a/b/link")
        await lazy.mkdir("/out/c")
        await lazy.rename("/out/a/b/f00", "/out/c/moved")  # into a directory on another shard
        await lazy.remove("/out/a/b/f02")
        await lazy.chmod("/out/a/b/f03", 0o600)
        await lazy.utime("/out/a/b/f04", ns=(5 * 10**9, 6 * 10**9))
        mine = await tree(lazy, "/out")
        assert mine["/out/c/moved"] == ("f", b"", 0o644, 0)
        assert mine["/out/a/b/f05"] == ("f", b"xxxxx", 0o644, 5)
        assert "/out/a/b/f02" not in mine and mine["/out/a/b/link"] == ("l", "f01")
        assert (await lazy.stat("/out/a/b/f04")).st_mtime_ns == 6 * 10**9
        sent = t.take()
        assert set(sent) <= {"DELEGATE", "LOOKUP", "READDIR", "GETATTR"}, sent  # the changes wait
        assert not await strict.exists("/out")
        t.gate.set()
        await lazy.sync()
        sent = t.take()
        assert sent.get("CREATE", 0) == 0 and sent.get("MKDIR", 0) == 4 and sent["RENAME"] == 1
        assert sent["BATCH"] <= 6, sent  # creates, bytes and setattrs of three shards, in a few batches
        assert await tree(strict, "/out") == mine
        assert (await strict.stat("/out/a/b/f04")).st_mtime_ns == 6 * 10**9
    run(t)


def test_new_inodes_have_their_final_ids_at_once():
    async def t(lazy, t, strict, eng):
        await lazy.mkdir("/d")
        f = await lazy.open("/d/f", "wb")
        ino = (await lazy.stat("/d/f")).st_ino
        await f.write(b"abc")
        await f.close()
        await lazy.link("/d/f", "/d/g")
        a = await lazy.stat("/d/f")
        assert a.st_ino == ino and a.st_nlink == 2 and (await lazy.stat("/d/g")).st_ino == ino
        assert (await lazy.stat("/d")).st_ino == (await lazy.stat("/d")).st_ino
        d_ino = (await lazy.stat("/d")).st_ino
        await lazy.sync()
        assert (await strict.stat("/d/f")).st_ino == ino and (await strict.stat("/d")).st_ino == d_ino
        assert (await strict.stat("/d/g")).st_nlink == 2
        # the ids came from this client's grants: the shards never give them to anyone else
        g = lazy.core.mode.deleg
        assert sum(g.granted.values()) >= 4096
    run(t)


def test_dependencies_across_shards_apply_in_order():
    async def t(lazy, t, strict, eng):
        # two directories on different shards; a file made in one, renamed into the other,
        # written, renamed back and chmodded: each depends on the one before
        names = [f"dir{i}" for i in range(30)]
        homes = {}
        for n in names:
            await lazy.mkdir("/" + n)
            homes.setdefault(shard_of((await lazy.stat("/" + n)).st_ino), n)
        a, b = list(homes.values())[:2]
        await lazy.write_bytes(f"/{a}/x", b"one")
        await lazy.rename(f"/{a}/x", f"/{b}/y")
        f = await lazy.open(f"/{b}/y", "ab")
        await f.write(b"two")
        await f.close()
        await lazy.rename(f"/{b}/y", f"/{a}/z")
        await lazy.chmod(f"/{a}/z", 0o640)
        await lazy.sync()
        assert await strict.read_bytes(f"/{a}/z") == b"onetwo"
        assert stat.S_IMODE((await strict.stat(f"/{a}/z")).st_mode) == 0o640
        assert not await strict.exists(f"/{a}/x") and not await strict.exists(f"/{b}/y")
    run(t)


def test_a_directory_is_removed_after_everything_in_it():
    async def t(lazy, t, strict, eng):
        await lazy.makedirs("/p/q")
        for i in range(20):
            await lazy.write_bytes(f"/p/q/f{i}", b"z")
        for i in range(20):
            await lazy.remove(f"/p/q/f{i}")
        await lazy.rmdir("/p/q")
        await lazy.rmdir("/p")
        assert not await lazy.exists("/p")
        await lazy.sync()
        assert await strict.listdir("/") == []
    run(t)


def test_listing_merges_this_clients_changes_with_the_service_pages():
    async def setup(strict):
        await strict.mkdir("/big")
        for i in range(120):
            await strict.write_bytes(f"/big/s{i:03d}", b"s")

    async def t(lazy, t, strict, eng):
        lazy.core.readdir_page = 17  # many pages, each merged with this client's changes
        for i in range(0, 120, 3):
            await lazy.remove(f"/big/s{i:03d}")
        for i in range(40):
            await lazy.write_bytes(f"/big/n{i:03d}", b"n")
        await lazy.rename("/big/s001", "/big/n999")
        want = sorted({f"s{i:03d}" for i in range(120) if i % 3 and i != 1} | {f"n{i:03d}" for i in range(40)}
                      | {"n999"})
        got = await lazy.listdir("/big")
        assert sorted(got) == want and len(got) == len(set(got))
        assert sorted(e.name for e in await lazy.scandir("/big")) == want
        await lazy.sync()
        assert sorted(await strict.listdir("/big")) == want
    run(t, setup=setup)


def test_nothing_is_sent_for_a_new_tree_until_the_flush():
    async def t(lazy, t, strict, eng):
        await lazy.mkdir("/fresh")
        await lazy.sync()
        t.take()
        t.gate.clear()
        for i in range(200):
            f = await lazy.open(f"/fresh/f{i}", "wb")
            await f.write(b"4" * 4096)
            await f.close()
        assert sorted(await lazy.listdir("/fresh")) == sorted(f"f{i}" for i in range(200))
        assert set(t.take()) <= {"DELEGATE"}  # no request per file
        t.gate.set()
        await lazy.sync()
        assert len(await strict.listdir("/fresh")) == 200
        assert await strict.read_bytes("/fresh/f7") == b"4" * 4096
    run(t)


# ---------------------------------------------------------------- errors
def test_a_name_another_client_took_is_reported_at_the_barrier_and_at_close():
    async def setup(strict):
        await strict.mkdir("/shared")

    async def t(lazy, t, strict, eng):
        await lazy.write_bytes("/shared/mine", b"lazy")  # the lazy client learns what /shared holds
        await strict.write_bytes("/shared/taken", b"strict")  # the other client gets there first
        f = await lazy.open("/shared/taken", "wb")
        await f.write(b"lazy")
        await f.close()  # the close itself does not wait
        await lazy.chmod("/shared/taken", 0o600)  # depends on the create: never applied
        with pytest.raises(FileExistsError) as ei:
            await lazy.sync()
        e = ei.value
        assert e.filename == "/shared/taken" and "create" in str(e)
        assert {(f.op, f.path, f.errno) for f in e.failures} >= {("create", "/shared/taken", errno.EEXIST)}
        assert any(f.op == "setattr" and "depends on create" in f.message for f in e.failures)
        assert await strict.read_bytes("/shared/taken") == b"strict"  # untouched
        assert stat.S_IMODE((await strict.stat("/shared/taken")).st_mode) == 0o644
        assert await strict.read_bytes("/shared/mine") == b"lazy"  # the rest went through
        await lazy.sync()  # reported once
        # the view was rebuilt from the service: this client now sees the other's file
        assert await lazy.read_bytes("/shared/taken") == b"strict"
    run(t, setup=setup)


def test_an_error_is_raised_at_the_close_of_its_file():
    async def setup(strict):
        await strict.mkdir("/s")

    async def t(lazy, t, strict, eng):
        await lazy.write_bytes("/s/mine", b"")  # the lazy client now knows what /s holds
        await strict.write_bytes("/s/x", b"strict")
        f = await lazy.open("/s/x", "wb")
        g = await lazy.open("/s/x", "rb")  # another open of the same (lazily made) file
        await f.write(b"1")
        await f.close()
        await _flushed(lazy)
        with pytest.raises(FileExistsError) as ei:
            await g.close()  # the next close of the file reports it
        assert ei.value.filename == "/s/x"
        with pytest.raises(FileExistsError):
            await lazy.sync()  # and the next barrier
    run(t, setup=setup)


@pytest.mark.parametrize("inline", [True, False])
def test_a_close_after_its_create_was_refused_raises_the_refusal(inline):
    """The write-back sent the create (and the service refused it) before the file's close:
    the close reports the refusal, never the ENOENT of publishing the bytes of an inode the
    service does not have (inline or on the data servers)."""
    async def setup(strict):
        await strict.mkdir("/s")

    async def t(lazy, t, strict, eng):
        await lazy.write_bytes("/s/mine", b"")  # the lazy client now knows what /s holds
        await strict.write_bytes("/s/x", b"strict")
        f = await lazy.open("/s/x", "xb")
        await f.write(b"lazy" * (1 if inline else 50_000))
        await _flushed(lazy)  # the refusal comes before the close
        with pytest.raises(FileExistsError) as ei:
            await f.close()
        assert ei.value.filename == "/s/x"
        await lazy.core.wait_background()
        with pytest.raises(FileExistsError):
            await lazy.sync()  # and the barrier, once
        await lazy.sync()
        assert await strict.read_bytes("/s/x") == b"strict"
    run(t, setup=setup, mode_kw={"inline": inline})


async def _flushed(lazy: AsyncClient) -> None:
    """Wait until everything queued is on the service without taking its failures."""
    eng = lazy.core.mode.engine
    await lazy.core.wait_background()
    fails = await eng.barrier()
    eng._failures[:0] = fails  # put them back for the test's barrier


def test_a_removed_parent_and_a_changed_permission_are_reported_with_their_errno():
    async def setup(strict):
        await strict.makedirs("/w/gone")
        await strict.makedirs("/w/closed")
        for d in ("/w", "/w/gone", "/w/closed"):
            await strict.chown(d, 1000, 1000)

    async def t(lazy, t, strict, eng):
        await lazy.write_bytes("/w/gone/first", b"")  # the lazy client learns what /w/gone holds
        await lazy.remove("/w/gone/first")
        await lazy.listdir("/w/closed")  # ... and /w/closed's attributes
        await lazy.sync()
        await strict.rmdir("/w/gone")
        await strict.chmod("/w/closed", 0o555)
        await lazy.write_bytes("/w/gone/a", b"a")
        await lazy.write_bytes("/w/closed/b", b"b")
        await lazy.write_bytes("/w/fine", b"c")
        with pytest.raises(OSError) as ei:
            await lazy.sync()
        got = {(f.op, f.path, f.errno) for f in ei.value.failures}
        assert ("create", "/w/gone/a", errno.ENOENT) in got
        assert ("create", "/w/closed/b", errno.EACCES) in got
        assert await strict.read_bytes("/w/fine") == b"c"
        assert await strict.listdir("/w/closed") == []
    run(t, setup=setup, caller=ALICE)


def test_local_checks_answer_at_the_call():
    async def t(lazy, t, strict, eng):
        await lazy.mkdir("/d")
        await lazy.write_bytes("/d/f", b"1")
        for coro, code in ((lazy.mkdir("/d"), errno.EEXIST), (lazy.rmdir("/d"), errno.ENOTEMPTY),
                           (lazy.remove("/d"), errno.EISDIR), (lazy.rmdir("/d/f"), errno.ENOTDIR),
                           (lazy.remove("/d/nope"), errno.ENOENT), (lazy.open("/d/f", "xb"), errno.EEXIST),
                           (lazy.rename("/d/nope", "/d/x"), errno.ENOENT)):
            with pytest.raises(OSError) as ei:
                await coro
            expect_errno(code, ei.value)
        await lazy.sync()
    run(t)


def test_setattr_owner_rules_answer_at_the_call():
    async def setup(strict):
        await strict.mkdir("/o")
        await strict.chmod("/o", 0o777)
        await strict.write_bytes("/o/roots", b"r")

    async def t(lazy, t, strict, eng):
        with pytest.raises(PermissionError):
            await lazy.chmod("/o/roots", 0o600)
        with pytest.raises(PermissionError):
            await lazy.utime("/o/roots", ns=(1, 1))
        await lazy.write_bytes("/o/mine", b"m")
        await lazy.chmod("/o/mine", 0o4755)
        await lazy.sync()
        assert stat.S_IMODE((await strict.stat("/o/mine")).st_mode) == 0o4755
        assert (await strict.stat("/o/mine")).st_uid == 1000
    run(t, setup=setup, caller=ALICE)


def test_a_file_unlinked_here_does_not_report_its_late_bytes():
    async def t(lazy, t, strict, eng):
        await lazy.mkdir("/tmp")
        for i in range(10):
            f = await lazy.open(f"/tmp/t{i}", "wb")
            await f.write(b"temporary" * 100)
            await lazy.remove(f"/tmp/t{i}")  # unlinked while open
            await f.write(b"more")
            await f.close()
        await lazy.sync()
        assert await strict.listdir("/tmp") == []
    run(t)


# ---------------------------------------------------------------- bounds
def test_back_pressure_bounds_the_log():
    async def t(lazy, t, strict, eng):
        eng_ = lazy.core.mode._engine()
        await lazy.mkdir("/bp")
        peak = 0
        for i in range(300):
            await lazy.write_bytes(f"/bp/f{i}", b"b")
            peak = max(peak, len(eng_))
        assert peak <= 20 + 2  # the producer waited for the flusher
        await lazy.sync()
        assert len(await strict.listdir("/bp")) == 300
    run(t, mode_kw={"max_entries": 20})


def test_the_write_budget_makes_closes_wait_not_fail():
    async def t(lazy, t, strict, eng):
        await lazy.mkdir("/big")
        budget = lazy.core.budget
        assert isinstance(budget, WriteBudget) and budget.limit == 1 << 20
        for i in range(8):  # each file's bytes go to the data servers (not inline: too big)
            await lazy.write_bytes(f"/big/f{i}", bytes([i]) * (600 << 10))
            assert budget.used <= (1 << 20) + (600 << 10)
        await lazy.sync()
        assert budget.used == 0 and budget.waited > 0
        for i in range(8):
            assert await strict.read_bytes(f"/big/f{i}") == bytes([i]) * (600 << 10)
    run(t, mode_kw={"budget": 1 << 20})


def test_budget_take_waits_and_give_wakes():
    async def go():
        b = WriteBudget(100)
        await b.take(80)
        waiter = asyncio.ensure_future(b.take(50))
        await asyncio.sleep(0)
        assert not waiter.done() and b.waited == 1
        b.give(80)
        await waiter
        assert b.used == 50
        b.give(50)
        await b.take(500)  # larger than the whole budget: goes alone when nothing is held
        assert b.used == 500
    asyncio.run(go())


# ---------------------------------------------------------------- per directory
def test_the_default_mode_is_strict_except_under_directories_marked_lazy():
    async def setup(strict):
        await strict.mkdir("/strictdir")
        await strict.mkdir("/out")
        await strict.core.meta.setlazy((await strict.stat("/out")).st_ino)

    async def t(lazy, t, strict, eng):
        mode = lazy.core.mode
        assert not mode.all
        await lazy.listdir("/")
        t.take()
        await lazy.write_bytes("/strictdir/s", b"s")  # strict: sent at once
        assert t.take().get("CREATE") == 1 and await strict.read_bytes("/strictdir/s") == b"s"
        await lazy.makedirs("/out/sub")  # inherits the lazy flag
        for i in range(10):
            await lazy.write_bytes(f"/out/sub/f{i}", b"l")
        assert "CREATE" not in t.take()  # lazy: batches in the background
        # its own view answers: no request (whether the background mkdir has reached the
        # service yet is up to the loop's scheduling, so the test does not look there)
        assert (await lazy.stat("/out/sub")).st_ino
        assert not {"LOOKUP", "GETATTR"} & set(t.take())
        await lazy.rename("/out/sub/f1", "/strictdir/moved")  # strict: waits for the create first
        assert await strict.read_bytes("/strictdir/moved") == b"l"
        await lazy.sync()
        assert len(await strict.listdir("/out/sub")) == 9
    run(t, setup=setup, mode_kw={"scope": "tree"})


def test_core_default_stays_strict_mode():
    async def go():
        eng = LocalEngine(1)
        core = Core(MetaClient(eng, ROOT), MemoryChunks())
        assert type(core.mode) is StrictMode
        await eng.close()
    asyncio.run(go())


# ---------------------------------------------------------------- delegations
def test_grants_are_refilled_in_the_background_and_released_at_close():
    async def t(lazy, t, strict, eng):
        await lazy.mkdir("/g")
        for i in range(3000):
            await lazy.core.mknod((await lazy.stat("/g")).st_ino, f"n{i}".encode(), stat.S_IFREG | 0o644)
        await lazy.sync()
        assert t.counts["DELEGATE"] >= 1
        assert len(await strict.listdir("/g")) == 3000
        await lazy.close()
        for s in eng.services:
            assert list(s.store.kv.scan_prefix(b"G")) == []  # released
    run(t, nshards=1)


def test_fsync_of_a_file_and_of_a_directory_are_barriers():
    async def t(lazy, t, strict, eng):
        await lazy.mkdir("/b")
        f = await lazy.open("/b/f", "wb")
        await f.write(b"data")
        await f.fsync()
        assert await strict.read_bytes("/b/f") == b"data"
        await lazy.mkdir("/b/sub")
        await lazy.core.fsyncdir((await lazy.stat("/b")).st_ino)
        assert await strict.isdir("/b/sub")
        await f.close()
    run(t)


def test_root_has_id_one_and_mode_names():
    assert LazyMode().name == "lazy" and LazyMode(scope="tree").name != "lazy"
    assert ROOT_INO == 1


def test_set_lazy_marks_a_tree_lazy_for_clients_in_the_default_mode():
    async def t(lazy, t, strict, eng):
        await lazy.mkdir("/out")
        await lazy.set_lazy("/out")  # through the default mode's own client: sent at once
        assert (await strict.getattr("/out")).flags & FLAG_LAZY
        t.take()
        await lazy.makedirs("/out/a")
        await lazy.write_bytes("/out/a/f", b"lazy")
        assert "CREATE" not in t.take()  # batched in the background (when they reach the
        # service is up to the loop's scheduling: the test does not look there before sync)
        await lazy.sync()
        assert await strict.read_bytes("/out/a/f") == b"lazy"
        assert (await strict.getattr("/out/a")).flags & FLAG_LAZY  # inherited
        await lazy.set_lazy("/out/a", False)
        await lazy.write_bytes("/out/a/g", b"strict")
        assert t.take().get("CREATE") == 1 and await strict.read_bytes("/out/a/g") == b"strict"
        with pytest.raises(NotADirectoryError):
            await lazy.set_lazy("/out/a/f")
    run(t, mode_kw={"scope": "tree"})


def test_lazyio_ranks_write_disjoint_ranges_of_one_file_propagate_and_synchronize():
    """Two lazy clients (ranks) write halves of one file; propagate() pushes each one's writes,
    synchronize() shows the other's to an open file, without a barrier of the whole client."""
    async def t(lazy, t, strict, eng):
        other = AsyncClient(MetaClient(eng, ROOT), lazy.core.data, mode=LazyMode())
        try:
            await strict.write_bytes("/ckpt", b"")
            half = 300_000
            fa = await lazy.open("/ckpt", "r+b")
            fb = await other.open("/ckpt", "r+b")
            await fa.pwrite(0, b"a" * half)
            await fb.pwrite(half, b"b" * half)
            await fa.propagate()
            await fb.propagate()
            assert (await strict.stat("/ckpt")).st_size == 2 * half
            await fa.synchronize()
            assert await fa.pread(0, 2 * half) == b"a" * half + b"b" * half
            await fa.close()
            await fb.close()
            assert await strict.read_bytes("/ckpt") == b"a" * half + b"b" * half
        finally:
            await other.close()
    run(t)


def test_listing_and_lookup_agree_with_getattr_on_what_this_client_changed():
    """The entry is the service's (its change evicted), the inode's attributes still this
    client's: readdirplus and a lookup give those, as getattr does (tar -c compares them)."""
    async def t(lazy, t, strict, eng):
        await lazy.mkdir("/d")
        await lazy.write_bytes("/d/f", b"x")
        await lazy.sync()
        await lazy.mkdir("/other")  # a mutation: the view forgets what expired (ttl 0)
        await lazy.chmod("/d/f", 0o600)  # queued: the inode's attributes are this client's
        mine = await lazy.core.getattr((await lazy.stat("/d/f")).st_ino)
        (e,) = await lazy.readdir("/d")
        assert e.attr == mine
        assert await lazy.core.lookup((await lazy.stat("/d")).st_ino, b"f", fresh=True) == mine
    run(t, mode_kw={"ttl": 0})
