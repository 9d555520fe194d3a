"""`dfs cluster up|down|status`: a local cluster under one data folder.

`up` starts mgmt and the metadata replicas as background processes (their
PIDs go to DATA/pids.json), waits until every shard has a leader and prints
how to connect; running it again on the same folder brings the same cluster
back. `down` stops exactly the processes `up` started.
"""

from __future__ import annotations

import json
import os
import signal
import time

import click

DEFAULT_DATA = os.path.expanduser("~/.local/share/dfs/local")


def _pidfile(data: str) -> str:
    return os.path.join(data, "pids.json")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


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
    from dfs.testing.cluster import LocalCluster

    pf = _pidfile(data)
    if os.path.exists(pf):
        running = [p for p in json.load(open(pf)) if _alive(p["pid"]) and "dfs." in _cmdline(p["pid"])]
        if running:
            raise click.ClickException(f"a cluster is already running from {data} ({len(running)} processes)")
    c = LocalCluster(data, shards=shards, replicas=int(replicas), mgmt_replicas=int(mgmt_replicas),
                     data_servers=data_servers, targets_per_server=targets_per_server)
    t0 = time.monotonic()
    c.start()
    procs = [{"name": p.name, "role": p.role, "shard": p.shard, "replica": p.replica, "address": p.address,
              "pid": p.pid, "log": p.log} for p in c.procs]
    with open(pf, "w") as f:
        json.dump(procs, f, indent=1)
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
    pf = _pidfile(data)
    if not os.path.exists(pf):
        raise click.ClickException(f"no cluster started from {data}")
    procs = json.load(open(pf))
    mine = [p for p in procs if _alive(p["pid"]) and "dfs." in _cmdline(p["pid"])]
    for p in mine:
        os.kill(p["pid"], signal.SIGTERM)
    end = time.monotonic() + 15
    while any(_alive(p["pid"]) for p in mine) and time.monotonic() < end:
        time.sleep(0.05)
    for p in mine:
        if _alive(p["pid"]):
            os.kill(p["pid"], signal.SIGKILL)
    os.unlink(pf)
    click.echo(f"stopped {len(mine)} processes")


@cluster.command()
@click.option("--data", default=DEFAULT_DATA, show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(data: str, as_json: bool) -> None:
    """Show the processes of the local cluster in DATA and their Raft roles."""
    from dfs.testing.cluster import LocalCluster

    pf = _pidfile(data)
    if not os.path.exists(pf):
        raise click.ClickException(f"no cluster started from {data}")
    procs = json.load(open(pf))
    c = LocalCluster(data)
    roles = {}
    for s in range(c.cfg.nshards):
        for p, st in zip(c.meta_procs(s), c._run(c._statuses([_as_alive(x) for x in c.meta_procs(s)]))):
            roles[p.name] = st.role if st else "down"
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
    from dfs.rpc.transport import GrpcTransport

    async def go():
        t = GrpcTransport(mgmt, deadline=3.0, attempt_timeout=1.0)
        try:
            return await t.refresh_map()
        except errors.DfsError:
            return None
        finally:
            await t.close()

    return asyncio.run(go())


class _as_alive:
    """A stand-in Proc that LocalCluster._statuses queries even though another process started it."""

    def __init__(self, p) -> None:
        self.address = p.address
        self.alive = True
