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
* ``drain-target T`` / ``drain-server ID``: the target(s) become "draining";
  mgmt gives each of their chains a replacement target, which resyncs from the
  chain's tail like a returning target and then serves, and only then is the
  drained target taken out of the chain. Progress: chains left.
* ``remove-target T [--force]``: forget a target; refused while a chain would
  keep fewer serving targets than its replica count without it.
* ``add-data-server ID``: a data server appended to the cluster file joins the
  map (it serves once it heartbeats); ``rebalance`` then moves chain
  memberships onto the least used targets (each a one-membership drain).
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
    if len(reps) < 2:
        raise click.ClickException("a group of one replica has no other replica to lead")
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


# ------------------------------------------------------------------ data targets

async def get_map(cfg, creds, timeout: float = 2.0):
    """The cluster map of the first mgmt replica that answers (a ``dfs.rpc.transport.ClusterMap``)."""
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg
    from dfs.rpc.transport import ClusterMap

    for m in cfg.mgmt:
        async with creds.channel(m.address) as ch:
            try:
                rep = await pbg.MgmtServiceStub(ch).GetClusterMap(pb.GetClusterMapRequest(), timeout=timeout)
            except grpc.aio.AioRpcError:
                continue
        if rep.status == 0:
            return ClusterMap.from_pb(rep.map)
    return None


async def mgmt_command(cfg, creds, cmd: list, deadline: float = DEADLINE) -> list:
    """Run one admin command of the cluster map on the mgmt leader (following NOT_LEADER,
    retrying while no leader answers); returns what it answered beyond the epoch."""
    import grpc
    import msgpack

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg
    from dfs.common import errors as err

    req = pb.AdminRequest(command=msgpack.packb(cmd))
    md = _internal(cfg)
    end = time.monotonic() + deadline
    addrs = [m.address for m in cfg.mgmt]
    hint = None
    while time.monotonic() < end:
        for addr in ([hint] if hint else []) + addrs:
            async with creds.channel(addr) as ch:
                try:
                    rep = await pbg.MgmtServiceStub(ch).Admin(req, metadata=md, timeout=10.0)
                except grpc.aio.AioRpcError:
                    continue
            if rep.status == err.NOT_LEADER:
                hint = rep.leader or None
                continue
            if rep.status == 0:
                return msgpack.unpackb(rep.result, raw=False)
            if rep.status in (err.UNAVAILABLE, 11):  # no commit yet (EAGAIN-class): again
                continue
            raise click.ClickException(f"{cmd[0]} refused: {rep.message or rep.status}")
        await asyncio.sleep(0.2)
    raise click.ClickException(f"no mgmt leader accepted {cmd[0]} within {deadline:.0f}s")


def _chains_of(m, tid: int) -> set[int]:
    return {c.id for c in m.chains if tid in c.members}


async def drain(cfg, creds, tids: list[int], timeout: float, progress: bool = True) -> None:
    """Drain ``tids``: mark them draining (mgmt gives each of their chains a replacement
    target) and wait until none is a member of any chain, with a progress bar of chains."""
    from tqdm import tqdm

    m = await get_map(cfg, creds)
    if m is None:
        raise click.ClickException("no mgmt replica answers")
    unknown = [t for t in tids if t not in m.targets]
    if unknown:
        raise click.ClickException(f"no target {unknown[0]} in the cluster map")
    todo = {(t, c) for t in tids for c in _chains_of(m, t)}
    end = time.monotonic() + timeout
    for t in tids:
        stuck = (await mgmt_command(cfg, creds, ["drain", t]))[0]
        if stuck:
            raise click.ClickException(
                f"target {t}: no target can replace it in chains {stuck} (every other target is in the "
                f"chain, draining or offline); add a data server first")
    bar = tqdm(total=len(todo), desc="drain " + ",".join(f"t{t}" for t in tids), unit="chain",
               disable=not progress)
    try:
        done: set = set()
        resubmit = time.monotonic() + 5.0
        while True:
            m = await get_map(cfg, creds)
            if m is not None:
                now_done = {(t, c) for t, c in todo if c not in _chains_of(m, t)}
                bar.update(len(now_done - done))
                done |= now_done
                if all(not _chains_of(m, t) for t in tids):
                    return
            if time.monotonic() > end:
                left = sorted(c for t in tids for c in (_chains_of(m, t) if m else ()))
                raise click.ClickException(f"chains {left} still wait for their resync after {timeout:.0f}s "
                                           f"(the drain goes on; run the command again to keep watching)")
            if time.monotonic() > resubmit:  # safe to repeat: gives replacements to chains that lack one
                for t in tids:
                    await mgmt_command(cfg, creds, ["drain", t])
                resubmit = time.monotonic() + 5.0
            await asyncio.sleep(0.2)
    finally:
        bar.close()


