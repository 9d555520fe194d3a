"""`dfs bench ...`: the benchmarks. Each subcommand owns its options (argparse inside)."""

from __future__ import annotations

import click


@click.group()
def bench() -> None:
    """Measure dfs (benchmarks, never tests)."""


@bench.command("service", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                            "help_option_names": []})
@click.pass_context
def service(ctx: click.Context) -> None:
    """Metadata service: creates/stats per shard, single vs batch RPCs, group commit, failover.

    Options are those of `dfs bench service --help`."""
    from dfs.bench.meta_service import main

    raise SystemExit(main(list(ctx.args)))


@bench.command("data", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                         "help_option_names": []})
@click.pass_context
def data(ctx: click.Context) -> None:
    """Data path: sequential write and read through the file I/O core next to the local disk.

    Options are those of `dfs bench data --help`."""
    from dfs.bench.data_path import main

    raise SystemExit(main(list(ctx.args)))


@bench.command("inline", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                           "help_option_names": []})
@click.pass_context
def inline(ctx: click.Context) -> None:
    """Small files inline in the metadata vs on data servers. Options: `dfs bench inline --help`."""
    from dfs.bench.inline import main

    raise SystemExit(main(list(ctx.args)))
