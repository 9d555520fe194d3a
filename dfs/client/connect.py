"""Finding a cluster and connecting to it: ``dfs.connect()``, ``dfs.aconnect()``, and ``dial``
(the transports both faces use: the library here, the FUSE mount in dfs/fuse/mount.py).

Imports: dfs.common, dfs.wire, dfs.route and this package only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno as E
import os

from dfs.client.lazy import LazyMode
from dfs.client.meta import MetaClient
from dfs.client.nodecache import CachedChunks, NodeCache, cache_identity, parse_size
from dfs.client.mode import Mode
from dfs.client.paths import AsyncClient
from dfs.client.sync import Client
from dfs.common import errors as err
from dfs.common.config import DEFAULT_DATA, ClientConfig, locate
from dfs.common.records import ROOT, Caller

__all__ = ["DEFAULT_DATA", "aconnect", "connect", "default_caller", "dial", "find_cluster", "find_credentials",
           "make_mode", "find_snapshot", "map_registry", "open_snapshot", "with_node_cache"]


def default_caller() -> Caller:
    """The identity of this process (uid, gid, supplementary groups)."""
    return Caller(os.getuid(), os.getgid(), tuple(g for g in os.getgroups() if g != os.getgid()))


def find_cluster(cluster: str | os.PathLike | None = None, *, data: str | None = None,
                 mgmt: list[str] | str | None = None) -> list[str]:
    """The mgmt addresses to connect to (``dfs.common.config.locate``: ``mgmt``, ``cluster``
    (a cluster file, a folder holding cluster.toml, or host:port addresses), ``data``,
    $DFS_MGMT, $DFS_CLUSTER, then the default folder of `dfs cluster up`).

    A client needs only the ``[[mgmt]]`` addresses, the client token and the TLS CA
    of a cluster file (``dfs.common.config.ClientConfig``): a client machine's copy
    may leave out ``raft_password`` and everything else."""
    return locate(cluster, data=data, mgmt=mgmt).mgmt_addresses()


def find_credentials(cluster: str | os.PathLike | None = None, *, data: str | None = None,
                     mgmt: list[str] | str | None = None, token: str | None = None,
                     token_file: str | None = None):
    """The ``dfs.wire.auth.Credentials`` to show the cluster ``find_cluster`` finds.

    The client token: ``token``, else the file ``token_file``, else $DFS_TOKEN, else
    the file $DFS_TOKEN_FILE, else the cluster file's (``client_token`` or
    ``client_token_file``). TLS: the cluster file's ``[tls] ca``. Given addresses
    only (``mgmt``, $DFS_MGMT), the cluster file's part is what this process
    remembers for those addresses (``dfs.wire.auth.known``), else nothing."""
    from dfs.wire import auth

    explicit = auth.client_token(token, token_file)
    where = locate(cluster, data=data, mgmt=mgmt)
    if where.path is not None:
        return auth.Credentials.from_config(ClientConfig.load(where.path), explicit)
    base = auth.known(where.mgmt_addresses())
    return base if explicit is None else dataclasses.replace(base, token=explicit)


async def dial(mgmt: list[str], *, auth=None, caller: Caller = ROOT, deadline: float = 30.0):
    """(MetaClient, DataClient) of the cluster whose mgmt replicas are ``mgmt``, showing ``auth``
    (``dfs.wire.auth.Credentials``; None: those known for ``mgmt``). ``caller``: the
    MetaClient's own identity (the one the data path's metadata calls run as)."""
    from dfs.route.shards import GrpcTransport

    t = GrpcTransport(mgmt, deadline=deadline, auth=auth)
    try:
        await t.connect()
    except BaseException:
        await t.close()
        raise
    return pair(t, caller, auth=auth)


def pair(t, caller: Caller = ROOT, **data_kw):
    """(MetaClient, DataClient) over connected GrpcTransport ``t``, the DataClient asking the
    MetaClient for the capabilities the data servers want (``cap_source``). ``data_kw``:
    DataClient's (deadline, attempt_timeout, auth, ...)."""
    from dfs.route.data import DataClient

    meta, data = MetaClient(t, caller), DataClient(t.map, t.refresh_map, **data_kw)
    data.set_cap_source(cap_source(meta, data))
    t.cap_sink = data.add_caps  # capabilities that come with opens
    return meta, data


def cap_source(meta, data):
    """``DataClient.cap_source`` asking ``meta`` (the plain MetaClient): a snapshot's read
    capability with the snapshot's directory (from the cluster map's registry); else one for
    the handle the client core holds for the inode, or its lazy session's delegated ids."""
    from dfs.common import caps

    async def source(ino: int, rights: int, snap: int) -> bytes | None:
        if snap:
            info = data.map.snapshots.get(snap) or (await data.refresh(True)).snapshots.get(snap)
            if info is None:
                raise err.Stale(f"snapshot {snap} deleted")
            return await meta.caps(info.root, caps.READ, snap=snap)
        return await meta.caps(ino, rights, handle=data.handle_of(ino), session=data.session())

    return source


