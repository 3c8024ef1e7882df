"""Filters, one table row per rule: which nodes survive, how many each filter removed, and the words used.

Why the counts and the text are tested as exactly as the choice: an operator
reads ``0/120 nodes fit: 80 insufficient memory, 30 pool mismatch, ...`` to
learn why a VM is stuck, so a node must be counted once, under the first
filter it fails (node state before request constraints before capacity),
and the reason code (``unknown_pool``, ``no_online_nodes``,
``insufficient_resources``) must say what kind of problem it is.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from scheduler.fleet import Allocation, CapacityDefaults, FleetView
from scheduler.models import Node, Reason, SchedulingRequest
from scheduler.strategies import STRATEGY_NAMES, Placer
from scheduler.strategies.filters import feasible_nodes

NOW = 1000.0


def node(name: str, **kw: Any) -> Node:
    base: dict[str, Any] = {
        "name": name,
        "ip": "10.0.0.1",
        "cpu": 16,
        "memory": 1024,
        "disk": 100,
        "max_vms": 10,
    }
    return Node.model_validate({**base, **kw})


@dataclass(frozen=True)
class Case:
    """One filtering situation and everything the service must say about it."""

    id: str
    nodes: list[Node]
    request: dict[str, Any]
    fits: set[str]
    rejections: dict[str, int]
    explain: str
    reason: Reason | None = None  # expected when nothing fits
    allocations: list[Allocation] = field(default_factory=list)
    heartbeats: dict[str, float] = field(default_factory=dict)  # node -> last heartbeat (monotonic s)
    cordon: list[str] = field(default_factory=list)
    exclusive: bool = True
    defaults: CapacityDefaults | None = None
    max_skew: int = 1
    preferred: set[str] | None = None  # the nodes soft constraints narrow ``fits`` to


def used(
    node_name: str, cpu: int = 0, memory: int = 0, disk: int = 0, group: str | None = None
) -> Allocation:
    """An existing VM: a way to set a node's free capacity in a table row."""
    return Allocation(f"existing-{next(_ids)}", node_name, cpu, memory, disk, group)


_ids = itertools.count()

THREE = [node("n1"), node("n2"), node("n3")]
DEDICATED_MIX = [node("d1", dedicated=True), node("n1"), node("n2")]
TAGGED = [node("n1", tags=["gpu", "cuda-12"]), node("n2", tags=["gpu"]), node("n3")]


def holding(
    node_name: str,
    group: str | None = None,
    *,
    soft: bool = False,
    spread: str | None = None,
    cpu: int = 0,
    memory: int = 0,
    disk: int = 0,
    **devices: int,
) -> Allocation:
    """An existing VM holding devices, or a member of an anti-affinity or spread group."""
    return Allocation(
        f"existing-{next(_ids)}",
        node_name,
        cpu,
        memory,
        disk,
        group,
        tuple(sorted(devices.items())),
        spread,
        soft,
    )


GPU = [node("g1", resources={"gpu": 8}), node("g2", resources={"gpu": 2, "nvme": 4}), node("n1")]
ZONED = [node("a1", zone="az1"), node("a2", zone="az1"), node("b1", zone="az2"), node("c1", zone="az3")]

