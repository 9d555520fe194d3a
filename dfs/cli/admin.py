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
* ``add-meta-replica --shard S ADDRESS...`` / ``remove-meta-replica --shard S
  REPLICA...`` / ``replace-meta-replica --shard S OLD NEW``: a shard's Raft
  group changes one replica at a time, each change recorded in the map while
  it is in flight (no other change of that shard starts meanwhile), refused
  when it would leave no majority of answering replicas; the cluster file and
  the map follow the group. A new replica is waited for until it has caught
  up; a leader hands its role over before it leaves.
* ``add-meta-shard [--start]``: a new shard's Raft group (started from the
  cluster file, or here with --start) joins the map once it has a leader; new
  directories then spread over it.
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
    from dfs.rpc.transport import ClusterMap

    m = await _first_map(cfg, creds, timeout)
    return None if m is None else ClusterMap.from_pb(m)


async def _first_map(cfg, creds, timeout: float):
    """The protobuf cluster map of the first mgmt replica that answers; None if none does."""
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg

    for m in cfg.mgmt:
        async with creds.channel(m.address) as ch:
            try:
                rep = await pbg.MgmtServiceStub(ch).GetClusterMap(pb.GetClusterMapRequest(), timeout=timeout)
            except grpc.aio.AioRpcError:
                continue
        if rep.status == 0:
            return rep.map
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


# ------------------------------------------------------------------ metadata replicas

def _config_path(cluster: str | None, data: str | None) -> str:
    """The cluster file the arguments name (membership changes rewrite it)."""
    import os

    src = cluster if cluster is not None else data
    if src is None:
        raise click.ClickException("dfs admin needs the cluster file (--cluster FILE or --data DIR)")
    path = os.path.join(src, "cluster.toml") if os.path.isdir(src) else src
    if not os.path.isfile(path):
        raise click.ClickException(f"no cluster file at {path}")
    return path


def parse_replica_addresses(arg: str):
    """``GRPC_HOST:PORT,RAFT_HOST:PORT[,METRICS_HOST:PORT]`` -> (grpc, raft, metrics or None)."""
    from dfs.common.config import check_hostport

    parts = arg.split(",")
    if len(parts) not in (2, 3):
        raise click.ClickException(
            f"a new replica is GRPC_HOST:PORT,RAFT_HOST:PORT[,METRICS_HOST:PORT] (or a replica id of the "
            f"cluster file), not {arg!r}")
    for what, a in zip(("gRPC", "Raft", "metrics"), parts):
        try:
            check_hostport(what, a)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    if parts[0] == parts[1]:
        raise click.ClickException(f"the gRPC and Raft addresses must differ ({parts[0]})")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def _find_replica(cfg, m, shard: int, arg: str):
    """The replica ``arg`` names in shard ``shard`` (an id, or its gRPC or Raft address), from the
    cluster file or else the cluster map; None if neither has it."""
    from dfs.common.config import ReplicaAddr

    reps = list(cfg.shards[shard].replicas) if shard < len(cfg.shards) else []
    if m is not None and shard < len(m.shards):
        known = {r.raft for r in reps}
        reps += [ReplicaAddr(r["id"], r["address"], r["raft"]) for r in m.shards[shard] if r["raft"] not in known]
    for r in reps:
        if (arg.isdigit() and r.id == int(arg)) or arg in (r.address, r.raft):
            return r
    return None


async def get_pb_map(cfg, creds, timeout: float = 2.0):
    """The cluster map (protobuf, with the replicas' Raft addresses) of the first mgmt replica that
    answers, as ``_PbMap``; None if none answers."""
    m = await _first_map(cfg, creds, timeout)
    return None if m is None else _PbMap(m)


class _PbMap:
    """What the membership commands read of the cluster map: epoch and each shard's replicas."""

    def __init__(self, m) -> None:
        self.epoch = m.epoch
        self.shards = [[{"id": r.id, "address": r.address, "raft": r.raft_address}
                        for r in sorted(s.replicas, key=lambda r: r.id)]
                       for s in sorted(m.shards, key=lambda s: s.shard)]


