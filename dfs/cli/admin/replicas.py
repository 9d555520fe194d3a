"""`dfs admin add-meta-replica | remove-meta-replica | replace-meta-replica`.

A shard's Raft group changes one replica at a time, each change recorded in
the map while it is in flight (no other change of that shard starts
meanwhile), refused when it would leave no majority of answering replicas;
the cluster file and the map follow the group. A new replica is waited for
until it has caught up; a leader hands its role over before it leaves.
"""

from __future__ import annotations

import asyncio

import click

from dfs.cli.admin.common import DEADLINE, config_path, creds_for, get_pb_map, map_entry, mgmt_command
from dfs.cli.admin.group import ShardGroup, as_membership, check


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
        check(view, "add", rep.raft, started)
    change = {"op": "add", "add": rep.raft, "remove": None}
    await mgmt_command(cfg, creds, ["member_begin", shard, change])
    if not any(r.raft == rep.raft for r in cfg.shards[shard].replicas):
        _file_add(path, shard, rep)
        echo(f"replica {rep.id} of shard {shard} ({rep.address}, raft {rep.raft}) added to {path}; start it where "
             f"it runs: dfs meta-server --config {path} --shard {shard} --replica {rep.id} --data DIR")
    if rep.raft not in view.members:
        await g.change("add", rep.raft, started=started or await g.started(rep))
        echo(f"shard {shard}: replica {rep.id} ({rep.raft}) joined the Raft group")
    await mgmt_command(cfg, creds, ["member_add", shard, map_entry(rep)])
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
        check(view, "remove", rep.raft)
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
    remove_first = old_in and not new_in and old.raft not in as_membership(view).live()
    if remove_first:
        check(view, "remove", old.raft)
    elif not new_in:
        check(view, "add", new.raft, started)
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
    await mgmt_command(cfg, creds, ["member_add", shard, map_entry(new)])
    await g.wait_caught_up(new, timeout, progress, path)
    _, view = await g.leader_view()
    if old.raft in view.members:
        check(view, "remove", old.raft)
        await g.move_leader_off(old.raft, view, timeout, echo)
        await g.change("remove", old.raft)
        echo(f"shard {shard}: replica {old.id} ({old.raft}) left the Raft group")
    await mgmt_command(cfg, creds, ["member_remove", shard, old.raft])
    if any(r.raft == old.raft for r in cfg.shards[shard].replicas):
        _file_remove(path, shard, old.raft)
    await mgmt_command(cfg, creds, ["member_end", shard, change])
    return old, new


@click.command("add-meta-replica")
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
    path = config_path(obj["cluster"], obj["data"])
    creds = creds_for(path)
    for a in addresses:
        rep = asyncio.run(add_replica(path, creds, shard, a, timeout))
        click.echo(f"shard {shard}: replica {rep.id} ({rep.address}) serves in the group")


@click.command("remove-meta-replica")
@click.option("--shard", type=int, required=True, help="the metadata shard")
@click.argument("replicas", nargs=-1, required=True)
@click.option("--timeout", type=float, default=DEADLINE, show_default=True)
@click.pass_obj
def remove_meta_replica(obj, shard: int, replicas: tuple[str, ...], timeout: float) -> None:
    """Take replicas (ids, or gRPC or Raft addresses) out of SHARD's Raft group, one at a time.
    Refused when the replicas left would not have a majority that answers; a leader hands its
    role to another replica first."""
    path = config_path(obj["cluster"], obj["data"])
    creds = creds_for(path)
    for a in replicas:
        rep = asyncio.run(remove_replica(path, creds, shard, a, timeout))
        if rep is not None:
            click.echo(f"shard {shard}: replica {rep.id if rep.id >= 0 else ''} ({rep.address or rep.raft}) is out "
                       f"of the group: stop its process and delete its data folder")


@click.command("replace-meta-replica")
@click.option("--shard", type=int, required=True, help="the metadata shard")
@click.argument("old")
@click.argument("new")
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="seconds to wait for the new replica to catch up")
@click.pass_obj
def replace_meta_replica(obj, shard: int, old: str, new: str, timeout: float) -> None:
    """Replace replica OLD (id or address) of SHARD by NEW (as for add-meta-replica): the new one
    joins and catches up, then the old one leaves (a dead old replica leaves first)."""
    path = config_path(obj["cluster"], obj["data"])
    creds = creds_for(path)
    o, n = asyncio.run(replace_replica(path, creds, shard, old, new, timeout))
    click.echo(f"shard {shard}: replica {n.id} ({n.address}) replaced replica {o.id} ({o.address}): stop the old "
               f"one's process and delete its data folder")
