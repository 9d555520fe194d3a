"""`dfs admin add-data-server | rebalance`: data servers join and chains spread.

* ``add-data-server ID``: a data server appended to the cluster file joins the
  map (it serves once it heartbeats);
* ``rebalance``: moves chain memberships onto the least used targets (each a
  one-membership drain: the new target resyncs before the old one leaves).
"""

from __future__ import annotations

import asyncio
import time

import click

from dfs.cli.admin.common import answered_map, get_map, mgmt_command, progress_bar, session


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
    """Start the moves ``plan_moves`` finds and wait until every moved-from target left its chain."""
    m = await answered_map(cfg, creds)
    moves = plan_moves(m)
    for cid, old, new in moves:
        await mgmt_command(cfg, creds, ["move", cid, old, new])
    end = time.monotonic() + timeout
    bar = progress_bar(len(moves), "rebalance", "move", progress and bool(moves))
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


@click.command("add-data-server")
@click.argument("server", type=int)
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="seconds to wait for the server's first heartbeat")
@click.pass_obj
def add_data_server(obj, server: int, timeout: float) -> None:
    """Bring data server SERVER of the cluster file (appended after the cluster was made)
    into the cluster map; it serves once it heartbeats. `dfs admin rebalance` then moves
    chain memberships onto it."""
    cfg, creds = session(obj)
    tids = asyncio.run(add_server(cfg, creds, server, timeout))
    click.echo(f"data server {server} serves (targets {tids}); `dfs admin rebalance` moves chains onto it")


@click.command("rebalance")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds to wait for the resyncs")
@click.option("--dry-run", is_flag=True, help="print the moves only")
@click.pass_obj
def rebalance_cmd(obj, timeout: float, dry_run: bool) -> None:
    """Move chain memberships from the most used targets to the least used (resync first)."""
    cfg, creds = session(obj)
    if dry_run:
        for cid, old, new in plan_moves(asyncio.run(answered_map(cfg, creds))):
            click.echo(f"chain {cid}: target {old} -> target {new}")
        return
    moves = asyncio.run(rebalance(cfg, creds, timeout))
    for cid, old, new in moves:
        click.echo(f"chain {cid}: target {old} -> target {new}")
    click.echo(f"balanced ({len(moves)} moves)")
