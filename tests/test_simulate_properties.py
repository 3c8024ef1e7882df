"""Properties of the simulator's quality figures and of device avoidance, on random fleets and traces.

Why: ``simulate`` keeps its figures incrementally (vCPUs placed, nodes in
use, utilization along the trace) to stay fast, and incremental bookkeeping
drifts silently when a path is missed (a release of a rejected task, a
duplicate, a node emptied). Each property recomputes a figure from scratch
and compares. Device avoidance must never turn a fit into a rejection: a
request placed without it is placed with it, and the reverse.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.fleet import FleetView
from scheduler.models import Node, ReleaseRequest, SchedulingRequest
from scheduler.simulate import eligible_nodes, simulate
from scheduler.strategies import STRATEGY_NAMES, Placer, get_strategy
from scheduler.strategies.filters import feasible_nodes

GIB = 1024


@st.composite
def fleets(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(1, 6))
    nodes = []
    for i in range(count):
        gpus = draw(st.sampled_from([0, 0, 2, 4]))
        nodes.append(
            Node.model_validate(
                {
                    "name": f"n{i}",
                    "ip": f"10.0.0.{i + 1}",
                    "cpu": draw(st.sampled_from([4, 8, 16])),
                    "memory": draw(st.sampled_from([4, 8, 32])) * GIB,
                    "disk": 100,
                    "max_vms": draw(st.integers(1, 8)),
                    "resources": {"gpu": gpus} if gpus else {},
                    "zone": draw(st.sampled_from(["a", "b"])),
                }
            )
        )
    return nodes


@st.composite
def traces(draw: st.DrawFn) -> list[SchedulingRequest | ReleaseRequest]:
    items: list[SchedulingRequest | ReleaseRequest] = []
    ids = itertools.count()
    for _ in range(draw(st.integers(1, 40))):
        if items and draw(st.integers(0, 4)) == 0:
            items.append(ReleaseRequest(release=f"t{draw(st.integers(0, next(ids)))}"))
            continue
        gpus = draw(st.sampled_from([0, 0, 0, 1, 2]))
        n = next(ids)
        duplicate = n > 0 and draw(st.integers(0, 9)) == 0  # the same task id again: a no-op
        items.append(
            SchedulingRequest(
                task_id=f"t{draw(st.integers(0, n - 1)) if duplicate else n}",
                requested_cpu=draw(st.sampled_from([1, 2, 4, 8])),
                requested_memory=draw(st.sampled_from([1, 2, 4, 16])) * GIB,
                requested_resources={"gpu": gpus} if gpus else {},
                anti_affinity_group=draw(st.sampled_from([None, None, "g"])),
                spread_group=draw(st.sampled_from([None, None, "s"])),
            )
        )
    return items


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes=fleets(), trace=traces(), strategy=st.sampled_from(STRATEGY_NAMES))
def test_incremental_figures_match_a_recount(
    nodes: list[Node], trace: list[SchedulingRequest | ReleaseRequest], strategy: str
) -> None:
    fleet = FleetView.build(nodes)
    result = simulate(fleet, trace, Placer(strategy))
    decided = [
        (item, line)
        for item, line in zip(trace, result.lines, strict=True)
        if isinstance(item, SchedulingRequest) and not line["message"].startswith("duplicate")
    ]
    assert result.placed == sum(line["node"] is not None for _, line in decided)
    assert result.rejected == sum(line["node"] is None for _, line in decided)
    assert result.vcpus_placed == sum(
        item.requested_cpu for item, line in decided if line["node"] is not None
    )
    used_now = int((fleet.cap_cpu - fleet.free_cpu).sum()) / max(1, int(fleet.cap_cpu.sum()))
    if result.timeline and result.timeline[-1][0] == len(trace):
        assert abs(result.timeline[-1][1] - used_now) < 1e-9
    assert result.summary()["nodes_used"] <= result.peak_nodes_used <= len(nodes)
    for figures in result.summary()["stranded"].values():
        assert 0.0 <= figures["cpu"] <= 1.0 and 0.0 <= figures["memory"] <= 1.0
    for pool, frag in result.first_fragmentation.items():
        line = result.lines[frag.line - 1]
        assert line["node"] is None and line["reason"] == "insufficient_resources", (pool, line)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes=fleets(), trace=traces(), strategy=st.sampled_from(STRATEGY_NAMES))
def test_device_avoidance_never_turns_a_fit_into_a_rejection(
    nodes: list[Node], trace: list[SchedulingRequest | ReleaseRequest], strategy: str
) -> None:
    """Replayed once with avoidance and once without, decision by decision on the same state."""
    fleet = FleetView.build(nodes)
    plain = get_strategy(strategy)
    plain.avoid_devices = False
    without = Placer("least_loaded", extra={"plain": plain})
    with_it = Placer(strategy)
    for item in trace:
        if isinstance(item, ReleaseRequest):
            fleet.release(item.release)
            continue
        if fleet.allocation(item.task_id) is not None:
            continue
        other = without.decide(fleet, item.model_copy(update={"strategy": "plain"}), now=0.0)
        feas = feasible_nodes(fleet, item, now=0.0)
        with_free_device = (fleet.free_dev[:, feas.start : feas.stop] > 0).any(axis=0)  # before placement
        chosen = with_it.place(fleet, item, now=0.0)
        assert chosen.placed == other.placed, (chosen.message, other.message)
        if (
            chosen.node_index is not None
            and not item.requested_resources
            and with_free_device.size
            and with_free_device[chosen.node_index - feas.start]
        ):
            # A node with a free device was taken: no candidate without one existed.
            assert not (feas.feasible_mask() & ~with_free_device).any(), chosen.message


def test_eligible_nodes_ignores_capacity_only() -> None:
    nodes = [
        Node.model_validate(
            {"name": "a", "ip": "10.0.0.1", "cpu": 4, "memory": 4096, "disk": 10, "tags": ["x"]}
        ),
        Node.model_validate({"name": "b", "ip": "10.0.0.2", "cpu": 4, "memory": 4096, "disk": 10}),
    ]
    fleet = FleetView.build(nodes)
    big = SchedulingRequest(task_id="t", requested_cpu=64, requested_memory=1, required_tags=["x"])
    found = eligible_nodes(fleet, big)
    assert found is not None and found[2].tolist() == [True, False]