def make_mode(consistency: str = "strict", *, ttl: float = 1.0, lazy_delay: float = 1.0,
              lazy_ttl: float = 10.0) -> Mode:
    """The mode ``connect(consistency=...)`` builds: "strict" (close-to-open with ``ttl``
    caches; directories marked lazy, SETLAZY, and their trees are written back lazily) or
    "lazy" (everything written back lazily: changes reach the service within about
    ``lazy_delay``, what came from it is reused for ``lazy_ttl``)."""
    if consistency == "strict":
        return LazyMode(lazy_ttl, delay=lazy_delay, scope="tree", strict_ttl=ttl)
    if consistency == "lazy":
        return LazyMode(lazy_ttl, delay=lazy_delay, scope="all")
    raise ValueError(f"consistency: 'strict' or 'lazy', not {consistency!r}")


async def find_snapshot(meta, data, spec: str):
    """The registry entry of ``PATH@NAME`` (a ready snapshot of directory PATH), else ENOENT."""
    from dfs.client.snapshots import parse_spec

    path, name = parse_spec(spec)
    root = await meta.resolve(path)
    for info in (await map_registry(data)(True)).values():
        if info.root == root.ino and info.name == name and info.state == "ready":
            return info
    raise err.NotFound(f"no snapshot {name!r} of {path}")


async def open_snapshot(meta, data, spec: str, *, cache_dir: str | None = None, stats: dict | None = None,
                        pack_cache: int = 256 << 20):
    """A client ``Core`` in snapshot mode over ``PATH@NAME`` (its manifest loaded: from the
    machine's cache ``cache_dir``, default ~/.cache/dfs, else dfs, else built). ``pack_cache``:
    bytes of packed small files kept in memory."""
    from dfs.client.snapmode import default_cache_dir, snapshot_core
    from dfs.common import caps

    info = await find_snapshot(meta, data, spec)
    core = await snapshot_core(meta, data, info, cache_dir=cache_dir or default_cache_dir(), stats=stats,
                               pack_cache=pack_cache)
    # Capabilities now, in the round trips of the open, so that reads ask the metadata service
    # nothing more: the snapshot's, and reading each pack (live files of the manifest's, 0644),
    # all the packs' in one request per shard. One refused here is asked again by the read
    # that needs it, which reports the refusal.
    packs = sorted({int(i) for i in core.mode.m.packs["ino"]})
    snap, of_packs = await asyncio.gather(meta.caps(info.root, caps.READ, snap=info.epoch),
                                          meta.caps_many(packs, caps.READ), return_exceptions=True)
    got = [snap] + (of_packs if isinstance(of_packs, list) else [])
    data.add_caps([c for c in got if isinstance(c, bytes)])
    return core


def map_registry(data):
    """The snapshot registry as the cluster map has it (``DataClient.map``; ``fresh``: fetched
    anew from mgmt): ``async (fresh) -> {S: SnapshotInfo}``."""
    async def registry(fresh: bool = False) -> dict:
        m = await data.refresh(True) if fresh else data.map
        return dict(m.snapshots)

    return registry


async def aconnect(cluster: str | os.PathLike | None = None, *, data: str | None = None,
                   mgmt: list[str] | str | None = None, caller: Caller | None = None, uid: int | None = None,
                   gid: int | None = None, groups: tuple[int, ...] | None = None, mode: Mode | None = None,
                   ttl: float = 1.0, umask: int = 0o022, deadline: float = 30.0, token: str | None = None,
                   token_file: str | None = None, consistency: str = "strict", lazy_delay: float = 1.0,
                   lazy_ttl: float = 10.0, snapdir: str = ".snap", snapshot: str | None = None,
                   cache_dir: str | None = None, pack_cache: int = 256 << 20,
                   cache_size: int | str | None = None) -> AsyncClient:
    """The asyncio client; arguments as ``connect``."""
    if mode is None:
        mode = make_mode(consistency, ttl=ttl, lazy_delay=lazy_delay, lazy_ttl=lazy_ttl)
    addrs = find_cluster(cluster, data=data, mgmt=mgmt)
    creds = find_credentials(cluster, data=data, mgmt=mgmt, token=token, token_file=token_file)
    if caller is None:
        me = default_caller()
        caller = Caller(me.uid if uid is None else uid, me.gid if gid is None else gid,
                        me.groups if groups is None else tuple(groups))
    meta, dc = await dial(addrs, auth=creds, caller=caller, deadline=deadline)
    try:
        dc = await with_node_cache(dc, cache_dir, cache_size)
        if snapshot is not None:
            core = await open_snapshot(meta, dc, snapshot, cache_dir=cache_dir, pack_cache=pack_cache)
            c = AsyncClient(core=core, umask=umask, on_close=dc.close)
        else:
            c = AsyncClient(meta, dc, mode=mode, umask=umask, on_close=dc.close, registry=map_registry(dc),
                            snapdir=snapdir)
    except BaseException:
        await dc.close()
        await meta.close()
        raise
    c.node_cache = dc if isinstance(dc, CachedChunks) else None
    return c


