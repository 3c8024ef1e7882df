"""The worker's in-memory group step: decode, release, place, retry, fail, undo."""

from __future__ import annotations

import json
import random

import pytest

from scheduler.broker import HEADER_ATTEMPT
from scheduler.fleet import FleetView
from scheduler.models import Node, Reason
from scheduler.store import Failure, Placement, Release, Waiting
from scheduler.strategies import Placer
from scheduler.webhooks.policy import callback_checker
from scheduler.worker.batch import Incoming, RetryPolicy, decide_batch


def _fleet() -> FleetView:
    return FleetView.build(
        [
            Node(name="a", ip="10.0.0.1", cpu=8, memory=8192, disk=100, max_vms=4),  # type: ignore[arg-type]
            Node(name="b", ip="10.0.0.2", cpu=8, memory=8192, disk=100, max_vms=4),  # type: ignore[arg-type]
        ]
    )


def _msg(tag: int, body: object, **headers: object) -> Incoming:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Incoming(tag, raw, dict(headers))


def _plan(
    messages: list[Incoming], fleet: FleetView, *, max_attempts: int = 3, allow: list[str] | None = None
):
    return decide_batch(
        messages,
        fleet,
        Placer("least_loaded"),
        now=0.0,
        retry=RetryPolicy(max_attempts, 1, 8),
        callback_refusal=callback_checker(allow or []),
        rng=random.Random(1),
    )


def test_places_in_priority_order_and_reserves() -> None:
    fleet = _fleet()
    plan = _plan(
        [
            _msg(1, {"task_id": "low", "requested_cpu": 8, "requested_memory": 1024, "priority": 0}),
            _msg(2, {"task_id": "high", "requested_cpu": 8, "requested_memory": 1024, "priority": 5}),
            _msg(3, {"task_id": "third", "requested_cpu": 8, "requested_memory": 1024}),
        ],
        fleet,
    )
    placed = [i.task_id for i in plan.items if isinstance(i, Placement)]
    assert placed == ["high", "low"]  # two nodes of 8 vCPU: the third waits
    waiting = [i for i in plan.items if isinstance(i, Waiting)]
    assert [w.task_id for w in waiting] == ["third"]
    assert plan.retries[0].attempt == 2 and 900 <= plan.retries[0].delay_ms <= 1100
    assert fleet.allocation("high") is not None and fleet.allocation("low") is not None


def test_undo_restores_the_fleet_exactly() -> None:
    fleet = _fleet()
    first = _plan([_msg(1, {"task_id": "keep", "requested_cpu": 2, "requested_memory": 1024})], fleet)
    assert first.items
    before = (fleet.free_cpu.copy(), fleet.free_mem.copy(), fleet.vms.copy(), dict(fleet.allocations))
    plan = _plan(
        [
            _msg(2, {"release": "keep"}),
            _msg(3, {"task_id": "new", "requested_cpu": 4, "requested_memory": 2048}),
        ],
        fleet,
    )
    assert [type(i) for i in plan.items] == [Release, Placement]
    plan.undo(fleet)
    assert (fleet.free_cpu == before[0]).all() and (fleet.free_mem == before[1]).all()
    assert (fleet.vms == before[2]).all() and fleet.allocations == before[3]


def test_retries_then_fails_with_explanation() -> None:
    fleet = _fleet()
    body = {"task_id": "big", "requested_cpu": 64, "requested_memory": 1024}
    plan = _plan([_msg(1, body, **{HEADER_ATTEMPT: 3})], fleet, max_attempts=3)
    (failure,) = plan.items
    assert isinstance(failure, Failure)
    assert failure.reason is Reason.INSUFFICIENT_RESOURCES
    assert failure.message.startswith("gave up after 3 attempts: 0/2 nodes fit: 2 insufficient cpu")
    assert not plan.retries


def test_unknown_pool_and_strategy_fail_at_once() -> None:
    fleet = _fleet()
    plan = _plan(
        [
            _msg(1, {"task_id": "p", "requested_cpu": 1, "requested_memory": 1, "requested_pool": "nope"}),
            _msg(2, {"task_id": "s", "requested_cpu": 1, "requested_memory": 1, "strategy": "fastest"}),
        ],
        fleet,
    )
    reasons = {i.task_id: i.reason for i in plan.items if isinstance(i, Failure)}
    assert reasons == {"p": Reason.UNKNOWN_POOL, "s": Reason.UNKNOWN_STRATEGY}
    assert not plan.retries


