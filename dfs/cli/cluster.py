"""`dfs cluster up|down|status`: a local cluster under one data folder.

`up` starts mgmt and the metadata replicas as background processes (their
PIDs go to DATA/pids.json), waits until every shard has a leader and prints
how to connect; running it again on the same folder brings the same cluster
back. `down` stops exactly the processes `up` started.
"""

from __future__ import annotations

import json
import os
import time

import click

from dfs.common.config import DEFAULT_DATA
from dfs.local import pids
from dfs.local.procs import cmdline as _cmdline
from dfs.local.procs import pid_alive as _alive


__all__ = ["_alive", "_cmdline", "cluster"]  # dfs.cli.mount uses the pid helpers


@click.group()
def cluster() -> None:
    """Start, stop and inspect a local cluster."""


@cluster.command()
@click.option("--data", default=DEFAULT_DATA, show_default=True, type=click.Path(file_okay=False))
@click.option("--shards", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--replicas", default=3, show_default=True, type=click.Choice(["1", "3", "5"]))
@click.option("--mgmt-replicas", default=3, show_default=True, type=click.Choice(["1", "3", "5"]))
@click.option("--data-servers", default=3, show_default=True, type=click.IntRange(0, 64))
@click.option("--targets-per-server", default=1, show_default=True, type=click.IntRange(1, 16))
def up(data: str, shards: int, replicas: str, mgmt_replicas: str, data_servers: int,
       targets_per_server: int) -> None:
    """Start (or restart) the local cluster in DATA."""
    from dfs.local.cluster import LocalCluster

    running = pids.running(pids.read(data) or [])
    if running:
        raise click.ClickException(f"a cluster is already running from {data} ({len(running)} processes)")
    c = LocalCluster(data, shards=shards, replicas=int(replicas), mgmt_replicas=int(mgmt_replicas),
                     data_servers=data_servers, targets_per_server=targets_per_server)
    t0 = time.monotonic()
    c.start()
    pids.write(data, c.procs)
    click.echo(f"cluster {c.cfg.cluster_id} up in {time.monotonic() - t0:.1f}s: "
               f"{c.cfg.nshards} shards x {len(c.cfg.shards[0].replicas)} replicas, {len(c.cfg.mgmt)} mgmt, "
               f"{len(c.cfg.data)} data servers")
    click.echo(f"cluster file: {c.config_path}")
    click.echo(f"connect:      dfs.connect({c.config_path!r})   # or dfs.connect() for the default folder")
    click.echo(f"mount:        dfs mount MOUNTPOINT --cluster {c.config_path}")


@cluster.command()
@click.option("--data", default=DEFAULT_DATA, show_default=True, type=click.Path(file_okay=False))
def down(data: str) -> None:
    """Stop the processes `dfs cluster up` started from DATA."""
    from dfs.local.procs import stop_pids

    recs = pids.read(data)
    if recs is None:
        raise click.ClickException(f"no cluster started from {data}")
    mine = pids.running(recs)
    stop_pids([p["pid"] for p in mine], grace=15.0)
    os.unlink(pids.path(data))
    click.echo(f"stopped {len(mine)} processes")


@cluster.command()
@click.option("--data", default=DEFAULT_DATA, show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(data: str, as_json: bool) -> None:
    """Show the processes of the local cluster in DATA and their Raft roles."""
    import asyncio

    from dfs.local import probe
    from dfs.local.cluster import LocalCluster

    procs = pids.read(data)
    if procs is None:
        raise click.ClickException(f"no cluster started from {data}")
    c = LocalCluster(data)
    # every replica of the cluster file is asked (the processes are not this object's children)
    metas = c.meta_procs()
    sts = asyncio.run(probe.replica_statuses(c.credentials, [p.address for p in metas]))
    roles = {p.name: st.role if st else "down" for p, st in zip(metas, sts)}
    for p in procs:
        p["alive"] = _alive(p["pid"])
        p["raft_role"] = roles.get(p["name"], "")
    cmap = _fetch_map(c.mgmt_addresses) if any(p["alive"] for p in procs if p["role"] == "mgmt") else None
    want = c.cfg.replicas_per_chain if c.cfg.data else 0
    chains = [] if cmap is None else [
        {"id": ch.id, "version": ch.version, "serving": list(ch.targets), "syncing": list(ch.syncing),
         "degraded": len(ch.targets) < want} for ch in cmap.chains]
    targets = [] if cmap is None else [
        {"id": t.id, "server": t.server, "address": t.address, "state": t.state, "total": t.total, "free": t.free}
        for t in sorted(cmap.targets.values(), key=lambda t: t.id)]
    if as_json:
        click.echo(json.dumps({"processes": procs, "targets": targets, "chains": chains,
                               "epoch": cmap.epoch if cmap else None}, indent=1))
        return
    click.echo(f"{'process':<12} {'pid':>8} {'address':<22} {'state':<10}")
    for p in procs:
        click.echo(f"{p['name']:<12} {p['pid']:>8} {p['address']:<22} "
                   f"{(p['raft_role'] or ('up' if p['alive'] else 'down')):<10}")
    if targets:
        click.echo(f"\n{'target':<8} {'server':>6} {'state':<9} {'free GiB':>9}")
        for t in targets:
            click.echo(f"{t['id']:<8} {t['server']:>6} {t['state']:<9} {t['free'] / 2**30:>9.1f}")
        bad = [ch for ch in chains if ch["degraded"] or ch["syncing"]]
        click.echo(f"\nchains: {len(chains)}, degraded: {sum(ch['degraded'] for ch in chains)}")
        for ch in bad:
            click.echo(f"  chain {ch['id']} v{ch['version']}: serving {ch['serving']} syncing {ch['syncing']}"
                       + ("  DEGRADED" if ch["degraded"] else ""))


def _fetch_map(mgmt: list[str]):
    import asyncio

    from dfs.common import errors
    from dfs.route.shards import GrpcTransport

    async def go():
        t = GrpcTransport(mgmt, deadline=3.0, attempt_timeout=1.0)
        try:
            return await t.refresh_map()
        except errors.DfsError:
            return None
        finally:
            await t.close()

    return asyncio.run(go())