def _target_ids(m, *, server: int | None = None, target: int | None = None) -> list[int]:
    if server is not None:
        tids = sorted(tid for tid, t in m.targets.items() if t.server == server)
        if not tids:
            raise click.ClickException(f"data server {server} has no target in the cluster map")
        return tids
    return [target]


@admin.command("drain-target")
@click.argument("target", type=int)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds to wait for the resyncs")
@click.pass_obj
def drain_target(obj, target: int, timeout: float) -> None:
    """Move TARGET out of its chains after re-replicating them elsewhere."""
    from dfs.rpc import auth

    cfg = _config(obj["cluster"], obj["data"])
    creds = auth.remember_config(cfg)
    asyncio.run(drain(cfg, creds, [target], timeout))
    click.echo(f"target {target} drained: it is in no chain (dfs admin remove-target {target} forgets it)")


@admin.command("drain-server")
@click.argument("server", type=int)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds to wait for the resyncs")
@click.pass_obj
def drain_server(obj, server: int, timeout: float) -> None:
    """Drain every target of data server SERVER; afterwards it can be stopped."""
    from dfs.rpc import auth

    cfg = _config(obj["cluster"], obj["data"])
    creds = auth.remember_config(cfg)

    async def go():
        m = await get_map(cfg, creds)
        if m is None:
            raise click.ClickException("no mgmt replica answers")
        tids = _target_ids(m, server=server)
        await drain(cfg, creds, tids, timeout)
        return tids

    tids = asyncio.run(go())
    click.echo(f"data server {server} drained (targets {tids} are in no chain): it can be stopped")


@admin.command("remove-target")
@click.argument("target", type=int)
@click.option("--force", is_flag=True, help="even if a chain keeps fewer serving targets than its replica count")
@click.pass_obj
def remove_target(obj, target: int, force: bool) -> None:
    """Take TARGET out of the cluster map (refused while chains still need it, unless --force)."""
    from dfs.rpc import auth

    cfg = _config(obj["cluster"], obj["data"])
    creds = auth.remember_config(cfg)
    asyncio.run(mgmt_command(cfg, creds, ["remove_target", target, cfg.replicas_per_chain, force]))
    click.echo(f"target {target} is not in the cluster map")


# ------------------------------------------------------------------ growing

async def add_server(cfg, creds, sid: int, timeout: float) -> list[int]:
    """Put data server ``sid`` of the cluster file into the map; wait until its targets serve."""
    try:
        d = cfg.data_server(sid)
    except (KeyError, ValueError, StopIteration, IndexError):
        raise click.ClickException(f"no data server {sid} in the cluster file") from None
    tids = [t.id for t in d.targets]
    await mgmt_command(cfg, creds, ["add_server", sid, d.address, tids])
    end = time.monotonic() + timeout
    while True:
        m = await get_map(cfg, creds)
        if m is not None and all(m.targets.get(t) is not None and m.targets[t].state == "serving" for t in tids):
            return tids
        if time.monotonic() > end:
            raise click.ClickException(
                f"targets {tids} are in the cluster map but data server {sid} does not heartbeat: start it "
                f"(dfs data-server --config CLUSTER_FILE --server {sid}) and run this command again")
        await asyncio.sleep(0.2)