async def _membership_views(creds, md, addrs: list[str], timeout: float = 2.0) -> dict:
    """gRPC address -> its Membership reply (op ""), or None if it does not answer."""
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg

    async def one(addr: str):
        async with creds.channel(addr) as ch:
            try:
                return await pbg.MetaServiceStub(ch).Membership(pb.MembershipRequest(), metadata=md, timeout=timeout)
            except grpc.aio.AioRpcError:
                return None

    res = await asyncio.gather(*(one(a) for a in addrs))
    return dict(zip(addrs, res))


def _as_membership(rep):
    from dfs.consensus.raft import Membership, PeerProgress

    return Membership(rep.self_raft, tuple(rep.members), None, True, rep.pending, rep.last_index, rep.commit_index,
                      tuple(PeerProgress(p.raft, p.connected, p.live, p.match_index) for p in rep.peers))


class ShardGroup:
    """One shard's Raft group as the admin commands see it: the replicas it may ask (cluster
    file and map), its leader, the leader's view of the membership."""

    def __init__(self, cfg, creds, shard: int, m) -> None:
        self.cfg, self.creds, self.shard = cfg, creds, shard
        self.md = _internal(cfg)
        addrs = [r.address for r in cfg.shards[shard].replicas] if shard < len(cfg.shards) else []
        if m is not None and shard < len(m.shards):
            addrs += [r["address"] for r in m.shards[shard]]
        self.addrs = list(dict.fromkeys(addrs))

    def learn(self, address: str) -> None:
        if address not in self.addrs:
            self.addrs.append(address)

    async def leader_view(self, deadline: float = 10.0):
        """(the leader's gRPC address, its Membership reply), waiting up to ``deadline`` for one."""
        end = time.monotonic() + deadline
        while True:
            views = await _membership_views(self.creds, self.md, self.addrs)
            for addr, rep in views.items():
                if rep is not None and rep.status == 1:
                    raise click.ClickException(f"refused: {rep.message}")
                if rep is not None and rep.status == 0 and rep.leader == addr:
                    return addr, rep
            if time.monotonic() > end:
                answering = [a for a, r in views.items() if r is not None]
                raise click.ClickException(f"shard {self.shard}: no leader answers (replicas answering: "
                                           f"{answering or 'none'})")
            await asyncio.sleep(0.1)

    async def change(self, op: str, raft: str, deadline: float = DEADLINE, started: bool = False):
        """One membership change on the leader (following leader changes); its final view."""
        import grpc

        from dfs._proto import meta_pb2 as pb
        from dfs._proto import meta_pb2_grpc as pbg
        from dfs.common import errors as err

        end = time.monotonic() + deadline
        last = ""
        unsure = False  # an attempt timed out: our own change may be the one still pending
        while time.monotonic() < end:
            lead, _ = await self.leader_view(max(1.0, end - time.monotonic()))
            req = pb.MembershipRequest(op=op, raft=raft, timeout=max(1.0, min(10.0, end - time.monotonic())),
                                       started=started)
            async with self.creds.channel(lead) as ch:
                try:
                    rep = await pbg.MetaServiceStub(ch).Membership(req, metadata=self.md, timeout=req.timeout + 5.0)
                except grpc.aio.AioRpcError as e:
                    last, unsure = e.code().name, True
                    await asyncio.sleep(0.1)
                    continue
            if rep.status == 0:
                return rep
            last = rep.message or str(rep.status)
            if rep.status in (err.NOT_LEADER, err.UNAVAILABLE, 11) or (unsure and rep.status == 16):
                # a leader change, no commit yet, or EAGAIN (a new leader's first entry is not
                # applied yet): ask the (new) leader again; a repeat of a done change is a no-op
                unsure = unsure or rep.status in (err.NOT_LEADER, err.UNAVAILABLE)
                await asyncio.sleep(0.1)
                continue
            raise click.ClickException(f"shard {self.shard}: {op} {raft} refused: {last}")
        raise click.ClickException(f"shard {self.shard}: {op} {raft} did not complete within {deadline:.0f}s "
                                   f"({last}); run the command again")

    async def started(self, rep) -> bool:
        """Whether replica ``rep`` answers, as a replica of this shard (a replica of another
        shard at that address is refused)."""
        import grpc

        from dfs._proto import meta_pb2 as pb
        from dfs._proto import meta_pb2_grpc as pbg

        async with self.creds.channel(rep.address) as ch:
            try:
                st = await pbg.MetaServiceStub(ch).Status(pb.ShardStatusRequest(), timeout=2.0)
            except grpc.aio.AioRpcError:
                return False
        if st.shard != self.shard:
            raise click.ClickException(f"{rep.address} is a replica of shard {st.shard}, not of shard {self.shard}")
        return True

    async def move_leader_off(self, raft: str, view, deadline: float = DEADLINE, echo=lambda s: None) -> None:
        """If ``raft`` leads the group, hand the leadership to the most caught-up live replica."""
        import grpc

        from dfs._proto import meta_pb2 as pb
        from dfs._proto import meta_pb2_grpc as pbg

        end = time.monotonic() + deadline
        while True:
            lead, view = await self.leader_view(max(1.0, end - time.monotonic()))
            if view.self_raft != raft:
                return
            live = sorted((p for p in view.peers if p.live), key=lambda p: -p.match_index)
            if not live:
                raise click.ClickException(f"shard {self.shard}: {raft} leads and no other replica answers")
            if time.monotonic() > end:
                raise click.ClickException(f"shard {self.shard}: the leadership did not move off {raft}")
            echo(f"replica {raft} leads shard {self.shard}: moving the leadership to {live[0].raft}")
            req = pb.TransferLeaderRequest(to=live[0].raft, timeout=max(1.0, min(10.0, end - time.monotonic())))
            async with self.creds.channel(lead) as ch:
                try:
                    await pbg.MetaServiceStub(ch).TransferLeader(req, metadata=self.md, timeout=req.timeout + 5.0)
                except grpc.aio.AioRpcError:
                    pass
            await asyncio.sleep(0.1)

    async def wait_caught_up(self, rep, timeout: float, progress: bool, path: str) -> None:
        """Until the leader knows replica ``rep`` (a ReplicaAddr) holds every entry the leader had
        committed when the wait began (Raft's match index; a progress bar of entries)."""
        from tqdm import tqdm

        _, view = await self.leader_view()
        target = view.commit_index
        end = time.monotonic() + timeout
        bar = tqdm(total=target, desc=f"replica {rep.id} catches up", unit="entry", disable=not progress)
        try:
            while True:
                _, view = await self.leader_view(max(1.0, end - time.monotonic()))
                if rep.raft not in view.members:
                    raise click.ClickException(f"replica {rep.id} ({rep.raft}) is no longer in shard {self.shard}'s "
                                               f"group")
                peer = next((p for p in view.peers if p.raft == rep.raft), None)
                match = view.last_index if peer is None else peer.match_index  # None: it leads
                bar.update(max(0, min(match, target) - bar.n))
                if match >= target:
                    return
                if time.monotonic() > end:
                    how = "does not answer" if peer is not None and not peer.live else \
                        f"holds {match} of {target} entries"
                    raise click.ClickException(
                        f"replica {rep.id} ({rep.address}) is in shard {self.shard}'s group but {how} after "
                        f"{timeout:.0f}s. Is it running? (dfs meta-server --config {path} --shard {self.shard} "
                        f"--replica {rep.id} --data DIR). The change stays in flight: run this command again.")
                await asyncio.sleep(0.2)
        finally:
            bar.close()


