"""`dfs meta-server` and `dfs mgmt-server`: run one replica in the foreground."""

from __future__ import annotations

import click


@click.command("meta-server", context_settings={"ignore_unknown_options": True})
@click.option("--config", required=True, type=click.Path(exists=True, dir_okay=False), help="cluster file")
@click.option("--shard", required=True, type=int)
@click.option("--replica", required=True, type=int)
@click.option("--data", required=True, type=click.Path(file_okay=False), help="this replica's data folder")
def meta_server(config: str, shard: int, replica: int, data: str) -> None:
    """Run one metadata replica (shard SHARD, replica REPLICA of the cluster file)."""
    from dfs.meta.server import main

    raise SystemExit(main(["--config", config, "--shard", str(shard), "--replica", str(replica), "--data", data]))


@click.command("mgmt-server")
@click.option("--config", required=True, type=click.Path(exists=True, dir_okay=False), help="cluster file")
@click.option("--replica", required=True, type=int)
@click.option("--data", required=True, type=click.Path(file_okay=False))
def mgmt_server(config: str, replica: int, data: str) -> None:
    """Run one replica of the cluster-map (mgmt) group."""
    from dfs.mgmt.server import main

    raise SystemExit(main(["--config", config, "--replica", str(replica), "--data", data]))


@click.command("data-server")
@click.option("--config", required=True, type=click.Path(exists=True, dir_okay=False), help="cluster file")
@click.option("--server", required=True, type=int, help="this data server's id in the cluster file")
def data_server(config: str, server: int) -> None:
    """Run one data server (its targets come from the cluster file)."""
    from dfs.data.server import main

    raise SystemExit(main(["--config", config, "--server", str(server)]))
