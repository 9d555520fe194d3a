"""`dfs admin add-meta-shard [--start]`: a new shard's Raft group (started from
the cluster file, or here with --start) joins the map once it has a leader;
new directories then spread over it.
"""

from __future__ import annotations

import asyncio
import time

import click

from dfs.cli.admin.common import (
    config_path,
    creds_for,
    get_pb_map,
    leader_view,
    map_entry,
    mgmt_command,
    progress_bar,
    settled_leader,
    statuses,
)


async def _shard_ready(creds, shard: int, reps) -> str | None:
    """Every replica of the new shard answers as a replica of ``shard`` and they agree on a
    leader: that leader's address, else None."""
    view = await leader_view(creds, reps, False)
    lead = settled_leader(view)
    if lead is None or any(v is None for v in view.values()):
        return None
    from dfs.local import probe

    st = await probe.replica_status(creds, lead)
    return lead if st is not None and st.shard == shard and st.role == "leader" else None


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
        creds = creds_for(path)
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
    """Shard ``sid`` of the cluster file into the map once its group has a leader; then until
    every replica answering has the new map."""
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
    await mgmt_command(cfg, creds, ["add_shard", sid, [map_entry(r) for r in reps]])
    m = await get_pb_map(cfg, creds)
    epoch = m.epoch if m is not None else 0
    # Every replica learns the new map by itself (MapFollower) within seconds, and at once when
    # a request routed with the new map reaches it; wait for that to say "done" honestly.
    addrs = [r.address for s in cfg.shards[:sid + 1] for r in s.replicas]
    bar = progress_bar(len(addrs), "replicas with the new map", "replica", progress)
    try:
        while True:
            sts = await statuses(creds, addrs)
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


@click.command("add-meta-shard")
@click.option("--start", is_flag=True, help="a cluster on this machine: append the shard to the cluster file "
                                            "(free loopback ports) and start its replicas here")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.pass_obj
def add_meta_shard(obj, start: bool, timeout: float) -> None:
    """Add metadata shards: the [[shards]] entries of the cluster file that the cluster map does
    not have yet (their replicas started), or with --start a new one started here, join the
    cluster map once their Raft group has a leader. New directories are then placed over the
    new count; existing ones stay where they are."""
    path = config_path(obj["cluster"], obj["data"])
    for sid in asyncio.run(add_shard(path, creds_for(path), timeout, start)):
        click.echo(f"shard {sid} serves: new directories are placed over {sid + 1} shards")
