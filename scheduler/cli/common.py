"""Shared CLI plumbing: the root group, settings loading, one-line errors, JSON lines."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
from typing import IO, TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

    from scheduler.config import Settings


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


# Command name -> its one-line help, so ``scheduler --help`` lists every command
# without importing any of them (a test checks each line against the command's
# own docstring). A command missing here is imported to read its help.
COMMAND_HELP: dict[str, str] = {
    "db": "The database schema.",
    "leader": "Show the lease holder, the epoch (lease transitions) and the last renewal.",
    "move": "Publish a move of TASK_ID's allocation to NODE (the leader checks every filter on NODE).",
    "nodes": "The node inventory: import, list, cordon, uncordon, drain.",
    "plan": "Which node would be chosen now for a request, the runners-up, and why the others were not.",
    "rebalance": (
        "A migration plan from the committed state: empty whole nodes (pack) or cool the hottest (spread)."
    ),
    "release": "Give tasks' resources back (the VMs are gone).",
    "simulate": "Replay a request trace on a fleet file and report every placement (no broker, no database).",
    "status": "The status of task TASK_ID: where it runs, or why it failed.",
    "strategies": "List the placement strategies and what each does.",
    "submit": "Publish scheduling requests (publisher confirms; prints the task ids).",
    "tasks": "Tasks, most recently updated first.",
    "webhooks": "Webhook deliveries: list them, send failed ones again.",
    "worker": "Run the daemon: campaign for leadership, consume, decide, commit, ack.",
}


class LazyGroup(click.Group):
    """A click group that imports a command's module on first use (click's documented pattern).

    ``format_commands`` is click's own, except that it takes the one-line help
    of a command not yet imported from :data:`COMMAND_HELP`: listing the
    commands would otherwise import every module, SQLAlchemy, Alembic and the
    Kubernetes client with them.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            importlib.import_module(COMMAND_MODULES[cmd_name])
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows: list[tuple[str, str]] = []
        for name in names:
            if name in COMMAND_HELP and name not in self.commands:
                stand_in = click.Command(name, help=COMMAND_HELP[name])  # shortened exactly as click does
                rows.append((name, stand_in.get_short_help_str(limit)))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="virtflow-scheduler")
def cli() -> None:
    """virtflow-scheduler: place VMs on bare-metal nodes."""


_TERMINAL_UNSAFE = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
"""Control characters but tab and newline, bidirectional overrides and isolates, lone surrogates."""


def terminal_safe(text: str) -> str:
    """``text`` with what could drive or disguise a terminal escaped (``\\x1b``, ``\\u202e``); lines kept.

    Why: an error names what the input held, and input comes from files an
    operator did not write: a fleet file's node name or top-level key with
    an escape sequence (``\\x1b[31m``, a title change, a hyperlink) reached
    the terminal raw through ``nodes import``'s error (click strips such
    sequences only when standard error is not a terminal), and a
    right-to-left override showed a name other than the one refused. A
    task's stored message names a request's unknown field as sent: the
    worker escapes its control characters, not a U+202E, which then turned
    ``status``, ``tasks`` and ``submit --wait`` rows around.
    """
    if not _TERMINAL_UNSAFE.search(text):
        return text
    return _TERMINAL_UNSAFE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


def settings_or_exit(**overrides: Any) -> Settings:
    """Load the configuration or fail with the key that is wrong (exit 2)."""
    from scheduler.config import ConfigError, load_settings  # pydantic: only for commands that need it

    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise CliError(str(exc), exit_code=2) from None


def terminal_width() -> int | None:
    """The terminal's width in columns when stdout is one (``COLUMNS`` wins), else None: never cut."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


MAX_LIMIT = 1_000_000_000
"""The largest ``--limit`` a listing takes: past 2**63 the database driver overflows (a traceback)."""

PIPED_WIDTH = 4096
"""Console width for output that is not a terminal: wide enough that no table cuts or wraps a row."""


def make_console(**kwargs: Any) -> Console:
    """A rich console for stdout: the terminal's width, or :data:`PIPED_WIDTH` when piped (rich says 80)."""
    from rich.console import Console

    width = terminal_width()
    return Console(width=PIPED_WIDTH if width is None else None, **kwargs)


def emit_json(obj: Any) -> None:
    """One JSON object per line on stdout (the ``--json`` contract of docs/contracts.md, CLI)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")


def open_lines(path: str) -> IO[bytes]:
    """``path`` opened for :func:`scheduler.jsonlines.json_lines` (``-`` is stdin), or why it cannot be."""
    if path == "-":
        if sys.stdin is None:  # descriptor 0 closed when the process started (``<&-``)
            raise CliError("-: standard input is closed")
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # closed by the caller
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from None
