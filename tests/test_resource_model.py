"""The fleet view's side of the resource model: effective capacity, device accounting, spread bookkeeping.

Why: every filter and strategy reads these arrays, so effective capacity
must be computed exactly as documented (floor((capacity - reserved) x
ratio), decimal ratios taken at their word), devices must be given back on
release and undo, and a ratio lowered under running VMs must leave the node
flagged and closed to new VMs rather than silently overcommitted.
"""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.fleet import CapacityDefaults, CapacityError, FleetView, effective_amount, node_capacity
from scheduler.models import Node, SchedulingRequest
from scheduler.strategies import Placer


def node(name: str, **kw: Any) -> Node:
    base: dict[str, Any] = {
        "name": name,
        "ip": "10.0.0.1",
        "cpu": 16,
        "memory": 1024,
        "disk": 100,
        "max_vms": 8,
    }
    return Node.model_validate({**base, **kw})


def req(task_id: str, cpu: int = 1, memory: int = 1, **extra: Any) -> SchedulingRequest:
    return SchedulingRequest.model_validate(
        {"task_id": task_id, "requested_cpu": cpu, "requested_memory": memory, **extra}
    )


@pytest.mark.parametrize(
    ("capacity", "reserved", "ratio", "expected"),
    [
        (64, 0, 1.0, 64),
        (64, 4, 4.0, 240),  # (64 - 4) x 4
        (100, 0, 1.15, 115),  # 100 x 1.15 is 114.99999999999999 in binary floating point
        (100, 10, 1.15, 103),  # floor(103.5)
        (10, 0, 0.33, 3),
        (7, 0, 0.5, 3),
        (8, 8, 2.0, 0),  # everything kept for the host
        (8, 20, 1.0, 0),  # a configured default larger than a small node: nothing, never negative
        (2**40, 0, 100.0, 100 * 2**40),
    ],
)
def test_effective_amount_is_exact(capacity: int, reserved: int, ratio: float, expected: int) -> None:
    assert effective_amount(capacity, reserved, ratio) == expected


def test_effective_capacity_in_the_arrays_uses_node_values_then_defaults() -> None:
    defaults = CapacityDefaults(cpu_ratio=2.0, memory_ratio=1.5, reserved_memory=24, reserved_cpu=1)
    nodes = [
        node("a"),  # all defaults
        node("b", cpu_allocation_ratio=4.0, reserved={"cpu": 0}),  # own ratio and reserve
        node("c", memory_allocation_ratio=1.15, reserved={"memory": 0}, disk_allocation_ratio=0.5),
    ]
    fleet = FleetView.build(nodes, defaults=defaults)
    for n in nodes:
        i = fleet.index[n.name]
        cap = node_capacity(n, defaults)
        assert (int(fleet.cap_cpu[i]), int(fleet.cap_mem[i]), int(fleet.cap_disk[i])) == (
            cap.effective_cpu,
            cap.effective_memory,
            cap.effective_disk,
        )
    assert fleet.cap_cpu.tolist() == [30, 64, 30]
    assert fleet.cap_mem.tolist() == [1500, 1500, 1177]
    assert fleet.cap_disk.tolist() == [100, 100, 50]


def test_devices_are_reserved_released_and_restored() -> None:
    fleet = FleetView.build([node("g1", resources={"gpu": 8, "nvme": 4}), node("n1")])
    g = fleet.index["g1"]
    gpu, nvme = fleet.dev_index["gpu"], fleet.dev_index["nvme"]
    alloc = fleet.reserve(g, req("t1", requested_resources={"gpu": 6, "nvme": 1}))
    assert alloc.resources == (("gpu", 6), ("nvme", 1))
    assert (int(fleet.free_dev[gpu, g]), int(fleet.free_dev[nvme, g])) == (2, 3)
    assert fleet.node_usage(g)["gpu"] == 6
    with pytest.raises(CapacityError):
        fleet.reserve(g, req("t2", requested_resources={"gpu": 3}))
    with pytest.raises(CapacityError):  # n1 has no gpu at all
        fleet.reserve(fleet.index["n1"], req("t3", requested_resources={"gpu": 1}))
    assert fleet.release("t1") == alloc
    assert int(fleet.free_dev[gpu, g]) == 8
    fleet.restore(alloc)
    assert int(fleet.free_dev[gpu, g]) == 2
    assert fleet.pool_utilization()["default"]["gpu"] == 6 / 8


def test_devices_survive_a_rebuild_and_an_inventory_that_drops_them() -> None:
    fleet = FleetView.build([node("g1", resources={"gpu": 4})])
    fleet.reserve(0, req("t1", requested_resources={"gpu": 3}))
    rebuilt = FleetView.build([node("g1", resources={"gpu": 4})], [a for _, a in fleet.allocations.values()])
    assert int(rebuilt.free_dev[rebuilt.dev_index["gpu"], 0]) == 1
    shrunk = fleet.with_inventory([node("g1")])  # the gpus are gone from the inventory, the VM is not
    assert int(shrunk.free_dev[shrunk.dev_index["gpu"], 0]) == -3
    assert shrunk.overcommitted().tolist() == [True]
    assert Placer().decide(shrunk, req("t2"), now=0).node is None  # takes nothing, not even a cpu-only VM
    shrunk.release("t1")
    assert Placer().decide(shrunk, req("t2"), now=0).node == "g1"


