"""`dfs admin ...`: changing a running cluster (docs/design/operations.md,
"Changing a running cluster"). One module per subcommand family, each a thin
click command over the domain functions next to it:

| module | commands |
|---|---|
| ``leader`` | ``transfer-leader --shard S [--to R]`` / ``--mgmt [--to R]`` |
| ``targets`` | ``drain-target T``, ``drain-server ID``, ``remove-target T [--force]`` |
| ``rebalance`` | ``add-data-server ID``, ``rebalance [--dry-run]`` |
| ``replicas`` | ``add-meta-replica``, ``remove-meta-replica``, ``replace-meta-replica`` (over ``group.ShardGroup``) |
| ``shards`` | ``add-meta-shard [--start]`` |
| ``common`` | the cluster file and credentials, the map, mgmt commands, leaders, statuses, progress |

Every command needs the full cluster file (``--cluster FILE`` or ``--data DIR``
holding cluster.toml): it shows the internal token, derived from the Raft
password, which only servers and operators have. Every command is safe to
repeat: it works out what is left to do from the cluster's state and does
only that.

May import: dfs.common, dfs.wire, dfs.route, dfs.consensus (the membership rules),
dfs.local, dfs.meta.server (a header name) and the generated stubs; never
dfs.testing. Heavy imports stay inside functions (``dfs --help`` loads this).
"""

from __future__ import annotations

import click

from dfs.cli.admin import leader, rebalance, replicas, shards, targets


@click.group()
@click.option("--cluster", default=None, help="the cluster file (or a folder holding cluster.toml)")
@click.option("--data", default=None, type=click.Path(file_okay=False), help="the data folder of `dfs cluster up`")
@click.pass_context
def admin(ctx: click.Context, cluster: str | None, data: str | None) -> None:
    """Change a running cluster (operators: needs the full cluster file)."""
    ctx.obj = {"cluster": cluster, "data": data}


for _cmd in (leader.transfer_leader, targets.drain_target, targets.drain_server_cmd, targets.remove_target,
             rebalance.add_data_server, rebalance.rebalance_cmd, replicas.add_meta_replica,
             replicas.remove_meta_replica, replicas.replace_meta_replica, shards.add_meta_shard):
    admin.add_command(_cmd)
