"""Filters: which nodes of the requested pool can take the VM at all, and why not.

Each filter narrows one boolean mask over the pool slice and counts how many
nodes it removed, so a failure explains itself the way kube-scheduler does
(``0/120 nodes fit: 80 insufficient memory, 30 pool mismatch, 8 offline``).
A node is counted once, under the first filter it fails, so the counts add
up to the fleet size. Filters that cannot remove anything for this request
(no tags asked for, no cordoned node in the fleet, ...) are skipped, which is
most of what keeps a decision cheap.

Order: pool, cordoned, offline, suspicious, dedicated, tags, anti-affinity,
cpu, memory, disk, max_vms: the node's state first, then the request's
constraints, then capacity, so the explanation names the most fundamental
reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scheduler.fleet import BoolArray, FleetView
from scheduler.models import Reason, SchedulingRequest

POOL_MISMATCH = "pool mismatch"
CORDONED = "cordoned"
OFFLINE = "offline"
SUSPICIOUS = "suspicious"
DEDICATED = "dedicated mismatch"
TAGS = "missing tags"
ANTI_AFFINITY = "anti-affinity"
CPU = "insufficient cpu"
MEMORY = "insufficient memory"
DISK = "insufficient disk"
MAX_VMS = "max vms reached"
_NODE_STATE = (CORDONED, OFFLINE, SUSPICIOUS)


@dataclass
class Feasibility:
    """The outcome of filtering: the surviving nodes of the pool and the rejection counts."""

    start: int
    stop: int
    mask: BoolArray | None
    count: int
    total: int
    rejections: dict[str, int] = field(default_factory=dict)
    unknown_pool: bool = False

    def feasible_mask(self) -> BoolArray:
        return self.mask if self.mask is not None else np.ones(self.stop - self.start, dtype=np.bool_)

    def failure_reason(self) -> Reason:
        if self.unknown_pool:
            return Reason.UNKNOWN_POOL
        in_pool = self.stop - self.start
        down = sum(self.rejections.get(label, 0) for label in _NODE_STATE)
        if in_pool == 0 or down == in_pool:
            return Reason.NO_ONLINE_NODES
        return Reason.INSUFFICIENT_RESOURCES

    def explain(self) -> str:
        parts = ", ".join(
            f"{n} {label}" for label, n in sorted(self.rejections.items(), key=lambda kv: -kv[1])
        )
        head = f"{self.count}/{self.total} nodes fit"
        return f"{head}: {parts}" if parts else head


class _Narrowing:
    """Applies filters one by one, counting what each removes, stopping when nothing is left."""

    __slots__ = ("count", "mask", "out")

    def __init__(self, out: Feasibility) -> None:
        self.out = out
        self.mask: BoolArray | None = None
        self.count = out.stop - out.start

    def keep(self, label: str, keep: BoolArray) -> bool:
        """Narrow by ``keep``; False when no node is left (the caller stops filtering)."""
        new = keep if self.mask is None else self.mask & keep
        count = int(np.count_nonzero(new))
        if count != self.count:
            self.out.rejections[label] = self.out.rejections.get(label, 0) + self.count - count
        self.mask, self.count = new, count
        return count > 0

    def drop(self, label: str, local: list[int]) -> bool:
        """Remove the nodes at slice positions ``local`` (anti-affinity: a few known nodes)."""
        mask = (
            self.mask.copy() if self.mask is not None else np.ones(self.out.stop - self.out.start, np.bool_)
        )
        removed = int(np.count_nonzero(mask[local]))
        mask[local] = False
        if removed:
            self.out.rejections[label] = self.out.rejections.get(label, 0) + removed
        self.mask, self.count = mask, self.count - removed
        return self.count > 0


def feasible_nodes(
    fleet: FleetView, req: SchedulingRequest, *, now: float, exclusive: bool = True
) -> Feasibility:
    """Filter the fleet for ``req``; ``now`` is the monotonic clock heartbeats are judged by."""
    total = fleet.size
    span = fleet.pools.get(req.requested_pool)
    if span is None:
        out = Feasibility(0, 0, None, 0, total, unknown_pool=True)
        if total:
            out.rejections[POOL_MISMATCH] = total
        return out
    s, e = span
    out = Feasibility(s, e, None, 0, total)
    if total - (e - s):
        out.rejections[POOL_MISMATCH] = total - (e - s)
    f = _Narrowing(out)
    sl = slice(s, e)
    ok = _narrow(fleet, req, f, sl, s, e, now, exclusive)
    out.mask, out.count = f.mask, f.count if ok else 0
    return out


def _narrow(
    fleet: FleetView,
    req: SchedulingRequest,
    f: _Narrowing,
    sl: slice,
    s: int,
    e: int,
    now: float,
    exclusive: bool,
) -> bool:
    if fleet.cordoned_count and not f.keep(CORDONED, ~fleet.cordoned[sl]):
        return False
    health = fleet.unhealthy(now, s, e)
    if health is not None:
        suspicious, offline = health
        if not f.keep(OFFLINE, ~offline) or not f.keep(SUSPICIOUS, ~suspicious):
            return False
    dedicated_here = fleet.dedicated_per_pool.get(req.requested_pool, 0)
    if req.dedicated:
        if dedicated_here < e - s and not f.keep(DEDICATED, fleet.dedicated[sl]):
            return False
    elif exclusive and dedicated_here and not f.keep(DEDICATED, ~fleet.dedicated[sl]):
        return False
    if req.required_tags:
        has_all = np.ones(e - s, dtype=np.bool_)
        for tag in req.required_tags:
            column = fleet.tags.get(tag)
            if column is None:
                has_all[:] = False
                break
            has_all &= column[sl]
        if not f.keep(TAGS, has_all):
            return False
    if req.anti_affinity_group is not None:
        members = fleet.groups.get(req.anti_affinity_group)
        if members:
            local = [i - s for i in members if s <= i < e]
            if local and not f.drop(ANTI_AFFINITY, local):
                return False
    if not f.keep(CPU, fleet.free_cpu[sl] >= req.requested_cpu):
        return False
    if not f.keep(MEMORY, fleet.free_mem[sl] >= req.requested_memory):
        return False
    if req.requested_disk and not f.keep(DISK, fleet.free_disk[sl] >= req.requested_disk):
        return False
    return f.keep(MAX_VMS, fleet.vms[sl] < fleet.max_vms[sl])
