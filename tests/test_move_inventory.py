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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from scheduler.config import Settings
from scheduler.models import SchedulingRequest, TaskStatus
from scheduler.producer.publisher import Outgoing
from scheduler.store import Store
from scheduler.store.records import CommitItem, CommitResult, Move, Release
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


@contextmanager
def placed(
    store: Store, task_id: str, writer: Store | None = None
) -> Iterator[tuple[Flow, MemorySource, str, str]]:
    """A flow leading term 1 on ``writer`` (default ``store``), fed by a MemorySource, with
    ``task_id`` placed; yields the flow, its source, the task's node and another node."""
    on = writer or store
    settings = Settings(identity="move-inventory-test")
    terms = LeadershipTerms(on, settings, random.Random(0))
    term = terms.begin(1)
    assert isinstance(term, Term)
    flow = Flow(settings, on, Placer("least_loaded"), WorkerState(), terms)
    source = MemorySource()
    flow.begin(term, source)
    try:
        req = SchedulingRequest(task_id=task_id, requested_cpu=1, requested_memory=256)
        flow.receive(source.deliver(Outgoing.request(req).body))
        assert flow.flush() is None and flow.drain() is None
        record = store.get_task(task_id)
        assert record is not None and record.node is not None
        target = next(n.name for n in store.list_nodes() if n.name != record.node)
        yield flow, source, record.node, target
    finally:
        flow.end()
        flow.close()


def test_a_move_onto_a_node_cordoned_since_the_last_inventory_check_is_refused(store: Store) -> None:
    with placed(store, "mv-1") as (flow, source, node, target):
        assert store.set_cordoned(target, True)  # the CLI's cordon: no inventory check ran since
        move = Outgoing.move("mv-1", target).body
        flow.receive(source.deliver(move))
        assert flow.flush() is None and flow.drain() is None
        if not source.dead_letters:  # handed back to be judged on the new inventory: it comes again
            assert source.requeued == [2]
            flow.receive(source.deliver(move, redelivered=True))
            assert flow.flush() is None and flow.drain() is None
        after = store.get_task("mv-1")
        assert after is not None and after.node == node, "moved onto a cordoned node"
        assert [d.kind for d in source.dead_letters] == ["move_refused"]
        assert "cordon" in source.dead_letters[0].reason


def test_a_move_the_store_ignores_is_dead_lettered_with_its_reason(sqlite_url: str, store: Store) -> None:
    """The store ignores a move whose task is not scheduled on the source any more when it commits
    (another writer got there first: a leader deposed mid-apply, a direct database change). The
    message was acked with a warning in the worker's log only: the operator who published it saw
    neither a ``task.moved`` event nor a dead letter. Now it is dead-lettered with the reason."""

    class ReleasedMeanwhile(Store):
        def commit(self, items: Sequence[CommitItem], epoch: int) -> CommitResult:
            if any(isinstance(item, Move) for item in items):
                super().commit([Release(task_id="mv-2")], epoch)  # another writer, just before
            return super().commit(items, epoch)

    racing = ReleasedMeanwhile.from_url(sqlite_url)
    try:
        with placed(store, "mv-2", racing) as (flow, source, _node, target):
            flow.receive(source.deliver(Outgoing.move("mv-2", target).body))
            assert flow.flush() is None and flow.drain() is None
            after = store.get_task("mv-2")
            assert after is not None and after.status is TaskStatus.RELEASED
            assert [(d.message.delivery_tag, d.kind) for d in source.dead_letters] == [(2, "move_refused")]
            assert "not scheduled on" in source.dead_letters[0].reason
    finally:
        racing.close()


def test_a_move_whose_key_is_written_with_json_escapes_is_judged_on_its_task(store: Store) -> None:
    """``{"\\u006dove": ...}`` is a move to the JSON parser, but the leader looked for the moved tasks
    only in bodies holding the bytes ``"move"``: the task's request was never read and the move was
    refused as ``task mv-3 is not scheduled``, a task that was."""
    with placed(store, "mv-3") as (flow, source, _node, target):
        flow.receive(source.deliver(b'{"\\u006dove": "mv-3", "node": "%s"}' % target.encode()))
        assert flow.flush() is None and flow.drain() is None
        assert [d.reason for d in source.dead_letters] == []
        after = store.get_task("mv-3")
        assert after is not None and after.node == target
