"""Moves, rebalance and drain plans on fleet views: every step keeps every invariant.

Why property tests with checks made here, independently of the filters:
a migration plan is a sequence, and a move that is fine alone can break a
rule after the moves before it. So every plan is replayed move by move on
a fresh copy of the fleet, and after each move the state is checked from
the allocations alone: capacity per node (effective, recomputed), hard
anti-affinity, the task's pool, required tags, and the move budget.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.fleet import FleetView
from scheduler.models import Node, SchedulingRequest
from scheduler.moves import check_move
from scheduler.rebalance import Rules, drain, rebalance
from scheduler.strategies import Placer
from scheduler.strategies.registry import get_strategy
from tests.test_resource_properties import DEFAULTS, nodes_st, request_st


def _fleet_with(
    nodes: list[Node], reqs: list[SchedulingRequest], strategy: str = "least_loaded"
) -> tuple[FleetView, dict[str, SchedulingRequest]]:
    fleet = FleetView.build(nodes, defaults=DEFAULTS)
    placer = Placer(strategy)
    placed = {}
    for req in reqs:
        if placer.place(fleet, req, now=0.0).placed:
            placed[req.task_id] = req
    return fleet, placed


def _check_state(fleet: FleetView, requests: dict[str, SchedulingRequest], over_before: set[str]) -> None:
    """Capacity, hard anti-affinity, pools and tags, from the allocations alone."""
    used: dict[int, list[int]] = {}
    members: Counter[tuple[str, int]] = Counter()
    hard: set[tuple[str, int]] = set()
    for tid, (i, a) in fleet.allocations.items():
        u = used.setdefault(i, [0, 0, 0, 0])
        u[0] += a.cpu
        u[1] += a.memory
        u[2] += a.disk
        u[3] += 1
        if a.group is not None:
            members[(a.group, i)] += 1
            if not a.soft:
                hard.add((a.group, i))
        req = requests.get(tid)
        if req is not None:
            assert fleet.pools_of[i] == req.requested_pool
            for entry in req.required_tags:
                assert any(t in fleet.tags and fleet.tags[t][i] for t in entry.split("|")), (tid, entry)
    for i, (c, m, d, v) in used.items():
        name = fleet.names[i]
        if name in over_before:
            continue  # over a lowered capacity before any move; a move never adds to it (checked below)
        assert c <= fleet.cap_cpu[i] and m <= fleet.cap_mem[i] and d <= fleet.cap_disk[i], name
        assert v <= fleet.max_vms[i], name
    for group, i in hard:
        assert members[(group, i)] == 1, (group, fleet.names[i])


Case = tuple[list[Node], list[SchedulingRequest], str, int]


@st.composite
def scenario(draw: st.DrawFn) -> Case:
    nodes = draw(nodes_st())
    reqs = [draw(request_st(f"t{k}")) for k in range(draw(st.integers(0, 25)))]
    return nodes, reqs, draw(st.sampled_from(["pack", "spread"])), draw(st.integers(0, 12))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=scenario())
def test_every_step_of_a_plan_keeps_every_invariant(
    case: tuple[list[Node], list[SchedulingRequest], str, int],
) -> None:
    nodes, reqs, goal, budget = case
    fleet, requests = _fleet_with(nodes, reqs, "random")
    over_before = {fleet.names[i] for i in range(fleet.size) if fleet.overcommitted()[i]}
    untouched = fleet.snapshot()
    result = rebalance(fleet, requests, goal=goal, max_moves=budget)  # type: ignore[arg-type]
    assert dict(fleet.allocations) == dict(untouched.allocations), "planning changed the fleet"
    assert len(result.moves) <= budget
    replay = fleet.snapshot()
    for move in result.moves:
        assert move.target not in over_before
        outcome = check_move(replay, requests[move.task_id], move.target, now=0.0, apply=True)
        assert outcome.ok and outcome.source == move.source, outcome.message
        _check_state(replay, requests, over_before)
    assert result.after.empty_nodes == int((replay.vms == 0).sum())
    for name in result.emptied:
        assert replay.vms[replay.index[name]] == 0
    held_before = {fleet.names[i] for i in range(fleet.size) if fleet.vms[i]}
    assert set(result.emptied) == {n for n in held_before if not replay.vms[replay.index[n]]}
    assert result.summary()["nodes_emptied"] == len(result.emptied)
    if goal == "pack":
        assert result.after.empty_nodes - result.before.empty_nodes == len(result.emptied)
        assert len({m.task_id for m in result.moves}) == len(result.moves), "a VM moved twice"
    else:
        assert result.after.most_loaded <= result.before.most_loaded + 1e-9


def _n(name: str, **kw: object) -> Node:
    return Node.model_validate({"name": name, "ip": "10.0.0.1", "cpu": 16, "memory": 16384, **kw})


def _r(tid: str, cpu: int, mem: int, **kw: object) -> SchedulingRequest:
    return SchedulingRequest.model_validate(
        {"task_id": tid, "requested_cpu": cpu, "requested_memory": mem, **kw}
    )


def _put(fleet: FleetView, node: str, req: SchedulingRequest) -> None:
    fleet.reserve(fleet.index[node], req)


def test_pack_empties_the_least_used_nodes_onto_the_tightest_fit() -> None:
    fleet = FleetView.build([_n(f"n{k}") for k in range(4)])
    reqs = {
        "a": _r("a", 8, 4096), "b": _r("b", 4, 4096), "c": _r("c", 4, 4096),
        "d": _r("d", 2, 2048), "e": _r("e", 2, 2048),
    }  # fmt: skip
    for tid, node in {"a": "n0", "b": "n1", "c": "n2", "d": "n3", "e": "n3"}.items():
        _put(fleet, node, reqs[tid])
    result = rebalance(fleet, reqs, goal="pack", max_moves=10)
    assert result.before.empty_nodes == 0 and result.after.empty_nodes == 2
    # Two nodes freed with two moves (one VM each), onto nodes in use, stranding nothing; n1 (one VM, a
    # quarter full) is tried first, and a node that received a VM is never emptied afterwards.
    assert len(result.moves) == 2 and len(result.emptied) == 2 and result.emptied[0] == "n1"
    assert all(m.target not in result.emptied for m in result.moves)
    assert {m.target for m in result.moves} <= {"n0", "n1", "n2", "n3"} - set(result.emptied)
    assert result.after.stranded == 0.0


def test_pack_respects_the_budget_all_or_nothing_per_node() -> None:
    fleet = FleetView.build([_n(f"n{k}") for k in range(3)])
    reqs = {t: _r(t, 1, 1) for t in "abcde"}
    for tid, node in {"a": "n0", "b": "n0", "c": "n1", "d": "n1", "e": "n1"}.items():
        _put(fleet, node, reqs[tid])
    result = rebalance(fleet, reqs, goal="pack", max_moves=1)
    assert result.moves == []  # no node can be emptied with one move: none is started
    result = rebalance(fleet, reqs, goal="pack", max_moves=2)
    assert [m.source for m in result.moves] == ["n0", "n0"] and result.emptied == ["n0"]


def test_pack_never_breaks_anti_affinity_or_leaves_the_pool() -> None:
    fleet = FleetView.build([_n("n0"), _n("n1"), _n("n2", pool="other")])
    reqs = {"a": _r("a", 1, 1, anti_affinity_group="g"), "b": _r("b", 1, 1, anti_affinity_group="g")}
    _put(fleet, "n0", reqs["a"])
    _put(fleet, "n1", reqs["b"])
    assert rebalance(fleet, reqs, goal="pack", max_moves=5).moves == []
    outcome = check_move(fleet, reqs["a"], "n1", now=0.0)
    assert not outcome.ok and outcome.message == "n1: anti-affinity: holds 1 VM(s) of anti-affinity group g"
    outcome = check_move(fleet, reqs["a"], "n2", now=0.0)
    assert not outcome.ok and "the task's pool is default" in outcome.message


def test_a_refused_move_names_the_numbers_and_changes_nothing() -> None:
    fleet = FleetView.build([_n("n0"), _n("n1", memory=4096)])
    req = _r("a", 2, 8192)
    _put(fleet, "n0", req)
    before = (fleet.free_cpu.copy(), fleet.free_mem.copy(), dict(fleet.allocations))
    outcome = check_move(fleet, req, "n1", now=0.0, apply=True)
    assert not outcome.ok and outcome.message == "n1: insufficient memory: needs 8192 MiB memory, 4096 free"
    assert (fleet.free_cpu == before[0]).all() and (fleet.free_mem == before[1]).all()
    assert dict(fleet.allocations) == before[2]
    assert check_move(fleet, req, "n0", now=0.0).message == "task a is on n0 already"
    assert check_move(fleet, req, "nope", now=0.0).message == "unknown node nope"
    assert not check_move(fleet, _r("zz", 1, 1), "n1", now=0.0).ok


def test_spread_brings_the_hottest_node_down() -> None:
    fleet = FleetView.build([_n("n0"), _n("n1"), _n("n2")])
    reqs = {t: _r(t, 4, 4096) for t in "abcd"}
    for t in "abcd":
        _put(fleet, "n0", reqs[t])
    result = rebalance(fleet, reqs, goal="spread", max_moves=10)
    assert result.before.most_loaded == 1.0
    assert result.after.most_loaded == 0.5
    assert len(result.moves) == 2
    # Two empty nodes took a VM each and none was emptied: the summary said "nodes_emptied": -2.
    assert result.emptied == [] and result.summary()["nodes_emptied"] == 0


def test_drain_moves_everything_it_can_and_says_why_not_for_the_rest() -> None:
    fleet = FleetView.build([_n("n0", tags=["gpu"]), _n("n1"), _n("n2", cordoned=True)])
    reqs = {"a": _r("a", 4, 4096), "b": _r("b", 4, 4096, required_tags=["gpu"]), "x": _r("x", 8, 1)}
    _put(fleet, "n0", reqs["a"])
    _put(fleet, "n0", reqs["b"])
    _put(fleet, "n1", reqs["x"])
    result = drain(fleet, reqs, "n0", get_strategy("least_loaded"), rules=Rules())
    assert [(m.task_id, m.target) for m in result.moves] == [("a", "n1")]
    assert [(u.task_id, u.reason.split(":")[0]) for u in result.unmovable] == [("b", "no node fits")]
    assert "missing tags" in result.unmovable[0].reason and "cordoned" in result.unmovable[0].reason
    assert fleet.cordoned[fleet.index["n0"]] == False  # noqa: E712  (the plan ran on a copy)


@pytest.mark.parametrize("goal", ["pack", "spread"])
def test_scope_is_one_pool(goal: str) -> None:
    fleet = FleetView.build([_n("a0"), _n("a1"), _n("b0", pool="b"), _n("b1", pool="b")])
    reqs = {
        t: _r(t, 2, 2, requested_pool="b" if t.startswith("b") else "default")
        for t in ["x1", "x2", "b1", "b2"]
    }
    for t, node in {"x1": "a0", "x2": "a1", "b1": "b0", "b2": "b1"}.items():
        _put(fleet, node, reqs[t])
    result = rebalance(fleet, reqs, goal=goal, pool="b", max_moves=5)  # type: ignore[arg-type]
    assert all(m.task_id.startswith("b") for m in result.moves)
    assert result.before.nodes == 2
