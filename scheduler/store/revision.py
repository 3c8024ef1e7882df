"""The committed revision of the fleet, and a fleet view cached by it.

Why a revision: a plan (``POST /plan``) is answered by any replica from the
committed state, and loading 10,000 nodes and 200,000 allocations for every
plan would take a second each. The revision names the committed state in
three numbers read with one cheap statement each: the inventory counter
(bumped by every import, cordon and uncordon), the newest allocation id
(grows with every placement and every move) and the number of active
allocations (falls with every release). Any committed change moves at least
one of them: without an insert the newest id stays and only releases can
happen, which lower the count. So two equal revisions mean the same
inventory and the same allocations, and a cached view keyed by it is exact.

Written ``<inventory>.<newest allocation>.<active>`` in answers, so a
client can tell whether two plans saw the same state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from scheduler.store.engine import READ_ONLY_OPTION
from scheduler.store.schema import INVENTORY_REVISION, allocations, revisions

if TYPE_CHECKING:
    from scheduler.fleet import CapacityDefaults, FleetView
    from scheduler.store.store import Store

_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Revision:
    """The committed state's name; equal revisions mean equal inventories and allocations."""

    inventory: int
    newest_allocation: int
    active: int

    def __str__(self) -> str:
        return f"{self.inventory}.{self.newest_allocation}.{self.active}"


def committed_revision(store: Store) -> Revision:
    """The revision of what is committed now (one read transaction, three indexed lookups)."""
    with store.engine.connect() as conn:
        conn.execution_options(**{READ_ONLY_OPTION: True})
        with conn.begin():
            inventory = conn.execute(
                select(revisions.c.value).where(revisions.c.name == INVENTORY_REVISION)
            ).scalar_one_or_none()
            newest = conn.execute(select(func.max(allocations.c.id))).scalar_one_or_none()
            active = conn.execute(
                select(func.count()).select_from(allocations).where(allocations.c.released_at.is_(None))
            ).scalar_one()
    return Revision(int(inventory or 0), int(newest or 0), int(active))


class CommittedFleet:
    """The fleet view of the committed state, reloaded only when the revision moved.

    ``get`` reads the revision, and reloads the view when it differs from
    the cached one; the revision is read again after the load, and the load
    retried when something committed meanwhile, so the view handed out is
    the one its revision names. Callers must not modify the view (a plan
    only reads; a rebalance works on a :meth:`~FleetView.snapshot`).
    Thread-safe: HTTP requests run in a thread pool.
    """

    def __init__(
        self,
        store: Store,
        *,
        defaults: CapacityDefaults | None = None,
        suspicious_after: float = 10.0,
        offline_after: float = 20.0,
    ) -> None:
        self.store = store
        self.defaults = defaults
        self.suspicious_after = suspicious_after
        self.offline_after = offline_after
        self.loads = 0
        """How many times the view was (re)loaded (tests and metrics read it)."""
        self._lock = threading.Lock()
        self._cached: tuple[Revision, FleetView] | None = None

    def get(self) -> tuple[FleetView, Revision]:
        with self._lock:
            revision = committed_revision(self.store)
            if self._cached is not None and self._cached[0] == revision:
                return self._cached[1], revision
            for _ in range(_RETRIES):
                fleet = self.store.load_fleet(
                    suspicious_after=self.suspicious_after,
                    offline_after=self.offline_after,
                    defaults=self.defaults,
                )
                self.loads += 1
                after = committed_revision(self.store)
                if after == revision:
                    self._cached = (revision, fleet)
                    return fleet, revision
                revision = after
            # Still moving after a few tries (a busy leader): answer from the last load, not cached,
            # labelled with the revision read after it (the state it saw at least reached that far).
            return fleet, revision
