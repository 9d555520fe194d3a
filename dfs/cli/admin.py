"""`dfs admin ...`: changing a running cluster (docs/design/operations.md,
"Changing a running cluster").

Every command needs the full cluster file (``--cluster FILE`` or ``--data DIR``
holding cluster.toml): it shows the internal token, derived from the Raft
password, which only servers and operators have. Every command is safe to
repeat: it works out what is left to do from the cluster's state and does
only that.

* ``transfer-leader --shard S [--to R]`` / ``transfer-leader --mgmt [--to R]``:
  the group's leader hands its role to replica R (or the most caught-up one)
  with Raft's TimeoutNow; the command returns once the new leader answers as
  leader and every other replica names it.
"""

from __future__ import annotations

import asyncio
import time

import click

DEADLINE = 30.0


def _config(cluster: str | None, data: str | None):
    from dfs.cli.status import _cluster_file

    cfg = _cluster_file(cluster, data)
    if cfg is None:
        raise click.ClickException("dfs admin needs the cluster file (--cluster FILE or --data DIR)")
    return cfg


def _internal(cfg) -> tuple[tuple[str, str], ...]:
    from dfs.meta.server import INTERNAL_HEADER

    return ((INTERNAL_HEADER, cfg.internal_token),)


@click.group()
@click.option("--cluster", default=None, help="the cluster file (or a folder holding cluster.toml)")
@click.option("--data", default=None, type=click.Path(file_okay=False), help="the data folder of `dfs cluster up`")
@click.pass_context
def admin(ctx: click.Context, cluster: str | None, data: str | None) -> None:
    """Change a running cluster (operators: needs the full cluster file)."""
    ctx.obj = {"cluster": cluster, "data": data}


# ------------------------------------------------------------------ transfer-leader

async def _leader_view(creds, reps, mgmt: bool, timeout: float = 2.0) -> dict[str, str | None]:
    """gRPC address -> the leader it names as leader itself ("" if none, None if no answer);
    a replica that leads names itself."""
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg

    async def one(r):
        async with creds.channel(r.address) as ch:
            try:
                if mgmt:
                    rep = await pbg.MgmtServiceStub(ch).GetClusterMap(pb.GetClusterMapRequest(), timeout=timeout)
                    return rep.leader
                st = await pbg.MetaServiceStub(ch).Status(pb.ShardStatusRequest(), timeout=timeout)
                return r.address if st.role == "leader" else st.leader
            except grpc.aio.AioRpcError:
                return None

    res = await asyncio.gather(*(one(r) for r in reps))
    return {r.address: x for r, x in zip(reps, res)}


def settled_leader(view: dict[str, str | None]) -> str | None:
    """The leader every replica that answers agrees on (at least a majority answering)."""
    named = [v for v in view.values() if v is not None]
    if len(named) * 2 <= len(view) or not named or len(set(named)) != 1 or not named[0]:
        return None
    return named[0]


async def transfer(cfg, creds, shard: int | None, to: int | None, deadline: float = DEADLINE,
                   echo=lambda s: None) -> str:
    """Move the leadership of shard ``shard`` (None: mgmt) to replica ``to`` (None: any
    other); returns the gRPC address of the leader serving at the end."""
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg
    from dfs.common import errors as err

    mgmt = shard is None
    reps = list(cfg.mgmt if mgmt else cfg.shard(shard).replicas)
    by_addr = {r.address: r for r in reps}
    if to is not None and not any(r.id == to for r in reps):
        raise click.ClickException(f"no replica {to} in {'mgmt' if mgmt else f'shard {shard}'}")
    want = next((r for r in reps if r.id == to), None)
    md = _internal(cfg)
    end = time.monotonic() + deadline
    old = None
    while time.monotonic() < end:
        lead = settled_leader(await _leader_view(creds, reps, mgmt))
        if lead is None:
            await asyncio.sleep(0.1)
            continue
        if old is None:
            old = lead
            echo(f"leader: replica {by_addr[lead].id} ({lead})")
        if (want is not None and lead == want.address) or (want is None and lead != old):
            return lead
        target = want or next(r for r in reps if r.address != lead)
        req = pb.TransferLeaderRequest(to="" if want is None else target.raft,
                                       timeout=max(1.0, min(10.0, end - time.monotonic())))
        async with creds.channel(lead) as ch:
            stub = pbg.MgmtServiceStub(ch) if mgmt else pbg.MetaServiceStub(ch)
            try:
                rep = await stub.TransferLeader(req, metadata=md, timeout=req.timeout + 5.0)
            except grpc.aio.AioRpcError as e:
                echo(f"transfer: {e.code().name}; retrying")
                continue
        if rep.status not in (0, err.NOT_LEADER):
            if rep.status == 1:
                raise click.ClickException(f"refused: {rep.message}")
            echo(f"transfer: {rep.message or rep.status}; retrying")
        # then wait until every replica that answers names the new leader (next turn of the loop)
    raise click.ClickException(f"leadership did not move within {deadline:.0f}s")


@admin.command("transfer-leader")
@click.option("--shard", type=int, default=None, help="the metadata shard")
@click.option("--mgmt", "mgmt", is_flag=True, help="the mgmt group instead of a shard")
@click.option("--to", "to", type=int, default=None, help="the replica id to lead (default: the most caught-up other)")
@click.option("--timeout", type=float, default=DEADLINE, show_default=True)
@click.pass_obj
def transfer_leader(obj, shard: int | None, mgmt: bool, to: int | None, timeout: float) -> None:
    """Move a Raft group's leadership; waits until the new leader serves."""
    from dfs.rpc import auth

    if (shard is None) == (not mgmt):
        raise click.UsageError("give exactly one of --shard S and --mgmt")
    cfg = _config(obj["cluster"], obj["data"])
    if shard is not None and not 0 <= shard < len(cfg.shards):
        raise click.ClickException(f"no shard {shard} (the cluster has {len(cfg.shards)})")
    creds = auth.remember_config(cfg)
    lead = asyncio.run(transfer(cfg, creds, None if mgmt else shard, to, timeout, echo=click.echo))
    reps = cfg.mgmt if mgmt else cfg.shard(shard).replicas
    rid = next(r.id for r in reps if r.address == lead)
    click.echo(f"{'mgmt' if mgmt else f'shard {shard}'}: replica {rid} ({lead}) leads")
