"""`dfs warmup PATH...`: files (of snapshots, or live at their data version) fetched into this machine's node-local cache ahead of a job.

A thin layer over ``Client.warmup`` (dfs/client/warmup.py): it connects as
``dfs.connect()`` does (--cluster, --mgmt, $DFS_MGMT, $DFS_CLUSTER, `dfs
cluster up`'s folder) with the node cache of --cache-dir (the size recorded
there unless --cache-size), shows a progress bar (files, bytes, rate, ETA) and
prints a summary. Every path that fails is named with the reason; the others
are warmed, and the exit status is 1 then.

Imports: dfs.client (through dfs.connect) only; heavy imports inside functions.
"""

from __future__ import annotations

import json
import sys

import click


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--snapshot", default=None, metavar="NAME",
              help="warm each PATH's snapshot NAME (PATH/.snap/NAME) [default: PATHs are snapshot paths already]")
@click.option("--at", "snapshot_client", default=None, metavar="PATH@NAME",
              help="connect to snapshot NAME of directory PATH (snapshot mode): the PATHs are inside it")
@click.option("--evict", is_flag=True, help="drop the files from the cache instead")
@click.option("--cluster", default=None, help="a cluster.toml, the folder holding it, or host:port addresses")
@click.option("--mgmt", default=None, help="mgmt replica address(es) host:port,host:port")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="a file holding the client token [default: $DFS_TOKEN, $DFS_TOKEN_FILE, the cluster file's]")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="the node cache's directory [default: ~/.cache/dfs]")
@click.option("--cache-size", default="auto", show_default=True, metavar="SIZE",
              help="the cache's bound (e.g. 50G); auto: the size the cache was last given")
@click.option("--parallel", default=16, show_default=True, type=click.IntRange(1), help="chunks fetched at once")
@click.option("--progress/--no-progress", default=None, help="a progress bar [default: on a terminal]")
@click.option("--json", "as_json", is_flag=True, help="a machine-readable summary")
def warmup(paths: tuple[str, ...], snapshot: str | None, snapshot_client: str | None, evict: bool,
           cluster: str | None, mgmt: str | None, token_file: str | None, cache_dir: str | None, cache_size: str,
           parallel: int, progress: bool | None, as_json: bool) -> None:
    """Fetch the files and trees PATH... of a snapshot into this machine's node-local cache
    (shared by its dfs mounts and clients that use the same --cache-dir), or drop them
    (--evict). Running it again fetches only what is missing."""
    import dfs

    try:
        c = dfs.connect(cluster, mgmt=mgmt or None, token_file=token_file, cache_dir=cache_dir,
                        cache_size=cache_size, snapshot=snapshot_client)
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    try:
        show = sys.stderr.isatty() if progress is None else progress
        res = c.warmup(list(paths), snapshot=snapshot, evict=evict, parallel=parallel, progress=show)
        stats = c.cache_stats() or {}
    except OSError as e:
        raise click.ClickException(str(e)) from None
    finally:
        c.close()
    if as_json:
        click.echo(json.dumps({"files": res.files, "bytes": res.bytes, "fetched": res.fetched, "chunks": res.chunks,
                               "seconds": res.seconds, "errors": [{"path": p, "error": w} for p, w in res.errors],
                               "cache": stats}, indent=1))
    else:
        for p, why in res.errors:
            if not show:  # the bar printed them as they came
                click.echo(f"warmup: {p}: {why}", err=True)
        rate = res.fetched / res.seconds if res.seconds > 0 else 0.0
        if evict:
            click.echo(f"evicted {res.files} files ({_size(res.bytes)}): {res.chunks} chunks dropped")
        else:
            click.echo(f"warmed {res.files} files ({_size(res.bytes)}) in {res.seconds:.1f}s: fetched "
                       f"{_size(res.fetched)} in {res.chunks} chunks ({_size(rate)}/s), the rest was cached")
        if res.errors:
            click.echo(f"{len(res.errors)} path(s) failed", err=True)
    if res.errors:
        raise click.exceptions.Exit(1)
