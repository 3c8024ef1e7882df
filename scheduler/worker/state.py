"""What the HTTP thread and the metrics may read about a running worker, and what makes it unready.

The worker's thread writes these fields; other threads only read them. The
scalar fields are each one attribute store, atomic in CPython, so a reader
sees either the old or the new value of each. The fleet is the one live,
mutable object: the worker changes it only while holding ``fleet_lock``, and
a reader that walks it (the dashboard, the metrics) holds the lock too,
through :meth:`WorkerState.read_fleet`, so it never sees a half-made
reservation or a dict changing size under its iteration. :meth:`WorkerState.readiness_checks` turns
them into the verdicts ``/readyz`` reports, so the rules of "ready" live next
to the facts they judge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from scheduler.fleet import FleetView

T = TypeVar("T")


@dataclass
class WorkerState:
    """A running worker as other threads see it (fields are updated in place by the worker)."""

    leader: bool = False
    epoch: int = 0
    strategy: str = ""
    broker_connected: bool = False
    committed: int = 0
    groups: int = 0
    last_commit_at: float | None = None
    fleet: FleetView | None = None
    strategy_switches: int = 0
    """Strategy changes applied from the config file."""
    strategy_switches_rejected: int = 0
    """Config file changes refused (invalid file or unknown strategy name)."""
    config_file_valid: bool = True
    """The mounted config file, as last read, loaded (False: invalid, missing or unreadable)."""
    config_restart_required: bool = False
    """The config file changed keys other than ``strategy``, which apply only at start."""
    lease_held: bool = False
    """This replica holds the lease (it may still not consume: see ``consuming``)."""
    consuming: bool = False
    """The leader's consumer is registered on the request queue."""
    not_consuming_why: str = ""
    group_retries: int = 0
    """Times in a row the current batch was requeued because the database failed."""
    last_retry_error: str = ""
    commit_started: float | None = None
    loop_ran_at: float | None = None
    """When the sessions' loop last went round (monotonic): the elector's liveness check reads it."""
    """``time.monotonic()`` when the commit in flight began; None when none is."""
    max_group_retries: int = 3
    commit_stuck_after: float = 30.0
    fleet_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    """Held by the worker while it changes the fleet, and by readers while they walk it."""

    def loop_stall(self, now: float, after: float) -> str | None:
        """Why the sessions' loop counts as stuck at ``now`` (it has not gone round for more than
        ``after`` seconds), or None. While it leads, the loop goes round at least every 0.2 s
        (``process_data_events`` is bounded); before its first round nothing is judged."""
        if self.loop_ran_at is None or now - self.loop_ran_at <= after:
            return None
        return f"the worker's loop has not run for {now - self.loop_ran_at:.0f} s"

    def read_fleet(self, read: Callable[[FleetView], T]) -> T | None:
        """``read(fleet)`` under the fleet lock; None when no fleet is loaded (not leading)."""
        with self.fleet_lock:
            fleet = self.fleet
            return read(fleet) if fleet is not None else None

    def readiness_checks(self, now: float | None = None) -> dict[str, str]:
        """``{"check": "ok" | why not}`` for the worker's own part of ``/readyz``."""
        now = time.monotonic() if now is None else now
        checks: dict[str, str] = {}
        if self.broker_connected and (self.lease_held or self.leader):  # else "broker" already says it
            if self.consuming:
                checks["consumer"] = "ok"
            else:
                checks["consumer"] = f"leader not consuming: {self.not_consuming_why or 'starting'}"
        if self.group_retries > self.max_group_retries:
            checks["commits"] = (
                f"a group was requeued {self.group_retries} times "
                f"(more than {self.max_group_retries}): {self.last_retry_error}"
            )
        else:
            checks["commits"] = "ok"
        started = self.commit_started
        if started is not None and now - started > self.commit_stuck_after:
            checks["commit"] = f"a commit has been running for {now - started:.0f}s"
        else:
            checks["commit"] = "ok"
        return checks


__all__ = ["WorkerState"]
