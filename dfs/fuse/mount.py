"""Serving a mount: connect to the cluster, mount, run pyfuse3 on the asyncio loop.

pyfuse3 runs in asyncio mode so its request tasks share one event loop with
grpc.aio (the metadata transport) and the data client. The adapter
(``DfsOperations``) is served over a client ``Core`` whose mode's kernel cache
timeouts are the mount's ``--entry-timeout``, ``--attr-timeout`` and
``--negative-timeout``: strict mode (with lazy trees under directories marked
lazy), or with ``--lazy`` lazy mode for the whole mount (``LazyMode``; a barrier
is fsync of any file or directory, e.g. ``sync MOUNTPOINT``, and the unmount). ``run_mount`` serves in the calling process until
the file system is unmounted (``dfs umount``, ``fusermount3 -u``) or the
process gets SIGINT/SIGTERM.

Imports: pyfuse3, dfs.common and dfs.client only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import pyfuse3
import pyfuse3.asyncio

from dfs.client.connect import dial, map_registry, open_snapshot, with_node_cache
from dfs.client.nodecache import CachedChunks
from dfs.client.core import Core
from dfs.client.lazy import LazyMode
from dfs.client.snapdir import SNAPDIR, SnapChunks, SnapMeta
from dfs.fuse.ops import DfsOperations

log = logging.getLogger("dfs.fuse")

DEFAULT_READ_AHEAD_KB = 4096


def mount_device(mountpoint: str) -> str | None:
    """The "major:minor" of the file system mounted at ``mountpoint`` (an absolute,
    canonical path). From /proc/self/mountinfo, never a stat: in the serving
    process any lookup on the mount point is a FUSE request it would wait for
    itself (before ``main`` runs even os.path.realpath deadlocks)."""
    mp = mountpoint
    dev = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and _unescape(parts[4]) == mp:
                    dev = parts[2]  # the last (topmost) mount wins
    except OSError:
        return None
    return dev


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def is_mounted(mountpoint: str, fstype_prefix: str = "fuse") -> bool:
    """Whether a FUSE file system is mounted at ``mountpoint`` (absolute and canonical)."""
    mp = mountpoint
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                parts = left.split()
                if len(parts) > 4 and _unescape(parts[4]) == mp and right.startswith(fstype_prefix):
                    return True
    except OSError:
        pass
    return False


def raise_read_ahead(mountpoint: str, kb: int) -> bool:
    """Buffered reads reach the file system in read_ahead_kb pieces (128 KiB by
    default, at most ``max_pages``, 1 MiB with libfuse >= 3.6): raise the mount's bdi
    setting (needs root; after INIT: ``_raise_read_ahead_after_init``)."""
    dev = mount_device(mountpoint)
    if dev is None or kb <= 0:
        return False
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kb))
        return True
    except OSError as e:
        log.info("read_ahead_kb of %s not raised: %s", dev, e)
        return False


async def _raise_read_ahead_after_init(mountpoint: str, kb: int) -> None:
    """``raise_read_ahead`` once the kernel has taken INIT's reply, which sets the bdi's
    read-ahead to at most its 128 KiB default (raised before, it fell back: buffered reads
    came in 128 KiB requests, not ``max_pages`` 1 MiB ones). A statfs of the mount point, from
    a thread while ``main`` serves, returns only after INIT."""
    try:
        await asyncio.to_thread(os.statvfs, mountpoint)
    except OSError as e:
        log.info("read_ahead_kb not raised: statfs of %s: %s", mountpoint, e)
        return
    if raise_read_ahead(mountpoint, kb):
        log.info("read_ahead_kb of %s raised to %d", mountpoint, kb)


def mount_options(*, allow_other: bool | None = None, extra: tuple[str, ...] = ()) -> set[str]:
    opts = set(pyfuse3.default_options) | {"fsname=dfs", "subtype=dfs"}
    if "no_default_permissions" not in extra:
        opts.add("default_permissions")
    if allow_other is None:
        allow_other = os.geteuid() == 0
    if allow_other:
        opts.add("allow_other")
    for o in extra:
        if o == "no_default_permissions":
            continue
        if o.startswith("max_read"):
            raise ValueError("max_read breaks the session with pyfuse3 3.5; not supported")
        opts.add(o)
    return opts


async def serve(ops: DfsOperations, mountpoint: str, options: set[str], *, read_ahead_kb: int,
                on_mounted=None, close_timeout: float | None = 30.0) -> None:
    pyfuse3.init(ops, mountpoint, options)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, pyfuse3.terminate)
    raising = loop.create_task(_raise_read_ahead_after_init(mountpoint, read_ahead_kb)) if read_ahead_kb else None
    try:
        log.info("mounted %s (options %s)", mountpoint, ",".join(sorted(options)))
        if on_mounted is not None:
            on_mounted()
        await pyfuse3.main()
    except BaseException:
        log.exception("serving %s failed", mountpoint)
        raise
    finally:
        if raising is not None:
            raising.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        try:
            await asyncio.wait_for(ops.close_all(), close_timeout)
        except Exception as e:  # noqa: BLE001 - unmount anyway
            if getattr(e, "failures", None):  # lazy write-back refused: nobody else will hear of it
                log.error("changes refused at the unmount's barrier: %s", e)
            else:
                log.warning("closing open files at unmount: %s", e)
        pyfuse3.close(unmount=True)
        log.info("unmounted %s", mountpoint)


async def run_mount(mountpoint: str, mgmt: list[str], *, entry_timeout: float = 1.0, attr_timeout: float = 1.0,
                    negative_timeout: float = 1.0, writeback_cache: bool = False, direct_io: bool = False,
                    read_ahead_kb: int = DEFAULT_READ_AHEAD_KB, options: tuple[str, ...] = (),
                    allow_other: bool | None = None, on_mounted=None, auth=None, lazy: bool = False,
                    lazy_delay: float = 1.0, lazy_ttl: float = 10.0, write_budget: int = 256 << 20,
                    snapdir: str = SNAPDIR.decode(), snapshot: str | None = None, cache_dir: str | None = None,
                    on_state=None, cache_size: int | str | None = None) -> None:
    """Connect to the cluster whose mgmt replicas are ``mgmt`` (showing ``auth``, a
    ``dfs.wire.auth.Credentials``) and serve it at ``mountpoint`` until unmounted. ``lazy``:
    the whole mount in lazy mode (``lazy_delay``, ``lazy_ttl``: ``LazyMode``'s ``delay``
    and ``ttl``; ``write_budget``: bytes the closes that do not wait may hold).
    ``snapshot`` (``PATH@NAME``): serve that snapshot read-only, from its manifest
    (dfs/client/snapmode.py); ``on_state(dict)`` is told when the snapshot is found
    deleted, and every few seconds the node cache's counters (``cache``). ``cache_size``:
    keep the chunks of snapshots read in the node-local cache under ``cache_dir``
    (dfs/client/nodecache.py; None or 0: off)."""
    if not os.path.isabs(mountpoint):
        raise ValueError("the mount point must be an absolute path")
    pyfuse3.asyncio.enable()
    opts = mount_options(allow_other=allow_other, extra=options)
    t0 = time.monotonic()
    meta, data = await dial(mgmt, auth=auth)  # as root: the data path runs as the mount
    log.info("connected to %s in %.2fs", mgmt, time.monotonic() - t0)
    watch = report = None
    try:
        data = await with_node_cache(data, cache_dir, cache_size)
        if isinstance(data, CachedChunks):
            log.info("node cache %s, %d bytes at most", data.cache.dir, data.cache.capacity)
            report = asyncio.get_running_loop().create_task(_report_cache(data, on_state))
        if snapshot is not None:
            stats: dict = {}
            core = await open_snapshot(meta, data, snapshot, cache_dir=cache_dir, stats=stats)
            log.info("snapshot %s: manifest from %s, %d inodes, loaded in %.2fs", snapshot, stats.get("source"),
                     len(core.mode.m), stats.get("load_s", 0.0))
            watch = asyncio.get_running_loop().create_task(_watch_snapshot(core.mode, data, on_state))
            opts.add("ro")
        else:
            mode = LazyMode.for_mount(entry_timeout, attr_timeout, negative_timeout, ttl=lazy_ttl, delay=lazy_delay,
                                      budget=write_budget, scope="all" if lazy else "tree")
            smeta = SnapMeta(meta, map_registry(data), snapdir=snapdir)  # PATH/.snap/NAME (dfs/client/snapdir.py)
            core = Core(smeta, SnapChunks(data, smeta.ids), mode)
        ops = DfsOperations(core, writeback_cache=writeback_cache and snapshot is None, direct_io=direct_io)
        # a lazy mount's close is its last barrier: it writes back everything it holds, however
        # long that takes (`dfs umount` bounds its wait for it)
        await serve(ops, mountpoint, opts, read_ahead_kb=read_ahead_kb, on_mounted=on_mounted,
                    close_timeout=None if lazy else 30.0)
    finally:
        for t in (watch, report):
            if t is not None:
                t.cancel()
        await data.close()
        await meta.close()


async def _report_cache(data: CachedChunks, on_state, period: float = 5.0) -> None:
    """The node cache's counters into the mount's state file (`dfs status`), when they change."""
    last = None
    while True:
        now = {**data.stats.as_dict(), "capacity": data.cache.capacity, "dir": data.cache.dir}
        if now != last and on_state is not None:
            try:
                on_state({"cache": now})
            except OSError as e:
                log.debug("mount state: %s", e)
            last = now
        await asyncio.sleep(period)


async def _watch_snapshot(mode, data, on_state, period: float = 5.0) -> None:
    """Learn from the cluster map (mgmt, not the metadata service) when the snapshot a
    snapshot-mode mount serves is deleted, and say so (``on_state``, the log)."""
    registry = map_registry(data)
    told = False
    while True:
        try:
            info = (await registry(True)).get(mode.snap)
            if info is None or info.state != "ready":
                mode.deleted = True
        except Exception as e:  # noqa: BLE001 - mgmt unreachable: try again later
            log.debug("snapshot watch: %s", e)
        if mode.deleted and not told:
            told = True
            log.warning("snapshot %d was deleted: what is loaded stays readable, other reads answer ESTALE",
                        mode.snap)
            if on_state is not None:
                on_state({"snapshot_state": "deleted"})
        await asyncio.sleep(period)
