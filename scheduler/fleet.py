"""The fleet view: every node and its allocations, in arrays built for fast decisions.

Why arrays and not a list of node objects: a decision has to look at every
node of a pool (up to 100,000) in well under a millisecond. Keeping each
resource in a NumPy array lets a filter be one vectorised comparison over the
pool instead of a Python loop, and a score one expression. Nodes are stored
sorted by (pool, name), so a pool is a contiguous slice (a view, no copy) and
"first minimum" is automatically "lowest name": ties break by node name for
free, which makes every decision reproducible.

Allocations change incrementally (``reserve`` / ``release`` touch one element);
inventory changes (new nodes, new pools) rebuild the arrays, which is O(n) and
rare. ``reserve`` re-checks capacity itself, so even a buggy strategy cannot
overcommit a node (docs/contracts.md invariant 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from scheduler.models import Node, SchedulingRequest

T = TypeVar("T")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
CodeArray = npt.NDArray[np.int32]


class CapacityError(Exception):
    """A reservation that would overcommit a node (a bug upstream, never silently allowed)."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """One active VM placement: what a task holds on which node.

    ``resources`` are the countable devices held, as sorted (name, count)
    pairs (hashable, like the rest); ``soft`` says the anti-affinity
    ``group`` was asked for as a preference only.
    """

    task_id: str
    node: str
    cpu: int
    memory: int
    disk: int
    group: str | None = None
    resources: tuple[tuple[str, int], ...] = ()
    spread_group: str | None = None
    soft: bool = False


@dataclass(frozen=True, slots=True)
class CapacityDefaults:
    """The configured ``allocation_ratios`` and ``reserved``, for nodes that set none of their own."""

    cpu_ratio: float = 1.0
    memory_ratio: float = 1.0
    disk_ratio: float = 1.0
    reserved_cpu: int = 0
    reserved_memory: int = 0
    reserved_disk: int = 0


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """One node's raw and effective capacity, and what it keeps for the host, with the ratios applied."""

    cpu: int
    memory: int
    disk: int
    reserved_cpu: int
    reserved_memory: int
    reserved_disk: int
    cpu_ratio: float
    memory_ratio: float
    disk_ratio: float
    effective_cpu: int
    effective_memory: int
    effective_disk: int

    def effective(self) -> dict[str, int]:
        return {"cpu": self.effective_cpu, "memory": self.effective_memory, "disk": self.effective_disk}