def test_lowering_a_ratio_under_running_vms_is_accepted_and_closes_the_node() -> None:
    fleet = FleetView.build([node("a", cpu=16, cpu_allocation_ratio=2.0), node("b", cpu=16)])
    placer = Placer("best_fit")
    for k in range(3):
        fleet.reserve(fleet.index["a"], req(f"t{k}", cpu=8))
    lowered = fleet.with_inventory([node("a", cpu=16, cpu_allocation_ratio=1.0), node("b", cpu=16)])
    a = lowered.index["a"]
    assert int(lowered.free_cpu[a]) == 16 - 24
    assert lowered.overcommitted().tolist() == [True, False]
    decision = placer.decide(lowered, req("x", cpu=1), now=0)
    assert decision.node == "b"
    assert decision.rejections == {"insufficient cpu": 1}
    lowered.release("t0")
    lowered.release("t1")  # 8 of 16 in use now: fits again
    assert lowered.overcommitted().tolist() == [False, False]
    assert placer.decide(lowered, req("x", cpu=8), now=0).candidates == 2
    assert placer.decide(lowered, req("x", cpu=9), now=0).node == "b"


def test_defaults_change_reaches_nodes_without_their_own_values() -> None:
    fleet = FleetView.build([node("a"), node("b", cpu_allocation_ratio=1.0)])
    raised = fleet.with_inventory(
        [node("a"), node("b", cpu_allocation_ratio=1.0)], CapacityDefaults(cpu_ratio=3.0)
    )
    assert raised.cap_cpu.tolist() == [48, 16]
    assert raised.defaults.cpu_ratio == 3.0
    assert raised.with_inventory([node("a"), node("b")]).cap_cpu.tolist() == [48, 48]  # defaults carried over


def test_spread_and_anti_affinity_bookkeeping_follow_reserve_and_release() -> None:
    fleet = FleetView.build([node("a", zone="az1"), node("b", zone="az2"), node("c")])
    fleet.reserve(0, req("t1", spread_group="web", anti_affinity_group="g"))
    fleet.reserve(1, req("t2", spread_group="web", anti_affinity_group="g", anti_affinity_mode="soft"))
    fleet.reserve(2, req("t3", spread_group="web"))
    counts = fleet.spread["web"]
    assert {fleet.zone_names[z]: int(counts[z]) for z in range(len(counts))} == {"": 1, "az1": 1, "az2": 1}
    assert fleet.groups["g"] == {0: 1, 1: 1}
    assert fleet.hard_groups["g"] == {0: 1}  # the soft member is not a hard one
    copy = fleet.snapshot()
    fleet.release("t1")
    assert "g" not in fleet.hard_groups and fleet.groups["g"] == {1: 1}
    assert int(fleet.spread["web"][fleet.zone_code[0]]) == 0
    assert copy.hard_groups["g"] == {0: 1} and int(copy.spread["web"][copy.zone_code[0]]) == 1
    for t in ("t2", "t3"):
        fleet.release(t)
    assert fleet.spread == {} and fleet.groups == {} and fleet.hard_groups == {}


def test_zone_spread_places_round_the_zones() -> None:
    """Nine VMs of one group on three zones of unequal size: three per zone, whatever the strategy packs."""
    nodes = [node(f"a{i}", zone="az1") for i in range(5)] + [node("b0", zone="az2"), node("c0", zone="az3")]
    fleet = FleetView.build(nodes)
    placer = Placer("best_fit")
    zones = []
    for k in range(9):
        decision = placer.place(fleet, req(f"t{k}", spread_group="web"), now=0)
        assert decision.node is not None
        zones.append(fleet.zones[fleet.index[decision.node]])
    assert sorted(zones) == ["az1"] * 3 + ["az2"] * 3 + ["az3"] * 3


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"allocation_ratios": {"cpu": 0}}, "allocation_ratios.cpu: Input should be greater than 0"),
        (
            {"allocation_ratios": {"memory": 101}},
            "allocation_ratios.memory: Input should be less than or equal",
        ),
        (
            {"allocation_ratios": {"disk": float("nan")}},
            "allocation_ratios.disk: Input should be a finite number",
        ),
        ({"allocation_ratios": {"gpu": 2}}, "allocation_ratios.gpu: Extra inputs are not permitted"),
        ({"reserved": {"memory": -1}}, "reserved.memory: Input should be greater than or equal to 0"),
        ({"spread_max_skew": 0}, "spread_max_skew: Input should be greater than or equal to 1"),
    ],
)
def test_bad_resource_configuration_names_the_key(values: dict[str, Any], key: str) -> None:
    from scheduler.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(**values)
    assert key in str(info.value)


def test_configured_defaults_reach_the_fleet() -> None:
    from scheduler.config import load_settings

    settings = load_settings(allocation_ratios={"cpu": 4.0}, reserved={"memory": 24})
    assert settings.capacity_defaults() == CapacityDefaults(cpu_ratio=4.0, reserved_memory=24)
    fleet = FleetView.build([node("a")], defaults=settings.capacity_defaults())
    assert (int(fleet.cap_cpu[0]), int(fleet.cap_mem[0])) == (64, 1000)