def _check(view, op: str, raft: str, started: bool = False) -> None:
    from dfs.common import errors as err
    from dfs.consensus.raft import check_change

    try:
        check_change(_as_membership(view), op, raft, started)
    except err.DfsError as e:
        raise click.ClickException(f"refused: {e.detail}") from None


def _new_replica(cfg, m, shard: int, arg: str):
    """The replica an add names: an id already in the cluster file, or addresses (a replica of
    the file with that Raft address, else a new entry with the next id). Checked against
    every other replica's addresses; nothing is written."""
    from dataclasses import replace

    from dfs.common.config import ReplicaAddr, ShardConfig

    s = cfg.shards[shard]
    if arg.isdigit():
        try:
            return s.replica(int(arg))
        except KeyError:
            raise click.ClickException(f"shard {shard} of the cluster file has no replica {arg} (give "
                                       f"GRPC_HOST:PORT,RAFT_HOST:PORT to add one)") from None
    grpc_addr, raft, metrics = parse_replica_addresses(arg)
    for r in s.replicas:
        if r.raft == raft or r.address == grpc_addr:
            if (r.raft, r.address) == (raft, grpc_addr):
                return r
            raise click.ClickException(f"shard {shard} replica {r.id} has {r.address},{r.raft} in the cluster file")
    ids = [r.id for r in s.replicas] + ([r["id"] for r in m.shards[shard]] if m and shard < len(m.shards) else [])
    rep = ReplicaAddr(max(ids, default=-1) + 1, grpc_addr, raft, metrics)
    shards = list(cfg.shards)
    shards[shard] = ShardConfig(shard, s.replicas + (rep,))
    try:
        replace(cfg, shards=tuple(shards))  # validates: addresses used once
    except ValueError as e:
        raise click.ClickException(f"refused: {e}") from None
    return rep


