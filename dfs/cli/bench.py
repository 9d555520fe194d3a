"""`dfs bench ...`: the benchmarks. Each subcommand owns its options (argparse inside
its module), so the arguments are passed through as they are."""

from __future__ import annotations

import importlib

import click


@click.group()
def bench() -> None:
    """Measure dfs (benchmarks, never tests)."""


def _passthrough(name: str, module: str, summary: str) -> None:
    @bench.command(name, help=f"{summary}\n\nOptions are those of `dfs bench {name} --help`.",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                     "help_option_names": []})
    @click.pass_context
    def run(ctx: click.Context) -> None:
        raise SystemExit(importlib.import_module(module).main(list(ctx.args)))


_passthrough("service", "dfs.bench.meta_service",
             "Metadata service: creates/stats per shard, single vs batch RPCs, group commit, failover.")
_passthrough("data", "dfs.bench.data_path",
             "Data path: sequential write and read through the file I/O core next to the local disk.")
_passthrough("inline", "dfs.bench.inline", "Small files inline in the metadata vs on data servers.")
_passthrough("client", "dfs.bench.client_paths",
             "The FUSE mount, the Python library and the local disk: metadata ops, ls -l, small and large reads.")
_passthrough("stress", "dfs.bench.stress",
             "Correctness under load: concurrent clients (and --chaos kills) checked against a model of the namespace.")
_passthrough("meta", "dfs.bench.meta_bench",
             "Metadata stress, mdtest-style: P processes x N files, create/stat/read/rename/unlink, ops/s and latency.")
_passthrough("lazy", "dfs.bench.lazy",
             "Lazy mode: untar through a lazy mount, library creates, visibility delay; strict and local disk.")
_passthrough("ai", "dfs.bench.ai",
             "AI workloads (ls -l, shuffled small reads, checkpoints, model load): library, mount and local disk.")
_passthrough("shards", "dfs.bench.shards",
             "CPU seconds per operation on every process (leaders, followers, mgmt, data, client) "
             "on 1, 2, 4, 8 shards; the share of two-phase commits of real workloads.")
