"""``scheduler leader``: who leads now, since when, with which epoch.

Reads the lease once (Kubernetes Lease or the ``leases`` row, as the election
backend says) and prints it. Whether the lease has expired is an estimate on
this machine's wall clock: only the candidates decide expiry, each on its own
monotonic clock, so the answer can differ from theirs by the clock skew.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import click

from scheduler.cli.common import CliError, cli, emit_json, settings_or_exit
from scheduler.elector.factory import read_leader
from scheduler.elector.record import LeaderInfo, LockError


@cli.command("leader")
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
def leader_cmd(as_json: bool) -> None:
    """Show the lease holder, the epoch (lease transitions) and the last renewal."""
    settings = settings_or_exit()
    now = datetime.now(UTC)
    try:
        info = read_leader(settings, environ=os.environ, now=now)
    except LockError as exc:
        message = str(exc)
        # A missing table, not a missing database or role (PostgreSQL says "does not exist" of those
        # too): `db upgrade` creates tables, and only in a database that is there.
        missing = "no such table" in message or 'relation "leases" does not exist' in message
        if missing and "scheduler db upgrade" not in message:
            message += " (run `scheduler db upgrade`)"
        raise CliError(message) from None
    except UnicodeEncodeError:  # undecodable bytes in DATABASE_URL: the driver's traceback, before
        raise CliError("DATABASE_URL is not valid UTF-8 (undecodable bytes in it?)", exit_code=2) from None
    if as_json:
        emit_json(info.as_dict())
        return
    click.echo(render(info, now))


def render(info: LeaderInfo, now: datetime) -> str:
    """The human-readable form of ``info``."""
    if info.backend == "none":
        return "election disabled (backend none): the single replica always leads"
    if info.epoch is None:
        return f"no leader: {info.lock} does not exist yet (no replica has campaigned)"
    lines = [
        f"holder:        {info.holder or '(none: released)'}",
        f"epoch:         {info.epoch}",
        f"acquired:      {_when(info.acquire_time, now)}",
        f"last renewal:  {_when(info.renew_time, now)}",
        f"lease:         {info.lease_duration:g} s, expired: {_expired(info)}",
        f"lock:          {info.lock}",
    ]
    return "\n".join(lines)


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    ago = (now - value).total_seconds()
    stamp = value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if ago < 0:
        # The holder's clock runs ahead of this machine's: the renewal cannot be in the future.
        return f"{stamp} (just now; the holder's clock is {-ago:.1f} s ahead of this machine's)"
    return f"{stamp} ({ago:.1f} s ago)"


def _expired(info: LeaderInfo) -> str:
    if info.holder is None:
        return "yes (released)"
    return ("yes" if info.expired else "no") + " (estimated on this machine's clock)"
