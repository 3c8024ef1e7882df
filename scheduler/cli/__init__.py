"""The ``scheduler`` command line: one click group, one module per verb family.

Every command turns expected failures (bad config, unreachable database or
broker, bad input files) into a one-line error and a non-zero exit, never a
traceback: ``ConfigError`` and friends are caught in :func:`main`.
"""

from __future__ import annotations

import sys

import click

from scheduler.cli.common import CliError, cli


def _register() -> None:
    # Each module adds its commands to ``cli`` on import.
    # --- command modules (one line each) ---
    from scheduler.cli import db as _db  # noqa: F401
    from scheduler.cli import leader as _leader  # noqa: F401
    from scheduler.cli import nodes as _nodes  # noqa: F401
    from scheduler.cli import simulate as _simulate  # noqa: F401
    from scheduler.cli import submit as _submit  # noqa: F401
    from scheduler.cli import tasks as _tasks  # noqa: F401
    from scheduler.cli import webhooks as _webhooks  # noqa: F401
    from scheduler.cli import worker as _worker  # noqa: F401
    # --- end command modules ---


def main() -> None:
    """Console-script entry point."""
    _register()
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
