"""A move is judged on the inventory as committed when it arrives, not as the last periodic check saw it.

Through the real :class:`~scheduler.worker.flow.Flow` on a real SQLite
store, with :class:`~scheduler.worker.memory_source.MemorySource` for the
broker. Found black-box: ``scheduler nodes cordon bm-002`` then
``scheduler move t bm-002`` within ``inventory_poll_interval`` moved the VM
onto the cordoned node (and a node shrunk by ``nodes update`` could be
overfilled the same way), because the leader judged the move on the fleet
of its last inventory check.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from scheduler.config import Settings
from scheduler.models import SchedulingRequest
from scheduler.producer.publisher import Outgoing
from scheduler.store import Store
from scheduler.strategies import Placer
from scheduler.worker.flow import Flow
from scheduler.worker.leadership_term import LeadershipTerms, Term
from scheduler.worker.memory_source import MemorySource
from scheduler.worker.state import WorkerState
from tests.harness import make_nodes


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    s = Store.from_url(sqlite_url)
    s.upgrade()
    s.import_nodes(make_nodes(3))
    try:
        yield s
    finally:
        s.close()


def test_a_move_onto_a_node_cordoned_since_the_last_inventory_check_is_refused(store: Store) -> None:
    settings = Settings(identity="move-inventory-test")
    terms = LeadershipTerms(store, settings, random.Random(0))
    term = terms.begin(1)
    assert isinstance(term, Term)
    flow = Flow(settings, store, Placer("least_loaded"), WorkerState(), terms)
    source = MemorySource()
    flow.begin(term, source)
    try:
        req = SchedulingRequest(task_id="mv-1", requested_cpu=1, requested_memory=256)
        flow.receive(source.deliver(Outgoing.request(req).body))
        assert flow.flush() is None and flow.drain() is None
        record = store.get_task("mv-1")
        assert record is not None and record.node is not None
        target = next(n.name for n in store.list_nodes() if n.name != record.node)
        assert store.set_cordoned(target, True)  # the CLI's cordon: no inventory check ran since
        move = Outgoing.move("mv-1", target).body
        flow.receive(source.deliver(move))
        assert flow.flush() is None and flow.drain() is None
        if not source.dead_letters:  # handed back to be judged on the new inventory: it comes again
            assert source.requeued == [2]
            flow.receive(source.deliver(move, redelivered=True))
            assert flow.flush() is None and flow.drain() is None
        after = store.get_task("mv-1")
        assert after is not None and after.node == record.node, "moved onto a cordoned node"
        assert [d.kind for d in source.dead_letters] == ["move_refused"]
        assert "cordon" in source.dead_letters[0].reason
    finally:
        flow.end()
        flow.close()
