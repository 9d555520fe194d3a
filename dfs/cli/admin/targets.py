"""`dfs admin drain-target | drain-server | remove-target`: data targets leave.

* ``drain-target T`` / ``drain-server ID``: the target(s) become "draining";
  mgmt gives each of their chains a replacement target, which resyncs from the
  chain's tail like a returning target and then serves, and only then is the
  drained target taken out of the chain. Progress: chains left.
* ``remove-target T [--force]``: forget a target; refused while a chain would
  keep fewer serving targets than its replica count without it.
"""

from __future__ import annotations

import asyncio
import time

import click

from dfs.cli.admin.common import answered_map, get_map, mgmt_command, progress_bar, session


def _chains_of(m, tid: int) -> set[int]:
    return {c.id for c in m.chains if tid in c.members}


async def drain(cfg, creds, tids: list[int], timeout: float, progress: bool = True) -> None:
    """Drain ``tids``: mark them draining (mgmt gives each of their chains a replacement
    target) and wait until none is a member of any chain, with a progress bar of chains."""
    m = await answered_map(cfg, creds)
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
    bar = progress_bar(len(todo), "drain " + ",".join(f"t{t}" for t in tids), "chain", progress)
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


async def drain_server(cfg, creds, server: int, timeout: float, progress: bool = True) -> list[int]:
    """Drain every target data server ``server`` has in the cluster map; returns their ids."""
    m = await answered_map(cfg, creds)
    tids = sorted(tid for tid, t in m.targets.items() if t.server == server)
    if not tids:
        raise click.ClickException(f"data server {server} has no target in the cluster map")
    await drain(cfg, creds, tids, timeout, progress)
    return tids


@click.command("drain-target")
@click.argument("target", type=int)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds to wait for the resyncs")
@click.pass_obj
def drain_target(obj, target: int, timeout: float) -> None:
    """Move TARGET out of its chains after re-replicating them elsewhere."""
    cfg, creds = session(obj)
    asyncio.run(drain(cfg, creds, [target], timeout))
    click.echo(f"target {target} drained: it is in no chain (dfs admin remove-target {target} forgets it)")


@click.command("drain-server")
@click.argument("server", type=int)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="seconds to wait for the resyncs")
@click.pass_obj
def drain_server_cmd(obj, server: int, timeout: float) -> None:
    """Drain every target of data server SERVER; afterwards it can be stopped."""
    cfg, creds = session(obj)
    tids = asyncio.run(drain_server(cfg, creds, server, timeout))
    click.echo(f"data server {server} drained (targets {tids} are in no chain): it can be stopped")


@click.command("remove-target")
@click.argument("target", type=int)
@click.option("--force", is_flag=True, help="even if a chain keeps fewer serving targets than its replica count")
@click.pass_obj
def remove_target(obj, target: int, force: bool) -> None:
    """Take TARGET out of the cluster map (refused while chains still need it, unless --force)."""
    cfg, creds = session(obj)
    asyncio.run(mgmt_command(cfg, creds, ["remove_target", target, cfg.replicas_per_chain, force]))
    click.echo(f"target {target} is not in the cluster map")
