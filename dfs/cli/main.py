"""The `dfs` command. One module per subcommand; this file only assembles them."""

from __future__ import annotations

import click

from dfs.cli import admin as admin_cmd
from dfs.cli import bench as bench_cmd
from dfs.cli import cluster as cluster_cmd
from dfs.cli import demo as demo_cmd
from dfs.cli import layout as layout_cmd
from dfs.cli import mount as mount_cmd
from dfs.cli import servers as servers_cmd
from dfs.cli import snapshot as snapshot_cmd
from dfs.cli import status as status_cmd
from dfs.cli import warmup as warmup_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dfs")
def cli() -> None:
    """dfs: a metadata-scalable distributed file system for AI data pipelines."""


cli.add_command(demo_cmd.demo)
cli.add_command(bench_cmd.bench)
cli.add_command(cluster_cmd.cluster)
cli.add_command(status_cmd.status)
cli.add_command(admin_cmd.admin)
cli.add_command(servers_cmd.meta_server)
cli.add_command(servers_cmd.mgmt_server)
cli.add_command(servers_cmd.data_server)
cli.add_command(mount_cmd.mount)
cli.add_command(mount_cmd.umount)
cli.add_command(snapshot_cmd.snapshot)
cli.add_command(warmup_cmd.warmup)
cli.add_command(layout_cmd.layout)


def main(argv: list[str] | None = None) -> int:
    try:
        # without standalone mode click returns a command's ``Exit`` code instead of raising it
        rv = cli.main(args=argv, prog_name="dfs", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return rv if isinstance(rv, int) else 0
