"""Properties of the resource model on the fleet view, for every strategy, under any sequence of events.

Why property tests: effective capacity, device counts, hard zone spread and
hard anti-affinity must hold for any fleet and any order of requests,
releases, cancels (releases of tasks never placed), ratio and reserve
changes and inventory updates, not only for the hand-picked rows of
``test_filters.py``. Everything is checked against records kept here,
independently of the fleet's arrays: effective capacity is recomputed with
decimal arithmetic, usage from the allocations this test saw succeed, and a
rejection is accepted only if a brute-force search finds no node that could
have taken the VM.

A ratio lowered (or a reserve raised, or devices removed) under running VMs
may leave a node above its effective capacity: that is accepted, and the
property is then that such a node receives nothing until it fits again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from scheduler.fleet import CapacityDefaults, FleetView
from scheduler.models import Node, SchedulingRequest
from scheduler.strategies import STRATEGY_NAMES, Placer

ZONES = [None, "az1", "az2", "az3"]
TAGS = ["ssd", "v16", "v32"]
KINDS = ["gpu", "nvme"]
RATIOS = [None, 0.5, 1.0, 1.5, 4.0]
DEFAULTS = CapacityDefaults(
    cpu_ratio=2.0, memory_ratio=1.0, disk_ratio=1.0, reserved_cpu=1, reserved_memory=4
)


@dataclass(frozen=True)
class Release:
    which: int  # index into the task ids requested so far (modulo their number)


@dataclass(frozen=True)
class Cancel:
    """A release of a task that was never placed."""


@dataclass(frozen=True)
class Reconfigure:
    """The inventory changes: node ``which`` gets new ratios, reserve, devices, max_vms."""

    which: int
    changes: dict[str, Any]


Op = SchedulingRequest | Release | Cancel | Reconfigure


@dataclass(frozen=True)
class Scenario:
    nodes: list[Node]
    ops: list[Op]
    max_skew: int
    seed: int


def _node_fields(draw: st.DrawFn) -> dict[str, Any]:
    cpu = draw(st.integers(2, 16))
    memory = draw(st.integers(8, 64))
    out: dict[str, Any] = {
        "cpu": cpu,
        "memory": memory,
        "disk": draw(st.sampled_from([0, 20, 40])),
        "max_vms": draw(st.integers(1, 6)),
        "resources": draw(st.dictionaries(st.sampled_from(KINDS), st.integers(1, 4), max_size=2)),
        "cpu_allocation_ratio": draw(st.sampled_from(RATIOS)),
        "memory_allocation_ratio": draw(st.sampled_from(RATIOS)),
        "disk_allocation_ratio": draw(st.sampled_from(RATIOS)),
    }
    if draw(st.booleans()):
        out["reserved"] = {"cpu": draw(st.integers(0, cpu)), "memory": draw(st.integers(0, memory // 2))}
    return out


@st.composite
def nodes_st(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(1, 7))
    return [
        Node.model_validate(
            {
                "name": f"n{k}",
                "ip": "10.0.0.1",
                "zone": draw(st.sampled_from(ZONES)),
                "tags": draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=2)),
                "cordoned": draw(st.integers(0, 9)) == 0,
                **_node_fields(draw),
            }
        )
        for k in range(count)
    ]


@st.composite
def request_st(draw: st.DrawFn, task_id: str) -> SchedulingRequest:
    return SchedulingRequest(
        task_id=task_id,
        requested_cpu=draw(st.integers(1, 8)),
        requested_memory=draw(st.integers(1, 24)),
        requested_disk=draw(st.sampled_from([0, 0, 5, 20])),
        requested_resources=draw(st.dictionaries(st.sampled_from(KINDS), st.integers(1, 3), max_size=2)),
        required_tags=draw(st.lists(st.sampled_from(["ssd", "v16|v32", "v16"]), unique=True, max_size=1)),
        forbidden_tags=draw(st.lists(st.sampled_from(TAGS), unique=True, max_size=1)),
        anti_affinity_group=draw(st.sampled_from([None, None, "g1", "g2"])),
        anti_affinity_mode=draw(st.sampled_from(["hard", "soft"])),
        spread_group=draw(st.sampled_from([None, "web", "web", "db"])),
        spread_mode=draw(st.sampled_from(["hard", "hard", "soft"])),
    )


@st.composite
def scenario_st(draw: st.DrawFn) -> Scenario:
    nodes = draw(nodes_st())
    ops: list[Op] = []
    for k in range(draw(st.integers(1, 30))):
        kind = draw(st.integers(0, 9))
        if kind == 0 and ops:
            ops.append(Release(draw(st.integers(0, 1000))))
        elif kind == 1:
            ops.append(Cancel())
        elif kind == 2:
            ops.append(Reconfigure(draw(st.integers(0, 100)), _node_fields(draw)))
        else:
            ops.append(draw(request_st(f"t{k}")))
    return Scenario(nodes, ops, draw(st.integers(1, 2)), draw(st.integers(0, 2**32 - 1)))


# ------------------------------------------------------------------ the model


def effective(
    capacity: int, reserved: int | None, default_reserve: int, ratio: float | None, default: float
) -> int:
    kept = default_reserve if reserved is None else reserved
    x = Decimal(str(default if ratio is None else ratio))
    return int((Decimal(max(0, capacity - kept)) * x).to_integral_value(rounding=ROUND_FLOOR))


def limits(node: Node) -> dict[str, int]:
    """Effective capacity of every resource of ``node`` under DEFAULTS, recomputed independently."""
    r = node.reserved
    d = DEFAULTS
    out = {
        "cpu": effective(
            node.cpu, r.cpu if r else None, d.reserved_cpu, node.cpu_allocation_ratio, d.cpu_ratio
        ),
        "memory": effective(
            node.memory,
            r.memory if r else None,
            d.reserved_memory,
            node.memory_allocation_ratio,
            d.memory_ratio,
        ),
        "disk": effective(
            node.disk, r.disk if r else None, d.reserved_disk, node.disk_allocation_ratio, d.disk_ratio
        ),
        "vms": node.max_vms,
    }
    for kind in KINDS:
        out[kind] = node.resources.get(kind, 0)
    return out


@dataclass
class Record:
    node: str
    amounts: dict[str, int]
    group: str | None
    soft: bool
    spread: str | None


@dataclass
class Model:
    nodes: dict[str, Node]
    active: dict[str, Record] = field(default_factory=dict)

    def usage(self, name: str) -> dict[str, int]:
        out = dict.fromkeys(("cpu", "memory", "disk", "vms", *KINDS), 0)
        for r in self.active.values():
            if r.node == name:
                for k, v in r.amounts.items():
                    out[k] += v
        return out

    def over(self, name: str) -> bool:
        cap, used = limits(self.nodes[name]), self.usage(name)
        return any(used[k] > cap[k] for k in cap)

    def admissible(self, node: Node, req: SchedulingRequest) -> bool:
        """Every hard rule but zone spread, from the records alone."""
        if node.cordoned or node.dedicated != req.dedicated:
            return False
        tags = set(node.tags)
        if not all(any(alt in tags for alt in entry.split("|")) for entry in req.required_tags):
            return False
        if tags & set(req.forbidden_tags):
            return False
        if self.over(node.name):
            return False
        cap, used = limits(node), self.usage(node.name)
        for k, v in amounts(req).items():
            if used[k] + v > cap[k]:
                return False
        if any(cap[k] == 0 for k in req.requested_resources):
            return False
        if req.anti_affinity_group is not None:
            on_node = [
                r for r in self.active.values() if r.node == node.name and r.group == req.anti_affinity_group
            ]
            if req.anti_affinity_mode == "hard" and on_node:
                return False
            if any(not r.soft for r in on_node):
                return False
        return True

    def spread_ok(self, candidates: list[Node], req: SchedulingRequest, max_skew: int) -> list[Node]:
        """Among admissible ``candidates``, those a hard spread allows:
        zone count <= min over the zones with room + skew - 1."""
        if req.spread_group is None or req.spread_mode != "hard" or not candidates:
            return candidates
        counts: dict[str, int] = {}
        for r in self.active.values():
            if r.spread == req.spread_group:
                zone = self.nodes[r.node].zone or "" if r.node in self.nodes else None
                if zone is not None:
                    counts[zone] = counts.get(zone, 0) + 1
        low = min(counts.get(n.zone or "", 0) for n in candidates)
        return [n for n in candidates if counts.get(n.zone or "", 0) <= low + max_skew - 1]


def amounts(req: SchedulingRequest) -> dict[str, int]:
    return {
        "cpu": req.requested_cpu,
        "memory": req.requested_memory,
        "disk": req.requested_disk,
        "vms": 1,
        **req.requested_resources,
    }


def check_arrays(fleet: FleetView, model: Model) -> None:
    """The fleet's free figures are exactly effective capacity minus recorded usage."""
    for name, node in model.nodes.items():
        i = fleet.index[name]
        cap, used = limits(node), model.usage(name)
        assert int(fleet.free_cpu[i]) == cap["cpu"] - used["cpu"], name
        assert int(fleet.free_mem[i]) == cap["memory"] - used["memory"], name
        assert int(fleet.free_disk[i]) == cap["disk"] - used["disk"], name
        assert int(fleet.vms[i]) == used["vms"], name
        for kind in KINDS:
            j = fleet.dev_index.get(kind)
            free = int(fleet.free_dev[j, i]) if j is not None else 0
            assert free == cap[kind] - used[kind], (name, kind)
        assert bool(fleet.overcommitted()[i]) == model.over(name), name


