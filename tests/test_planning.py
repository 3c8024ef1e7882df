"""Plans: the same pick and counts as a real decision, nothing reserved, and examples that are true.

Why property tests: a plan is only useful if it says what the worker would
do. For any fleet and request, the plan must pick the node the placer
picks (for strategies without state), count the same rejections, leave the
fleet untouched, and every example it shows must be a node that the
decision really left out, with that filter's numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.fleet import FleetView
from scheduler.models import Node, Reason, SchedulingRequest
from scheduler.planning import TOP, plan
from scheduler.strategies import Placer
from tests.test_resource_properties import DEFAULTS, nodes_st, request_st

SCORING = ["least_loaded", "best_fit", "cpu", "memory", "hybrid", "load_ratio"]


def _state(fleet: FleetView) -> tuple[object, ...]:
    return (
        fleet.free_cpu.tobytes(), fleet.free_mem.tobytes(), fleet.free_disk.tobytes(),
        fleet.vms.tobytes(), fleet.free_dev.tobytes(), dict(fleet.allocations),
        {g: dict(m) for g, m in fleet.groups.items()},
    )  # fmt: skip


@st.composite
def situation(draw: st.DrawFn) -> tuple[FleetView, list[SchedulingRequest], SchedulingRequest, str]:
    nodes = draw(nodes_st())
    fleet = FleetView.build(nodes, defaults=DEFAULTS)
    placed = [draw(request_st(f"p{k}")) for k in range(draw(st.integers(0, 12)))]
    strategy = draw(st.sampled_from(SCORING))
    return fleet, placed, draw(request_st("asked")), strategy


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=situation())
def test_plan_agrees_with_the_decision_and_reserves_nothing(
    case: tuple[FleetView, list[SchedulingRequest], SchedulingRequest, str],
) -> None:
    fleet, placed, asked, strategy = case
    placer = Placer(strategy)
    for req in placed:
        placer.place(fleet, req, now=0.0)
    before = _state(fleet)
    answer = plan(fleet, asked, placer, now=0.0)
    assert _state(fleet) == before, "a plan reserved something"
    decision = placer.decide(fleet, asked, now=0.0)
    assert answer.node == decision.node
    assert answer.rejections == decision.rejections
    assert answer.reason == decision.reason
    assert sum(answer.rejections.values()) + answer.feasible == fleet.size
    if answer.node is None:
        assert answer.candidates == ()
    else:
        assert answer.candidates[0].node == answer.node
        assert 1 <= len(answer.candidates) <= min(TOP, answer.feasible)
        assert len({c.node for c in answer.candidates}) == len(answer.candidates)
        scores = [c.score for c in answer.candidates[1:]]
        assert all(s is not None for s in scores)
        assert scores == sorted(scores)  # type: ignore[type-var]
        # Brute force: every feasible node by (score, name); the candidates are its head.
        feas_names = _feasible(fleet, asked, placer)
        scorer = placer.strategy(strategy)
        s, e = fleet.pools[asked.requested_pool]
        all_scores = scorer.score(fleet, s, e, asked)  # type: ignore[attr-defined]
        ranked = sorted(feas_names, key=lambda n: (float(all_scores[fleet.index[n] - s]), fleet.index[n]))
        assert [c.node for c in answer.candidates] == ranked[: len(answer.candidates)]
    candidates = {c.node for c in answer.candidates}
    for label, count in answer.rejections.items():
        shown = answer.examples[label]
        assert len(shown) == min(TOP, count), label
        for text in shown:
            name = text.split(":", 1)[0]
            assert name in fleet.index and name not in candidates


def _feasible(fleet: FleetView, req: SchedulingRequest, placer: Placer) -> list[str]:
    from scheduler.strategies.base import avoid_device_nodes
    from scheduler.strategies.filters import feasible_nodes

    feas = feasible_nodes(
        fleet, req, now=0.0, exclusive=placer.dedicated_exclusive, max_skew=placer.spread_max_skew
    )
    mask = avoid_device_nodes(fleet, feas.start, feas.stop, feas.feasible_mask(), req)
    return [fleet.names[feas.start + int(k)] for k in np.flatnonzero(mask)]


def _node(name: str, **kw: object) -> Node:
    return Node.model_validate({"name": name, "ip": "10.0.0.1", "cpu": 16, "memory": 16384, **kw})


def test_examples_carry_the_numbers_of_each_filter() -> None:
    fleet = FleetView.build(
        [
            _node("bm-001", memory=4096),
            _node("bm-002", cordoned=True),
            _node("bm-003", pool="ai"),
            _node("bm-004", cpu=2),
            _node("bm-005", tags=["hdd"]),
            _node("bm-006", max_vms=1),
            _node("bm-007"),
        ]
    )
    placer = Placer()
    fleet.reserve(fleet.index["bm-006"], SchedulingRequest(task_id="x", requested_cpu=1, requested_memory=1))
    asked = SchedulingRequest(task_id="t", requested_cpu=4, requested_memory=8192, forbidden_tags=["hdd"])
    answer = plan(fleet, asked, placer, now=0.0)
    ex = answer.examples
    assert ex["insufficient memory"] == ["bm-001: needs 8192 MiB memory, 4096 free"]
    assert ex["cordoned"] == ["bm-002: cordoned (no new VMs)"]
    assert ex["pool mismatch"] == ["bm-003: in pool ai, not default"]
    assert ex["insufficient cpu"] == ["bm-004: needs 4 vCPU, 2 free"]
    assert ex["forbidden tags"] == ["bm-005: has forbidden hdd"]
    assert ex["max vms reached"] == ["bm-006: holds 1 VMs, max_vms 1"]
    assert answer.node == "bm-007" and answer.reason is None


def test_anti_affinity_and_devices_examples() -> None:
    fleet = FleetView.build(
        [
            _node("a", resources={"gpu": 1}),
            _node("b", resources={"gpu": 4}),
            _node("c"),
            _node("d", resources={"gpu": 2}),
        ]
    )
    placer = Placer()
    fleet.reserve(
        1, SchedulingRequest(task_id="m", requested_cpu=1, requested_memory=1, anti_affinity_group="g")
    )
    asked = SchedulingRequest(
        task_id="t",
        requested_cpu=1,
        requested_memory=1,
        requested_resources={"gpu": 2},
        anti_affinity_group="g",
    )
    answer = plan(fleet, asked, placer, now=0.0)
    assert answer.examples["no gpu"] == ["c: has no gpu"]
    assert answer.examples["anti-affinity"] == ["b: holds 1 VM(s) of anti-affinity group g"]
    assert answer.examples["insufficient gpu"] == ["a: needs 2 gpu, 1 free"]
    assert answer.node == "d"


def test_unknown_pool_and_unknown_strategy_are_explained() -> None:
    fleet = FleetView.build([_node("a")])
    answer = plan(
        fleet, SchedulingRequest(requested_cpu=1, requested_memory=1, requested_pool="nope"), Placer(), now=0
    )
    assert answer.reason is Reason.UNKNOWN_POOL and "known: default" in answer.message
    answer = plan(
        fleet, SchedulingRequest(requested_cpu=1, requested_memory=1, strategy="zzz"), Placer(), now=0
    )
    assert answer.reason is Reason.UNKNOWN_STRATEGY and answer.node is None


@pytest.mark.parametrize("strategy", ["round_robin", "random"])
def test_stateful_strategies_are_not_advanced_by_a_plan(strategy: str) -> None:
    fleet = FleetView.build([_node(n) for n in "abcd"])
    placer = Placer(strategy, seed=3)
    twin = Placer(strategy, seed=3)
    req = SchedulingRequest(task_id="t", requested_cpu=1, requested_memory=1)
    for k in range(3):
        plan(fleet, req, placer, now=0.0)
        a = placer.decide(fleet, req.model_copy(update={"task_id": f"r{k}"}), now=0.0)
        b = twin.decide(fleet, req.model_copy(update={"task_id": f"r{k}"}), now=0.0)
        assert a.node == b.node
    answer = plan(fleet, req, placer, now=0.0)
    assert answer.candidates[0].score is None and answer.node in ("a", "b", "c", "d")
    assert np.all(fleet.vms == 0)