# The resource model: devices, ratios and reserves, tag expressions, forbidden tags,
# soft anti-affinity, zone spread.
RESOURCE_CASES = [
    Case(
        "devices-fit",
        GPU,
        {"requested_resources": {"gpu": 2}},
        {"g1", "g2"},
        {"no gpu": 1},
        "2/3 nodes fit: 1 no gpu",
    ),
    Case(
        "devices-insufficient",
        GPU,
        {"requested_resources": {"gpu": 4}},
        {"g1"},
        {"no gpu": 1, "insufficient gpu": 1},
        "1/3 nodes fit: 1 no gpu, 1 insufficient gpu",
    ),
    Case(
        "devices-accounted",
        GPU,
        {"requested_resources": {"gpu": 2}},
        {"g1"},
        {"no gpu": 1, "insufficient gpu": 1},
        "1/3 nodes fit: 1 no gpu, 1 insufficient gpu",
        allocations=[holding("g2", gpu=1), holding("g1", gpu=6)],
    ),
    Case(
        "devices-two-kinds",
        GPU,
        {"requested_resources": {"gpu": 1, "nvme": 4}},
        {"g2"},
        {"no gpu": 1, "no nvme": 1},
        "1/3 nodes fit: 1 no gpu, 1 no nvme",
    ),
    Case(
        "device-no-node-has",
        [node(f"n{i:02d}") for i in range(40)],
        {"requested_resources": {"gpu": 1}},
        set(),
        {"no gpu": 40},
        "0/40 nodes fit: 40 no gpu",
        Reason.INSUFFICIENT_RESOURCES,
    ),
    Case(
        "device-over-count-takes-nothing",
        [node("g1", resources={"gpu": 2}), node("g2", resources={"gpu": 2})],
        {},  # asks for no gpu at all, but g1 holds 3 of its 2 (its inventory shrank under it)
        {"g2"},
        {"insufficient gpu": 1},
        "1/2 nodes fit: 1 insufficient gpu",
        allocations=[holding("g1", gpu=3)],
    ),
    Case(
        "ratio-cpu-overcommit",
        [node("x1", cpu=16, cpu_allocation_ratio=4.0), node("x2", cpu=16)],
        {"requested_cpu": 40},
        {"x1"},
        {"insufficient cpu": 1},
        "1/2 nodes fit: 1 insufficient cpu",
    ),
    Case(
        "ratio-default-from-config",
        [node("x1", cpu=16), node("x2", cpu=16, cpu_allocation_ratio=1.0)],
        {"requested_cpu": 20},
        {"x1"},
        {"insufficient cpu": 1},
        "1/2 nodes fit: 1 insufficient cpu",
        defaults=CapacityDefaults(cpu_ratio=2.0),
    ),
    Case(
        "reserve-memory",
        [node("x1", memory=1024, reserved={"memory": 512}), node("x2", memory=1024)],
        {"requested_memory": 600},
        {"x2"},
        {"insufficient memory": 1},
        "1/2 nodes fit: 1 insufficient memory",
    ),
    Case(
        "reserve-default-and-ratio",  # floor((100 - 10) x 1.15) = 103 GiB of disk
        [node("x1", disk=100), node("x2", disk=100, reserved={"disk": 0})],
        {"requested_disk": 104},
        {"x2"},
        {"insufficient disk": 1},
        "1/2 nodes fit: 1 insufficient disk",
        defaults=CapacityDefaults(disk_ratio=1.15, reserved_disk=10),
    ),
    Case(
        "lowered-ratio-takes-nothing",  # 8 of cpu allocated, effective cpu now floor(16 x 0.25) = 4
        [node("x1", cpu=16, cpu_allocation_ratio=0.25, disk_allocation_ratio=0.1), node("x2")],
        {"requested_cpu": 1},
        {"x2"},
        {"insufficient cpu": 1},
        "1/2 nodes fit: 1 insufficient cpu",
        allocations=[used("x1", cpu=8)],
    ),
    Case(
        "lowered-disk-ratio-takes-nothing-even-without-disk",
        [node("x1", disk=100, disk_allocation_ratio=0.1), node("x2")],
        {},
        {"x2"},
        {"insufficient disk": 1},
        "1/2 nodes fit: 1 insufficient disk",
        allocations=[used("x1", disk=50)],
    ),
    Case(
        "tag-alternatives",
        [node("v1", tags=["V100M16"]), node("v2", tags=["V100M32"]), node("a1", tags=["A100"])],
        {"required_tags": ["V100M16|V100M32"]},
        {"v1", "v2"},
        {"missing tags": 1},
        "2/3 nodes fit: 1 missing tags",
    ),
    Case(
        "tag-alternatives-and-plain",
        [node("v1", tags=["V100M16", "ssd"]), node("v2", tags=["V100M32"]), node("a1", tags=["ssd"])],
        {"required_tags": ["V100M16|V100M32|unknown", "ssd"]},
        {"v1"},
        {"missing tags": 2},
        "1/3 nodes fit: 2 missing tags",
    ),
    Case(
        "forbidden-tags",
        [node("m1", tags=["maintenance"]), node("m2", tags=["spot", "ssd"]), node("n1", tags=["ssd"])],
        {"forbidden_tags": ["maintenance", "spot", "never-seen"]},
        {"n1"},
        {"forbidden tags": 2},
        "1/3 nodes fit: 2 forbidden tags",
    ),
    Case(
        "anti-affinity-soft-prefers",
        THREE,
        {"anti_affinity_group": "db", "anti_affinity_mode": "soft"},
        {"n1", "n2", "n3"},
        {},
        "3/3 nodes fit",
        allocations=[holding("n1", "db", soft=True), holding("n2", "db", soft=True)],
        preferred={"n3"},
    ),
    Case(
        "anti-affinity-soft-never-refuses",
        THREE,
        {"anti_affinity_group": "db", "anti_affinity_mode": "soft"},
        {"n1", "n2", "n3"},
        {},
        "3/3 nodes fit",
        allocations=[holding(n, "db", soft=True) for n in ("n1", "n2", "n3")],
    ),
    Case(
        "anti-affinity-soft-respects-a-hard-member",
        THREE,
        {"anti_affinity_group": "db", "anti_affinity_mode": "soft"},
        {"n2", "n3"},
        {"anti-affinity": 1},
        "2/3 nodes fit: 1 anti-affinity",
        allocations=[holding("n1", "db"), holding("n2", "db", soft=True), holding("n3", "db", soft=True)],
    ),
    Case(
        "anti-affinity-hard-avoids-soft-members",
        THREE,
        {"anti_affinity_group": "db"},
        {"n3"},
        {"anti-affinity": 2},
        "1/3 nodes fit: 2 anti-affinity",
        allocations=[holding("n1", "db", soft=True), holding("n2", "db")],
    ),
    Case(
        "spread-hard",  # az1 holds 1, az2 and az3 none: az1 would make the skew 2
        ZONED,
        {"spread_group": "web"},
        {"b1", "c1"},
        {"zone spread": 2},
        "2/4 nodes fit: 2 zone spread",
        allocations=[holding("a1", spread="web")],
    ),
    Case(
        "spread-hard-max-skew-2",
        ZONED,
        {"spread_group": "web"},
        {"a1", "a2", "b1", "c1"},
        {},
        "4/4 nodes fit",
        allocations=[holding("a1", spread="web")],
        max_skew=2,
    ),
    Case(
        "spread-hard-zone-without-room-does-not-block",  # az2 and az3 are full: az1 may take it
        ZONED,
        {"spread_group": "web", "requested_cpu": 8},
        {"a1", "a2"},
        {"insufficient cpu": 2},
        "2/4 nodes fit: 2 insufficient cpu",
        allocations=[holding("a1", spread="web"), used("b1", cpu=10), used("c1", cpu=10)],
    ),
    Case(
        "spread-other-group-ignored",
        ZONED,
        {"spread_group": "db"},
        {"a1", "a2", "b1", "c1"},
        {},
        "4/4 nodes fit",
        allocations=[holding("a1", spread="web"), holding("a2", spread="web")],
    ),
    Case(
        "spread-soft-prefers",
        ZONED,
        {"spread_group": "web", "spread_mode": "soft"},
        {"a1", "a2", "b1", "c1"},
        {},
        "4/4 nodes fit",
        allocations=[holding("a1", spread="web"), holding("b1", spread="web")],
        preferred={"c1"},
    ),
]

