"""Plans from the committed state, for the CLI and the HTTP API of any replica.

The edge around :mod:`scheduler.planning` (and :mod:`scheduler.rebalance`):
it owns the cached committed fleet (:class:`~scheduler.store.revision.CommittedFleet`),
a placer configured like the worker's, and the clock; the pure modules get
them passed in. Every answer carries the revision of the state it was
computed from. Nothing here writes: a plan reserves nothing, and a
rebalance or drain plan is only published (as move messages) by the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scheduler.config import Settings
from scheduler.models import SchedulingRequest
from scheduler.planning import plan
from scheduler.store.revision import CommittedFleet, Revision
from scheduler.strategies.placer import Placer

if TYPE_CHECKING:
    from scheduler.fleet import FleetView
    from scheduler.store import Store


def placer_for(settings: Settings) -> Placer:
    """A placer configured as the worker's (strategy, weights, seed, dedicated rule, skew)."""
    w = settings.strategy_weights
    return Placer(
        settings.strategy,
        weights=(w.cpu, w.memory, w.disk),
        seed=settings.random_seed,
        dedicated_exclusive=settings.dedicated_nodes_exclusive,
        spread_max_skew=settings.spread_max_skew,
    )


class PlanService:
    """Answers plans (and gives the committed fleet to rebalance and drain) from the database."""

    def __init__(self, store: Store, settings: Settings, *, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.settings = settings
        self.clock = clock
        self.placer = placer_for(settings)
        self.fleet = CommittedFleet(
            store,
            defaults=settings.capacity_defaults(),
            suspicious_after=settings.nodes.suspicious_after,
            offline_after=settings.nodes.offline_after,
        )

    def committed(self) -> tuple[FleetView, Revision]:
        """The committed fleet (shared: read it, or work on a snapshot) and its revision."""
        return self.fleet.get()

    def plan(self, req: SchedulingRequest) -> dict[str, Any]:
        """The ``plan --json`` / ``POST /plan`` body for ``req``."""
        fleet, revision = self.committed()
        return plan(fleet, req, self.placer, now=self.clock()).to_json(str(revision))
