"""The filters' shortcuts against a plain per-node reference of the same rules, on random fleets.

Why: a decision is cheap because most filters return at once when they
cannot remove anything (no tags asked for, no node at its ``max_vms``, ...)
and because some figures are kept between decisions (a bound on the room
left under ``max_vms`` per pool, the disk term of the weighted utilization,
explanations made only when read). Each shortcut is a claim that skipping
changes nothing. Here the fleet goes through random placements and
releases, and after each step a random request is filtered both ways: the
survivors, the preferred nodes and the count under every label must be
the same as a node-by-node reading of the rules (node state, then request
constraints, then capacity, then zone spread, each node counted under the
first rule it fails), and the kept scores must equal freshly computed ones.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from scheduler.fleet import FleetView
from scheduler.models import Node, SchedulingRequest
from scheduler.strategies import STRATEGY_NAMES, Placer
from scheduler.strategies import filters as F
from scheduler.strategies.base import ScoringStrategy
from scheduler.strategies.filters import Feasibility, feasible_nodes
from scheduler.strategies.least_loaded import LeastLoaded
from scheduler.strategies.placer import explanation
from scheduler.strategies.resources import Hybrid

NOW = 1000.0
TAGS = ("ssd", "nvme", "gpu-host")
POOLS = ("default", "batch")
ZONES = (None, "z1", "z2", "z3")
GROUPS = ("g1", "g2")


@st.composite
def fleet_nodes(draw: st.DrawFn) -> list[Node]:
    count = draw(st.integers(1, 14))
    nodes = []
    for i in range(count):
        resources = draw(st.sampled_from([{}, {}, {"gpu": 2}, {"gpu": 1, "fpga": 1}]))
        nodes.append(
            Node.model_validate(
                {
                    "name": f"n{i:02d}",
                    "ip": "10.0.0.1",
                    "pool": draw(st.sampled_from(POOLS)),
                    "cpu": draw(st.sampled_from((4, 8, 16))),
                    "memory": draw(st.sampled_from((2048, 8192))),
                    "disk": draw(st.sampled_from((0, 50, 200))),
                    "max_vms": draw(st.sampled_from((1, 2, 3, 100_000))),
                    "dedicated": draw(st.booleans()) and draw(st.booleans()),
                    "cordoned": draw(st.integers(0, 9)) == 0,
                    "tags": draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True)),
                    "zone": draw(st.sampled_from(ZONES)),
                    "resources": resources,
                }
            )
        )
    return nodes


@st.composite
def requests(draw: st.DrawFn, n: int) -> SchedulingRequest:
    fields: dict[str, Any] = {
        "task_id": f"t{n}",
        "requested_cpu": draw(st.sampled_from((1, 2, 4, 8))),
        "requested_memory": draw(st.sampled_from((256, 1024, 4096))),
        "requested_disk": draw(st.sampled_from((0, 0, 0, 20, 100))),
        "requested_pool": draw(st.sampled_from((*POOLS, "default", "default"))),
        "dedicated": draw(st.integers(0, 4)) == 0,
    }
    if draw(st.booleans()):
        fields["required_tags"] = draw(
            st.lists(st.sampled_from((*TAGS, "ssd|nvme", "missing")), max_size=2, unique=True)
        )
    if draw(st.booleans()):
        fields["forbidden_tags"] = draw(
            st.lists(st.sampled_from((*TAGS, "missing")), max_size=2, unique=True)
        )
    if draw(st.integers(0, 3)) == 0:
        fields["requested_resources"] = draw(st.sampled_from(({"gpu": 1}, {"gpu": 2}, {"fpga": 1, "gpu": 1})))
    if draw(st.booleans()):
        fields["anti_affinity_group"] = draw(st.sampled_from(GROUPS))
        fields["anti_affinity_mode"] = draw(st.sampled_from(("hard", "soft")))
    if draw(st.booleans()):
        fields["spread_group"] = draw(st.sampled_from(GROUPS))
        fields["spread_mode"] = draw(st.sampled_from(("hard", "soft")))
    return SchedulingRequest.model_validate(fields)


def _spread_banned(fleet: FleetView, req: SchedulingRequest, candidates: list[int], skew: int) -> set[int]:
    """Nodes in zones holding more than (least count among zones with a candidate) + skew - 1."""
    counts = fleet.spread.get(req.spread_group or "")
    if counts is None or not candidates:
        return set()
    low = min(int(counts[fleet.zone_code[i]]) for i in candidates)
    return {i for i in candidates if int(counts[fleet.zone_code[i]]) > low + skew - 1}


def reference(
    fleet: FleetView, req: SchedulingRequest, *, exclusive: bool, skew: int
) -> tuple[list[int], list[int], Counter[str]]:
    """(survivors, preferred, counts per label), node by node, each node under the first rule it fails."""
    counts: Counter[str] = Counter()
    s, e = fleet.pools[req.requested_pool]
    if fleet.size - (e - s):
        counts[F.POOL_MISMATCH] = fleet.size - (e - s)
    hard = req.anti_affinity_mode == "hard"
    members = (fleet.groups if hard else fleet.hard_groups).get(req.anti_affinity_group or "", {})

    def first_failure(i: int) -> str | None:
        if fleet.cordoned[i]:
            return F.CORDONED
        if fleet.heartbeats_seen and not np.isnan(fleet.last_seen[i]):
            silent = NOW - float(fleet.last_seen[i])
            if silent > fleet.liveness.offline_after:
                return F.OFFLINE
            if silent > fleet.liveness.suspicious_after:
                return F.SUSPICIOUS
        if req.dedicated and not fleet.dedicated[i]:
            return F.DEDICATED
        if not req.dedicated and exclusive and fleet.dedicated[i]:
            return F.DEDICATED
        for entry in req.required_tags:
            if not any(t in fleet.tags and fleet.tags[t][i] for t in entry.split("|")):
                return F.TAGS
        if any(t in fleet.tags and fleet.tags[t][i] for t in req.forbidden_tags):
            return F.FORBIDDEN_TAGS
        for kind in req.requested_resources:
            j = fleet.dev_index.get(kind)
            if j is None or fleet.cap_dev[j, i] == 0:
                return f"no {kind}"
        if req.anti_affinity_group is not None and i in members:
            return F.ANTI_AFFINITY
        if fleet.free_cpu[i] < req.requested_cpu:
            return F.CPU
        if fleet.free_mem[i] < req.requested_memory:
            return F.MEMORY
        if fleet.free_disk[i] < req.requested_disk:
            return F.DISK
        for kind, count in req.requested_resources.items():
            if fleet.free_dev[fleet.dev_index[kind], i] < count:
                return f"insufficient {kind}"
        for j, kind in enumerate(fleet.dev_names):
            if fleet.free_dev[j, i] < 0:
                return f"insufficient {kind}"
        if fleet.vms[i] >= fleet.max_vms[i]:
            return F.MAX_VMS
        return None

    survivors = []
    for i in range(s, e):
        label = first_failure(i)
        if label is None:
            survivors.append(i)
        else:
            counts[label] += 1
    if req.spread_group is not None and req.spread_mode == "hard":
        banned = _spread_banned(fleet, req, survivors, skew)
        counts[F.ZONE_SPREAD] += len(banned)
        survivors = [i for i in survivors if i not in banned]
    preferred = survivors
    if req.anti_affinity_group is not None and not hard:
        held = fleet.groups.get(req.anti_affinity_group, {})
        apart = [i for i in preferred if i not in held]
        preferred = apart or preferred
    if req.spread_group is not None and req.spread_mode == "soft":
        banned = _spread_banned(fleet, req, preferred, skew)
        apart = [i for i in preferred if i not in banned]
        preferred = apart or preferred
    return survivors, preferred, +counts


def check(fleet: FleetView, req: SchedulingRequest, *, exclusive: bool, skew: int) -> Feasibility:
    survivors, preferred, counts = reference(fleet, req, exclusive=exclusive, skew=skew)
    feas = feasible_nodes(fleet, req, now=NOW, exclusive=exclusive, max_skew=skew)
    assert feas.rejections == dict(counts), (feas.rejections, counts)
    assert feas.count == len(survivors)
    if survivors:
        assert feas.preferred == len(preferred)
        assert list(np.flatnonzero(feas.feasible_mask()) + feas.start) == preferred
    assert sum(feas.rejections.values()) + feas.count == fleet.size
    return feas


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=fleet_nodes(),
    data=st.data(),
    exclusive=st.booleans(),
    skew=st.integers(1, 2),
    heartbeats=st.booleans(),
)
def test_filters_match_a_per_node_reading_of_the_rules_through_placements_and_releases(
    nodes: list[Node], data: st.DataObject, exclusive: bool, skew: int, heartbeats: bool
) -> None:
    fleet = FleetView.build(nodes)
    if heartbeats:
        for k, name in enumerate(fleet.names):
            if k % 3:
                fleet.heartbeat(name, NOW - 6 * (k % 5))  # some fresh, some suspicious, some offline
    placers = {
        name: Placer(name, dedicated_exclusive=exclusive, spread_max_skew=skew) for name in STRATEGY_NAMES
    }
    kept = {"least_loaded": LeastLoaded(), "hybrid": Hybrid()}
    placed: list[str] = []
    for n in range(data.draw(st.integers(1, 25), label="steps")):
        if placed and data.draw(st.integers(0, 3), label="release?") == 0:
            gone = placed.pop(data.draw(st.integers(0, len(placed) - 1), label="which"))
            assert fleet.release(gone) is not None
            continue
        req = data.draw(requests(n), label="request")
        note(repr(req))
        if req.requested_pool not in fleet.pools:
            continue
        feas = check(fleet, req, exclusive=exclusive, skew=skew)
        s, e = feas.start, feas.stop
        for name, strategy in kept.items():  # figures kept between decisions equal fresh ones
            fresh = type(strategy)().score(fleet, s, e, req)
            assert np.array_equal(strategy.score(fleet, s, e, req), fresh), name
        name = data.draw(st.sampled_from(STRATEGY_NAMES), label="strategy")
        placer = placers[name]
        decision = placer.decide(fleet, req, now=NOW)
        quiet = (
            placers[name].decide(fleet, req, now=NOW, explain=False)
            if name
            not in (
                "round_robin",
                "random",  # stateful: a second decision would move on
            )
            else None
        )
        if quiet is not None:
            assert explanation(quiet) == decision.message
            assert (quiet.node, quiet.rejections, quiet.candidates) == (
                decision.node,
                decision.rejections,
                decision.candidates,
            )
        assert (decision.node is None) == (feas.count == 0)
        if decision.node_index is not None:
            strategy = placer.strategy(name)
            if isinstance(strategy, ScoringStrategy):  # the masked argmin, the plain way
                mask = feas.feasible_mask()
                scores = np.where(mask, strategy.score(fleet, s, e, req), np.inf)
                if strategy.avoid_devices:
                    from scheduler.strategies.base import avoid_device_nodes

                    scores = np.where(avoid_device_nodes(fleet, s, e, mask, req), scores, np.inf)
                assert decision.node_index == s + int(np.argmin(scores))
            fleet.reserve(decision.node_index, req)
            placed.append(req.task_id)
