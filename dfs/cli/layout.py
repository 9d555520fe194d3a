"""`dfs layout PATH [--chunk-size S] [--stripe N] [--replicas N] [--inline/--no-inline]`.

Shows a directory's layout for new files (a file's own, for a file) or, given
options, changes it (``Client.set_layout``, dfs/client/paths.py): new regular
files and new subdirectories inherit it, existing files keep theirs. The
cluster is found as ``dfs.connect()`` finds it (`dfs snapshot`'s options).
A bad value (a chunk size that is not a power of two in 64 KiB-64 MiB, a
stripe or replica count out of range), a file where a directory is needed, or
a caller who is neither the owner nor root gets the library's error and
changes nothing.

Imports: dfs.client (through dfs.connect) only; heavy imports inside functions.
"""

from __future__ import annotations

import click

from dfs.cli.snapshot import run_connected


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    from dfs.client.nodecache import parse_size

    try:
        return parse_size(text)
    except OSError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@click.argument("path")
@click.option("--chunk-size", default=None, metavar="SIZE", help="bytes per chunk of new files (4M, 64K, ...)")
@click.option("--stripe", default=None, type=int, help="chains a new file spreads its chunks over")
@click.option("--replicas", default=None, type=int, help="copies of each chunk of new files")
@click.option("--inline/--no-inline", default=None,
              help="new small files keep their bytes in the metadata shard (read with one request)")
@click.option("--cluster", default=None, help="a cluster.toml, the folder holding it, or host:port addresses")
@click.option("--mgmt", default=None, help="mgmt replica address(es) host:port,host:port")
@click.option("--token-file", default=None, type=click.Path(dir_okay=False, exists=True),
              help="a file holding the client token [default: $DFS_TOKEN, $DFS_TOKEN_FILE, the cluster file's]")
def layout(path: str, chunk_size: str | None, stripe: int | None, replicas: int | None, inline: bool | None,
           cluster: str | None, mgmt: str | None, token_file: str | None) -> None:
    """Show or change the layout new files under directory PATH get."""
    cs = _size(chunk_size)
    change = any(v is not None for v in (cs, stripe, replicas, inline))
    opts = {"cluster": cluster, "mgmt": mgmt, "token_file": token_file}
    got = run_connected(opts, lambda c: c.set_layout(path, chunk_size=cs, stripe=stripe, replicas=replicas,
                                                     inline=inline) if change else c.layout(path))
    click.echo(f"{path}: {got}")