def _file_add(path: str, shard: int, rep) -> None:
    from dfs.common.config import edit_cluster_file, replica_entry

    def edit(d: dict) -> None:
        reps = d["shards"][shard]["replicas"]
        if not any(x["raft"] == rep.raft for x in reps):
            reps.append(replica_entry(rep))

    edit_cluster_file(path, edit)


def _file_remove(path: str, shard: int, raft: str) -> None:
    from dfs.common.config import edit_cluster_file

    def edit(d: dict) -> None:
        reps = d["shards"][shard]["replicas"]
        d["shards"][shard]["replicas"] = [x for x in reps if x["raft"] != raft]

    edit_cluster_file(path, edit)


def _map_entry(rep) -> dict:
    return {"id": rep.id, "address": rep.address, "raft": rep.raft}


async def _setup(path: str, creds, shard: int):
    from dfs.common.config import ClusterConfig

    cfg = ClusterConfig.load(path)
    if not 0 <= shard < len(cfg.shards):
        raise click.ClickException(f"no shard {shard} in the cluster file (it has {len(cfg.shards)})")
    m = await get_pb_map(cfg, creds)
    if m is None:
        raise click.ClickException("no mgmt replica answers")
    if shard >= len(m.shards):
        raise click.ClickException(f"shard {shard} is not in the cluster map yet (dfs admin add-meta-shard)")
    return cfg, m, ShardGroup(cfg, creds, shard, m)


async def add_replica(path: str, creds, shard: int, arg: str, timeout: float, echo=click.echo,
                      progress: bool = True):
    """Add one replica to ``shard``'s group (see ``add-meta-replica``); returns it."""
    cfg, m, g = await _setup(path, creds, shard)
    rep = _new_replica(cfg, m, shard, arg)
    g.learn(rep.address)
    _, view = await g.leader_view()
    started = await g.started(rep)
    if rep.raft not in view.members:
        _check(view, "add", rep.raft, started)
    change = {"op": "add", "add": rep.raft, "remove": None}
    await mgmt_command(cfg, creds, ["member_begin", shard, change])
    if not any(r.raft == rep.raft for r in cfg.shards[shard].replicas):
        _file_add(path, shard, rep)
        echo(f"replica {rep.id} of shard {shard} ({rep.address}, raft {rep.raft}) added to {path}; start it where "
             f"it runs: dfs meta-server --config {path} --shard {shard} --replica {rep.id} --data DIR")
    if rep.raft not in view.members:
        await g.change("add", rep.raft, started=started or await g.started(rep))
        echo(f"shard {shard}: replica {rep.id} ({rep.raft}) joined the Raft group")
    await mgmt_command(cfg, creds, ["member_add", shard, _map_entry(rep)])
    await g.wait_caught_up(rep, timeout, progress, path)
    await mgmt_command(cfg, creds, ["member_end", shard, change])
    return rep


async def remove_replica(path: str, creds, shard: int, arg: str, timeout: float, echo=click.echo):
    """Take one replica out of ``shard``'s group (see ``remove-meta-replica``); returns it."""
    cfg, m, g = await _setup(path, creds, shard)
    rep = _find_replica(cfg, m, shard, arg)
    if rep is None:
        _, view = await g.leader_view()
        if not arg.isdigit():
            from dfs.common.config import check_hostport

            try:
                check_hostport("a replica", arg)
            except ValueError:
                raise click.ClickException(f"a replica is an id or a gRPC or Raft address, not {arg!r}") from None
        if arg not in view.members:  # a repeat (as remove-target of an unknown target)
            echo(f"shard {shard} has no replica {arg} (in the cluster file, the map or the Raft group): "
                 f"nothing to do")
            return None
        from dfs.common.config import ReplicaAddr

        rep = ReplicaAddr(-1, "", arg)  # a Raft member nothing else knows of
    _, view = await g.leader_view()
    if rep.raft in view.members:
        _check(view, "remove", rep.raft)
    change = {"op": "remove", "add": None, "remove": rep.raft}
    await mgmt_command(cfg, creds, ["member_begin", shard, change])
    if rep.raft in view.members:
        await g.move_leader_off(rep.raft, view, timeout, echo)
        await g.change("remove", rep.raft)
        echo(f"shard {shard}: replica {rep.id} ({rep.raft}) left the Raft group")
    await mgmt_command(cfg, creds, ["member_remove", shard, rep.raft])
    if any(r.raft == rep.raft for r in cfg.shards[shard].replicas):
        _file_remove(path, shard, rep.raft)
    await mgmt_command(cfg, creds, ["member_end", shard, change])
    return rep


