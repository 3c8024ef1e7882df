"""``scheduler status ID`` and ``scheduler tasks``: task status, read from the database.

Both only read, and never migrate: on an uninitialised database they say
which command to run. ``--json`` prints the line shape of docs/contracts.md
(CLI), one object per line, for scripts and tests.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from scheduler.cli import columns
from scheduler.cli.common import MAX_LIMIT, CliError, cli, emit_json, terminal_safe, terminal_width
from scheduler.cli.db import store_session
from scheduler.models import TaskStatus
from scheduler.store import TaskRecord

# Ids and the message give way to a narrow terminal; status, node, reason and times never do.
TASK_COLUMNS = (
    columns.Column("task", floor=8),
    columns.Column("status"),
    columns.Column("node"),
    columns.Column("reason"),
    columns.Column("attempts", align_right=True),
    columns.Column("updated"),
    columns.Column("message", floor=12),
)


@cli.command("status")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
def status_cmd(task_id: str, as_json: bool) -> None:
    """The status of task TASK_ID: where it runs, or why it failed."""
    with store_session(migrate=False) as store:
        record = store.get_task(task_id)
    if record is None:
        raise CliError(f"unknown task {task_id!r}")
    if as_json:
        emit_json(record.to_detail_json())
        return
    click.echo(terminal_safe(render_status(record)))


@cli.command("tasks")
@click.option(
    "--status",
    "status",
    type=click.Choice([s.value for s in TaskStatus]),
    default=None,
    help="only this status",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_LIMIT),
    default=None,
    help="at most N tasks (most recent first)",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per task")
@click.option("--wide", is_flag=True, help="never shorten a field, even to fit the terminal")
def tasks_cmd(status: str | None, limit: int | None, as_json: bool, wide: bool) -> None:
    """Tasks, most recently updated first.

    Every status is listed, ``released`` included. On a terminal, long ids
    and messages are shortened to fit its width (``--wide``: never); piped
    or redirected, every row is whole.
    """
    with store_session(migrate=False) as store:
        records = store.list_tasks(TaskStatus(status) if status else None, limit)
    if as_json:
        for record in records:
            emit_json(record.to_json())
        return
    if not records:
        click.echo("no tasks" + (f" with status {status}" if status else ""))
        return
    now = datetime.now(UTC)
    rows = [
        [
            r.task_id,
            r.status.value,
            r.node or "-",
            r.reason.value if r.reason else "-",
            str(r.attempts),
            _ago(r.updated_at, now),
            terminal_safe(r.message or ""),
        ]
        for r in records
    ]
    for line in columns.render(TASK_COLUMNS, rows, None if wide else terminal_width()):
        click.echo(line)


def render_status(r: TaskRecord) -> str:
    """The human-readable form of one task."""
    node = f"{r.node} ({r.node_ip})" if r.node and r.node_ip else (r.node or "-")
    lines = [
        f"task:      {r.task_id}",
        f"status:    {r.status.value}",
        f"node:      {node}",
    ]
    if r.reason:
        lines.append(f"reason:    {r.reason.value}")
    lines += [
        f"message:   {r.message or '-'}",
        f"attempts:  {r.attempts}",
        f"strategy:  {r.strategy or '-'}",
        f"created:   {r.created_at.isoformat(timespec='seconds')}",
        f"updated:   {r.updated_at.isoformat(timespec='seconds')}",
    ]
    if r.request:
        req = r.request
        cpu, mem, disk = req.get("requested_cpu"), req.get("requested_memory"), req.get("requested_disk", 0)
        want = f"{cpu} vCPU, {mem} MiB, {disk} GiB"
        extras = [f"pool {req.get('requested_pool', 'default')}"]
        if req.get("dedicated"):
            extras.append("dedicated")
        if req.get("required_tags"):
            extras.append("tags " + ",".join(map(str, req["required_tags"])))
        lines.append(f"request:   {want}; {', '.join(extras)}")
    return "\n".join(lines)


def _ago(when: datetime, now: datetime) -> str:
    seconds = max(0.0, (now - when).total_seconds())
    if seconds < 60:
        return f"{seconds:.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h ago"
    return when.date().isoformat()