CASES = [
    Case(
        "pool",
        [
            node("a1", pool="a"),
            node("a2", pool="a"),
            node("b1", pool="b"),
            node("b2", pool="b"),
            node("b3", pool="b"),
        ],
        {"requested_pool": "b"},
        {"b1", "b2", "b3"},
        {"pool mismatch": 2},
        "3/5 nodes fit: 2 pool mismatch",
    ),
    Case(
        "pool-unknown",
        [node("a1", pool="a"), node("b1", pool="b")],
        {"requested_pool": "zz"},
        set(),
        {"pool mismatch": 2},
        "0/2 nodes fit: 2 pool mismatch",
        Reason.UNKNOWN_POOL,
    ),
    Case(
        "dedicated-request-needs-dedicated-node",
        DEDICATED_MIX,
        {"dedicated": True},
        {"d1"},
        {"dedicated mismatch": 2},
        "1/3 nodes fit: 2 dedicated mismatch",
    ),
    Case(
        "dedicated-node-refuses-shared-request",
        DEDICATED_MIX,
        {},
        {"n1", "n2"},
        {"dedicated mismatch": 1},
        "2/3 nodes fit: 1 dedicated mismatch",
    ),
    Case(
        "dedicated-exclusive-off-takes-shared",
        DEDICATED_MIX,
        {},
        {"d1", "n1", "n2"},
        {},
        "3/3 nodes fit",
        exclusive=False,
    ),
    Case(
        "dedicated-exclusive-off-still-needs-dedicated",
        DEDICATED_MIX,
        {"dedicated": True},
        {"d1"},
        {"dedicated mismatch": 2},
        "1/3 nodes fit: 2 dedicated mismatch",
        exclusive=False,
    ),
    Case(
        "dedicated-none-in-pool",
        [node("n1"), node("n2"), node("d1", pool="other", dedicated=True)],
        {"dedicated": True},
        set(),
        {"dedicated mismatch": 2, "pool mismatch": 1},
        "0/3 nodes fit: 2 dedicated mismatch, 1 pool mismatch",
        Reason.INSUFFICIENT_RESOURCES,
    ),
    Case(
        "dedicated-whole-pool",
        [node("d1", pool="ai", dedicated=True), node("d2", pool="ai", dedicated=True), node("n1")],
        {"requested_pool": "ai", "dedicated": True},
        {"d1", "d2"},
        {"pool mismatch": 1},
        "2/3 nodes fit: 1 pool mismatch",
    ),
    Case("cordoned", THREE, {}, {"n1", "n3"}, {"cordoned": 1}, "2/3 nodes fit: 1 cordoned", cordon=["n2"]),
    Case(
        "cordoned-in-inventory",
        [node("n1", cordoned=True), node("n2")],
        {},
        {"n2"},
        {"cordoned": 1},
        "1/2 nodes fit: 1 cordoned",
    ),
    Case(
        "cordoned-elsewhere-counts-as-pool",
        [node("n1"), node("o1", pool="other")],
        {},
        {"n1"},
        {"pool mismatch": 1},
        "1/2 nodes fit: 1 pool mismatch",
        cordon=["o1"],
    ),
    Case(
        "all-cordoned",
        [node("n1"), node("n2")],
        {},
        set(),
        {"cordoned": 2},
        "0/2 nodes fit: 2 cordoned",
        Reason.NO_ONLINE_NODES,
        cordon=["n1", "n2"],
    ),
    Case(
        "offline-and-suspicious",
        [*THREE, node("n4")],
        {},
        {"n3", "n4"},
        {"offline": 1, "suspicious": 1},
        "2/4 nodes fit: 1 offline, 1 suspicious",
        # n1 silent 100 s (> 20: offline), n2 15 s (> 10: suspicious), n3 5 s, n4 never sent one
        heartbeats={"n1": NOW - 100, "n2": NOW - 15, "n3": NOW - 5},
    ),
    Case(
        "liveness-boundaries",
        THREE,
        {},
        {"n1"},
        {"offline": 1, "suspicious": 1},
        "1/3 nodes fit: 1 offline, 1 suspicious",
        # thresholds are "silent for longer than": 10 s is fine, 20 s suspicious, a bit more offline
        heartbeats={"n1": NOW - 10, "n2": NOW - 20, "n3": NOW - 20.001},
    ),
    Case(
        "all-down",
        THREE,
        {},
        set(),
        {"cordoned": 1, "offline": 1, "suspicious": 1},
        "0/3 nodes fit: 1 cordoned, 1 offline, 1 suspicious",
        Reason.NO_ONLINE_NODES,
        heartbeats={"n1": NOW - 30, "n2": NOW - 12, "n3": NOW},
        cordon=["n3"],
    ),
    Case(
        "down-and-full-is-insufficient",
        [node("n1"), node("n2")],
        {"requested_cpu": 8},
        set(),
        {"offline": 1, "insufficient cpu": 1},
        "0/2 nodes fit: 1 offline, 1 insufficient cpu",
        Reason.INSUFFICIENT_RESOURCES,
        allocations=[used("n2", cpu=9)],
        heartbeats={"n1": NOW - 60},
    ),
    Case(
        "tags-all-required",
        TAGGED,
        {"required_tags": ["gpu", "cuda-12"]},
        {"n1"},
        {"missing tags": 2},
        "1/3 nodes fit: 2 missing tags",
    ),
    Case(
        "tags-one",
        TAGGED,
        {"required_tags": ["gpu"]},
        {"n1", "n2"},
        {"missing tags": 1},
        "2/3 nodes fit: 1 missing tags",
    ),
    Case(
        "tags-unknown",
        TAGGED,
        {"required_tags": ["gpu", "tpu"]},
        set(),
        {"missing tags": 3},
        "0/3 nodes fit: 3 missing tags",
        Reason.INSUFFICIENT_RESOURCES,
    ),
    Case(
        "cpu",
        THREE,
        {"requested_cpu": 8},
        {"n1", "n2"},
        {"insufficient cpu": 1},
        "2/3 nodes fit: 1 insufficient cpu",
        allocations=[used("n2", cpu=8), used("n3", cpu=9)],
    ),
    Case(
        "memory",
        THREE,
        {"requested_memory": 600},
        {"n1"},
        {"insufficient memory": 2},
        "1/3 nodes fit: 2 insufficient memory",
        allocations=[used("n2", memory=425), used("n3", memory=1000)],
    ),
    Case(
        "disk",
        [node("n1"), node("n2", disk=0), node("n3")],
        {"requested_disk": 50},
        {"n1"},
        {"insufficient disk": 2},
        "1/3 nodes fit: 2 insufficient disk",
        allocations=[used("n3", disk=51)],
    ),
    Case(
        "no-disk-asked-fits-diskless", [node("n1"), node("n2", disk=0)], {}, {"n1", "n2"}, {}, "2/2 nodes fit"
    ),
    Case(
        "max-vms",
        [node("n1", max_vms=1), node("n2", max_vms=1), node("n3", max_vms=2)],
        {},
        {"n2", "n3"},
        {"max vms reached": 1},
        "2/3 nodes fit: 1 max vms reached",
        allocations=[used("n1"), used("n3")],
    ),
    Case(
        "anti-affinity",
        THREE,
        {"anti_affinity_group": "db"},
        {"n2", "n3"},
        {"anti-affinity": 1},
        "2/3 nodes fit: 1 anti-affinity",
        allocations=[used("n1", group="db"), used("n2", group="web")],
    ),
    Case(
        "anti-affinity-other-group",
        THREE,
        {"anti_affinity_group": "cache"},
        {"n1", "n2", "n3"},
        {},
        "3/3 nodes fit",
        allocations=[used("n1", group="db")],
    ),
    Case(
        "anti-affinity-no-group",
        THREE,
        {},
        {"n1", "n2", "n3"},
        {},
        "3/3 nodes fit",
        allocations=[used("n1", group="db")],
    ),
    Case(
        "anti-affinity-everywhere",
        [node("n1"), node("n2"), node("o1", pool="other")],
        {"anti_affinity_group": "db"},
        set(),
        {"anti-affinity": 2, "pool mismatch": 1},
        "0/3 nodes fit: 2 anti-affinity, 1 pool mismatch",
        Reason.INSUFFICIENT_RESOURCES,
        allocations=[used("n1", group="db"), used("n2", group="db"), used("o1", group="db")],
    ),
    Case(
        "counted-under-first-failing-filter",
        THREE,
        {"requested_memory": 512},
        {"n3"},
        {"cordoned": 1, "insufficient memory": 1},
        "1/3 nodes fit: 1 cordoned, 1 insufficient memory",
        allocations=[used("n1", memory=1000), used("n2", memory=1000)],
        cordon=["n1"],
    ),
    Case(
        "brief-example",
        [
            node("a1", pool="a"),
            node("a2", pool="a"),
            node("a3", pool="a"),
            node("b1", pool="b"),
            node("b2", pool="b"),
        ],
        {"requested_pool": "a", "requested_memory": 2048},
        set(),
        {"insufficient memory": 3, "pool mismatch": 2},
        "0/5 nodes fit: 3 insufficient memory, 2 pool mismatch",
        Reason.INSUFFICIENT_RESOURCES,
    ),
    Case(
        "equal-counts-keep-filter-order",
        [node("a1"), node("a2"), node("b1", pool="b"), node("b2", pool="b")],
        {"requested_cpu": 17},
        set(),
        {"pool mismatch": 2, "insufficient cpu": 2},
        "0/4 nodes fit: 2 pool mismatch, 2 insufficient cpu",
        Reason.INSUFFICIENT_RESOURCES,
    ),
    *RESOURCE_CASES,
]


