"""`dfs admin transfer-leader`: a Raft group's leader hands its role over.

``--shard S [--to R]`` / ``--mgmt [--to R]``: the group's leader hands its role
to replica R (or the most caught-up one) with Raft's TimeoutNow; the command
returns once the new leader answers as leader and every other replica names it.
"""

from __future__ import annotations

import asyncio
import time

import click

from dfs.cli.admin.common import DEADLINE, internal, leader_view, session, settled_leader


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
    if len(reps) < 2:
        raise click.ClickException("a group of one replica has no other replica to lead")
    md = internal(cfg)
    end = time.monotonic() + deadline
    old = None
    while time.monotonic() < end:
        lead = settled_leader(await leader_view(creds, reps, mgmt))
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


@click.command("transfer-leader")
@click.option("--shard", type=int, default=None, help="the metadata shard")
@click.option("--mgmt", "mgmt", is_flag=True, help="the mgmt group instead of a shard")
@click.option("--to", "to", type=int, default=None, help="the replica id to lead (default: the most caught-up other)")
@click.option("--timeout", type=float, default=DEADLINE, show_default=True)
@click.pass_obj
def transfer_leader(obj, shard: int | None, mgmt: bool, to: int | None, timeout: float) -> None:
    """Move a Raft group's leadership; waits until the new leader serves."""
    if (shard is None) == (not mgmt):
        raise click.UsageError("give exactly one of --shard S and --mgmt")
    cfg, creds = session(obj)
    if shard is not None and not 0 <= shard < len(cfg.shards):
        raise click.ClickException(f"no shard {shard} (the cluster has {len(cfg.shards)})")
    lead = asyncio.run(transfer(cfg, creds, None if mgmt else shard, to, timeout, echo=click.echo))
    reps = cfg.mgmt if mgmt else cfg.shard(shard).replicas
    rid = next(r.id for r in reps if r.address == lead)
    click.echo(f"{'mgmt' if mgmt else f'shard {shard}'}: replica {rid} ({lead}) leads")
