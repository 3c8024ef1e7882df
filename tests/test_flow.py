"""The worker's request flow over the in-process message source: every outcome, and what it settles.

The flow is the real one (:class:`~scheduler.worker.flow.Flow`, with its
committer thread and the store on SQLite); only the broker is replaced, by
:class:`~scheduler.worker.memory_source.MemorySource`, which records the
acks, requeues, dead letters and retries in the order they happened. The
contract checked: nothing is acked before the commit and before what must
be published is published; a fenced or failed commit acks nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from scheduler.models import Node, TaskStatus
from scheduler.store import Release, Store
from scheduler.store.engine import DatabaseUnavailable
from scheduler.worker.flow import Flow, StopLeading
from scheduler.worker.leadership_term import Term
from scheduler.worker.memory_source import MemorySource
from tests.test_http_support import EPOCH, LEADER, flow_for, settings_for


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    s = Store.from_url(sqlite_url)
    s.upgrade()
    s.import_nodes([Node(name="bm-1", ip="10.0.0.1", cpu=8, memory=16384, disk=100)])  # type: ignore[arg-type]
    s.claim_fence(EPOCH, LEADER)
    yield s
    s.close()


@pytest.fixture
def flow(store: Store) -> Iterator[tuple[Flow, MemorySource]]:
    f, source = flow_for(store, settings_for())
    yield f, source
    f.close()


def _body(task_id: str, cpu: int = 1) -> bytes:
    return json.dumps({"task_id": task_id, "requested_cpu": cpu, "requested_memory": 512}).encode()


def _settle(flow: Flow, source: MemorySource, *bodies: bytes) -> StopLeading | None:
    """Deliver ``bodies`` as one group, plan it and wait for every commit to be settled."""
    for body in bodies:
        flow.receive(source.deliver(body))
    stop = flow.flush()
    return stop if stop is not None else flow.drain()


def test_committed_publishes_retries_and_dead_letters_then_acks_the_whole_group(
    store: Store, flow: tuple[Flow, MemorySource]
) -> None:
    f, source = flow
    stop = _settle(f, source, _body("a"), _body("b"), b"\xff not json", _body("wait", cpu=64))
    assert stop is None and f.leading
    assert store.task_states(["a", "b", "wait"]) == {
        "a": TaskStatus.SCHEDULED,
        "b": TaskStatus.SCHEDULED,
        "wait": TaskStatus.WAITING,
    }
    assert [(d.message.delivery_tag, d.kind) for d in source.dead_letters] == [(3, "invalid")]
    assert [r.request.task_id for r in source.retries] == ["wait"]
    assert source.acked == [1, 2, 3, 4] and source.requeued == [] and source.unsettled == []
    # Published first, acked last: a crash in between redelivers, it never loses a message.
    assert source.history == [("dead", 3), ("retry", 4), ("ack", 1), ("ack", 2), ("ack", 3), ("ack", 4)]
    assert f.state.committed == 3 and f.state.groups == 1 and f.state.commit_started is None


def test_fenced_acks_nothing_and_ends_the_term(store: Store, flow: tuple[Flow, MemorySource]) -> None:
    f, source = flow
    store.claim_fence(EPOCH + 1, "newer-leader")
    stop = _settle(f, source, _body("a"))
    assert stop == StopLeading("fenced out")
    assert not f.leading and f.fleet is None
    # Closing the consuming channel hands the message back; the flow itself settles nothing.
    assert source.history == [] and source.unsettled == [1]
    assert store.task_states(["a"]) == {}


def test_database_down_requeues_the_group_and_ends_the_term(
    store: Store, flow: tuple[Flow, MemorySource]
) -> None:
    f, source = flow

    class Down:
        def commit(self, items: Any, epoch: int) -> Any:
            raise DatabaseUnavailable("connection refused")

    f.pipeline.store = Down()
    stop = _settle(f, source, _body("a"), _body("b"))
    assert stop is not None and stop.database_down and stop.why.startswith("database unavailable")
    assert source.requeued == [1, 2] and source.acked == [] and source.dead_letters == []
    assert f.state.group_retries == 1 and not f.leading
    assert store.task_states(["a", "b"]) == {}


def test_a_poisoned_release_is_dead_lettered_and_the_rest_committed_and_acked(
    store: Store, flow: tuple[Flow, MemorySource]
) -> None:
    f, source = flow

    class ReleaseBreaks:
        def commit(self, items: Any, epoch: int) -> Any:
            if any(isinstance(i, Release) for i in items):
                raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
            return store.commit(items, epoch)

    f.pipeline.store = ReleaseBreaks()
    stop = _settle(f, source, _body("a"), json.dumps({"release": "zzz"}).encode())
    assert stop is None and f.leading  # the fleet was reloaded from the database
    assert [(d.message.delivery_tag, d.kind) for d in source.dead_letters] == [(2, "unstorable")]
    assert source.dead_letters[0].reason.startswith("could not be stored")
    assert source.history == [("dead", 2), ("ack", 1), ("ack", 2)]
    assert store.task_states(["a"]) == {"a": TaskStatus.SCHEDULED}


def _allocations_of(store: Store, task_id: str) -> list[Any]:
    from sqlalchemy import select

    from scheduler.store.schema import allocations

    with store.engine.connect() as conn:
        return list(conn.execute(select(allocations).where(allocations.c.task_id == task_id)).all())


def _events_of(store: Store, task_id: str) -> list[str]:
    from sqlalchemy import select

    from scheduler.store.schema import outbox

    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(outbox.c.type).where(outbox.c.task_id == task_id)).all()]


def test_a_release_before_its_request_in_one_group_is_a_cancel_and_nothing_is_placed(
    store: Store, flow: tuple[Flow, MemorySource]
) -> None:
    """A cancel published before its request is final (invariant 7) whether or not the two land in
    one group. In one group, the request was placed (``task.scheduled``, an allocation) and the
    release, handed back for the next group, then released it: a receiver built the VM."""
    f, source = flow
    release = json.dumps({"release": "c1"}).encode()
    stop = _settle(f, source, release, _body("c1"), _body("other"), _body("c1"))
    assert stop is None and f.leading
    record: Any = store.get_task("c1")
    assert record.status is TaskStatus.RELEASED and record.reason == "cancelled"
    assert _allocations_of(store, "c1") == []
    assert _events_of(store, "c1") == ["task.released"]
    assert f.fleet is not None and f.fleet.allocation("c1") is None
    assert store.task_states(["other"]) == {"other": TaskStatus.SCHEDULED}
    assert source.acked == [1, 2, 3, 4] and source.requeued == []


def test_a_release_then_the_same_request_again_in_one_group_does_not_place_it_again(
    store: Store, flow: tuple[Flow, MemorySource]
) -> None:
    """Placed in an earlier group, released and redelivered (same body) in one group: it ends
    released, with no new allocation, in the database and in the leader's fleet."""
    f, source = flow
    assert _settle(f, source, _body("p1")) is None
    stop = _settle(f, source, json.dumps({"release": "p1"}).encode(), _body("p1"))
    assert stop is None
    assert store.task_states(["p1"]) == {"p1": TaskStatus.RELEASED}
    assert [a.released_at is not None for a in _allocations_of(store, "p1")] == [True]
    assert f.fleet is not None and f.fleet.allocation("p1") is None
    assert _events_of(store, "p1") == ["task.scheduled", "task.released"]


