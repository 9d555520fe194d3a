"""What every ``dfs admin`` command shares: the cluster file and credentials the
options name, the internal token, the cluster map (first mgmt replica that
answers), mgmt's admin commands on its leader, a group's leader as its
replicas name it, Status of replicas, and the progress bar.

Heavy imports (grpc, the stubs, tqdm) stay inside the functions, as in every
``dfs`` subcommand: ``dfs --help`` loads this module.

May import: dfs.common, dfs.wire, dfs.route, dfs.local (probes), dfs.meta.server (the
internal header's name) and the generated stubs.
"""

from __future__ import annotations

import asyncio

import click

DEADLINE = 30.0


# ------------------------------------------------------------------ the cluster file
def config(cluster: str | None, data: str | None):
    """The cluster file ``--cluster``/``--data`` name (a ClusterConfig); it must be the full one."""
    from dfs.common.config import ClusterConfig

    cfg = ClusterConfig.load(config_path(cluster, data))
    return cfg


def config_path(cluster: str | None, data: str | None) -> str:
    """The cluster file the arguments name (dfs.common.config.locate; membership changes
    rewrite it). A client's copy (mgmt addresses and credentials only) is not enough."""
    from dfs.common.config import locate

    where = locate(cluster, data=data)
    try:
        path = where.require_file()
    except FileNotFoundError as e:
        raise click.ClickException(f"dfs admin needs the cluster file (--cluster FILE or --data DIR): {e}") \
            from None
    if where.cluster_config() is None:
        raise click.ClickException(f"{path} is a client's cluster file: dfs admin needs the servers' one")
    return path


def session(obj: dict):
    """(cluster config, credentials) of the cluster the group's options name."""
    from dfs.wire import auth

    cfg = config(obj["cluster"], obj["data"])
    return cfg, auth.remember_config(cfg)


def creds_for(path: str):
    """The credentials of the cluster file at ``path`` (remembered for its addresses)."""
    from dfs.common.config import ClusterConfig
    from dfs.wire import auth

    return auth.remember_config(ClusterConfig.load(path))


def internal(cfg) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata of an operator's call: the internal token, derived from the Raft password."""
    from dfs.wire.auth import INTERNAL_HEADER

    return ((INTERNAL_HEADER, cfg.internal_token),)


# ------------------------------------------------------------------ mgmt
async def first_map(cfg, creds, timeout: float = 2.0):
    """The protobuf cluster map of the first mgmt replica that answers; None if none does."""
    from dfs.local import probe

    return await probe.first_map(creds, [m.address for m in cfg.mgmt], timeout)


async def get_map(cfg, creds, timeout: float = 2.0):
    """The cluster map of the first mgmt replica that answers (a ``dfs.route.shards.ClusterMap``)."""
    from dfs.common.clustermap import ClusterMap

    m = await first_map(cfg, creds, timeout)
    return None if m is None else ClusterMap.from_pb(m)


async def answered_map(cfg, creds):
    """``get_map``, or the command's error when no mgmt replica answers."""
    m = await get_map(cfg, creds)
    if m is None:
        raise click.ClickException("no mgmt replica answers")
    return m


class PbMap:
    """What the membership commands read of the cluster map: epoch and each shard's replicas."""

    def __init__(self, m) -> None:
        self.epoch = m.epoch
        self.shards = [[{"id": r.id, "address": r.address, "raft": r.raft_address}
                        for r in sorted(s.replicas, key=lambda r: r.id)]
                       for s in sorted(m.shards, key=lambda s: s.shard)]


async def get_pb_map(cfg, creds, timeout: float = 2.0) -> PbMap | None:
    """The cluster map (protobuf, with the replicas' Raft addresses) of the first mgmt replica that
    answers, as ``PbMap``; None if none answers."""
    m = await first_map(cfg, creds, timeout)
    return None if m is None else PbMap(m)


def map_entry(rep) -> dict:
    """A replica as the cluster map's commands take it."""
    return {"id": rep.id, "address": rep.address, "raft": rep.raft}


async def mgmt_command(cfg, creds, cmd: list, deadline: float = DEADLINE) -> list:
    """Run one admin command of the cluster map on the mgmt leader (dfs.route.mgmt: following
    NOT_LEADER, retrying while no leader answers); returns what it answered beyond the epoch."""
    from dfs.common import errors as err
    from dfs.route.mgmt import MgmtAdmin

    admin = MgmtAdmin([m.address for m in cfg.mgmt], cfg.internal_token, creds, deadline=deadline,
                      attempt_timeout=10.0)
    try:
        return await admin.command(cmd)
    except err.Unavailable as e:
        raise click.ClickException(f"no mgmt leader accepted {cmd[0]} within {deadline:.0f}s") from e
    except err.DfsError as e:
        raise click.ClickException(f"{cmd[0]} refused: {e.detail or e}") from None
    finally:
        await admin.close()


async def statuses(creds, addrs: list[str]) -> dict:
    """gRPC address -> the replica's Status (None: no answer)."""
    from dfs.local import probe

    return dict(zip(addrs, await probe.replica_statuses(creds, addrs)))


async def leader_view(creds, reps, mgmt: bool, timeout: float = 2.0) -> dict[str, str | None]:
    """gRPC address -> the leader it names as leader itself ("" if none, None if no answer);
    a replica that leads names itself."""
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg
    from dfs.local import probe

    async def one(r):
        if not mgmt:
            st = await probe.replica_status(creds, r.address, timeout)
            return None if st is None else (r.address if st.role == "leader" else st.leader)
        async with creds.channel(r.address) as ch:
            try:
                rep = await pbg.MgmtServiceStub(ch).GetClusterMap(pb.GetClusterMapRequest(), timeout=timeout)
            except grpc.aio.AioRpcError:
                return None
            return rep.leader

    res = await asyncio.gather(*(one(r) for r in reps))
    return {r.address: x for r, x in zip(reps, res)}


def settled_leader(view: dict[str, str | None]) -> str | None:
    """The leader every replica that answers agrees on (at least a majority answering)."""
    named = [v for v in view.values() if v is not None]
    if len(named) * 2 <= len(view) or not named or len(set(named)) != 1 or not named[0]:
        return None
    return named[0]


# ------------------------------------------------------------------ progress
def progress_bar(total: int, desc: str, unit: str, show: bool = True):
    """A progress bar of ``total`` ``unit``s on stderr (``show=False``: silent), closed by the caller."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not show)
