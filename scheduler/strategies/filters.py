"""Filters: which nodes of the requested pool can take the VM at all, and why not.

Each filter is a small named piece in one registry (:data:`FILTERS`), in the
spirit of kube-scheduler's filter plugins and Nova's host filters: it
narrows one boolean mask over the pool slice and the narrowing counts how
many nodes it removed under the filter's own label, so a failure explains
itself the way kube-scheduler does (``0/120 nodes fit: 80 insufficient
memory, 30 pool mismatch, 8 offline``). A node is counted once, under the
first filter it fails, so the counts add up to the fleet size. A filter
that cannot remove anything for this request (no tags asked for, no
cordoned node in the fleet, ...) returns at once, which is most of what
keeps a decision cheap. Adding a resource or a constraint is one function
here and its ``@register`` line.

Order (the registry's): cordoned, offline/suspicious, dedicated, required
tags, forbidden tags, device kinds, anti-affinity, cpu, memory, disk,
devices, max_vms, zone spread: the node's state first, then the request's
constraints, then capacity, so the explanation names the most fundamental
reason. Zone spread comes last because it compares the zones that still
have room once everything else is known.

After the filters, *preferences* (:data:`PREFERENCES`: soft anti-affinity,
soft zone spread) narrow the survivors only when some node satisfies them,
so they never turn a fit into a failure and every strategy, scoring or not,
honours them alike. They add nothing to the rejection counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from scheduler.fleet import BoolArray, FleetView
from scheduler.models import Reason, SchedulingRequest

POOL_MISMATCH = "pool mismatch"
CORDONED = "cordoned"
OFFLINE = "offline"
SUSPICIOUS = "suspicious"
DEDICATED = "dedicated mismatch"
TAGS = "missing tags"
FORBIDDEN_TAGS = "forbidden tags"
ANTI_AFFINITY = "anti-affinity"
CPU = "insufficient cpu"
MEMORY = "insufficient memory"
DISK = "insufficient disk"
MAX_VMS = "max vms reached"
ZONE_SPREAD = "zone spread"
NO_DEVICE = "no {kind}"
DEVICE = "insufficient {kind}"


@dataclass
class Feasibility:
    """The outcome of filtering: the surviving nodes of the pool and the rejection counts.

    ``count`` is how many nodes passed every filter; ``mask`` (None: all of
    the slice) may be narrower when preferences chose among them, and
    ``preferred`` is then its size.
    """

    start: int
    stop: int
    mask: BoolArray | None
    count: int
    total: int
    rejections: dict[str, int] = field(default_factory=dict)
    unknown_pool: bool = False
    preferred: int = 0

    def feasible_mask(self) -> BoolArray:
        return self.mask if self.mask is not None else np.ones(self.stop - self.start, dtype=np.bool_)

    def failure_reason(self) -> Reason:
        if self.unknown_pool:
            return Reason.UNKNOWN_POOL
        in_pool = self.stop - self.start
        down = sum(self.rejections.get(label, 0) for label in NODE_STATE_LABELS)
        if in_pool == 0 or down == in_pool:
            return Reason.NO_ONLINE_NODES
        return Reason.INSUFFICIENT_RESOURCES

    def explain(self) -> str:
        return explain_counts(self.count, self.total, self.rejections)


def explain_counts(count: int, total: int, rejections: dict[str, int]) -> str:
    """``3/120 nodes fit: 80 insufficient memory, 30 pool mismatch, ...``: the counts, most first.

    A function of the figures a :class:`~scheduler.models.Decision` keeps
    (candidates, total, rejections), so that the text can be made when it
    is read rather than for every decision (:func:`scheduler.strategies.placer.explanation`).
    """
    head = f"{count}/{total} nodes fit"
    if not rejections:
        return head
    parts = ", ".join(f"{n} {label}" for label, n in sorted(rejections.items(), key=lambda kv: -kv[1]))
    return f"{head}: {parts}"


class Narrowing:
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
        """Remove the nodes at slice positions ``local`` (anti-affinity: a few known nodes, each once)."""
        mask = self.current()
        # Nothing narrowed yet: every one of them is still there, no need to look.
        removed = len(local) if self.mask is None else int(np.count_nonzero(mask[local]))
        mask[local] = False
        if removed:
            self.out.rejections[label] = self.out.rejections.get(label, 0) + removed
        self.mask, self.count = mask, self.count - removed
        return self.count > 0

    def current(self) -> BoolArray:
        """A writable copy of the mask so far."""
        if self.mask is None:
            return np.ones(self.out.stop - self.out.start, np.bool_)
        return self.mask.copy()

    def prefer(self, keep: BoolArray) -> None:
        """Narrow by ``keep`` only if some node survives; counts nothing (a preference rejects no node)."""
        new = keep if self.mask is None else self.mask & keep
        count = int(np.count_nonzero(new))
        if count:
            self.mask, self.count = new, count


@dataclass(slots=True)
class FilterInput:
    """What a filter looks at: the fleet, the request, the pool slice and the decision's settings.

    ``sl`` is the pool slice, made once per decision (a property made a new
    slice object on each of the dozen uses).
    """

    fleet: FleetView
    req: SchedulingRequest
    start: int
    stop: int
    now: float
    exclusive: bool
    max_skew: int
    sl: slice = field(init=False)

    def __post_init__(self) -> None:
        self.sl = slice(self.start, self.stop)


FilterFn = Callable[[FilterInput, Narrowing], bool]
ExampleFn = Callable[[FilterInput, int, str], str]
"""Why node ``i`` (an absolute index) fails a filter, with the numbers (``needs 8 vCPU, 4 free``);
the third argument is the label it was counted under."""


@dataclass(frozen=True, slots=True)
class Filter:
    """One named filter: ``run`` narrows and returns False when no node is left.

    ``labels`` are the words of its explanation counts (``{kind}`` stands
    for a device name); ``node_state`` marks filters about the node rather
    than the request (all nodes failing those is ``no_online_nodes``);
    ``example`` says why one node failed it, with numbers, for a plan's
    explanation (:func:`explains`).
    """

    name: str
    labels: tuple[str, ...]
    run: FilterFn
    node_state: bool = False
    example: ExampleFn | None = None


FILTERS: list[Filter] = []
"""The filters in the order they run."""
PREFERENCES: list[Filter] = []
"""Soft constraints, applied in order after every filter passed (see the module docstring)."""


def register(
    name: str, *labels: str, node_state: bool = False, preference: bool = False
) -> Callable[[FilterFn], FilterFn]:
    """Add the decorated function to :data:`FILTERS` (or :data:`PREFERENCES`) under ``name``."""

    def add(fn: FilterFn) -> FilterFn:
        target = PREFERENCES if preference else FILTERS
        if any(f.name == name for f in (*FILTERS, *PREFERENCES)):
            raise ValueError(f"filter {name!r} registered twice")
        target.append(Filter(name, labels, fn, node_state))
        return fn

    return add


def explains(name: str) -> Callable[[ExampleFn], ExampleFn]:
    """Attach the decorated function as the example text of the registered filter ``name``."""

    def attach(fn: ExampleFn) -> ExampleFn:
        for registry in (FILTERS, PREFERENCES):
            for k, flt in enumerate(registry):
                if flt.name == name:
                    registry[k] = replace(flt, example=fn)
                    return fn
        raise ValueError(f"no filter {name!r} to explain")

    return attach


# ------------------------------------------------------------------ node state


@register("cordoned", CORDONED, node_state=True)
def _cordoned(x: FilterInput, f: Narrowing) -> bool:
    return not x.fleet.cordoned_count or f.keep(CORDONED, ~x.fleet.cordoned[x.sl])


@register("liveness", OFFLINE, SUSPICIOUS, node_state=True)
def _liveness(x: FilterInput, f: Narrowing) -> bool:
    health = x.fleet.unhealthy(x.now, x.start, x.stop)
    if health is None:
        return True
    suspicious, offline = health
    return f.keep(OFFLINE, ~offline) and f.keep(SUSPICIOUS, ~suspicious)


# ------------------------------------------------------------- request rules


@register("dedicated", DEDICATED)
def _dedicated(x: FilterInput, f: Narrowing) -> bool:
    here = x.fleet.dedicated_per_pool.get(x.req.requested_pool, 0)
    if x.req.dedicated:
        return here == x.stop - x.start or f.keep(DEDICATED, x.fleet.dedicated[x.sl])
    return not (x.exclusive and here) or f.keep(DEDICATED, ~x.fleet.dedicated[x.sl])


@register("required_tags", TAGS)
def _required_tags(x: FilterInput, f: Narrowing) -> bool:
    """Every entry must be on the node; an entry ``a|b`` is satisfied by any one of its alternatives."""
    if not x.req.required_tags:
        return True
    tags, sl = x.fleet.tags, x.sl
    if len(x.req.required_tags) == 1 and "|" not in x.req.required_tags[0]:  # the common case: one tag
        column = tags.get(x.req.required_tags[0])
        return f.keep(TAGS, column[sl] if column is not None else np.zeros(x.stop - x.start, np.bool_))
    has_all = np.ones(x.stop - x.start, dtype=np.bool_)
    for entry in x.req.required_tags:
        if "|" in entry:
            any_of = np.zeros(x.stop - x.start, dtype=np.bool_)
            for alternative in entry.split("|"):
                column = tags.get(alternative)
                if column is not None:
                    any_of |= column[sl]
            has_all &= any_of
        else:
            column = tags.get(entry)
            if column is None:
                has_all[:] = False
                break
            has_all &= column[sl]
    return f.keep(TAGS, has_all)


@register("forbidden_tags", FORBIDDEN_TAGS)
def _forbidden_tags(x: FilterInput, f: Narrowing) -> bool:
    if not x.req.forbidden_tags:
        return True  # the common case, before building anything
    columns = [x.fleet.tags[t][x.sl] for t in x.req.forbidden_tags if t in x.fleet.tags]
    if not columns:
        return True
    has_any = np.logical_or.reduce(columns) if len(columns) > 1 else columns[0]
    return f.keep(FORBIDDEN_TAGS, ~has_any)


@register("device_kinds", NO_DEVICE)
def _device_kinds(x: FilterInput, f: Narrowing) -> bool:
    """A node without any device of a kind asked for: ``no gpu`` (rather than ``insufficient gpu``)."""
    for kind in x.req.requested_resources:
        j = x.fleet.dev_index.get(kind)
        label = NO_DEVICE.format(kind=kind)
        if j is None:
            if not f.keep(label, np.zeros(x.stop - x.start, dtype=np.bool_)):
                return False
        elif x.fleet.dev_nodes_per_pool[j].get(x.req.requested_pool, 0) == x.stop - x.start:
            continue  # every node of the pool has some: nothing to remove (the common case, skipped cheaply)
        elif not f.keep(label, x.fleet.cap_dev[j, x.sl] > 0):
            return False
    return True


@register("anti_affinity", ANTI_AFFINITY)
def _anti_affinity(x: FilterInput, f: Narrowing) -> bool:
    """``hard``: no node with a member of the group. ``soft`` never refuses, except a node holding a
    member placed with ``hard``, which promised that member no neighbour from its group."""
    group = x.req.anti_affinity_group
    if group is None:
        return True
    index = x.fleet.groups if x.req.anti_affinity_mode == "hard" else x.fleet.hard_groups
    members = index.get(group)
    if not members:
        return True
    local = [i - x.start for i in members if x.start <= i < x.stop]
    return not local or f.drop(ANTI_AFFINITY, local)


# ------------------------------------------------------------------ capacity


@register("cpu", CPU)
def _cpu(x: FilterInput, f: Narrowing) -> bool:
    return f.keep(CPU, x.fleet.free_cpu[x.sl] >= x.req.requested_cpu)


@register("memory", MEMORY)
def _memory(x: FilterInput, f: Narrowing) -> bool:
    return f.keep(MEMORY, x.fleet.free_mem[x.sl] >= x.req.requested_memory)


@register("disk", DISK)
def _disk(x: FilterInput, f: Narrowing) -> bool:
    """Skipped for a request without disk, unless a node is over its disk (a lowered ratio)."""
    if not x.req.requested_disk and not x.fleet.disk_over:
        return True
    return f.keep(DISK, x.fleet.free_disk[x.sl] >= x.req.requested_disk)


@register("devices", DEVICE)
def _devices(x: FilterInput, f: Narrowing) -> bool:
    """Free devices of each kind asked for; a node over a device count (its inventory shrank under
    running VMs) takes nothing at all until enough is released."""
    fleet, pool = x.fleet, x.req.requested_pool
    if not x.req.requested_resources and not fleet.dev_over:
        return True  # the common case, before building anything
    rows = [
        (kind, fleet.free_dev[j, x.sl] >= count)
        for kind, count in x.req.requested_resources.items()
        # device_kinds ran, so every kind exists; a kind no node of the pool is short of is skipped
        if not fleet.device_room(j := fleet.dev_index[kind], pool, count)
    ]
    if len(rows) > 1:  # all at once first: when none is short, one narrowing instead of one per kind
        enough = np.logical_and(rows[0][1], rows[1][1])
        for _, ok in rows[2:]:
            enough &= ok
        if f.mask is not None:
            enough &= f.mask
        if int(np.count_nonzero(enough)) == f.count:
            rows = []
    for kind, ok in rows:
        if not f.keep(DEVICE.format(kind=kind), ok):
            return False
    if x.fleet.dev_over:  # a node over any device count takes nothing at all until it fits again
        free = x.fleet.free_dev[:, x.sl]
        for row in np.flatnonzero((free < 0).any(axis=1)):
            if not f.keep(DEVICE.format(kind=x.fleet.dev_names[int(row)]), free[row] >= 0):
                return False
    return True


@register("max_vms", MAX_VMS)
def _max_vms(x: FilterInput, f: Narrowing) -> bool:
    """Skipped when no node of the pool is at its ``max_vms`` (:meth:`FleetView.vm_room`): the limit
    defaults to 100,000, so most fleets never reach it and the filter costs a dictionary lookup."""
    if x.fleet.vm_room(x.req.requested_pool):
        return True
    return f.keep(MAX_VMS, x.fleet.vms[x.sl] < x.fleet.max_vms[x.sl])


# ------------------------------------------------------------------ topology


def _spread_allowed(x: FilterInput, mask: BoolArray | None) -> BoolArray | None:
    """Per slice node: would a VM there keep the group's zone counts within ``max_skew``?

    Compared with the least-loaded zone *that has room* (a node in ``mask``):
    a zone without room cannot hold the VM, so it must not block the others.
    None when no node would break the skew (nothing to narrow).

    Why zone by zone: fleets have a handful of zones, and asking "does zone
    z still have a candidate" of a cached per-zone mask, in increasing order
    of the group's count, usually stops at the first zone; gathering the
    zone code of every candidate instead cost five times as much at 10,000
    nodes. Many zones (racks as zones) take the gathering path.
    """
    group = x.req.spread_group
    counts = x.fleet.spread.get(group) if group is not None else None
    if counts is None:
        return None  # no member yet: every zone is at 0
    fleet, sl = x.fleet, x.sl
    if len(counts) > _MANY_ZONES:
        codes = fleet.zone_code[sl]
        present = np.zeros(len(counts), dtype=np.bool_)
        present[codes if mask is None else codes[mask]] = True
        if not present.any():
            return None
        allowed = counts <= int(counts[present].min()) + x.max_skew - 1
        if allowed[present].all():
            return None
        result: BoolArray = allowed[codes]
        return result

    def has_room(zone: int) -> bool:
        column = fleet.zone_mask(zone)[sl]
        return bool(column.any() if mask is None else np.logical_and(column, mask).any())

    zones = sorted(x.fleet.pool_zones.get(x.req.requested_pool, ()), key=lambda z: int(counts[z]))
    low = next((int(counts[z]) for z in zones if has_room(z)), None)
    if low is None:
        return None
    banned = [z for z in zones if counts[z] > low + x.max_skew - 1]
    if not banned:
        return None
    # Whether a banned zone still has candidates is left to the narrowing: it counts what it removes.
    if len(banned) == 1:
        return fleet.zone_mask(banned[0], inverted=True)[sl]
    keep = fleet.zone_mask(banned[0], inverted=True)[sl] & fleet.zone_mask(banned[1], inverted=True)[sl]
    for zone in banned[2:]:
        keep &= fleet.zone_mask(zone, inverted=True)[sl]
    return keep


_MANY_ZONES = 32
"""Above this many zones the spread filter gathers zone codes instead of using per-zone masks."""


@register("zone_spread", ZONE_SPREAD)
def _zone_spread(x: FilterInput, f: Narrowing) -> bool:
    if x.req.spread_group is None or x.req.spread_mode != "hard":
        return True
    allowed = _spread_allowed(x, f.mask)
    return allowed is None or f.keep(ZONE_SPREAD, allowed)


# --------------------------------------------------------------- preferences


@register("soft_anti_affinity", preference=True)
def _soft_anti_affinity(x: FilterInput, f: Narrowing) -> bool:
    group = x.req.anti_affinity_group
    if group is None or x.req.anti_affinity_mode != "soft":
        return True
    members = x.fleet.groups.get(group)
    if members:
        local = [i - x.start for i in members if x.start <= i < x.stop]
        if local:
            keep = np.ones(x.stop - x.start, dtype=np.bool_)
            keep[local] = False
            f.prefer(keep)
    return True


@register("soft_zone_spread", preference=True)
def _soft_zone_spread(x: FilterInput, f: Narrowing) -> bool:
    if x.req.spread_group is None or x.req.spread_mode != "soft":
        return True
    allowed = _spread_allowed(x, f.mask)
    if allowed is not None:
        f.prefer(allowed)
    return True


# -------------------------------------------------------------- explanations
# Why one node failed a filter, with its numbers: what a plan shows next to the counts.


@explains("cordoned")
def _cordoned_example(x: FilterInput, i: int, label: str) -> str:
    return "cordoned (no new VMs)"


@explains("liveness")
def _liveness_example(x: FilterInput, i: int, label: str) -> str:
    silent = x.now - float(x.fleet.last_seen[i])
    limit = x.fleet.liveness.offline_after if label == OFFLINE else x.fleet.liveness.suspicious_after
    return f"silent for {silent:.0f} s ({label} after {limit:g} s)"


@explains("dedicated")
def _dedicated_example(x: FilterInput, i: int, label: str) -> str:
    if x.req.dedicated:
        return "not a dedicated node, the request is dedicated"
    return "dedicated node, the request is not dedicated"


@explains("required_tags")
def _required_tags_example(x: FilterInput, i: int, label: str) -> str:
    def has(tag: str) -> bool:
        column = x.fleet.tags.get(tag)
        return column is not None and bool(column[i])

    missing = [e for e in x.req.required_tags if not any(has(t) for t in e.split("|"))]
    return f"lacks {', '.join(missing)}"


@explains("forbidden_tags")
def _forbidden_tags_example(x: FilterInput, i: int, label: str) -> str:
    found = [t for t in x.req.forbidden_tags if t in x.fleet.tags and x.fleet.tags[t][i]]
    return f"has forbidden {', '.join(found)}"


@explains("device_kinds")
def _device_kinds_example(x: FilterInput, i: int, label: str) -> str:
    kinds = [
        k for k in x.req.requested_resources
        if (j := x.fleet.dev_index.get(k)) is None or not x.fleet.cap_dev[j, i]
    ]  # fmt: skip
    return f"has no {', '.join(kinds)}"


@explains("anti_affinity")
def _anti_affinity_example(x: FilterInput, i: int, label: str) -> str:
    group = x.req.anti_affinity_group
    held = x.fleet.groups.get(group or "", {}).get(i, 0)
    return f"holds {held} VM(s) of anti-affinity group {group}"


@explains("cpu")
def _cpu_example(x: FilterInput, i: int, label: str) -> str:
    return f"needs {x.req.requested_cpu} vCPU, {int(x.fleet.free_cpu[i])} free"


@explains("memory")
def _memory_example(x: FilterInput, i: int, label: str) -> str:
    return f"needs {x.req.requested_memory} MiB memory, {int(x.fleet.free_mem[i])} free"


@explains("disk")
def _disk_example(x: FilterInput, i: int, label: str) -> str:
    return f"needs {x.req.requested_disk} GiB disk, {int(x.fleet.free_disk[i])} free"


@explains("devices")
def _devices_example(x: FilterInput, i: int, label: str) -> str:
    kind = label.removeprefix("insufficient ")
    j = x.fleet.dev_index[kind]
    return f"needs {x.req.requested_resources.get(kind, 0)} {kind}, {int(x.fleet.free_dev[j, i])} free"


@explains("max_vms")
def _max_vms_example(x: FilterInput, i: int, label: str) -> str:
    return f"holds {int(x.fleet.vms[i])} VMs, max_vms {int(x.fleet.max_vms[i])}"


@explains("zone_spread")
def _zone_spread_example(x: FilterInput, i: int, label: str) -> str:
    group = x.req.spread_group or ""
    code = int(x.fleet.zone_code[i])
    counts = x.fleet.spread.get(group)
    here = int(counts[code]) if counts is not None else 0
    zone = x.fleet.zone_names[code] or "(no zone)"
    return f"zone {zone} already holds {here} VM(s) of spread group {group} (max skew {x.max_skew})"


NODE_STATE_LABELS: tuple[str, ...] = tuple(label for flt in FILTERS if flt.node_state for label in flt.labels)


def feasible_nodes(
    fleet: FleetView,
    req: SchedulingRequest,
    *,
    now: float,
    exclusive: bool = True,
    max_skew: int = 1,
    narrowing: Callable[[Feasibility], Narrowing] | None = None,
) -> Feasibility:
    """Filter the fleet for ``req``; ``now`` is the monotonic clock heartbeats are judged by.

    ``narrowing`` makes the :class:`Narrowing` (a plan's records which nodes each filter removed).
    """
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
    f = (narrowing or Narrowing)(out)
    x = FilterInput(fleet, req, s, e, now, exclusive, max_skew)
    for flt in FILTERS:
        if not flt.run(x, f):
            out.mask, out.count = f.mask, 0
            return out
    out.count = f.count
    for pref in PREFERENCES:
        pref.run(x, f)
    out.mask, out.preferred = f.mask, f.count
    return out