@lru_cache(maxsize=4096)
def effective_amount(capacity: int, reserved: int, ratio: float) -> int:
    """floor((capacity - reserved) x ratio), exactly (the ratio read as the decimal it was written as).

    A reserve larger than the capacity (possible only through a configured
    default: a node's own reserve is validated against its capacity) leaves
    nothing, never a negative capacity. Why exact arithmetic: in binary
    floating point ``100 * 1.15`` is 114.99999999999999, and an operator who
    wrote ratio 1.15 on a 100-vCPU node expects 115. Cached: fleets have few
    distinct node shapes, and reports compute this per node.
    """
    base = max(0, capacity - reserved)
    return int(base * Fraction(repr(float(ratio))) // 1)


def node_capacity(node: Node, defaults: CapacityDefaults) -> NodeCapacity:
    """``node``'s effective capacity under ``defaults`` (what every filter, score and figure uses)."""
    kept = node.reserved
    rc = kept.cpu if kept is not None and kept.cpu is not None else defaults.reserved_cpu
    rm = kept.memory if kept is not None and kept.memory is not None else defaults.reserved_memory
    rd = kept.disk if kept is not None and kept.disk is not None else defaults.reserved_disk
    xc = node.cpu_allocation_ratio if node.cpu_allocation_ratio is not None else defaults.cpu_ratio
    xm = node.memory_allocation_ratio if node.memory_allocation_ratio is not None else defaults.memory_ratio
    xd = node.disk_allocation_ratio if node.disk_allocation_ratio is not None else defaults.disk_ratio
    return NodeCapacity(
        node.cpu, node.memory, node.disk, rc, rm, rd, xc, xm, xd,
        effective_amount(node.cpu, rc, xc), effective_amount(node.memory, rm, xm),
        effective_amount(node.disk, rd, xd),
    )  # fmt: skip


def _effective_column(
    nodes: Sequence[Node], capacity: str, ratio_field: str, reserve_key: str, ratio: float, reserve: int
) -> IntArray:
    """Effective capacities of one resource for all nodes: vectorised per distinct ratio.

    Fleets have a handful of distinct ratios, so each is applied to its
    nodes at once as an exact integer fraction p/q; 100,000 nodes cost a few
    milliseconds rather than 100,000 Fraction multiplications.
    """
    n = len(nodes)
    caps = np.fromiter((getattr(x, capacity) for x in nodes), dtype=np.int64, count=n)
    if all(x.reserved is None for x in nodes):
        kept = np.full(n, reserve, dtype=np.int64)
    else:
        kept = np.fromiter(
            (
                reserve if x.reserved is None or getattr(x.reserved, reserve_key) is None
                else getattr(x.reserved, reserve_key)
                for x in nodes
            ),
            dtype=np.int64,
            count=n,
        )  # fmt: skip
    base = np.maximum(caps - kept, 0)
    ratios = [getattr(x, ratio_field) for x in nodes]
    if all(r is None for r in ratios):
        groups: dict[float, BoolArray | None] = {ratio: None}
    else:
        values = np.fromiter((ratio if r is None else r for r in ratios), dtype=np.float64, count=n)
        groups = {float(r): values == r for r in np.unique(values)}
    out = np.empty(n, dtype=np.int64)
    for r, where in groups.items():
        frac = Fraction(repr(r))
        part = base if where is None else base[where]
        if part.size and int(part.max()) * frac.numerator < 2**62:
            result = part * frac.numerator // frac.denominator
        else:  # a ratio with many digits: exact Python integers, still one pass
            result = np.fromiter((int(v) * frac.numerator // frac.denominator for v in part), np.int64)
        if where is None:
            out[:] = result
        else:
            out[where] = result
    return out


@dataclass(slots=True)
class _Liveness:
    suspicious_after: float = 10.0
    offline_after: float = 20.0


@dataclass
class FleetView:
    """Nodes as parallel arrays in (pool, name) order, plus allocation bookkeeping."""

    names: list[str]
    ips: list[str]
    pools_of: list[str]
    zones: list[str | None]
    pools: dict[str, tuple[int, int]]
    cap_cpu: IntArray
    cap_mem: IntArray
    cap_disk: IntArray
    max_vms: IntArray
    free_cpu: IntArray
    free_mem: IntArray
    free_disk: IntArray
    vms: IntArray
    dedicated: BoolArray
    cordoned: BoolArray
    last_seen: FloatArray
    tags: dict[str, BoolArray]
    index: dict[str, int]
    allocations: dict[str, tuple[int, Allocation]] = field(default_factory=dict)
    groups: dict[str, dict[int, int]] = field(default_factory=dict)
    liveness: _Liveness = field(default_factory=_Liveness)
    heartbeats_seen: int = 0
    cordoned_count: int = 0
    dedicated_per_pool: dict[str, int] = field(default_factory=dict)
    # Countable devices: one row per kind present in the fleet (a dense (kinds x nodes) matrix).
    dev_names: list[str] = field(default_factory=list)
    dev_index: dict[str, int] = field(default_factory=dict)
    # int32: counts are small (<= MAX_DEVICES per VM), and half the bytes make the filters faster.
    cap_dev: CodeArray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int32))
    free_dev: CodeArray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int32))
    # Zones as small integer codes (``zone_names[code]``; "" for a node without a zone).
    zone_code: CodeArray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    zone_names: list[str] = field(default_factory=list)
    spread: dict[str, IntArray] = field(default_factory=dict)
    """Per spread group, active VMs per zone code."""
    hard_groups: dict[str, dict[int, int]] = field(default_factory=dict)
    """Per anti-affinity group, the nodes holding members placed with ``hard`` (a subset of ``groups``)."""
    defaults: CapacityDefaults = field(default_factory=CapacityDefaults)
    dev_nodes_per_pool: list[dict[str, int]] = field(default_factory=list)
    """Per device kind (row), per pool: how many nodes have at least one
    (lets a filter skip a pool whose nodes all do)."""
    dev_floor: list[dict[str, int]] = field(default_factory=list)
    """Per device kind, per pool: a lower bound of the free count over the pool's nodes (see
    :meth:`device_room`)."""
    _zone_masks: dict[int, BoolArray] = field(default_factory=dict, repr=False)
    pool_zones: dict[str, list[int]] = field(default_factory=dict)
    """Per pool, the zone codes of its nodes (the zones a spread can use there)."""
    disk_over: bool = False
    """Some node may hold more disk than its effective capacity (set when built, cleared by a rebuild):
    then even requests without disk must be checked against it."""
    dev_over: bool = False
    """Likewise for device counts."""
    vm_floor: dict[str, int] = field(default_factory=dict)
    """Per pool, a lower bound of ``max_vms - vms`` over its nodes (see :meth:`vm_room`); a pool
    missing is unknown yet."""
    vm_full: set[str] = field(default_factory=set)
    """Pools with a node at its ``max_vms`` when last measured and no release there since."""
    disk_changes: int = 0
    """How many times :attr:`free_disk` changed in place (a reservation or release with disk): what
    is computed from it can be kept until this moves (most VMs ask for no disk). Every change to
    the free arrays goes through this class's methods."""

    # Reciprocal capacities, so utilization is a multiply, not a divide; a
    # zero capacity (a node without local disk) yields 0, not inf.
    inv_cpu: FloatArray = field(init=False)
    inv_mem: FloatArray = field(init=False)
    inv_disk: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        self._refresh_derived()

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        nodes: Sequence[Node],
        allocations: Iterable[Allocation] = (),
        *,
        suspicious_after: float = 10.0,
        offline_after: float = 20.0,
        defaults: CapacityDefaults | None = None,
    ) -> FleetView:
        """A fleet view of ``nodes`` with ``allocations`` already applied.

        Capacities are effective capacities (:func:`effective_amount`, with
        ``defaults`` for nodes that set no ratio or reserve of their own).

        Allocations on unknown nodes are kept out of the arrays but raise no
        error: a node removed from the inventory while VMs still run on it
        must not stop the service from starting. They are still recorded
        (node index -1, as :meth:`with_inventory` does), so that the task
        still counts as holding an allocation, a release finds it, and the
        node gets its VMs back if it returns to the inventory.
        """
        ordered = sorted(nodes, key=lambda n: (n.pool, n.name))
        n = len(ordered)
        names = [node.name for node in ordered]
        index = {name: i for i, name in enumerate(names)}
        if len(index) != n:
            seen: set[str] = set()
            dupes = sorted({x for x in names if x in seen or seen.add(x)})  # type: ignore[func-returns-value]
            raise ValueError(f"duplicate node names: {', '.join(dupes[:5])}")
        pools: dict[str, tuple[int, int]] = {}
        for i, node in enumerate(ordered):
            start, _ = pools.get(node.pool, (i, i))
            pools[node.pool] = (start, i + 1)
        d = defaults or CapacityDefaults()
        cap_cpu = _effective_column(
            ordered, "cpu", "cpu_allocation_ratio", "cpu", d.cpu_ratio, d.reserved_cpu
        )
        cap_mem = _effective_column(
            ordered, "memory", "memory_allocation_ratio", "memory", d.memory_ratio, d.reserved_memory
        )
        cap_disk = _effective_column(
            ordered, "disk", "disk_allocation_ratio", "disk", d.disk_ratio, d.reserved_disk
        )
        dev_names = sorted({k for x in ordered for k in x.resources})
        cap_dev = np.zeros((len(dev_names), n), dtype=np.int32)
        if dev_names:
            row = {k: j for j, k in enumerate(dev_names)}
            for i, node in enumerate(ordered):
                for k, count in node.resources.items():
                    cap_dev[row[k], i] = count
        zone_names = ["", *sorted({x.zone for x in ordered if x.zone})]
        zone_of = {z: c for c, z in enumerate(zone_names)}
        zone_code = np.fromiter((zone_of[x.zone or ""] for x in ordered), dtype=np.int32, count=n)
        tag_names = sorted({t for x in ordered for t in x.tags})
        tags = {t: np.zeros(n, dtype=np.bool_) for t in tag_names}
        for i, node in enumerate(ordered):
            for t in node.tags:
                tags[t][i] = True
        dedicated = np.fromiter((x.dedicated for x in ordered), dtype=np.bool_, count=n)
        cordoned = np.fromiter((x.cordoned for x in ordered), dtype=np.bool_, count=n)
        view = cls(
            names=names,
            ips=[str(x.ip) for x in ordered],
            pools_of=[x.pool for x in ordered],
            zones=[x.zone for x in ordered],
            pools=pools,
            cap_cpu=cap_cpu,
            cap_mem=cap_mem,
            cap_disk=cap_disk,
            max_vms=np.fromiter((x.max_vms for x in ordered), dtype=np.int64, count=n),
            free_cpu=cap_cpu.copy(),
            free_mem=cap_mem.copy(),
            free_disk=cap_disk.copy(),
            vms=np.zeros(n, dtype=np.int64),
            dedicated=dedicated,
            cordoned=cordoned,
            last_seen=np.full(n, np.nan, dtype=np.float64),
            tags=tags,
            index=index,
            liveness=_Liveness(suspicious_after, offline_after),
            cordoned_count=int(cordoned.sum()),
            dedicated_per_pool={p: int(dedicated[s:e].sum()) for p, (s, e) in pools.items()},
            dev_names=dev_names,
            dev_index={k: j for j, k in enumerate(dev_names)},
            cap_dev=cap_dev,
            free_dev=cap_dev.copy(),
            zone_code=zone_code,
            zone_names=zone_names,
            defaults=d,
        )
        view.dev_nodes_per_pool = [
            {p: int(np.count_nonzero(cap_dev[j, s:e])) for p, (s, e) in pools.items()}
            for j in range(len(dev_names))
        ]
        view.pool_zones = {p: sorted({int(z) for z in zone_code[s:e]}) for p, (s, e) in pools.items()}
        view._apply_bulk(allocations)
        view.dev_floor = [
            {p: int(view.free_dev[j, s:e].min()) if e > s else 0 for p, (s, e) in pools.items()}
            for j in range(len(view.dev_names))
        ]
        view.disk_over = bool((view.free_disk < 0).any())
        view.dev_over = bool((view.free_dev < 0).any())
        return view

    def _apply_bulk(self, allocations: Iterable[Allocation]) -> None:
        """Fold many allocations in with a handful of vector operations (fast start-up)."""
        idx: list[int] = []
        cpu: list[int] = []
        mem: list[int] = []
        disk: list[int] = []
        for alloc in allocations:
            if alloc.task_id in self.allocations:
                continue
            i = self.index.get(alloc.node)
            if i is None:
                self.allocations[alloc.task_id] = (-1, alloc)
                continue
            self.allocations[alloc.task_id] = (i, alloc)
            idx.append(i)
            cpu.append(alloc.cpu)
            mem.append(alloc.memory)
            disk.append(alloc.disk)
            if alloc.resources or alloc.group is not None or alloc.spread_group is not None:
                self._count_extras(i, alloc, 1)
        if not idx:
            return
        where = np.asarray(idx, dtype=np.int64)
        n = len(self.names)
        self.free_cpu -= np.bincount(where, weights=np.asarray(cpu, dtype=np.float64), minlength=n).astype(
            np.int64
        )
        self.free_mem -= np.bincount(where, weights=np.asarray(mem, dtype=np.float64), minlength=n).astype(
            np.int64
        )
        self.free_disk -= np.bincount(where, weights=np.asarray(disk, dtype=np.float64), minlength=n).astype(
            np.int64
        )
        self.disk_changes += 1
        self.vms += np.bincount(where, minlength=n).astype(np.int64)

    def _count_extras(self, i: int, alloc: Allocation, sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) what ``alloc`` holds besides cpu, memory, disk and a VM slot:
        devices, its anti-affinity membership and its place in a spread group."""
        for kind, count in alloc.resources:
            j = self.dev_index.get(kind)
            if j is None:  # a device the node no longer declares: it still holds it
                j = self._add_device_kind(kind)
            self.free_dev[j, i] -= sign * count
            # Taking lowers the pool's floor; giving back leaves it a valid lower bound.
            if sign > 0 and j < len(self.dev_floor):
                floor, pool = self.dev_floor[j], self.pools_of[i]
                free = int(self.free_dev[j, i])
                if free < floor.get(pool, free):
                    floor[pool] = free
        if alloc.group is not None:
            _bump(self.groups, alloc.group, i, sign)
            if not alloc.soft:
                _bump(self.hard_groups, alloc.group, i, sign)
        if alloc.spread_group is not None:
            counts = self.spread.get(alloc.spread_group)
            if counts is None:
                counts = self.spread[alloc.spread_group] = np.zeros(len(self.zone_names), dtype=np.int64)
            counts[self.zone_code[i]] += sign
            if sign < 0 and not counts.any():
                del self.spread[alloc.spread_group]

    def device_room(self, j: int, pool: str, count: int) -> bool:
        """True when every node of ``pool`` has at least ``count`` free of device kind ``j``.

        Then a device filter cannot remove a node and is skipped. The answer
        comes from a lower bound kept per pool (lowered by every
        reservation, left alone by releases, so always a lower bound) and,
        when the bound is too low, from the pool's true minimum, which then
        becomes the bound: in a fleet where no node is short of the device
        the filter costs a dictionary lookup.
        """
        floor = self.dev_floor[j]
        if floor.get(pool, -1) >= count:
            return True
        s, e = self.pools.get(pool, (0, 0))
        if e <= s:
            return True
        low = floor[pool] = int(self.free_dev[j, s:e].min())
        return low >= count

    def vm_room(self, pool: str) -> bool:
        """True when every node of ``pool`` is below its ``max_vms`` (the max_vms filter can be skipped).

        Like :meth:`device_room`, from a lower bound kept per pool: each
        reservation in the pool lowers it by one (one node's room shrinks by
        one), releases leave it (still a lower bound), and when it reaches 0
        the pool's true minimum is measured and becomes the bound. A pool
        measured full stays known full until a release there. With the
        default ``max_vms`` (100,000) a pool is measured once per 100,000
        placements; with small limits, once per limit's worth.
        """
        if self.vm_floor.get(pool, 0) >= 1:
            return True
        if pool in self.vm_full:
            return False
        span = self.pools.get(pool)
        if span is None or span[1] <= span[0]:
            return True
        s, e = span
        low = self.vm_floor[pool] = int(np.subtract(self.max_vms[s:e], self.vms[s:e]).min())
        if low < 1:
            self.vm_full.add(pool)
        return low >= 1

    def zone_mask(self, zone: int, *, inverted: bool = False) -> BoolArray:
        """Nodes of zone code ``zone`` (or, ``inverted``, of every other zone), over the whole fleet;
        made on first use and kept: a view's zones never change."""
        key = ~zone if inverted else zone
        found = self._zone_masks.get(key)
        if found is None:
            found = self._zone_masks[key] = (self.zone_code != zone) if inverted else (self.zone_code == zone)
        return found

    def _add_device_kind(self, kind: str) -> int:
        n = len(self.names)
        self.dev_nodes_per_pool.append(dict.fromkeys(self.pools, 0))
        self.dev_floor.append(dict.fromkeys(self.pools, 0))
        self.dev_names.append(kind)
        j = self.dev_index[kind] = len(self.dev_names) - 1
        self.cap_dev = np.vstack([self.cap_dev.reshape(-1, n), np.zeros((1, n), dtype=np.int32)])
        self.free_dev = np.vstack([self.free_dev.reshape(-1, n), np.zeros((1, n), dtype=np.int32)])
        return j

    def _refresh_derived(self) -> None:
        with np.errstate(divide="ignore"):
            self.inv_cpu = np.where(self.cap_cpu > 0, 1.0 / np.maximum(self.cap_cpu, 1), 0.0)
            self.inv_mem = np.where(self.cap_mem > 0, 1.0 / np.maximum(self.cap_mem, 1), 0.0)
            self.inv_disk = np.where(self.cap_disk > 0, 1.0 / np.maximum(self.cap_disk, 1), 0.0)

    # ------------------------------------------------------------- accessors
    @property
    def size(self) -> int:
        return len(self.names)

    def allocation(self, task_id: str) -> Allocation | None:
        entry = self.allocations.get(task_id)
        return entry[1] if entry else None

    def unhealthy(
        self, now: float, start: int = 0, stop: int | None = None
    ) -> tuple[BoolArray, BoolArray] | None:
        """(suspicious, offline) masks over ``[start:stop]``, or None when no node ever sent a heartbeat.

        Nodes that never sent a heartbeat are not judged: heartbeats are
        optional, and an inventory without agents must still be schedulable.
        """
        if not self.heartbeats_seen:
            return None
        seen = self.last_seen[start:stop]
        with np.errstate(invalid="ignore"):
            silent = now - seen
            offline = silent > self.liveness.offline_after
            suspicious = (silent > self.liveness.suspicious_after) & ~offline
        return suspicious, offline

    # ------------------------------------------------------------- mutations
    def fits(self, i: int, req: SchedulingRequest) -> bool:
        """Would ``req`` fit node ``i``'s effective capacity and devices now?"""
        if not (
            self.free_cpu[i] >= req.requested_cpu
            and self.free_mem[i] >= req.requested_memory
            and self.free_disk[i] >= req.requested_disk
            and self.vms[i] < self.max_vms[i]
        ):
            return False
        for kind, count in req.requested_resources.items():
            j = self.dev_index.get(kind)
            if j is None or self.free_dev[j, i] < count:
                return False
        return True

    def overcommitted(self) -> BoolArray:
        """Nodes holding more than their effective capacity (a ratio or reserve was changed under them)."""
        over = (self.free_cpu < 0) | (self.free_mem < 0) | (self.free_disk < 0) | (self.vms > self.max_vms)
        if self.dev_names:
            over |= (self.free_dev < 0).any(axis=0)
        return over

    def reserve(self, i: int, req: SchedulingRequest) -> Allocation:
        """Take ``req``'s resources on node ``i``; refuses overcommit and a second allocation."""
        if req.task_id in self.allocations:
            raise CapacityError(f"task {req.task_id} already holds an allocation")
        if not self.fits(i, req):
            raise CapacityError(f"task {req.task_id} does not fit node {self.names[i]}")
        self.free_cpu[i] -= req.requested_cpu
        self.free_mem[i] -= req.requested_memory
        if req.requested_disk:
            self.free_disk[i] -= req.requested_disk
            self.disk_changes += 1
        self.vms[i] += 1
        self._took_vm(i)
        alloc = allocation_for(req, self.names[i])
        self.allocations[req.task_id] = (i, alloc)
        if alloc.resources or alloc.group is not None or alloc.spread_group is not None:
            self._count_extras(i, alloc, 1)
        return alloc

    def release(self, task_id: str) -> Allocation | None:
        """Give a task's resources back; None when it holds nothing (idempotent)."""
        entry = self.allocations.pop(task_id, None)
        if entry is None:
            return None
        i, alloc = entry
        if i < 0:  # its node left the inventory; nothing to give back
            return alloc
        self.free_cpu[i] += alloc.cpu
        self.free_mem[i] += alloc.memory
        if alloc.disk:
            self.free_disk[i] += alloc.disk
            self.disk_changes += 1
        self.vms[i] -= 1
        self.vm_full.discard(self.pools_of[i])
        self._count_extras(i, alloc, -1)
        return alloc

    def restore(self, alloc: Allocation) -> None:
        """Put back an allocation taken away by :meth:`release` (undo of an uncommitted group)."""
        i = self.index.get(alloc.node, -1)
        self.allocations[alloc.task_id] = (i, alloc)
        if i < 0:
            return
        self.free_cpu[i] -= alloc.cpu
        self.free_mem[i] -= alloc.memory
        if alloc.disk:
            self.free_disk[i] -= alloc.disk
            self.disk_changes += 1
        self.vms[i] += 1
        self._took_vm(i)
        self._count_extras(i, alloc, 1)

    def _took_vm(self, i: int) -> None:
        """Node ``i`` holds one more VM: its pool's :attr:`vm_floor` drops by one (if known)."""
        floor, pool = self.vm_floor, self.pools_of[i]
        if pool in floor:
            floor[pool] -= 1

    def heartbeat(self, name: str, now: float) -> bool:
        """Record that ``name`` spoke at ``now`` (monotonic seconds); False for an unknown node."""
        i = self.index.get(name)
        if i is None:
            return False
        if math.isnan(self.last_seen[i]):
            self.heartbeats_seen += 1
        self.last_seen[i] = now
        return True

    def set_cordoned(self, name: str, cordoned: bool) -> bool:
        i = self.index.get(name)
        if i is None:
            return False
        if bool(self.cordoned[i]) != cordoned:
            self.cordoned[i] = cordoned
            self.cordoned_count += 1 if cordoned else -1
        return True

    # ------------------------------------------------------------- snapshots
    def snapshot(self) -> FleetView:
        """An independent copy: later reservations on either side do not affect the other."""
        return FleetView(
            names=list(self.names),
            ips=list(self.ips),
            pools_of=list(self.pools_of),
            zones=list(self.zones),
            pools=dict(self.pools),
            cap_cpu=self.cap_cpu.copy(),
            cap_mem=self.cap_mem.copy(),
            cap_disk=self.cap_disk.copy(),
            max_vms=self.max_vms.copy(),
            free_cpu=self.free_cpu.copy(),
            free_mem=self.free_mem.copy(),
            free_disk=self.free_disk.copy(),
            vms=self.vms.copy(),
            dedicated=self.dedicated.copy(),
            cordoned=self.cordoned.copy(),
            last_seen=self.last_seen.copy(),
            tags={k: v.copy() for k, v in self.tags.items()},
            index=dict(self.index),
            allocations=dict(self.allocations),
            groups={g: dict(m) for g, m in self.groups.items()},
            liveness=_Liveness(self.liveness.suspicious_after, self.liveness.offline_after),
            heartbeats_seen=self.heartbeats_seen,
            cordoned_count=self.cordoned_count,
            dedicated_per_pool=dict(self.dedicated_per_pool),
            dev_names=list(self.dev_names),
            dev_index=dict(self.dev_index),
            cap_dev=self.cap_dev.copy(),
            free_dev=self.free_dev.copy(),
            zone_code=self.zone_code,  # never modified in place
            zone_names=list(self.zone_names),
            dev_nodes_per_pool=[dict(d) for d in self.dev_nodes_per_pool],
            dev_floor=[dict(d) for d in self.dev_floor],
            pool_zones=self.pool_zones,  # read-only
            _zone_masks=self._zone_masks,  # read-only, and the same zones
            spread={g: c.copy() for g, c in self.spread.items()},
            hard_groups={g: dict(m) for g, m in self.hard_groups.items()},
            defaults=self.defaults,
            disk_over=self.disk_over,
            dev_over=self.dev_over,
            vm_floor=dict(self.vm_floor),
            vm_full=set(self.vm_full),
            disk_changes=self.disk_changes,
        )

    def with_inventory(self, nodes: Sequence[Node], defaults: CapacityDefaults | None = None) -> FleetView:
        """A new view for a changed inventory (or changed default ratios and reserves), carrying over
        allocations and heartbeats.

        Allocations are carried over even where they now exceed a lowered
        effective capacity: the node is then :meth:`overcommitted` and takes
        nothing more until enough is released.
        """
        fresh = FleetView.build(
            nodes,
            (alloc for _, alloc in self.allocations.values()),
            suspicious_after=self.liveness.suspicious_after,
            offline_after=self.liveness.offline_after,
            defaults=self.defaults if defaults is None else defaults,
        )
        # Allocations on nodes that vanished from the inventory are kept so
        # that a later release still finds them (and nothing double-frees).
        for task_id, (_, alloc) in self.allocations.items():
            if task_id not in fresh.allocations:
                fresh.allocations[task_id] = (-1, alloc)
        for name, i in fresh.index.items():
            old = self.index.get(name)
            if old is not None and not math.isnan(self.last_seen[old]):
                fresh.last_seen[i] = self.last_seen[old]
                fresh.heartbeats_seen += 1
        return fresh

    # ------------------------------------------------------------ reporting
    def node_usage(self, i: int) -> dict[str, int]:
        out = {
            "cpu": int(self.cap_cpu[i] - self.free_cpu[i]),
            "memory": int(self.cap_mem[i] - self.free_mem[i]),
            "disk": int(self.cap_disk[i] - self.free_disk[i]),
            "vms": int(self.vms[i]),
        }
        for j, kind in enumerate(self.dev_names):
            used = int(self.cap_dev[j, i] - self.free_dev[j, i])
            if used or self.cap_dev[j, i]:
                out[kind] = used
        return out

    def device_capacity(self, i: int) -> dict[str, int]:
        """Node ``i``'s countable devices (kinds it has)."""
        return {k: int(self.cap_dev[j, i]) for j, k in enumerate(self.dev_names) if self.cap_dev[j, i]}

    def pool_utilization(self) -> dict[str, dict[str, float]]:
        """Per pool, the fraction of cpu, memory and disk allocated."""
        out: dict[str, dict[str, float]] = {}
        for pool, (s, e) in self.pools.items():
            out[pool] = {
                "cpu": _ratio(self.cap_cpu[s:e], self.free_cpu[s:e]),
                "memory": _ratio(self.cap_mem[s:e], self.free_mem[s:e]),
                "disk": _ratio(self.cap_disk[s:e], self.free_disk[s:e]),
                "nodes": float(e - s),
                "vms": float(self.vms[s:e].sum()),
            }
            for j, kind in enumerate(self.dev_names):
                cap = self.cap_dev[j, s:e]
                if cap.any():
                    out[pool][kind] = _ratio(cap, self.free_dev[j, s:e])
        return out

    def nbytes(self) -> int:
        """Bytes held by the arrays (for the memory benchmark)."""
        arrays = [
            self.cap_cpu,
            self.cap_mem,
            self.cap_disk,
            self.max_vms,
            self.free_cpu,
            self.free_mem,
            self.free_disk,
            self.vms,
            self.dedicated,
            self.cordoned,
            self.last_seen,
            self.inv_cpu,
            self.inv_mem,
            self.inv_disk,
            self.cap_dev,
            self.free_dev,
            self.zone_code,
            *self.tags.values(),
            *self.spread.values(),
        ]
        return sum(a.nbytes for a in arrays)