async def replace_replica(path: str, creds, shard: int, old_arg: str, new_arg: str, timeout: float,
                          echo=click.echo, progress: bool = True):
    """Replace one replica of ``shard`` by a new one (see ``replace-meta-replica``); (old, new)."""
    cfg, m, g = await _setup(path, creds, shard)
    old = _find_replica(cfg, m, shard, old_arg)
    if old is None:
        raise click.ClickException(f"shard {shard} has no replica {old_arg} (in the cluster file or the map)")
    new = _new_replica(cfg, m, shard, new_arg)
    if new.raft == old.raft:
        raise click.ClickException("the new replica is the old one")
    g.learn(new.address)
    _, view = await g.leader_view()
    started = await g.started(new)
    old_in, new_in = old.raft in view.members, new.raft in view.members
    # A live old replica keeps serving until the new one has caught up (add first); a dead one
    # would leave the bigger group short of a majority: it goes first.
    remove_first = old_in and not new_in and old.raft not in _as_membership(view).live()
    if remove_first:
        _check(view, "remove", old.raft)
    elif not new_in:
        _check(view, "add", new.raft, started)
    change = {"op": "replace", "add": new.raft, "remove": old.raft}
    await mgmt_command(cfg, creds, ["member_begin", shard, change])
    if not any(r.raft == new.raft for r in cfg.shards[shard].replicas):
        _file_add(path, shard, new)
        echo(f"replica {new.id} of shard {shard} ({new.address}, raft {new.raft}) added to {path}; start it where "
             f"it runs: dfs meta-server --config {path} --shard {shard} --replica {new.id} --data DIR")
    if remove_first:
        await g.change("remove", old.raft)
        await mgmt_command(cfg, creds, ["member_remove", shard, old.raft])
        echo(f"shard {shard}: replica {old.id} ({old.raft}, not answering) left the Raft group")
    if new.raft not in (await g.leader_view())[1].members:
        await g.change("add", new.raft, started=started or await g.started(new))
        echo(f"shard {shard}: replica {new.id} ({new.raft}) joined the Raft group")
    await mgmt_command(cfg, creds, ["member_add", shard, _map_entry(new)])
    await g.wait_caught_up(new, timeout, progress, path)
    _, view = await g.leader_view()
    if old.raft in view.members:
        _check(view, "remove", old.raft)
        await g.move_leader_off(old.raft, view, timeout, echo)
        await g.change("remove", old.raft)
        echo(f"shard {shard}: replica {old.id} ({old.raft}) left the Raft group")
    await mgmt_command(cfg, creds, ["member_remove", shard, old.raft])
    if any(r.raft == old.raft for r in cfg.shards[shard].replicas):
        _file_remove(path, shard, old.raft)
    await mgmt_command(cfg, creds, ["member_end", shard, change])
    return old, new


def _creds_for(path: str):
    from dfs.common.config import ClusterConfig
    from dfs.rpc import auth

    return auth.remember_config(ClusterConfig.load(path))


@admin.command("add-meta-replica")
@click.option("--shard", type=int, required=True, help="the metadata shard")
@click.argument("addresses", nargs=-1, required=True)
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="seconds to wait for each new replica to catch up")
@click.pass_obj
def add_meta_replica(obj, shard: int, addresses: tuple[str, ...], timeout: float) -> None:
    """Add replicas to SHARD's Raft group, one at a time. Each ADDRESS is
    GRPC_HOST:PORT,RAFT_HOST:PORT[,METRICS_HOST:PORT] (appended to the cluster file with a new
    id) or the id of a replica already in the cluster file. Start each new replica (dfs
    meta-server ... --replica ID) with that cluster file; the command waits until it has
    caught up."""
    path = _config_path(obj["cluster"], obj["data"])
    creds = _creds_for(path)
    for a in addresses:
        rep = asyncio.run(add_replica(path, creds, shard, a, timeout))
        click.echo(f"shard {shard}: replica {rep.id} ({rep.address}) serves in the group")


