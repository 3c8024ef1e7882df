"""Shared CLI plumbing: the root group, settings loading, one-line errors, JSON lines."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import click

from scheduler.config import ConfigError, Settings, load_settings


class CliError(Exception):
    """An expected failure, shown as ``error: <message>`` with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# Command name -> the module that defines it (with ``@cli.command``). Modules
# are imported only when their command runs, so ``scheduler submit`` does not
# pay for SQLAlchemy, Alembic and the Kubernetes client at start-up.
COMMAND_MODULES: dict[str, str] = {
    "db": "scheduler.cli.db",
    "leader": "scheduler.cli.leader",
    "move": "scheduler.cli.rebalance",
    "nodes": "scheduler.cli.nodes",
    "plan": "scheduler.cli.plan",
    "rebalance": "scheduler.cli.rebalance",
    "release": "scheduler.cli.submit",
    "simulate": "scheduler.cli.simulate",
    "status": "scheduler.cli.tasks",
    "strategies": "scheduler.cli.simulate",
    "submit": "scheduler.cli.submit",
    "tasks": "scheduler.cli.tasks",
    "webhooks": "scheduler.cli.webhooks",
    "worker": "scheduler.cli.worker",
}


class LazyGroup(click.Group):
    """A click group that imports a command's module on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(COMMAND_MODULES[cmd_name])
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="virtflow-scheduler")
def cli() -> None:
    """virtflow-scheduler: place VMs on bare-metal nodes."""


def settings_or_exit(**overrides: Any) -> Settings:
    """Load the configuration or fail with the key that is wrong (exit 2)."""
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise CliError(str(exc), exit_code=2) from None


def emit_json(obj: Any) -> None:
    """One JSON object per line on stdout (the ``--json`` contract of DESIGN.md)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