def frozen_maker(cls: type[T]) -> Callable[..., T]:
    """A constructor for the frozen, slotted dataclass ``cls``: every field, positionally, in order.

    Why: a frozen dataclass's generated ``__init__`` sets each field through
    ``object.__setattr__`` (to get past its own refusal of assignments),
    about 0.2 µs a field, and a decision builds two such objects (its
    :class:`~scheduler.models.Decision` and, when placed, the
    :class:`Allocation`): a tenth of a decision at 1,000 nodes. Setting the
    slots through their descriptors makes the same object (same class,
    equal, hashable, still frozen) in half the time. Generated like
    ``dataclasses`` generates ``__init__``, so a field added to ``cls``
    is a parameter here too; a class with ``__post_init__`` or without
    slots is refused, since its ``__init__`` does more than set fields.
    """
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__ or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not a slotted dataclass without __post_init__")
    names = [f.name for f in dataclasses.fields(cls)]
    scope: dict[str, object] = {"_new": object.__new__, "_cls": cls}
    scope.update({f"_set_{n}": cls.__dict__[n].__set__ for n in names})
    lines = [f"def make({', '.join(names)}):", "    self = _new(_cls)"]
    lines += [f"    _set_{n}(self, {n})" for n in names]
    lines.append("    return self")
    exec("\n".join(lines), scope)
    make: Callable[..., T] = scope["make"]  # type: ignore[assignment]
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    return make


_allocation = frozen_maker(Allocation)


def allocation_for(req: SchedulingRequest, node: str) -> Allocation:
    """What ``req`` holds once placed on ``node``."""
    return _allocation(
        req.task_id,
        node,
        req.requested_cpu,
        req.requested_memory,
        req.requested_disk,
        req.anti_affinity_group,
        tuple(req.requested_resources.items()),
        req.spread_group,
        req.anti_affinity_mode == "soft",
    )


def _bump(index: dict[str, dict[int, int]], group: str, i: int, sign: int) -> None:
    members = index.setdefault(group, {})
    count = members.get(i, 0) + sign
    if count > 0:
        members[i] = count
    else:
        members.pop(i, None)
        if not members:
            del index[group]


def _ratio(cap: IntArray | CodeArray, free: IntArray | CodeArray) -> float:
    total = int(cap.sum())
    return 0.0 if total == 0 else float(total - int(free.sum())) / total