@admin.command("remove-meta-replica")
@click.option("--shard", type=int, required=True, help="the metadata shard")
@click.argument("replicas", nargs=-1, required=True)
@click.option("--timeout", type=float, default=DEADLINE, show_default=True)
@click.pass_obj
def remove_meta_replica(obj, shard: int, replicas: tuple[str, ...], timeout: float) -> None:
    """Take replicas (ids, or gRPC or Raft addresses) out of SHARD's Raft group, one at a time.
    Refused when the replicas left would not have a majority that answers; a leader hands its
    role to another replica first."""
    path = _config_path(obj["cluster"], obj["data"])
    creds = _creds_for(path)
    for a in replicas:
        rep = asyncio.run(remove_replica(path, creds, shard, a, timeout))
        if rep is not None:
            click.echo(f"shard {shard}: replica {rep.id if rep.id >= 0 else ''} ({rep.address or rep.raft}) is out "
                       f"of the group: stop its process and delete its data folder")


@admin.command("replace-meta-replica")
@click.option("--shard", type=int, required=True, help="the metadata shard")
@click.argument("old")
@click.argument("new")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="seconds to wait for the new replica to catch up")
@click.pass_obj
def replace_meta_replica(obj, shard: int, old: str, new: str, timeout: float) -> None:
    """Replace replica OLD (id or address) of SHARD by NEW (as for add-meta-replica): the new one
    joins and catches up, then the old one leaves (a dead old replica leaves first)."""
    path = _config_path(obj["cluster"], obj["data"])
    creds = _creds_for(path)
    o, n = asyncio.run(replace_replica(path, creds, shard, old, new, timeout))
    click.echo(f"shard {shard}: replica {n.id} ({n.address}) replaced replica {o.id} ({o.address}): stop the old "
               f"one's process and delete its data folder")


# ------------------------------------------------------------------ metadata shards

async def _shard_ready(creds, shard: int, reps) -> str | None:
    """Every replica of the new shard answers as a replica of ``shard`` and they agree on a
    leader: that leader's address, else None."""
    view = await _leader_view(creds, reps, False)
    lead = settled_leader(view)
    if lead is None or any(v is None for v in view.values()):
        return None
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg

    async with creds.channel(lead) as ch:
        try:
            st = await pbg.MetaServiceStub(ch).Status(pb.ShardStatusRequest(), timeout=2.0)
        except grpc.aio.AioRpcError:
            return None
    return lead if st.shard == shard and st.role == "leader" else None


def _start_local_shard(path: str, echo) -> None:
    """Append the next shard to a local cluster's file (loopback, free ports) and start its
    replicas as background processes, recorded in the folder's pids.json if it has one."""
    import os

    from dfs.local import pids
    from dfs.local.cluster import LocalCluster

    c = LocalCluster(os.path.dirname(os.path.abspath(path)))
    if os.path.basename(path) != "cluster.toml" or os.path.abspath(c.config_path) != os.path.abspath(path):
        raise click.ClickException("--start needs the cluster.toml of a local cluster's folder")
    hosts = {a.rsplit(":", 1)[0] for s in c.cfg.shards for r in s.replicas for a in (r.address, r.raft)}
    if not hosts <= {"127.0.0.1", "localhost", "::1"}:
        raise click.ClickException("--start only starts replicas of a cluster on this machine (loopback "
                                   "addresses); on other hosts append a [[shards]] entry and start them there")
    ps = c.add_meta_shard()
    if pids.read(c.root) is not None:
        pids.write(c.root, ps, append=True)
    echo(f"shard {ps[0].shard}: started {len(ps)} replicas ({', '.join(p.address for p in ps)}); logs in {c.root}")