async def with_node_cache(data, cache_dir: str | None, cache_size: int | str | None):
    """``data`` (a DataClient) behind the node-local cache of ``cache_dir`` (default
    ~/.cache/dfs) bounded to ``cache_size`` bytes (dfs/client/nodecache.py; "auto": the
    size recorded there); ``data`` itself when ``cache_size`` is None or 0 (no cache)."""
    if cache_size == "auto":  # the size the cache directory records (the last one given)
        size = None
    else:
        size = parse_size(cache_size) if cache_size is not None else 0
        if not size:
            return data
    from dfs.client.snapmode import default_cache_dir

    root = cache_dir or default_cache_dir()
    try:
        nc = await asyncio.to_thread(NodeCache, root, cache_identity(data), size)
    except OSError as e:
        raise err.DfsError(f"node cache in {root}: {e.strerror or e}", code=e.errno or E.EIO) from None
    m = getattr(data, "map", None)
    if m is not None:  # what it keeps of deleted snapshots goes (nobody reads it again)
        await asyncio.to_thread(nc.prune, m.snapshot_gone)
    return CachedChunks(data, nc)


def connect(cluster: str | os.PathLike | None = None, *, data: str | None = None, mgmt: list[str] | str | None = None,
            uid: int | None = None, gid: int | None = None, groups: tuple[int, ...] | None = None,
            caller: Caller | None = None, mode: Mode | None = None, ttl: float = 1.0, umask: int = 0o022,
            deadline: float = 30.0, token: str | None = None, token_file: str | None = None,
            consistency: str = "strict", lazy_delay: float = 1.0, lazy_ttl: float = 10.0,
            snapdir: str = ".snap", snapshot: str | None = None, cache_dir: str | None = None,
            pack_cache: int = 256 << 20, cache_size: int | str | None = None) -> Client:
    """A synchronous ``Client`` of a cluster (see ``find_cluster`` for how it is found).

    ``uid``/``gid``/``groups`` (or ``caller``): the identity the service checks permissions
    against (default: this process's). ``consistency``: "strict" (the default: close-to-open,
    caches kept ``ttl`` seconds, ``ttl=0`` disables them; directories marked lazy and their
    trees are written back lazily) or "lazy" (every change is applied here at once and
    written back within about ``lazy_delay`` seconds; others' changes are seen within
    ``lazy_ttl``; ``sync()`` and ``close()`` are the barriers: docs/design/client.md,
    "Lazy mode"); ``mode``: a ``Mode`` instead. ``umask``: applied to created modes.
    ``token``/``token_file``: the client token, instead of $DFS_TOKEN or the cluster file's
    (see ``find_credentials``). ``snapdir``: the name of the virtual directory that holds a
    directory's snapshots (``PATH/.snap/NAME/``, dfs/client/snapdir.py). ``snapshot``
    (``"PATH@NAME"``): a read-only client of that snapshot, its ``/`` the snapshot's root,
    served from its manifest (dfs/client/snapmode.py), cached under ``cache_dir`` (default
    ~/.cache/dfs); ``pack_cache``: bytes of its packed small files kept in memory (when the
    packs fit, each of their 4 MiB chunks is read once whatever the order). ``cache_size``
    (bytes, or "50G"; default None: off): keep the chunks this client reads (of snapshots,
    and of live files by their data version) in the machine's node-local cache under ``cache_dir``, shared by
    its processes and bounded to that size (dfs/client/nodecache.py; ``warmup`` fills it)."""
    if cache_size is not None and cache_size != "auto":
        parse_size(cache_size)  # a bad size fails here, in the calling thread
    kw = dict(data=data, mgmt=mgmt, uid=uid, gid=gid, groups=groups, caller=caller, mode=mode, ttl=ttl,
              umask=umask, deadline=deadline, token=token, token_file=token_file, consistency=consistency,
              lazy_delay=lazy_delay, lazy_ttl=lazy_ttl, snapdir=snapdir, snapshot=snapshot, cache_dir=cache_dir,
              pack_cache=pack_cache, cache_size=cache_size)
    if mode is None:
        make_mode(consistency)  # a bad choice fails here, in the calling thread
    find_cluster(cluster, data=data, mgmt=mgmt)  # fail fast, in the calling thread
    return Client(lambda: aconnect(cluster, **kw))
