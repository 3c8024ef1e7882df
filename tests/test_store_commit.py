"""Store.commit, the hot path: the fence, idempotence, releases and the outbox, on both backends."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from scheduler.models import Node, Reason, SchedulingRequest, TaskStatus
from scheduler.store import CommitItem, Failure, FencedOut, Placement, Release, Store, Waiting
from scheduler.store.schema import allocations, outbox, tasks
from tests.store_checks import active_allocations, duplicate_active_allocations


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.from_url(db_url)
    s.upgrade()
    s.import_nodes(
        [
            Node(name="bm-1", ip="10.0.0.1", cpu=64, memory=262144, disk=1000),  # type: ignore[arg-type]
            Node(name="bm-2", ip="10.0.0.2", cpu=64, memory=262144, disk=1000),  # type: ignore[arg-type]
        ]
    )
    yield s
    s.close()


def req(task_id: str, **kw: Any) -> SchedulingRequest:
    return SchedulingRequest.model_validate(
        {"task_id": task_id, "requested_cpu": 2, "requested_memory": 2048, **kw}
    )


def place(task_id: str, node: str = "bm-1", **kw: Any) -> Placement:
    return Placement(
        req(task_id, **kw),
        node,
        "10.0.0.1" if node == "bm-1" else "10.0.0.2",
        "least_loaded",
        f"placed on {node}",
        1,
    )


def counts(store: Store) -> tuple[int, int, int, int]:
    """(tasks, allocations, active allocations, outbox events)."""
    with store.engine.connect() as conn:

        def n(stmt: Any) -> int:
            return int(conn.execute(stmt).scalar_one())

        return (
            n(select(func.count()).select_from(tasks)),
            n(select(func.count()).select_from(allocations)),
            n(select(func.count()).select_from(allocations).where(allocations.c.released_at.is_(None))),
            n(select(func.count()).select_from(outbox)),
        )


def events(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(outbox).order_by(outbox.c.seq)).all()
    out = []
    for row in rows:
        body = json.loads(row.payload)
        assert (
            body["id"] == row.event_id and body["type"] == row.type and body["task"]["task_id"] == row.task_id
        )
        assert row.dispatched is False or row.dispatched == 0
        out.append({"body": body, "callback_url": row.callback_url, "type": row.type})
    return out


# ------------------------------------------------------------------ the fence


def test_fence_refuses_the_older_writers_whole_batch(db_url: str, store: Store) -> None:
    old = Store.from_url(db_url)  # leader 1, a separate engine: another process in real life
    new = store  # leader 2
    try:
        old.claim_fence(1, "replica-a")
        assert old.commit([place("early")], epoch=1).applied == ("early",)
        before = counts(store)

        new.claim_fence(2, "replica-b")
        assert new.fence_epoch() == 2 and new.fence_holder() == (2, "replica-b")
        batch: list[CommitItem] = [
            place("late-1"),
            place("late-2", "bm-2"),
            Release("early"),
            Failure("late-3", None, Reason.EXPIRED, "too old", None, 1, None),
            Waiting(req("late-4"), "no room", 1, "least_loaded"),
        ]
        with pytest.raises(FencedOut) as info:
            old.commit(batch, epoch=1)
        assert (info.value.stored, info.value.epoch) == (2, 1)
        assert counts(store) == before, "nothing of the refused batch may land"
        assert store.task_states(["early", "late-1", "late-4"]) == {"early": TaskStatus.SCHEDULED}
        with pytest.raises(FencedOut):
            old.commit([], epoch=1)  # even an empty batch learns it was deposed
        with pytest.raises(FencedOut):
            old.claim_fence(1, "replica-a")  # and cannot take the fence back down

        assert new.commit(batch, epoch=2).applied == ("late-1", "late-2", "early", "late-3", "late-4")
        assert counts(store) == (5, 3, 2, 5)
        new.claim_fence(2, "replica-b")  # re-claiming one's own epoch is fine
    finally:
        old.close()


def test_newer_epoch_commits_without_claiming(store: Store) -> None:
    store.claim_fence(3, "a")
    assert store.commit([place("t")], epoch=4).applied == ("t",)
    assert store.fence_epoch() == 3  # commit checks the fence, it does not move it


# ------------------------------------------------------------------ idempotence


def test_duplicate_decisions_change_nothing(store: Store) -> None:
    first = store.commit([place("t1")], epoch=1)
    assert first.applied == ("t1",) and first.duplicates == () and len(first.event_ids) == 1

    again = store.commit(
        [
            place("t1", "bm-2"),
            Failure("t1", None, Reason.EXPIRED, "x", None, 2, None),
            Waiting(req("t1"), "later", 3, "least_loaded"),
        ],
        epoch=1,
    )
    assert again.applied == () and again.duplicates == ("t1", "t1", "t1") and again.event_ids == ()
    assert counts(store) == (1, 1, 1, 1)
    rec = store.get_task("t1")
    assert rec is not None and (rec.status, rec.node, rec.attempts) == (TaskStatus.SCHEDULED, "bm-1", 1)

    # Within one batch too: the second decision for a task is the duplicate.
    within = store.commit([place("t2"), place("t2", "bm-2")], epoch=1)
    assert within.applied == ("t2",) and within.duplicates == ("t2",)
    assert [a.node for a in active_allocations(store) if a.task_id == "t2"] == ["bm-1"]
    assert duplicate_active_allocations(store) == {}


def test_failed_then_placed_with_another_body_is_a_conflict(store: Store) -> None:
    """The failed original stays; the newcomer gets its own task.failed event with reason conflict."""
    store.commit(
        [
            Failure(
                "t",
                '{"task_id": "t", "requested_cpu": "x"}',
                Reason.INVALID_REQUEST,
                "requested_cpu: Input should be a valid integer",
                None,
                1,
                None,
            )
        ],
        epoch=1,
    )
    result = store.commit([place("t")], epoch=1)
    assert result.duplicates == () and result.conflicts == ("t",) and result.applied == ()
    assert counts(store) == (1, 0, 0, 2)
    rec = store.get_task("t")
    assert rec is not None and rec.status is TaskStatus.FAILED and rec.reason is Reason.INVALID_REQUEST


# ------------------------------------------------------------------ releases


def test_release_then_release_again(store: Store) -> None:
    store.commit([place("t1", anti_affinity_group="web")], epoch=1)
    first = store.commit([Release("t1")], epoch=1)
    assert first.applied == ("t1",) and first.ignored == ()
    assert [(a.task_id, a.node, a.cpu, a.memory, a.group) for a in first.released] == [
        ("t1", "bm-1", 2, 2048, "web")
    ]
    assert store.get_task("t1").status is TaskStatus.RELEASED  # type: ignore[union-attr]

    second = store.commit([Release("t1")], epoch=1)
    assert second.applied == () and second.ignored == ("t1",) and second.released == ()
    assert counts(store) == (1, 1, 0, 2)
    assert [e["type"] for e in events(store)] == ["task.scheduled", "task.released"]

    # A released task stays released: a redelivered placement is a duplicate.
    assert store.commit([place("t1", anti_affinity_group="web")], epoch=1).duplicates == ("t1",)
    assert counts(store) == (1, 1, 0, 2)


def test_release_of_a_task_not_placed_yet_is_a_cancel(store: Store) -> None:
    """Waiting or unknown: released/cancelled, with an event; failed: ignored; a late request: not placed."""
    store.commit(
        [
            Waiting(req("w"), "no room", 1, "least_loaded"),
            Failure("f", None, Reason.UNKNOWN_POOL, "no pool", None, 1, None),
        ],
        epoch=1,
    )
    result = store.commit([Release("unknown"), Release("w"), Release("f")], epoch=1)
    assert result.ignored == ("f",) and result.cancelled == ("unknown", "w")
    assert result.applied == ("unknown", "w") and result.released == ()
    assert store.task_states(["w", "f", "unknown"]) == {
        "w": TaskStatus.RELEASED,
        "f": TaskStatus.FAILED,
        "unknown": TaskStatus.RELEASED,
    }
    for tid in ("w", "unknown"):
        rec = store.get_task(tid)
        assert rec is not None and rec.reason is Reason.CANCELLED and rec.node is None
    assert [e["body"]["task"]["reason"] for e in events(store)[-2:]] == ["cancelled", "cancelled"]
    # The request arriving after its cancel is never placed, whatever its body.
    late = store.commit([place("unknown"), place("w")], epoch=1)
    assert late.duplicates == ("unknown", "w") and late.applied == ()
    assert active_allocations(store) == []


def test_place_and_release_in_one_batch(store: Store) -> None:
    result = store.commit([place("t"), Release("t"), place("t", "bm-2")], epoch=1)
    assert result.applied == ("t",) and result.duplicates == ("t",)
    assert [a.task_id for a in result.released] == ["t"]
    assert counts(store) == (1, 1, 0, 2)
    assert [e["type"] for e in events(store)] == ["task.scheduled", "task.released"]
    assert store.get_task("t").status is TaskStatus.RELEASED  # type: ignore[union-attr]


# ------------------------------------------------------------------ outbox payloads


def test_outbox_payload_is_the_design_webhook_body(store: Store) -> None:
    r = req(
        "t1",
        callback_url="https://hooks.example.com/vm",
        anti_affinity_group="g",
        required_tags=["gpu"],
        priority=3,
    )
    store.commit(
        [
            Placement(r, "bm-2", "10.0.0.2", "best_fit", 'placed on bm-2: "quoted" \\ tab\t naïve 🚀', 2),
            Failure(
                "bad",
                '{"task_id": "bad", "requested_cpu": 0, "callback_url": "https://h.example.com/c"}',
                Reason.INVALID_REQUEST,
                "requested_cpu: must be >= 1",
                None,
                1,
                "https://h.example.com/c",
            ),
            Failure("bare", None, Reason.INVALID_REQUEST, "unreadable", None, 1, None),
        ],
        epoch=1,
    )
    store.commit([Release("t1")], epoch=1)
    evs = events(store)
    assert [e["type"] for e in evs] == ["task.scheduled", "task.failed", "task.failed", "task.released"]

    placed = evs[0]["body"]
    assert list(placed) == ["id", "type", "created_at", "task"]
    assert list(placed["task"]) == ["task_id", "status", "node", "reason", "message", "attempts", "request"]
    assert placed["task"]["status"] == "scheduled"
    assert placed["task"]["node"] == {"name": "bm-2", "ip": "10.0.0.2"}
    assert placed["task"]["message"] == 'placed on bm-2: "quoted" \\ tab\t naïve 🚀'
    assert placed["task"]["attempts"] == 2 and placed["task"]["reason"] is None
    assert placed["task"]["request"] == r.model_dump(mode="json")
    assert evs[0]["callback_url"] == "https://hooks.example.com/vm"
    assert placed["created_at"].endswith("Z")

    failed = evs[1]["body"]["task"]
    assert failed["status"] == "failed" and failed["node"] is None and failed["reason"] == "invalid_request"
    assert failed["request"] == {
        "task_id": "bad",
        "requested_cpu": 0,
        "callback_url": "https://h.example.com/c",
    }
    assert evs[1]["callback_url"] == "https://h.example.com/c"
    assert evs[2]["body"]["task"]["request"] is None and evs[2]["callback_url"] is None

    released = evs[3]["body"]["task"]
    assert released["status"] == "released" and released["node"] == {"name": "bm-2", "ip": "10.0.0.2"}
    assert released["request"] == r.model_dump(mode="json")
    assert evs[3]["callback_url"] == "https://hooks.example.com/vm"
    assert len({e["body"]["id"] for e in evs}) == 4

    rec = store.get_task("t1")
    assert rec is not None and rec.message == "released"
    bad = store.get_task("bad")
    assert bad is not None and bad.request == failed["request"] and bad.reason is Reason.INVALID_REQUEST


def test_failure_fields_that_would_not_fit_cannot_sink_the_batch(store: Store) -> None:
    """A failure built from hostile input still lands, and so does the rest of its batch."""
    raw = json.dumps({"task_id": "x", "requested_cpu": 1, "priority": 10**30, "strategy": "s" * 300})
    result = store.commit(
        [
            place("ok"),
            Failure("x", raw, Reason.UNKNOWN_STRATEGY, "unknown strategy", "s" * 300, 1, None),
            Failure("y", "not json at all", Reason.INVALID_REQUEST, "bad", None, 1, None),
        ],
        epoch=1,
    )
    assert result.applied == ("ok", "x", "y")
    y = store.get_task("y")
    assert y is not None and y.request is None


# ------------------------------------------------------------------ concurrency


def test_concurrent_writers_same_tasks_one_allocation_each(db_url: str, store: Store) -> None:
    """Two writers racing with the same decisions (a redelivery storm): one wins per task."""
    ids = [f"t{i}" for i in range(120)]
    stores = [Store.from_url(db_url) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(s: Store, offset: int) -> None:
        barrier.wait()
        try:
            for start in range(0, len(ids), 30):
                batch = [place(t, "bm-1" if offset == 0 else "bm-2") for t in ids[start : start + 30]]
                results.append(s.commit(batch, epoch=1))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s, k)) for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []
    applied = [t for r in results for t in r.applied]
    duplicates = [t for r in results for t in r.duplicates]
    assert sorted(applied) == sorted(ids) and sorted(duplicates) == sorted(ids)
    assert counts(store) == (120, 120, 120, 120)
    assert duplicate_active_allocations(store) == {}


def test_a_batch_the_database_refuses_lands_nothing_and_the_next_one_works(db_url: str, store: Store) -> None:
    """A placement on a node not in the inventory violates a foreign key: the whole batch rolls back,
    and the connection it ran on (with its per-session staging state) serves the next batch fine."""
    fresh = Store.from_url(db_url)
    try:
        for attempt in range(3):
            with pytest.raises(IntegrityError, match=r"(?i)foreign key"):
                fresh.commit([place(f"ok-{attempt}"), place(f"ghost-{attempt}", "no-such-node")], epoch=1)
            assert counts(store) == (attempt, attempt, attempt, attempt)
            assert fresh.commit([place(f"t{attempt}")], epoch=1).applied == (f"t{attempt}",)
    finally:
        fresh.close()


@pytest.mark.parametrize(
    ("node", "ip", "reason", "message"),
    [
        ("bm-1", "10.0.0.1", None, "placed on bm-1"),
        (
            None,
            None,
            "insufficient_resources",
            'quote " backslash \\ newline \n tab \t nul \x00 bell \x07 é ✓ 🚀',
        ),
        ("n", "fd00::1", None, None),
    ],
)
def test_payload_assembly_equals_plain_json_encoding(
    node: str | None, ip: str | None, reason: str | None, message: str | None
) -> None:
    from scheduler.store.batch_plan import TaskState, _payload, compact_json

    request = {"task_id": "t\u2028x", "requested_cpu": 1, "required_tags": ["a"], "callback_url": None}
    state = TaskState(
        status=TaskStatus.FAILED,
        request_text=compact_json(request),
        node=node,
        node_ip=ip,
        reason=reason,
        message=message,
        attempts=3,
    )
    expected = {
        "id": "e" * 32,
        "type": "task.failed",
        "created_at": "2025-01-01T00:00:00Z",
        "task": {
            "task_id": "t\u2028x",
            "status": "failed",
            "node": {"name": node, "ip": ip} if node else None,
            "reason": reason,
            "message": message,
            "attempts": 3,
            "request": request,
        },
    }
    text = _payload("e" * 32, "task.failed", "2025-01-01T00:00:00Z", "t\u2028x", state)
    assert text == compact_json(expected)
    assert json.loads(text) == expected


def test_event_ids_are_uuid4_hex() -> None:
    import uuid

    from scheduler.store.batch_plan import new_event_ids

    ids = set(new_event_ids(1000)) | set(new_event_ids(1))
    assert len(ids) == 1001 and new_event_ids(0) == []
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == value


def test_a_queued_row_racing_the_commit_is_upserted_not_an_error(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP API may record a task as ``queued`` after the commit read the batch's states and
    before it writes them: the commit must still land whole (the fast insert path falls back)."""
    store.record_queued(req("raced", priority=4))
    store.record_queued(req("raced-2"))
    created = store.get_task("raced").created_at  # type: ignore[union-attr]
    real = Store._read_states
    # The commit's read happens "before" the two queued rows were recorded.
    monkeypatch.setattr(Store, "_read_states", lambda self, conn, ids: {})
    result = store.commit([place("raced"), place("fresh"), place("raced-2", "bm-2")], epoch=1)
    monkeypatch.setattr(Store, "_read_states", real)
    assert result.applied == ("raced", "fresh", "raced-2")
    assert counts(store) == (3, 3, 3, 3)
    rec = store.get_task("raced")
    assert rec is not None and rec.status is TaskStatus.SCHEDULED and rec.node == "bm-1"
    assert rec.created_at == created  # the row was updated, not replaced
