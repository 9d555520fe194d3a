"""Command-line entry point (`dfs`). Placeholder: the real CLI replaces this."""
from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="dfs")
def cli() -> None:
    """dfs command-line tool."""


@cli.command()
@click.argument("args", nargs=-1)
def demo(args: tuple[str, ...]) -> None:
    """Run the demo (not implemented yet)."""
    raise click.ClickException("demo is not implemented yet")


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="dfs", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
