"""``scheduler webhooks list`` and ``scheduler webhooks retry``: deliveries for operators.

Reads and revives the ``deliveries`` rows directly; the leader's dispatcher
notices revived deliveries on its next poll (within a second), so neither
command needs the worker to be reachable, only the database. URLs are shown
with passwords and secret-looking query values hidden, like everywhere the
service shows a webhook URL.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from scheduler.cli.common import MAX_LIMIT, CliError, cli, emit_json, terminal_safe
from scheduler.cli.db import store_session
from scheduler.store.deliveries import DEAD, DELIVERED, STATUSES, DeliveryRecord, DeliveryStore
from scheduler.webhooks.policy import display_url


@cli.group("webhooks")
def webhooks_group() -> None:
    """Webhook deliveries: list them, send failed ones again."""


@webhooks_group.command("list")
@click.option("--failed", is_flag=True, help="only deliveries that failed for good (dead)")
@click.option("--status", type=click.Choice(STATUSES), help="only deliveries in this status")
@click.option(
    "--limit",
    type=click.IntRange(min=0, max=MAX_LIMIT),
    default=100,
    show_default=True,
    help="the newest N deliveries; 0 for all",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per delivery")
def list_cmd(failed: bool, status: str | None, limit: int, as_json: bool) -> None:
    """Deliveries, newest first: status, attempts, last error, URL, event type, task id."""
    if failed and status not in (None, DEAD):
        raise click.UsageError("--failed means --status dead; give one or the other")
    with store_session(migrate=False) as store:
        deliveries = DeliveryStore(store.engine)
        records = deliveries.list_deliveries(status=DEAD if failed else status, limit=limit or None)
        counts = deliveries.counts() if not as_json else {}
    if as_json:
        for record in records:
            emit_json(record.to_json(display_url))
        return
    if not records:
        click.echo("no failed deliveries" if failed else "no deliveries")
    else:
        click.echo(terminal_safe(render(records)))
    summary = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))
    click.echo(f"\ntotal: {summary or 'none'}")
    if counts.get(DEAD):
        click.echo("send dead deliveries again with `scheduler webhooks retry ID` or `--all-failed`")


def render(records: list[DeliveryRecord]) -> str:
    """An aligned table, one delivery per line; the last error is cut to fit a terminal."""
    header = ("ID", "STATUS", "ATTEMPTS", "TYPE", "TASK", "URL", "LAST ERROR")
    rows = [
        (
            str(r.id), r.status, str(r.attempts), r.event_type or "-", r.task_id, display_url(r.url),
            _error(r),
        )
        for r in records
    ]  # fmt: skip
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _error(record: DeliveryRecord) -> str:
    if record.status == DELIVERED:
        return "-"
    text = record.last_error or "-"
    if record.last_status_code and not text.startswith("HTTP"):
        text = f"HTTP {record.last_status_code}: {text}"
    return text if len(text) <= 80 else text[:79] + "…"


@webhooks_group.command("retry")
@click.argument("delivery", required=False)
@click.option("--all-failed", is_flag=True, help="every dead delivery")
def retry_cmd(delivery: str | None, all_failed: bool) -> None:
    """Send a dead delivery again: back to pending, attempts reset, due now.

    DELIVERY is a delivery id (from `scheduler webhooks list`) or an event id
    (the webhook-id header a receiver saw: every target of that
    event that is not delivered yet is retried).
    """
    if (delivery is None) == (not all_failed):
        raise click.UsageError("give a delivery ID or --all-failed (one of them)")
    with store_session(migrate=False) as store:
        deliveries = DeliveryStore(store.engine)
        ids = _selected(deliveries, delivery) if delivery is not None else []
        changed = deliveries.retry(ids=ids, all_dead=all_failed, now=datetime.now(UTC))
    if changed == 0:
        click.echo("no dead deliveries to retry" if all_failed else "nothing to retry")
        return
    noun, them = ("delivery", "it") if changed == 1 else ("deliveries", "them")
    click.echo(f"{changed} {noun} queued for another attempt; the leader sends {them} within a second or so")


def _selected(deliveries: DeliveryStore, ref: str) -> list[int]:
    """The delivery ids ``ref`` names, or a one-line error saying why there is nothing to retry."""
    if ref.isascii() and ref.isdigit():  # str.isdigit() is true of "²" too, which int() refuses
        number = int(ref)
        # Past a 64-bit id the driver overflows (a traceback); no delivery has such an id anyway.
        record = deliveries.get(number) if number < 2**63 else None
        if record is None:
            raise CliError(f"no delivery {ref} (see `scheduler webhooks list`)")
        if record.status == DELIVERED:
            when = record.delivered_at.isoformat(timespec="seconds") if record.delivered_at else "earlier"
            raise CliError(f"delivery {ref} was delivered ({when}); nothing to retry")
        return [record.id]
    records = deliveries.of_event(ref)
    if not records:
        raise CliError(f"no delivery or event {ref!r} (see `scheduler webhooks list`)")
    ids = [r.id for r in records if r.status != DELIVERED]
    if not ids:
        raise CliError(f"every delivery of event {ref} was delivered; nothing to retry")
    return ids


@webhooks_group.command("new-secret")
def new_secret_cmd() -> None:
    """Print a fresh random signing secret (whsec_ + base64 of 32 bytes) for webhooks.secrets.

    Give it to the scheduler (WEBHOOK_SECRET) and to every receiver. To
    rotate, configure the new one next to the old one (comma separated):
    each delivery is then signed with both, receivers switch at their pace,
    and the old one is removed last.
    """
    from scheduler.webhooks.signing import new_secret

    click.echo(new_secret())
