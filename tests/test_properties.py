"""Properties of every strategy on random fleets and random request streams with releases.

Why property tests: the invariants of docs/contracts.md (no overcommit; pool,
dedicated, tags and anti-affinity always honoured) must hold for any fleet
and any order of events, not just the hand-picked ones. After every step the
state is checked against records kept here, independently of the fleet's
arrays: usage is recomputed from the allocations this test saw succeed, and
a failure is accepted only if a brute-force search over the nodes finds none
that could have taken the VM. Finally the same stream is replayed and must
produce the same placements, which is what makes ``simulate --seed`` and
post-mortems trustworthy.

Sizes are kept small (a few nodes of a few units) so that the fleet fills
up, collisions and rejections are frequent, and every branch gets exercised.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from scheduler.fleet import FleetView
from scheduler.models import Decision, Node, Reason, SchedulingRequest
from scheduler.strategies import STRATEGY_NAMES, Placer

POOLS = ["a", "b"]
TAGS = ["gpu", "ssd", "cuda-12"]
GROUPS = [None, None, "g1", "g2"]


@dataclass(frozen=True)
class Release:
    which: int  # index into the task ids requested so far (modulo their number)


@dataclass(frozen=True)
class Scenario:
    nodes: list[Node]
    ops: list[SchedulingRequest | Release]
    exclusive: bool
    seed: int


@st.composite
def nodes_st(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(1, 8))
    # Names drawn independently of the order of the inventory, so sorting is exercised too.
    names = draw(st.lists(st.integers(0, 99), min_size=count, max_size=count, unique=True))
    return [
        Node.model_validate(
            {
                "name": f"n{k:02d}",
                "ip": "10.0.0.1",
                "pool": draw(st.sampled_from(POOLS)),
                "dedicated": draw(st.booleans()),
                "cordoned": draw(st.integers(0, 9)) == 0,
                "tags": draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=3)),
                "cpu": draw(st.integers(1, 16)),
                "memory": draw(st.integers(1, 64)),
                "disk": draw(st.sampled_from([0, 10, 40])),
                "max_vms": draw(st.integers(1, 6)),
            }
        )
        for k in names
    ]


@st.composite
def request_st(draw: st.DrawFn, task_id: str) -> SchedulingRequest:
    return SchedulingRequest(
        task_id=task_id,
        requested_cpu=draw(st.integers(1, 10)),
        requested_memory=draw(st.integers(1, 40)),
        requested_disk=draw(st.sampled_from([0, 0, 0, 5, 20])),
        requested_pool=draw(st.sampled_from([*POOLS, "a", "c"])),  # "c" is an unknown pool
        dedicated=draw(st.integers(0, 3)) == 0,
        required_tags=draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=2)),
        anti_affinity_group=draw(st.sampled_from(GROUPS)),
    )


@st.composite
def scenario_st(draw: st.DrawFn) -> Scenario:
    nodes = draw(nodes_st())
    ops: list[SchedulingRequest | Release] = []
    for k in range(draw(st.integers(1, 30))):
        if ops and draw(st.integers(0, 3)) == 0:
            ops.append(Release(draw(st.integers(0, 1000))))
        else:
            ops.append(draw(request_st(f"t{k}")))
    return Scenario(nodes, ops, draw(st.booleans()), draw(st.integers(0, 2**32 - 1)))


@dataclass
class Record:
    node: str
    cpu: int
    memory: int
    disk: int
    group: str | None


def admissible(node: Node, req: SchedulingRequest, active: dict[str, Record], exclusive: bool) -> bool:
    """Could ``node`` take ``req`` now? Every rule of docs/contracts.md, from the records alone."""
    on_node = [r for r in active.values() if r.node == node.name]
    return (
        node.pool == req.requested_pool
        and not node.cordoned
        and (node.dedicated if req.dedicated else not (exclusive and node.dedicated))
        and set(req.required_tags) <= set(node.tags)
        and sum(r.cpu for r in on_node) + req.requested_cpu <= node.cpu
        and sum(r.memory for r in on_node) + req.requested_memory <= node.memory
        and sum(r.disk for r in on_node) + req.requested_disk <= node.disk
        and len(on_node) < node.max_vms
        and (req.anti_affinity_group is None or all(r.group != req.anti_affinity_group for r in on_node))
    )


def check_state(fleet: FleetView, nodes: dict[str, Node], active: dict[str, Record]) -> None:
    """No overcommit on any resource, recomputed from the records; the arrays agree with them."""
    for name, node in nodes.items():
        on_node = [r for r in active.values() if r.node == name]
        used = (sum(r.cpu for r in on_node), sum(r.memory for r in on_node), sum(r.disk for r in on_node))
        assert used[0] <= node.cpu and used[1] <= node.memory and used[2] <= node.disk, (name, used)
        assert len(on_node) <= node.max_vms
        groups = [r.group for r in on_node if r.group is not None]
        assert len(groups) == len(set(groups)), f"two VMs of one anti-affinity group on {name}"
        i = fleet.index[name]
        free = (int(fleet.free_cpu[i]), int(fleet.free_mem[i]), int(fleet.free_disk[i]))
        assert free == (node.cpu - used[0], node.memory - used[1], node.disk - used[2])
        assert int(fleet.vms[i]) == len(on_node)


def run(strategy: str, scenario: Scenario, *, check: bool) -> list[tuple[str | None, Reason | None, str]]:
    fleet = FleetView.build(scenario.nodes)
    placer = Placer(strategy, seed=scenario.seed, dedicated_exclusive=scenario.exclusive)
    nodes = {n.name: n for n in scenario.nodes}
    active: dict[str, Record] = {}
    requested: list[str] = []
    trail: list[tuple[str | None, Reason | None, str]] = []
    for op in scenario.ops:
        if isinstance(op, Release):
            if requested:
                task_id = requested[op.which % len(requested)]
                released = fleet.release(task_id)
                assert (released is not None) == (task_id in active)
                active.pop(task_id, None)
                trail.append((task_id, None, "release"))
        else:
            requested.append(op.task_id)
            fits = [n for n in scenario.nodes if admissible(n, op, active, scenario.exclusive)]
            decision: Decision = placer.place(fleet, op, now=0.0)
            trail.append((decision.node, decision.reason, decision.message))
            if check:
                note(f"{op!r} -> {decision.node} {decision.reason} {decision.message}")
                event(f"outcome: {decision.reason or 'placed'}")
                if decision.node is None:
                    assert fits == [], f"{op.task_id} rejected but {[n.name for n in fits]} could take it"
                    assert sum(decision.rejections.values()) == len(scenario.nodes)
                    unknown = op.requested_pool not in {n.pool for n in scenario.nodes}
                    assert (decision.reason is Reason.UNKNOWN_POOL) == unknown
                else:
                    assert nodes[decision.node] in fits, (
                        f"{op.task_id} placed on inadmissible {decision.node}"
                    )
                    assert decision.candidates == len(fits)
            if decision.node is not None:
                active[op.task_id] = Record(
                    decision.node,
                    op.requested_cpu,
                    op.requested_memory,
                    op.requested_disk,
                    op.anti_affinity_group,
                )
        if check:
            check_state(fleet, nodes, active)
    return trail


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenario_st())
def test_invariants_hold_after_every_step(strategy: str, scenario: Scenario) -> None:
    run(strategy, scenario, check=True)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenario_st())
def test_placement_sequence_replays_identically(strategy: str, scenario: Scenario) -> None:
    assert run(strategy, scenario, check=False) == run(strategy, scenario, check=False)
