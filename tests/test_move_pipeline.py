"""Moves through a real worker, RabbitMQ, SQLite and PostgreSQL: right moves land, wrong ones change nothing.

Why end to end: a move is decided on the leader's in-memory fleet and
committed with the fence in one transaction; a wrong move would show as an
overcommitted node, two VMs of a hard anti-affinity group together, a task
moved while not scheduled, or two active allocations for one task. Each
refusal must leave the database exactly as it was and say why in the dead
letter's ``x-death-reason``. A deposed leader's move is refused by the fence.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from scheduler.models import Node, SchedulingRequest, TaskStatus
from scheduler.producer.publisher import Outgoing
from scheduler.store import FencedOut, Move, Release
from scheduler.store.schema import outbox
from tests.harness import Deployment, wait_until
from tests.store_checks import active_allocations


@pytest.fixture
def dep(db_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(db_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path)
    d.store.import_nodes(
        [
            Node.model_validate({"name": f"n{k}", "ip": f"10.0.0.{k}", "cpu": 8, "memory": 8192})
            for k in (1, 2, 3)
        ]
        + [Node.model_validate({"name": "o1", "ip": "10.0.1.1", "pool": "other", "cpu": 64, "memory": 65536})]
    )
    try:
        yield d
    finally:
        d.close()


def _req(tid: str, cpu: int, **kw: Any) -> SchedulingRequest:
    return SchedulingRequest.model_validate(
        {"task_id": tid, "requested_cpu": cpu, "requested_memory": 512, **kw}
    )


def _place(dep: Deployment, *reqs: SchedulingRequest) -> None:
    for r in reqs:  # one by one: each decision sees the previous placement
        assert dep.wait_terminal(dep.publish([Outgoing.request(r)]))[r.task_id] is TaskStatus.SCHEDULED


def _release(dep: Deployment, tid: str) -> None:
    dep.publish([Outgoing.release(tid)])
    wait_until(lambda: dep.statuses([tid]).get(tid) is TaskStatus.RELEASED, 30, f"{tid} to be released")


def _nodes(dep: Deployment) -> dict[str, str]:
    return {a.task_id: a.node for a in active_allocations(dep.store)}


def _events(dep: Deployment, kind: str) -> list[dict[str, Any]]:
    with dep.store.engine.connect() as conn:
        rows = conn.execute(
            select(outbox.c.payload).where(outbox.c.type == kind).order_by(outbox.c.seq)
        ).all()
    return [json.loads(r[0]) for r in rows]


def _dead(dep: Deployment, count: int) -> list[tuple[dict[str, Any], bytes]]:
    got: list[tuple[dict[str, Any], bytes]] = []

    def more() -> bool:
        got.extend(dep.drain(dep.topology.dead_queue))
        return len(got) >= count

    wait_until(more, 30, f"{count} dead-lettered move(s)")
    return got


def test_moves_through_the_worker(dep: Deployment) -> None:
    dep.start_worker()
    dep.wait_leading("worker-0")
    _place(dep, _req("a", 6), _req("b", 6), _req("c", 1, anti_affinity_group="g"),
           _req("d", 1, anti_affinity_group="g"), _req("r", 1))  # fmt: skip
    _release(dep, "r")
    where = _nodes(dep)
    free_of_g = ({"n1", "n2", "n3"} - {where["c"], where["d"]}).pop()
    before = _nodes(dep)

    # Wrong moves first: each is refused with its reason and changes nothing.
    wrong = [
        ("a", where["b"], f"{where['b']}: insufficient cpu: needs 6 vCPU, "),
        ("c", where["d"], f"{where['d']}: anti-affinity: holds 1 VM(s) of anti-affinity group g"),
        ("a", "o1", "o1: in pool other, the task's pool is default"),
        ("a", "nope", "unknown node nope"),
        ("a", where["a"], f"task a is on {where['a']} already"),
        ("r", free_of_g, "task r is not scheduled (released)"),
        ("ghost", free_of_g, "task ghost is not scheduled"),
    ]
    dep.publish(Outgoing.move(tid, node) for tid, node, _ in wrong)
    dead = _dead(dep, len(wrong))
    reasons = sorted(str(h.get("x-death-reason", "")) for h, _ in dead)
    for _, _, expected in wrong:
        assert any(expected in r for r in reasons), (expected, reasons)
    assert _nodes(dep) == before
    assert _events(dep, "task.moved") == []
    dep.check_invariants()

    # A right move: one allocation, on the target, one task.moved event, the task's node updated.
    dep.publish([Outgoing.move("d", free_of_g)])
    wait_until(lambda: _nodes(dep)["d"] == free_of_g, 30, "d to move")
    [event] = wait_until(lambda: _events(dep, "task.moved"), 10, "the task.moved event")
    assert event["type"] == "task.moved" and event["task"]["task_id"] == "d"
    assert event["task"]["status"] == "scheduled" and event["task"]["node"]["name"] == free_of_g
    task = dep.store.get_task("d")
    assert task is not None and task.status is TaskStatus.SCHEDULED and task.node == free_of_g
    assert {k: v for k, v in _nodes(dep).items() if k != "d"} == {k: v for k, v in before.items() if k != "d"}
    dep.check_invariants()

    # The moved VM is released from its new node; the old one held nothing more.
    _release(dep, "d")
    assert "d" not in _nodes(dep)
    dep.check_invariants()


def test_rebalance_apply_and_drain_apply_through_the_worker(dep: Deployment, tmp_path: Path) -> None:
    dep.start_worker()
    dep.wait_leading("worker-0")
    _place(dep, _req("x1", 2), _req("x2", 2), _req("x3", 2))
    assert len(set(_nodes(dep).values())) == 3
    env = dep.env("cli")
    run = subprocess.run(
        [sys.executable, "-m", "scheduler", "rebalance", "--pool", "default", "--apply", "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.splitlines()[-1])["summary"]
    assert summary["moves"] == 2 and summary["nodes_emptied"] == 2
    wait_until(lambda: len(set(_nodes(dep).values())) == 1, 30, "the moves to land")
    dep.check_invariants()
    [node] = set(_nodes(dep).values())
    run = subprocess.run(
        [sys.executable, "-m", "scheduler", "nodes", "drain", node, "--apply"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    wait_until(lambda: node not in set(_nodes(dep).values()), 30, "the drain to land")
    assert {n.name: n.cordoned for n in dep.store.list_nodes()}[node] is True
    assert len(_events(dep, "task.moved")) == 5
    dep.check_invariants()


def test_a_deposed_leader_s_move_is_refused_by_the_fence(dep: Deployment) -> None:
    dep.store.claim_fence(3, "old-leader")
    from tests.test_http_support import run_group

    run_group(dep.store, [{"task_id": "v", "requested_cpu": 1, "requested_memory": 1}])
    held = _nodes(dep)["v"]
    target = "n2" if held != "n2" else "n3"
    dep.store.claim_fence(4, "new-leader")
    with pytest.raises(FencedOut):
        dep.store.commit(
            [Move(task_id="v", source=held, target=target, target_ip="10.0.0.2", message="m")], 3
        )
    assert _nodes(dep) == {"v": held}
    assert _events(dep, "task.moved") == []
    # The current leader's move goes through, once; a copy of it (source no longer true) changes nothing.
    move = Move(task_id="v", source=held, target=target, target_ip="10.0.0.2", message="moved")
    result = dep.store.commit([move], 4)
    assert result.moved == ("v",) and _nodes(dep) == {"v": target}
    again = dep.store.commit([move], 4)
    assert again.moved == () and again.ignored == ("v",) and _nodes(dep) == {"v": target}
    assert len(_events(dep, "task.moved")) == 1
    dep.check_invariants()


def test_a_move_and_a_release_in_one_commit_leave_nothing_active(dep: Deployment) -> None:
    from tests.test_http_support import run_group

    dep.store.claim_fence(1, "leader")
    run_group(
        dep.store, [{"task_id": "v", "requested_cpu": 1, "requested_memory": 1, "anti_affinity_group": "g"}]
    )
    held = _nodes(dep)["v"]
    target = "n2" if held != "n2" else "n3"
    result = dep.store.commit(
        [Move(task_id="v", source=held, target=target, target_ip="10.0.0.9", message="moved"), Release("v")],
        1,
    )
    assert result.moved == ("v",) and [a.node for a in result.released] == [target]
    assert _nodes(dep) == {} and dep.store.get_task("v").status is TaskStatus.RELEASED  # type: ignore[union-attr]
    assert [e["task"]["node"]["name"] for e in _events(dep, "task.moved")] == [target]
    assert len(_events(dep, "task.released")) == 1
    # The moved allocation kept what the task held (its group included).
    from scheduler.store.schema import allocations

    with dep.store.engine.connect() as conn:
        rows = conn.execute(
            select(allocations.c.node, allocations.c.anti_affinity_group, allocations.c.released_at.is_(None))
            .where(allocations.c.task_id == "v").order_by(allocations.c.id)
        ).all()  # fmt: skip
    assert [(r[0], r[1], bool(r[2])) for r in rows] == [(held, "g", False), (target, "g", False)]