def build(case: Case) -> FleetView:
    fleet = FleetView.build(
        case.nodes, case.allocations, suspicious_after=10, offline_after=20, defaults=case.defaults
    )
    for name, when in case.heartbeats.items():
        fleet.heartbeat(name, when)
    for name in case.cordon:
        fleet.set_cordoned(name, True)
    return fleet


def request(case: Case) -> SchedulingRequest:
    return SchedulingRequest.model_validate(
        {"task_id": "t", "requested_cpu": 1, "requested_memory": 1, **case.request}
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_filter_table(case: Case) -> None:
    fleet = build(case)
    feas = feasible_nodes(fleet, request(case), now=NOW, exclusive=case.exclusive, max_skew=case.max_skew)
    fitting = (
        {fleet.names[feas.start + int(i)] for i in np.flatnonzero(feas.feasible_mask())}
        if feas.count
        else set()
    )
    assert fitting == (case.fits if case.preferred is None else case.preferred)
    assert feas.count == len(case.fits)
    assert feas.rejections == case.rejections
    assert feas.explain() == case.explain
    assert feas.total == len(case.nodes)
    if case.fits:
        assert sum(case.rejections.values()) == len(case.nodes) - len(case.fits)
    else:
        # On a failure every node is accounted for, exactly once.
        assert sum(feas.rejections.values()) == len(case.nodes)
        assert feas.failure_reason() is case.reason


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_strategy_respects_the_filters(case: Case, strategy: str) -> None:
    """The placer's decision: a node among the survivors, or the reason code and the same explanation."""
    fleet = build(case)
    placer = Placer(strategy, dedicated_exclusive=case.exclusive, spread_max_skew=case.max_skew)
    decision = placer.decide(fleet, request(case), now=NOW)
    assert decision.rejections == case.rejections
    assert decision.total == len(case.nodes)
    if case.fits:
        assert decision.node in (case.fits if case.preferred is None else case.preferred)
        assert decision.reason is None
        assert decision.candidates == len(case.fits)
        assert decision.message == f"{decision.node} by {strategy}; {case.explain}"
        assert fleet.names[decision.node_index] == decision.node  # type: ignore[index]
    else:
        assert decision.node is None and decision.node_index is None
        assert decision.reason is case.reason
        assert decision.message.endswith(case.explain)


def test_unknown_pool_message_lists_known_pools() -> None:
    fleet = FleetView.build([node("a1", pool="a"), node("b1", pool="b")])
    decision = Placer().decide(
        fleet, SchedulingRequest(requested_cpu=1, requested_memory=1, requested_pool="zz")
    )
    assert decision.reason is Reason.UNKNOWN_POOL
    assert decision.message == "unknown pool 'zz' (known: a, b); 0/2 nodes fit: 2 pool mismatch"


def test_empty_fleet_is_an_unknown_pool() -> None:
    decision = Placer().decide(
        FleetView.build([]), SchedulingRequest(requested_cpu=1, requested_memory=1), now=0
    )
    assert decision.reason is Reason.UNKNOWN_POOL
    assert decision.message == "unknown pool 'default' (known: none); 0/0 nodes fit"


def test_unknown_strategy_override_is_a_reason_not_an_exception() -> None:
    fleet = FleetView.build(THREE)
    decision = Placer().decide(
        fleet, SchedulingRequest(requested_cpu=1, requested_memory=1, strategy="fastest")
    )
    assert decision.reason is Reason.UNKNOWN_STRATEGY
    assert decision.node is None and decision.strategy == "fastest"
    assert decision.message.startswith("unknown strategy 'fastest'; valid: ")
    assert all(name in decision.message for name in STRATEGY_NAMES)


def test_design_example_explanation() -> None:
    """The exact sentence of docs/contracts.md.

    0/120 nodes fit: 80 insufficient memory, 30 pool mismatch, ...
    """
    nodes = [node(f"n{i:03d}") for i in range(90)] + [node(f"o{i:03d}", pool="other") for i in range(30)]
    allocations = [used(f"n{i:03d}", memory=1000) for i in range(10, 90)]  # 80 nodes with 24 MiB left
    allocations += [used("n000", group="db"), used("n001", group="db")]
    fleet = FleetView.build(nodes, allocations, suspicious_after=10, offline_after=20)
    for i in range(2, 10):
        fleet.heartbeat(f"n{i:03d}", NOW - 60)  # 8 offline
    req = SchedulingRequest(task_id="t", requested_cpu=2, requested_memory=512, anti_affinity_group="db")
    decision = Placer("best_fit").decide(fleet, req, now=NOW)
    assert decision.reason is Reason.INSUFFICIENT_RESOURCES
    assert (
        decision.message
        == "0/120 nodes fit: 80 insufficient memory, 30 pool mismatch, 8 offline, 2 anti-affinity"
    )


def test_the_registry_is_the_filter_order_and_the_source_of_labels() -> None:
    from scheduler.strategies.filters import FILTERS, PREFERENCES

    assert [f.name for f in FILTERS] == [
        "cordoned", "liveness", "dedicated", "required_tags", "forbidden_tags", "device_kinds",
        "anti_affinity", "cpu", "memory", "disk", "devices", "max_vms", "zone_spread",
    ]  # fmt: skip
    assert [p.name for p in PREFERENCES] == ["soft_anti_affinity", "soft_zone_spread"]
    labels = {label for f in FILTERS for label in f.labels}
    for case in CASES:  # every count in the table is under a registered label (or the pool's)
        for label in case.rejections:
            assert (
                label == "pool mismatch"
                or label in labels
                or any("{kind}" in t and label.startswith(t.split("{kind}")[0]) for t in labels)
            ), label


def test_a_new_constraint_is_one_registered_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a constraint takes a function and its registration; the explanation follows by itself."""
    from scheduler.strategies import filters

    monkeypatch.setattr(filters, "FILTERS", list(filters.FILTERS))

    @filters.register("even_names", "odd name")
    def _even(x: filters.FilterInput, f: filters.Narrowing) -> bool:
        odd = np.array([int(n[-1]) % 2 == 1 for n in x.fleet.names[x.start : x.stop]])
        return f.keep("odd name", ~odd)

    fleet = FleetView.build(THREE)
    feas = feasible_nodes(fleet, SchedulingRequest(requested_cpu=1, requested_memory=1), now=NOW)
    assert feas.explain() == "1/3 nodes fit: 2 odd name"
    with pytest.raises(ValueError, match="registered twice"):
        filters.register("cpu", "again")(_even)
