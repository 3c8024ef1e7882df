"""What the HTTP thread and the metrics may read about a running worker, and what makes it unready.

The worker's thread writes these fields; other threads only read them (each
field is one attribute store, atomic in CPython, so a reader sees either the
old or the new value of each). :meth:`WorkerState.readiness_checks` turns
them into the verdicts ``/readyz`` reports, so the rules of "ready" live next
to the facts they judge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from scheduler.fleet import FleetView


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
    extra: dict[str, Any] = field(default_factory=dict)
    lease_held: bool = False
    """This replica holds the lease (it may still not consume: see ``consuming``)."""
    consuming: bool = False
    """The leader's consumer is registered on the request queue."""
    not_consuming_why: str = ""
    group_retries: int = 0
    """Times in a row the current group was requeued because the database failed."""
    last_retry_error: str = ""
    commit_started: float | None = None
    """``time.monotonic()`` when the commit in flight began; None when none is."""
    max_group_retries: int = 3
    commit_stuck_after: float = 30.0

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
