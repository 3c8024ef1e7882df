"""FleetView: the arrays the decisions read, and the bookkeeping that makes overcommit impossible.

Why these matter: ``reserve`` is the last line of defence of docs/contracts.md
invariant 1 (no overcommit) and invariant 2 (one allocation per task), even
against a buggy strategy; snapshots must be truly independent because the
worker decides on a copy while the store commits; and an inventory change
must carry every running VM over, or capacity would silently reappear.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from scheduler.fleet import Allocation, CapacityError, FleetView
from scheduler.models import Node, SchedulingRequest


def node(name: str, **kw: Any) -> Node:
    base: dict[str, Any] = {
        "name": name,
        "ip": "10.0.0.1",
        "cpu": 16,
        "memory": 1024,
        "disk": 100,
        "max_vms": 4,
    }
    return Node.model_validate({**base, **kw})


def req(
    task_id: str, cpu: int = 1, memory: int = 1, disk: int = 0, group: str | None = None
) -> SchedulingRequest:
    return SchedulingRequest(
        task_id=task_id,
        requested_cpu=cpu,
        requested_memory=memory,
        requested_disk=disk,
        anti_affinity_group=group,
    )


def state(fleet: FleetView, name: str) -> tuple[int, int, int, int]:
    i = fleet.index[name]
    return int(fleet.free_cpu[i]), int(fleet.free_mem[i]), int(fleet.free_disk[i]), int(fleet.vms[i])


def test_build_orders_by_pool_then_name_and_slices_pools() -> None:
    fleet = FleetView.build(
        [node("c", pool="b"), node("b", pool="a"), node("a", pool="b"), node("z", pool="a")]
    )
    assert fleet.names == ["b", "z", "a", "c"]
    assert fleet.pools == {"a": (0, 2), "b": (2, 4)}
    assert fleet.index == {"b": 0, "z": 1, "a": 2, "c": 3}
    assert fleet.pools_of == ["a", "a", "b", "b"]


def test_duplicate_node_names_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate node names: x"):
        FleetView.build([node("x"), node("y"), node("x", pool="other")])


def test_build_applies_allocations_in_bulk() -> None:
    allocations = [
        Allocation("t1", "a", 3, 100, 10, "g"),
        Allocation("t2", "a", 2, 50, 0),
        Allocation("t3", "b", 1, 1, 1, "g"),
        Allocation("t1", "b", 9, 9, 9),  # the same task twice: only the first counts
        Allocation("t4", "gone", 1, 1, 1),  # a node no longer in the inventory: no error
    ]
    fleet = FleetView.build([node("a"), node("b")], allocations)
    assert state(fleet, "a") == (16 - 5, 1024 - 150, 100 - 10, 2)
    assert state(fleet, "b") == (15, 1023, 99, 1)
    assert fleet.allocation("t1") == Allocation("t1", "a", 3, 100, 10, "g")
    assert fleet.groups == {"g": {0: 1, 1: 1}}
    assert set(fleet.allocations) == {"t1", "t2", "t3", "t4"}


def test_allocations_on_unknown_nodes_survive_a_restart() -> None:
    """A VM on a node missing from the inventory at start-up still holds its allocation.

    Otherwise a redelivered request for that task would look new (a second
    allocation, docs/contracts.md invariant 2), and when the node is imported again
    it would look empty and be offered twice (invariant 1).
    """
    fleet = FleetView.build([node("a")], [Allocation("t1", "b", 4, 100, 10)])
    assert fleet.allocation("t1") == Allocation("t1", "b", 4, 100, 10)
    assert state(fleet, "a") == (16, 1024, 100, 0)
    back = fleet.with_inventory([node("a"), node("b")])
    assert state(back, "b") == (12, 924, 90, 1)
    # Released while the node is still gone: returned once, no array touched.
    assert fleet.release("t1") == Allocation("t1", "b", 4, 100, 10)
    assert fleet.release("t1") is None
    assert state(fleet, "a") == (16, 1024, 100, 0)


def test_reserve_takes_resources_and_records_the_allocation() -> None:
    fleet = FleetView.build([node("a"), node("b")])
    alloc = fleet.reserve(fleet.index["b"], req("t1", cpu=4, memory=256, disk=30, group="web"))
    assert alloc == Allocation("t1", "b", 4, 256, 30, "web")
    assert state(fleet, "b") == (12, 768, 70, 1)
    assert state(fleet, "a") == (16, 1024, 100, 0)
    assert fleet.allocation("t1") == alloc
    assert fleet.groups == {"web": {1: 1}}
    assert fleet.node_usage(1) == {"cpu": 4, "memory": 256, "disk": 30, "vms": 1}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((10, 1, 0), (7, 1, 0)),  # cpu: 17 > 16
        ((1, 1000, 0), (1, 25, 0)),  # memory: 1025 > 1024
        ((1, 1, 90), (1, 1, 11)),  # disk: 101 > 100
    ],
    ids=["cpu", "memory", "disk"],
)
def test_reserve_refuses_overcommit_and_changes_nothing(
    first: tuple[int, int, int], second: tuple[int, int, int]
) -> None:
    fleet = FleetView.build([node("a")])
    fleet.reserve(0, req("t1", *first))
    before = state(fleet, "a")
    with pytest.raises(CapacityError, match="does not fit node a"):
        fleet.reserve(0, req("t2", *second))
    assert state(fleet, "a") == before
    assert fleet.allocation("t2") is None


def test_reserve_exactly_to_capacity_is_allowed() -> None:
    fleet = FleetView.build([node("a")])
    fleet.reserve(0, req("t1", cpu=16, memory=1024, disk=100))
    assert state(fleet, "a") == (0, 0, 0, 1)


def test_reserve_refuses_more_vms_than_max_vms() -> None:
    fleet = FleetView.build([node("a", max_vms=2)])
    fleet.reserve(0, req("t1"))
    fleet.reserve(0, req("t2"))
    with pytest.raises(CapacityError):
        fleet.reserve(0, req("t3"))
    assert state(fleet, "a")[3] == 2


def test_reserve_refuses_a_second_allocation_for_one_task() -> None:
    fleet = FleetView.build([node("a"), node("b")])
    fleet.reserve(0, req("t1", cpu=2))
    with pytest.raises(CapacityError, match="already holds an allocation"):
        fleet.reserve(1, req("t1", cpu=2))
    assert state(fleet, "b") == (16, 1024, 100, 0)
    assert fleet.allocation("t1") == Allocation("t1", "a", 2, 1, 0)


def test_release_gives_back_and_is_idempotent() -> None:
    fleet = FleetView.build([node("a")])
    fleet.reserve(0, req("t1", cpu=3, memory=10, disk=5, group="g"))
    fleet.reserve(0, req("t2", cpu=1, group="g"))
    released = fleet.release("t1")
    assert released == Allocation("t1", "a", 3, 10, 5, "g")
    assert state(fleet, "a") == (15, 1023, 100, 1)
    assert fleet.groups == {"g": {0: 1}}
    assert fleet.release("t1") is None  # a redelivered release changes nothing
    assert state(fleet, "a") == (15, 1023, 100, 1)
    fleet.release("t2")
    assert fleet.groups == {}
    assert state(fleet, "a") == (16, 1024, 100, 0)
    assert fleet.release("never-existed") is None


def test_snapshot_is_independent_both_ways() -> None:
    fleet = FleetView.build([node("a"), node("b")])
    fleet.reserve(0, req("t1", cpu=2, group="g"))
    snap = fleet.snapshot()
    snap.reserve(1, req("t2", cpu=5, group="g"))
    snap.release("t1")
    snap.heartbeat("a", 100.0)
    snap.set_cordoned("b", True)
    # The original saw none of it.
    assert state(fleet, "a") == (14, 1023, 100, 1) and state(fleet, "b") == (16, 1024, 100, 0)
    assert set(fleet.allocations) == {"t1"} and fleet.groups == {"g": {0: 1}}
    assert fleet.heartbeats_seen == 0 and np.isnan(fleet.last_seen).all()
    assert not fleet.cordoned.any() and fleet.cordoned_count == 0
    # And the other way round.
    fleet.reserve(1, req("t3", cpu=1))
    assert state(snap, "b") == (11, 1023, 100, 1)
    assert "t3" not in snap.allocations


def test_with_inventory_carries_allocations_by_node_name() -> None:
    fleet = FleetView.build([node("b"), node("c")])
    fleet.reserve(fleet.index["c"], req("t1", cpu=4, group="g"))
    fleet.heartbeat("c", 50.0)
    fleet.set_cordoned("b", True)
    # A new node that sorts first moves every index; capacity of c grows.
    fresh = fleet.with_inventory([node("a"), node("b"), node("c", cpu=32)])
    assert fresh.names == ["a", "b", "c"]
    assert state(fresh, "c") == (28, 1023, 100, 1)
    assert fresh.allocation("t1") == Allocation("t1", "c", 4, 1, 0, "g")
    assert fresh.groups == {"g": {2: 1}}
    assert fresh.last_seen[2] == 50.0 and fresh.heartbeats_seen == 1
    # Cordoning is part of the inventory a caller passes, not carried from the old view.
    assert fresh.cordoned_count == 0
    fresh.release("t1")
    assert state(fresh, "c") == (32, 1024, 100, 0)


def test_with_inventory_keeps_allocations_of_removed_nodes_for_release() -> None:
    fleet = FleetView.build([node("a"), node("b")])
    fleet.reserve(fleet.index["b"], req("t1", cpu=4))
    without_b = fleet.with_inventory([node("a")])
    assert without_b.allocation("t1") == Allocation("t1", "b", 4, 1, 0)
    assert state(without_b, "a") == (16, 1024, 100, 0)
    # b comes back before the VM is released: its allocation is applied again.
    back = without_b.with_inventory([node("a"), node("b")])
    assert state(back, "b") == (12, 1023, 100, 1)
    # Released while b is gone: returned once, touches no array, not double-freed later.
    assert without_b.release("t1") == Allocation("t1", "b", 4, 1, 0)
    assert without_b.release("t1") is None
    assert state(without_b, "a") == (16, 1024, 100, 0)


def test_heartbeats_judge_liveness_against_an_explicit_now() -> None:
    fleet = FleetView.build(
        [node("a"), node("b"), node("c"), node("d")], suspicious_after=10, offline_after=20
    )
    assert fleet.unhealthy(now=1000.0) is None  # no heartbeat ever: nobody is judged
    fleet.heartbeat("a", 100.0)  # silent 10 at now=110: not yet suspicious (strictly more than 10)
    fleet.heartbeat("b", 99.0)  # silent 11: suspicious
    fleet.heartbeat("c", 90.0)  # silent 20: suspicious, not yet offline
    # d never sent one: not judged, still schedulable
    health = fleet.unhealthy(now=110.0)
    assert health is not None
    suspicious, offline = health
    assert suspicious.tolist() == [False, True, True, False]
    assert offline.tolist() == [False, False, False, False]
    later = fleet.unhealthy(now=110.5)  # half a second on: a turns suspicious, c goes offline
    assert later is not None
    assert later[0].tolist() == [True, True, False, False]
    assert later[1].tolist() == [False, False, True, False]
    assert fleet.heartbeat("unknown", 1.0) is False
    fleet.heartbeat("a", 105.0)  # a second heartbeat from a node does not count it twice
    assert fleet.heartbeats_seen == 3


def test_cordon_bookkeeping() -> None:
    fleet = FleetView.build([node("a"), node("b", cordoned=True)])
    assert fleet.cordoned_count == 1
    assert fleet.set_cordoned("a", True) and fleet.set_cordoned("a", True)  # idempotent
    assert fleet.cordoned_count == 2
    fleet.set_cordoned("b", False)
    assert fleet.cordoned.tolist() == [True, False] and fleet.cordoned_count == 1
    assert fleet.set_cordoned("nope", True) is False


def test_pool_utilization_and_memory_footprint() -> None:
    fleet = FleetView.build([node("a", pool="p"), node("b", pool="p"), node("c", pool="q", disk=0)])
    fleet.reserve(0, req("t1", cpu=8, memory=256, disk=50))
    util = fleet.pool_utilization()
    assert util["p"] == {"cpu": 8 / 32, "memory": 256 / 2048, "disk": 50 / 200, "nodes": 2.0, "vms": 1.0}
    assert util["q"]["disk"] == 0.0  # no disk at all is 0% used, not a division by zero
    # Per node: 8 int64 arrays, 4 float64 (last_seen, 3 reciprocals), 2 bool, an int32 zone code,
    # no tag column and no device row.
    assert fleet.nbytes() == 3 * (8 * 12 + 2 + 4)


def test_frozen_maker_makes_the_same_frozen_objects_as_the_constructor() -> None:
    """The hot path's constructors (allocation, decision) build what ``__init__`` builds."""
    import dataclasses

    from scheduler.fleet import frozen_maker
    from scheduler.models import Decision, Reason

    alloc = frozen_maker(Allocation)("t", "n", 1, 2, 3, "g", (("gpu", 1),), "s", True)
    assert alloc == Allocation("t", "n", 1, 2, 3, "g", (("gpu", 1),), "s", True)
    assert hash(alloc) == hash(Allocation("t", "n", 1, 2, 3, "g", (("gpu", 1),), "s", True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        alloc.cpu = 4  # type: ignore[misc]
    made = frozen_maker(Decision)(
        "t", "best_fit", None, None, Reason.INSUFFICIENT_RESOURCES, "m", {"x": 1}, 0, 3
    )
    assert made == Decision(
        task_id="t",
        strategy="best_fit",
        reason=Reason.INSUFFICIENT_RESOURCES,
        message="m",
        rejections={"x": 1},
        total=3,
    )
    with pytest.raises(TypeError):
        frozen_maker(FleetView)
