"""Move messages in the worker's core step: checked with every filter, applied to the fleet, undone exactly.

Pure (no broker, no database): the group planner gets each task's stored
request from its caller, so every branch (deferred, refused, applied,
taken back) is checked here on a fleet view.
"""

from __future__ import annotations

import json
import random

from scheduler.fleet import FleetView
from scheduler.models import Node, SchedulingRequest
from scheduler.store import Move
from scheduler.strategies import Placer
from scheduler.worker.batch import Incoming, RetryPolicy, decide_batch


def _fleet() -> tuple[FleetView, SchedulingRequest]:
    fleet = FleetView.build(
        [
            Node.model_validate({"name": n, "ip": f"10.0.0.{k}", "cpu": 4, "memory": 4096})
            for k, n in enumerate("ab")
        ]
    )
    req = SchedulingRequest(task_id="t", requested_cpu=2, requested_memory=1024)
    fleet.reserve(0, req)
    return fleet, req


def _plan(fleet: FleetView, bodies: list[dict[str, object]], to_move: dict[str, SchedulingRequest | str]):  # type: ignore[no-untyped-def]
    messages = [Incoming(i + 1, json.dumps(b).encode(), {}) for i, b in enumerate(bodies)]
    return decide_batch(
        messages, fleet, Placer(), now=0.0, retry=RetryPolicy(), callback_refusal=lambda _url: None,
        rng=random.Random(1), to_move=to_move,
    )  # fmt: skip


def _state(fleet: FleetView) -> tuple[bytes, bytes, dict[str, object]]:
    return fleet.free_cpu.tobytes(), fleet.vms.tobytes(), dict(fleet.allocations)


def test_an_allowed_move_is_applied_and_undone_exactly() -> None:
    fleet, req = _fleet()
    before = _state(fleet)
    plan = _plan(fleet, [{"move": "t", "node": "b"}], {"t": req})
    assert plan.items == [Move("t", "a", "b", "10.0.0.1", "moved from a to b")]
    assert fleet.allocation("t").node == "b"  # type: ignore[union-attr]
    plan.undo(fleet)
    assert _state(fleet) == before


def test_a_move_the_store_ignored_is_taken_back() -> None:
    fleet, req = _fleet()
    before = _state(fleet)
    plan = _plan(fleet, [{"move": "t", "node": "b"}], {"t": req})
    plan.unmove(fleet, ["t"])
    assert _state(fleet) == before


def test_refusals_change_nothing_and_say_why() -> None:
    fleet, req = _fleet()
    before = _state(fleet)
    big = req.model_copy(update={"requested_cpu": 2})
    fleet.reserve(1, SchedulingRequest(task_id="u", requested_cpu=3, requested_memory=1))
    before = _state(fleet)
    plan = _plan(
        fleet,
        [{"move": "t", "node": "b"}, {"move": "x", "node": "b"}, {"move": "t", "node": "zz"}],
        {"t": big, "x": "task x is not scheduled (released)"},
    )
    assert plan.items == []
    assert [d.reason for d in plan.refused] == [
        "move refused: b: insufficient cpu: needs 2 vCPU, 1 free",
        "move refused: task x is not scheduled (released)",
        "move refused: unknown node zz",
    ]
    assert _state(fleet) == before


def test_a_move_of_a_task_released_or_placed_in_the_same_group_waits_for_the_next() -> None:
    fleet, req = _fleet()
    plan = _plan(fleet, [{"release": "t"}, {"move": "t", "node": "b"}], {"t": req})
    assert [m.delivery_tag for m in plan.deferred] == [2] and not plan.refused
    plan = _plan(fleet, [{"move": "bad", "node": "b", "extra": 1}], {})
    assert plan.dead and "move:" in plan.dead[0].reason and not plan.items


def test_a_move_redelivered_after_its_commit_is_acked_not_refused() -> None:
    """A leader that committed a move and failed over before the ack: the next leader gets the message
    again (``redelivered``) with the task on the target already. It was dead-lettered as
    ``move refused: task t is on b already``, telling the operator that a move which took place had
    not. A first delivery finding the task there (the same move published twice) is still refused."""
    fleet, req = _fleet()
    fleet.release("t")
    fleet.reserve(1, req)
    before = _state(fleet)
    body = json.dumps({"move": "t", "node": "b"}).encode()
    plan = decide_batch(
        [Incoming(1, body, {}, redelivered=True), Incoming(2, body, {})], fleet, Placer(), now=0.0,
        retry=RetryPolicy(), callback_refusal=lambda _url: None, rng=random.Random(1), to_move={"t": req},
    )  # fmt: skip
    assert plan.items == [] and plan.deferred == []
    assert [(d.message.delivery_tag, d.reason) for d in plan.refused] == [
        (2, "move refused: task t is on b already")
    ]
    assert plan.moves_done_before == ["t"]
    assert _state(fleet) == before