def plan_moves(m) -> list[tuple[int, int, int]]:
    """Chain memberships to move (chain, from target, to target) so that the serving targets'
    chain counts differ by at most one: from the most loaded target to the least loaded, only
    to a target on a server the chain does not use yet, one move per chain, chains with a
    resync in progress left alone."""
    ok = {tid for tid, t in m.targets.items() if t.state in ("serving", "syncing")}
    load = {tid: 0 for tid in ok}
    for c in m.chains:
        for x in c.members:
            if x in load:
                load[x] += 1
    busy = {c.id for c in m.chains if c.syncing or len(c.members) != len(set(c.members))}
    moves = []
    while True:
        best = None
        for hi in sorted(load, key=lambda t: (-load[t], t)):
            for lo in sorted(load, key=lambda t: (load[t], t)):
                if load[hi] - load[lo] <= 1:
                    break
                for c in m.chains:
                    if c.id in busy or hi not in c.members or lo in c.members:
                        continue
                    servers = {m.targets[x].server for x in c.members if x != hi and x in m.targets}
                    if m.targets[lo].server in servers:
                        continue
                    best = (c.id, hi, lo)
                    break
                if best:
                    break
            if best:
                break
        if best is None:
            return moves
        moves.append(best)
        busy.add(best[0])
        load[best[1]] -= 1
        load[best[2]] += 1


async def rebalance(cfg, creds, timeout: float, progress: bool = True) -> list[tuple[int, int, int]]:
    from tqdm import tqdm

    m = await get_map(cfg, creds)
    if m is None:
        raise click.ClickException("no mgmt replica answers")
    moves = plan_moves(m)
    for cid, old, new in moves:
        await mgmt_command(cfg, creds, ["move", cid, old, new])
    end = time.monotonic() + timeout
    bar = tqdm(total=len(moves), desc="rebalance", unit="move", disable=not progress or not moves)
    try:
        done: set = set()
        while moves:
            m = await get_map(cfg, creds)
            if m is not None:
                now = {mv for mv in moves if mv[1] not in m.chains[mv[0]].members}
                bar.update(len(now - done))
                done |= now
                if len(done) == len(moves):
                    break
            if time.monotonic() > end:
                raise click.ClickException(f"{len(moves) - len(done)} moves still wait for their resync after "
                                           f"{timeout:.0f}s (they go on; run the command again to watch)")
            await asyncio.sleep(0.2)
    finally:
        bar.close()
    return moves


@admin.command("add-data-server")
@click.argument("server", type=int)
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="seconds to wait for the server's first heartbeat")
@click.pass_obj
def add_data_server(obj, server: int, timeout: float) -> None:
    """Bring data server SERVER of the cluster file (appended after the cluster was made)
    into the cluster map; it serves once it heartbeats. `dfs admin rebalance` then moves
    chain memberships onto it."""
    from dfs.rpc import auth

    cfg = _config(obj["cluster"], obj["data"])
    creds = auth.remember_config(cfg)
    tids = asyncio.run(add_server(cfg, creds, server, timeout))
    click.echo(f"data server {server} serves (targets {tids}); `dfs admin rebalance` moves chains onto it")


@admin.command("rebalance")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds to wait for the resyncs")
@click.option("--dry-run", is_flag=True, help="print the moves only")
@click.pass_obj
def rebalance_cmd(obj, timeout: float, dry_run: bool) -> None:
    """Move chain memberships from the most used targets to the least used (resync first)."""
    from dfs.rpc import auth

    cfg = _config(obj["cluster"], obj["data"])
    creds = auth.remember_config(cfg)
    if dry_run:
        m = asyncio.run(get_map(cfg, creds))
        if m is None:
            raise click.ClickException("no mgmt replica answers")
        for cid, old, new in plan_moves(m):
            click.echo(f"chain {cid}: target {old} -> target {new}")
        return
    moves = asyncio.run(rebalance(cfg, creds, timeout))
    for cid, old, new in moves:
        click.echo(f"chain {cid}: target {old} -> target {new}")
    click.echo(f"balanced ({len(moves)} moves)")