def test_a_request_without_task_id_takes_its_message_id_so_a_redelivery_is_not_placed_twice(
    store: Store, flow: tuple[Flow, MemorySource]
) -> None:
    """The worker made a new UUID at each delivery of an id-less body: redelivered after a crash
    between commit and ack, the same message was placed a second time."""
    f, source = flow
    body = json.dumps({"requested_cpu": 1, "requested_memory": 512}).encode()
    for redelivered in (False, True):
        f.receive(source.deliver(body, redelivered=redelivered, message_id="by-id"))
        assert (f.flush() or f.drain()) is None
    assert store.task_states(["by-id"]) == {"by-id": TaskStatus.SCHEDULED}
    assert len(_allocations_of(store, "by-id")) == 1
    assert f.fleet is not None and len(f.fleet.allocations) == 1
    assert _events_of(store, "by-id") == ["task.scheduled"]
    # No message_id (or one that is no task id): dead-lettered, saying why; nothing is stored.
    _settle(f, source, body)
    f.receive(source.deliver(body, message_id="not a task id"))
    assert (f.flush() or f.drain()) is None
    assert [d.kind for d in source.dead_letters] == ["invalid", "invalid"]
    assert all("task_id missing" in d.reason for d in source.dead_letters)
    assert source.unsettled == [] and len(_allocations_of(store, "by-id")) == 1