async def add_shard(path: str, creds, timeout: float, start: bool, echo=click.echo,
                    progress: bool = True) -> list[int]:
    """Bring the shards of the cluster file that the cluster map does not have yet into it, one
    at a time (with ``start``, first a new one started here); returns their ids."""
    from dfs.common.config import ClusterConfig

    cfg = ClusterConfig.load(path)
    m = await get_pb_map(cfg, creds)
    if m is None:
        raise click.ClickException("no mgmt replica answers")
    n = len(m.shards)
    if len(cfg.shards) < n:
        raise click.ClickException(f"the cluster map has {n} shards, the cluster file {len(cfg.shards)}: "
                                   f"the file is out of date")
    if start:
        await asyncio.to_thread(_start_local_shard, path, echo)
        cfg = ClusterConfig.load(path)
        creds = _creds_for(path)
    elif len(cfg.shards) == n:
        echo(f"every shard of the cluster file is in the cluster map ({n}); to add one, append a [[shards]] entry "
             f"with id = {n} and its replicas, start them (dfs meta-server --config FILE --shard {n} --replica R "
             f"--data DIR) and run this command again (or --start, for a cluster on this machine)")
        return []
    done = []
    for sid in range(n, len(cfg.shards)):
        await _register_shard(cfg, path, creds, sid, timeout, echo, progress)
        done.append(sid)
    return done


async def _register_shard(cfg, path: str, creds, sid: int, timeout: float, echo, progress: bool) -> None:
    from tqdm import tqdm

    reps = cfg.shards[sid].replicas
    end = time.monotonic() + timeout
    while (lead := await _shard_ready(creds, sid, reps)) is None:
        if time.monotonic() > end:
            raise click.ClickException(
                f"shard {sid}'s replicas ({', '.join(r.address for r in reps)}) do not all answer with a leader "
                f"after {timeout:.0f}s: start them (dfs meta-server --config {path} --shard {sid} --replica R "
                f"--data DIR) and run this command again")
        await asyncio.sleep(0.2)
    echo(f"shard {sid}: {len(reps)} replicas answer, replica {next(r.id for r in reps if r.address == lead)} leads")
    await mgmt_command(cfg, creds, ["add_shard", sid, [_map_entry(r) for r in reps]])
    m = await get_pb_map(cfg, creds)
    epoch = m.epoch if m is not None else 0
    # Every replica learns the new map by itself (MapFollower) within seconds, and at once when
    # a request routed with the new map reaches it; wait for that to say "done" honestly.
    addrs = [r.address for s in cfg.shards[:sid + 1] for r in s.replicas]
    bar = tqdm(total=len(addrs), desc="replicas with the new map", unit="replica", disable=not progress)
    try:
        while True:
            sts = await _statuses(creds, addrs)
            answering = [st for st in sts.values() if st is not None]
            bar.update(sum(1 for st in answering if st.epoch >= epoch) - bar.n)
            if answering and all(st.epoch >= epoch for st in answering):
                return
            if time.monotonic() > end:
                stale = sorted(a for a, st in sts.items() if st is not None and st.epoch < epoch)
                raise click.ClickException(f"shard {sid} is in the cluster map (epoch {epoch}) but {stale} have not "
                                           f"seen it after {timeout:.0f}s")
            await asyncio.sleep(0.2)
    finally:
        bar.close()


async def _statuses(creds, addrs: list[str]) -> dict:
    import grpc

    from dfs._proto import meta_pb2 as pb
    from dfs._proto import meta_pb2_grpc as pbg

    async def one(a: str):
        async with creds.channel(a) as ch:
            try:
                return await pbg.MetaServiceStub(ch).Status(pb.ShardStatusRequest(), timeout=2.0)
            except grpc.aio.AioRpcError:
                return None

    return dict(zip(addrs, await asyncio.gather(*(one(a) for a in addrs))))


@admin.command("add-meta-shard")
@click.option("--start", is_flag=True, help="a cluster on this machine: append the shard to the cluster file "
                                            "(free loopback ports) and start its replicas here")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.pass_obj
def add_meta_shard(obj, start: bool, timeout: float) -> None:
    """Add metadata shards: the [[shards]] entries of the cluster file that the cluster map does
    not have yet (their replicas started), or with --start a new one started here, join the
    cluster map once their Raft group has a leader. New directories are then placed over the
    new count; existing ones stay where they are."""
    path = _config_path(obj["cluster"], obj["data"])
    for sid in asyncio.run(add_shard(path, _creds_for(path), timeout, start)):
        click.echo(f"shard {sid} serves: new directories are placed over {sid + 1} shards")