@pytest.mark.parametrize(
    ("body", "dead"),
    [
        (b"{not json", True),
        (b"\xff\xfe\x00", True),
        (b"", True),
        (b"[1, 2]", True),
        (b"[" * 100_000, True),
        (json.dumps({"task_id": "t1", "requested_cpu": "4", "requested_memory": 1}).encode(), False),
        (json.dumps({"task_id": "t2", "requested_cpu": 10**30, "requested_memory": 1}).encode(), False),
        (
            json.dumps(
                {"task_id": "t3", "requested_cpu": 1, "requested_memory": 1, "colour": "red"}
            ).encode(),
            False,
        ),
        (json.dumps({"task_id": "x" * 500, "requested_cpu": 1, "requested_memory": 1}).encode(), True),
    ],
)
def test_bad_bodies_fail_or_dead_letter(body: bytes, dead: bool) -> None:
    fleet = _fleet()
    plan = _plan([_msg(1, body)], fleet)
    if dead:
        assert len(plan.dead) == 1 and not plan.items
        assert plan.dead[0].reason.startswith("invalid_request: ")
    else:
        (failure,) = plan.items
        assert isinstance(failure, Failure) and failure.reason is Reason.INVALID_REQUEST
        assert failure.task_id in ("t1", "t2", "t3")
        assert ":" in failure.message  # names the field and the rule


def test_duplicates_in_group_and_already_placed() -> None:
    fleet = _fleet()
    _plan([_msg(1, {"task_id": "dup", "requested_cpu": 1, "requested_memory": 1})], fleet)
    plan = _plan(
        [
            _msg(2, {"task_id": "dup", "requested_cpu": 1, "requested_memory": 1}),
            _msg(3, {"task_id": "twice", "requested_cpu": 1, "requested_memory": 1}),
            _msg(4, {"task_id": "twice", "requested_cpu": 1, "requested_memory": 1}),
        ],
        fleet,
    )
    # The same body twice in one group is a duplicate here; a task the fleet already holds
    # goes to the store, which compares the bodies (duplicate if equal, conflict if not).
    assert plan.duplicates == ["twice"]
    assert [(i.task_id, type(i).__name__) for i in plan.items] == [("dup", "Failure"), ("twice", "Placement")]
    assert int(fleet.vms.sum()) == 2


def test_same_task_id_twice_in_a_group_with_another_body_goes_to_the_store_as_a_conflict() -> None:
    fleet = _fleet()
    plan = _plan(
        [
            _msg(1, {"task_id": "t", "requested_cpu": 1, "requested_memory": 1}),
            _msg(2, {"task_id": "t", "requested_cpu": 2, "requested_memory": 1}),
        ],
        fleet,
    )
    assert plan.duplicates == []
    kinds = [(i.task_id, type(i).__name__, getattr(i, "reason", None)) for i in plan.items]
    assert kinds == [("t", "Placement", None), ("t", "Failure", Reason.CONFLICT)]
    assert int(fleet.vms.sum()) == 1


def test_release_of_a_task_placed_in_the_same_group_is_deferred() -> None:
    fleet = _fleet()
    plan = _plan(
        [
            _msg(1, {"task_id": "vm", "requested_cpu": 1, "requested_memory": 1}),
            _msg(2, {"release": "vm"}),
        ],
        fleet,
    )
    assert [m.delivery_tag for m in plan.deferred] == [2]
    assert [type(i) for i in plan.items] == [Placement]


def test_callback_url_must_be_allowed() -> None:
    fleet = _fleet()
    body = {"task_id": "cb", "requested_cpu": 1, "requested_memory": 1}
    refused = _plan(
        [_msg(1, {**body, "callback_url": "http://evil.example/hook"})],
        fleet,
        allow=["https://hooks.example.com/*"],
    )
    (failure,) = refused.items
    assert isinstance(failure, Failure) and "matches no pattern" in failure.message
    metadata = _plan([_msg(1, {**body, "callback_url": "http://169.254.169.254/latest"})], fleet, allow=["*"])
    assert isinstance(metadata.items[0], Failure) and "link-local" in metadata.items[0].message
    ok = _plan(
        [_msg(1, {**body, "callback_url": "https://hooks.example.com/vm"})],
        fleet,
        allow=["https://hooks.example.com/*"],
    )
    assert isinstance(ok.items[0], Placement)


def test_a_body_cut_at_receipt_is_dead_lettered_with_its_whole_size() -> None:
    """The session keeps only the start of a body too large to read (memory); its size goes on."""
    from scheduler.models import MAX_BODY_BYTES
    from scheduler.worker.batch import receive_body

    whole = b'{"task_id":"x","pad":"' + b"a" * (2 * MAX_BODY_BYTES) + b'"}'
    kept, size = receive_body(whole, MAX_BODY_BYTES + 1)
    assert kept == whole[: MAX_BODY_BYTES + 1] and size == len(whole)
    assert receive_body(b"{}", MAX_BODY_BYTES + 1) == (b"{}", None)
    msg = Incoming(1, kept, {}, original_size=size)
    assert msg.size == len(whole)
    plan = _plan([msg], _fleet())
    assert [d.reason for d in plan.dead] == [
        f"invalid_request: body of {len(whole)} bytes exceeds {MAX_BODY_BYTES}"
    ]
    assert plan.items == []
