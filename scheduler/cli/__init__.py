"""The ``scheduler`` command line: one click group, one module per verb family.

Every command turns expected failures (bad config, unreachable database or
broker, bad input files) into a one-line error and a non-zero exit, never a
traceback: ``ConfigError`` and friends are caught in :func:`main`.
"""

from __future__ import annotations

import sys

import click

from scheduler.cli.common import CliError, cli


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CliError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["cli", "main"]
