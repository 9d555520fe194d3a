"""`dfs snapshot create|list|delete|diff`: snapshots of a directory, from the command line.

A thin layer over the library's snapshot commands (``Client.snapshot_*``,
dfs/client/snapshots.py): it finds the cluster as ``dfs.connect()`` does
(--cluster, --mgmt, $DFS_MGMT, $DFS_CLUSTER, `dfs cluster up`'s folder), runs
one command and prints the result. Errors are the library's (a bad name, a
name taken, an unknown snapshot, a path that is not a directory) and change
nothing. Reading a snapshot is ``PATH/.snap/NAME/`` (the library, the mount)
or ``dfs mount --snapshot PATH@NAME``.

Imports: dfs.client (through dfs.connect) only; heavy imports inside functions.
"""

from __future__ import annotations

import datetime
import json

import click


def run_connected(o: dict, fn):
    """``fn(client)`` on a client connected by ``o``'s cluster, mgmt and token_file options;
    an OSError (the library's refusal) becomes the command's error message."""
    import dfs

    try:
        c = dfs.connect(o["cluster"], mgmt=o["mgmt"] or None, token_file=o["token_file"])
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    try:
        return fn(c)
    except OSError as e:
        raise click.ClickException(str(e)) from None
    finally:
        c.close()


def _run(ctx: click.Context, fn):
    return run_connected(ctx.obj, fn)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.group()
@click.option("--cluster", default=None, help="a cluster.toml, the folder holding it, or host:port addresses")
@click.option("--mgmt", default=None, help="mgmt replica address(es) host:port,host:port")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="a file holding the client token [default: $DFS_TOKEN, $DFS_TOKEN_FILE, the cluster file's]")
@click.pass_context
def snapshot(ctx: click.Context, cluster: str | None, mgmt: str | None, token_file: str | None) -> None:
    """Create, list, delete and compare snapshots of a directory."""
    ctx.obj = {"cluster": cluster, "mgmt": mgmt, "token_file": token_file}


@snapshot.command()
@click.argument("path")
@click.argument("name")
@click.option("--manifest", is_flag=True, help="also build the manifest snapshot-mode clients load")
@click.pass_context
def create(ctx: click.Context, path: str, name: str, manifest: bool) -> None:
    """Snapshot directory PATH as NAME (readable as PATH/.snap/NAME)."""
    info = _run(ctx, lambda c: c.snapshot_create(path, name, manifest=manifest))
    click.echo(f"created snapshot {info.name} of {info.path or path} (epoch {info.epoch})")


@snapshot.command("list")
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def list_(ctx: click.Context, path: str | None, as_json: bool) -> None:
    """The snapshots of directory PATH (every snapshot without it)."""
    snaps = _run(ctx, lambda c: c.snapshot_list(path))
    if as_json:
        click.echo(json.dumps([{"epoch": i.epoch, "name": i.name, "path": i.path, "root": i.root, "state": i.state,
                                "created": i.created, "exclusive": i.exclusive, "shared": i.shared}
                               for i in snaps], indent=2))
        return
    if not snaps:
        click.echo("no snapshots")
        return
    click.echo(f"{'EPOCH':>7}  {'NAME':<24} {'STATE':<9} {'CREATED':<20} {'EXCLUSIVE':>10} {'SHARED':>10}  PATH")
    for i in snaps:
        when = datetime.datetime.fromtimestamp(i.created / 1e9).strftime("%Y-%m-%d %H:%M:%S") if i.created else "-"
        click.echo(f"{i.epoch:>7}  {i.name:<24} {i.state:<9} {when:<20} {_size(i.exclusive):>10} "
                   f"{_size(i.shared):>10}  {i.path}")


@snapshot.command()
@click.argument("path")
@click.argument("name")
@click.pass_context
def delete(ctx: click.Context, path: str, name: str) -> None:
    """Delete snapshot NAME of PATH. A snapshot-mode client using it keeps what it has loaded;
    its reads of what the data servers no longer keep answer ESTALE."""
    _run(ctx, lambda c: c.snapshot_delete(path, name))
    click.echo(f"deleted snapshot {name} of {path}")


@snapshot.command()
@click.argument("path")
@click.argument("a")
@click.argument("b", required=False)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def diff(ctx: click.Context, path: str, a: str, b: str | None, as_json: bool) -> None:
    """What changed under PATH from snapshot A to snapshot B (or to now): one line per path,
    '+' added, '-' removed, 'M' modified."""
    d = _run(ctx, lambda c: c.snapshot_diff(path, a, b))
    if as_json:
        click.echo(json.dumps({"added": d.added, "removed": d.removed, "modified": d.modified}, indent=2))
        return
    rows = sorted([(p, "+") for p in d.added] + [(p, "-") for p in d.removed] + [(p, "M") for p in d.modified])
    for p, k in rows:
        click.echo(f"{k} {p}")