def run(strategy: str, scenario: Scenario) -> None:
    fleet = FleetView.build(scenario.nodes, defaults=DEFAULTS)
    placer = Placer(strategy, seed=scenario.seed, spread_max_skew=scenario.max_skew)
    model = Model({n.name: n for n in scenario.nodes})
    requested: list[str] = []
    for op in scenario.ops:
        if isinstance(op, Release):
            if requested:
                task_id = requested[op.which % len(requested)]
                released = fleet.release(task_id)
                assert (released is not None) == (task_id in model.active)
                model.active.pop(task_id, None)
        elif isinstance(op, Cancel):
            assert fleet.release(f"never-placed-{len(requested)}") is None
        elif isinstance(op, Reconfigure):
            names = sorted(model.nodes)
            old = model.nodes[names[op.which % len(names)]]
            changed = Node.model_validate({**old.model_dump(mode="json"), "reserved": None, **op.changes})
            model.nodes[old.name] = changed
            fleet = fleet.with_inventory(list(model.nodes.values()))
            event("reconfigured: over" if model.over(old.name) else "reconfigured: fits")
        else:
            requested.append(op.task_id)
            admissible = [n for n in model.nodes.values() if model.admissible(n, op)]
            allowed = model.spread_ok(admissible, op, scenario.max_skew)
            decision = placer.place(fleet, op, now=0.0)
            note(f"{op!r} -> {decision.node} {decision.message}")
            event(f"outcome: {decision.reason or 'placed'}")
            if decision.node is None:
                assert allowed == [], f"{op.task_id} rejected but {[n.name for n in allowed]} could take it"
                assert sum(decision.rejections.values()) == len(model.nodes)
            else:
                chosen = model.nodes[decision.node]
                assert chosen in allowed, (
                    f"{op.task_id} placed on {decision.node}, allowed {[n.name for n in allowed]}"
                )
                if op.anti_affinity_group is not None and op.anti_affinity_mode == "soft":
                    free_of_group = [
                        n
                        for n in allowed
                        if not any(
                            r.node == n.name and r.group == op.anti_affinity_group
                            for r in model.active.values()
                        )
                    ]
                    if free_of_group:  # soft anti-affinity: a node without the group whenever there is one
                        assert chosen in free_of_group
                model.active[op.task_id] = Record(
                    decision.node,
                    amounts(op),
                    op.anti_affinity_group,
                    op.anti_affinity_mode == "soft",
                    op.spread_group,
                )
                cap, used = limits(chosen), model.usage(chosen.name)
                assert all(used[k] <= cap[k] for k in cap), (
                    f"{decision.node} over effective capacity: {used} > {cap}"
                )
        check_arrays(fleet, model)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenario_st())
def test_resource_model_invariants_hold_after_every_step(strategy: str, scenario: Scenario) -> None:
    run(strategy, scenario)
