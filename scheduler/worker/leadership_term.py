"""One leadership term: won, claim the fence and load the fleet; lost, the worker drops both.

Why a module: taking up leadership touches the database twice (the fence
claim, then the fleet) and each failure has its own answer, an explicit
outcome here rather than an exception caught in the loop: a newer leader
holds the fence (:class:`NotLeading`, retry after ``election.retry_period``),
or the database is down (:class:`NotLeading`, retry after a jittered,
doubling backoff that resets on the next good term).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import structlog
from sqlalchemy.exc import SQLAlchemyError

from scheduler.config import Settings
from scheduler.fleet import FleetView
from scheduler.safetext import first_line
from scheduler.store import FencedOut, Store
from scheduler.store.engine import DatabaseUnavailable

log = structlog.get_logger(__name__)

DB_ERRORS = (SQLAlchemyError, DatabaseUnavailable)


@dataclass(frozen=True)
class Term:
    """Leadership taken up: the fence is ours at ``epoch`` and ``fleet`` is loaded."""

    epoch: int
    fleet: FleetView
    inventory_rev: int | None


@dataclass(frozen=True)
class NotLeading:
    """Leadership could not be taken up now; try again in ``retry_in`` seconds."""

    why: str
    retry_in: float
    database_down: bool = False
    """The database did not answer: stand aside for ``retry_in`` so a standby that reaches it can lead."""


class LeadershipTerms:
    """Begins terms for one worker, keeping the database backoff between attempts."""

    def __init__(self, store: Store, settings: Settings, jitter: random.Random) -> None:
        self.store = store
        self.settings = settings
        self.jitter = jitter
        self.db_backoff = settings.worker.reconnect_initial_backoff

    def load_fleet(self) -> FleetView:
        return self.store.load_fleet(
            suspicious_after=self.settings.nodes.suspicious_after,
            offline_after=self.settings.nodes.offline_after,
            defaults=self.settings.capacity_defaults(),
        )

    def begin(self, epoch: int) -> Term | NotLeading:
        """Claim the fence at ``epoch`` and load the fleet.

        The inventory revision is read before the fleet, as the periodic check
        does: a node change landing between the two reads is then seen again
        (a reload too many), where the other order took the new revision with
        a fleet from before it and never picked the change up.
        """
        try:
            self.store.claim_fence(epoch, self.settings.identity)
            rev = self.store.inventory_revision()
            fleet = self.load_fleet()
        except FencedOut as exc:
            log.warning("not leading: a newer leader holds the fence", error=str(exc))
            return NotLeading("a newer leader holds the fence", self.settings.election.retry_period)
        except DB_ERRORS as exc:
            delay = self.next_db_delay()
            log.error(
                "database unavailable while taking leadership",
                error=first_line(exc),
                retry_in=round(delay, 2),
            )
            return NotLeading(f"database unavailable: {first_line(exc)}", delay, database_down=True)
        self.db_backoff = self.settings.worker.reconnect_initial_backoff
        return Term(epoch, fleet, rev)

    def next_db_delay(self) -> float:
        """A jittered wait before the database is tried again; the next one is twice as long."""
        delay = self.db_backoff * self.jitter.uniform(0.5, 1.0)
        self.db_backoff = min(self.db_backoff * 2, self.settings.worker.reconnect_max_backoff)
        return delay

    def db_delay(self) -> float:
        """A jittered wait at the current backoff (after a commit found the database down)."""
        return self.db_backoff * self.jitter.uniform(0.5, 1.0)


__all__ = ["DB_ERRORS", "LeadershipTerms", "NotLeading", "Term"]
