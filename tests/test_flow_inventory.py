"""The flow's periodic inventory check settles the groups in flight only when the inventory moved.

Through the real :class:`~scheduler.worker.flow.Flow` on a real SQLite
store, with the in-process :class:`~scheduler.worker.memory_source.MemorySource`
standing in for the broker: what the flow acked is recorded there, so
"the check did not wait for the commit in flight" is an observable fact
(nothing acked yet), not a timing.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from scheduler.config import Settings
from scheduler.fleet import FleetView
from scheduler.models import Node
from scheduler.producer.publisher import Outgoing
from scheduler.store import Store
from scheduler.strategies import Placer
from scheduler.worker.flow import Flow
from scheduler.worker.leadership_term import LeadershipTerms, Term
from scheduler.worker.memory_source import MemorySource
from scheduler.worker.state import WorkerState
from tests.harness import make_nodes, make_requests


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    s = Store.from_url(sqlite_url)
    s.upgrade()
    s.import_nodes(make_nodes(8))
    try:
        yield s
    finally:
        s.close()


def test_an_unchanged_inventory_does_not_settle_the_group_in_flight_and_a_changed_one_does(
    store: Store,
) -> None:
    settings = Settings(identity="flow-test")
    terms = LeadershipTerms(store, settings, random.Random(0))
    term = terms.begin(1)
    assert isinstance(term, Term)
    flow = Flow(settings, store, Placer("least_loaded"), WorkerState(), terms)
    source = MemorySource()
    flow.begin(term, source)
    try:
        for req in make_requests(5, prefix="inv"):
            flow.receive(source.deliver(Outgoing.request(req).body))
        assert flow.flush() is None  # the group is committing now
        assert flow.refresh_inventory() is None
        assert source.acked == [], "the revision did not move: the commit in flight was not waited for"
        new = Node.model_validate({"name": "bm-new", "ip": "10.9.9.9", "cpu": 8, "memory": 8192})
        store.import_nodes([new])
        assert flow.refresh_inventory() is None
        assert source.acked == [1, 2, 3, 4, 5], "a new inventory settles the groups in flight first"
        assert flow.fleet is not None and "bm-new" in flow.fleet.index
    finally:
        flow.end()
        flow.close()


def test_a_node_added_while_a_term_begins_is_picked_up_by_the_next_check(store: Store) -> None:
    """The term read the inventory revision after the fleet: a node imported between the two reads
    left a fleet without it under the new revision, and no later check ever reloaded it."""
    settings = Settings(identity="flow-test")

    class ImportDuringTheLoad(LeadershipTerms):
        def load_fleet(self) -> FleetView:
            fleet = super().load_fleet()
            late = Node.model_validate({"name": "bm-late", "ip": "10.9.9.8", "cpu": 8, "memory": 8192})
            self.store.import_nodes([late])  # lands after the fleet was read
            return fleet

    terms = ImportDuringTheLoad(store, settings, random.Random(0))
    term = terms.begin(1)
    assert isinstance(term, Term) and "bm-late" not in term.fleet.index
    flow = Flow(
        settings,
        store,
        Placer("least_loaded"),
        WorkerState(),
        LeadershipTerms(store, settings, random.Random(0)),
    )
    flow.begin(term, MemorySource())
    try:
        assert flow.refresh_inventory() is None
        assert flow.fleet is not None and "bm-late" in flow.fleet.index
    finally:
        flow.end()
        flow.close()