def test_a_database_that_refuses_commits_for_long_does_not_wear_the_requests_out(
    store: Store, sqlite_url: str
) -> None:
    """Each group the database refuses is handed back, and comes back redelivered. Those
    redeliveries were counted against the messages: a database that refused writes for a minute or
    two (read-only after a failover, a full disk, a revoked grant: found by revoking INSERT on
    ``tasks`` from the worker's PostgreSQL role) dead-lettered every request at the head of the
    queue as "delivered N times", never placed once the database was back."""
    f, source = flow_for(store, settings_for(worker={"max_redeliveries": 2}))
    try:

        class Refusing:
            def commit(self, items: Any, epoch: int) -> Any:
                raise DatabaseUnavailable("permission denied for table tasks")

        real, f.pipeline.store = f.pipeline.store, Refusing()
        bodies = [_body("a"), _body("b")]
        redelivered = False
        for _ in range(5):  # more than max_redeliveries, each a term that ends with the database down
            stop = _settle_delivered(f, source, bodies, redelivered=redelivered)
            assert stop is not None and stop.database_down
            assert source.dead_letters == []
            f.begin(Term(EPOCH, store.load_fleet(), store.inventory_revision()), source)
            redelivered = True
        f.pipeline.store = real
        assert _settle_delivered(f, source, bodies, redelivered=True) is None
        assert source.dead_letters == []
        assert store.task_states(["a", "b"]) == {"a": TaskStatus.SCHEDULED, "b": TaskStatus.SCHEDULED}
        # A message requeued over and over for its own sake is still caught.
        for _ in range(3):
            f.receive(source.deliver(b"\xff", redelivered=True))
        assert (f.flush() or f.drain()) is None
        # Delivered 2, 3 and 4 times (max_redeliveries 2): the last two are worn out.
        assert sorted(d.kind for d in source.dead_letters) == ["invalid", "redelivered", "redelivered"]
    finally:
        f.close()


def _settle_delivered(
    flow: Flow, source: MemorySource, bodies: list[bytes], *, redelivered: bool
) -> StopLeading | None:
    for body in bodies:
        flow.receive(source.deliver(body, redelivered=redelivered))
    stop = flow.flush()
    return stop if stop is not None else flow.drain()


def test_a_batch_that_breaks_the_commit_path_itself_still_wears_out(
    store: Store, flow: tuple[Flow, MemorySource]
) -> None:
    """A failure the committer cannot put on the database (a bug, whatever the cause) is requeued
    like an outage, but its redeliveries still count: a message that causes it is dead-lettered
    after ``worker.max_redeliveries`` rather than requeued for ever."""
    f, source = flow

    class Broken:
        def commit(self, items: Any, epoch: int) -> Any:
            raise KeyboardInterrupt  # not an Exception: the pipeline does not catch it, the committer does

    f.pipeline.store = Broken()
    limit = f.settings.worker.max_redeliveries
    redelivered = False
    for _ in range(limit):  # deliveries 1..limit: requeued like an outage
        stop = _settle_delivered(f, source, [_body("bug")], redelivered=redelivered)
        assert stop is not None and stop.database_down
        f.begin(Term(EPOCH, store.load_fleet(), store.inventory_revision()), source)
        redelivered = True
    assert source.dead_letters == []
    assert _settle_delivered(f, source, [_body("bug")], redelivered=True) is None
    assert [d.kind for d in source.dead_letters] == ["redelivered"]
