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
overcommit a node (DESIGN.md invariant 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from scheduler.models import Node, SchedulingRequest

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class CapacityError(Exception):
    """A reservation that would overcommit a node (a bug upstream, never silently allowed)."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """One active VM placement: what a task holds on which node."""

    task_id: str
    node: str
    cpu: int
    memory: int
    disk: int
    group: str | None = None


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
    ) -> FleetView:
        """A fleet view of ``nodes`` with ``allocations`` already applied.

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
        cap_cpu = np.fromiter((x.cpu for x in ordered), dtype=np.int64, count=n)
        cap_mem = np.fromiter((x.memory for x in ordered), dtype=np.int64, count=n)
        cap_disk = np.fromiter((x.disk for x in ordered), dtype=np.int64, count=n)
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
        )
        view._apply_bulk(allocations)
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
            if alloc.group is not None:
                members = self.groups.setdefault(alloc.group, {})
                members[i] = members.get(i, 0) + 1
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
        self.vms += np.bincount(where, minlength=n).astype(np.int64)

    def _refresh_derived(self) -> None:
        with np.errstate(divide="ignore"):
            self.inv_cpu = np.where(self.cap_cpu > 0, 1.0 / np.maximum(self.cap_cpu, 1), 0.0)
            self.inv_mem = np.where(self.cap_mem > 0, 1.0 / np.maximum(self.cap_mem, 1), 0.0)
            self.inv_disk = np.where(self.cap_disk > 0, 1.0 / np.maximum(self.cap_disk, 1), 0.0)

    # ------------------------------------------------------------- accessors
    @property
    def size(self) -> int:
        return len(self.names)

    def pool_slice(self, pool: str) -> tuple[int, int] | None:
        return self.pools.get(pool)

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
        return bool(
            self.free_cpu[i] >= req.requested_cpu
            and self.free_mem[i] >= req.requested_memory
            and self.free_disk[i] >= req.requested_disk
            and self.vms[i] < self.max_vms[i]
        )

    def reserve(self, i: int, req: SchedulingRequest) -> Allocation:
        """Take ``req``'s resources on node ``i``; refuses overcommit and a second allocation."""
        if req.task_id in self.allocations:
            raise CapacityError(f"task {req.task_id} already holds an allocation")
        if not self.fits(i, req):
            raise CapacityError(f"task {req.task_id} does not fit node {self.names[i]}")
        self.free_cpu[i] -= req.requested_cpu
        self.free_mem[i] -= req.requested_memory
        self.free_disk[i] -= req.requested_disk
        self.vms[i] += 1
        alloc = Allocation(
            req.task_id,
            self.names[i],
            req.requested_cpu,
            req.requested_memory,
            req.requested_disk,
            req.anti_affinity_group,
        )
        self.allocations[req.task_id] = (i, alloc)
        if alloc.group is not None:
            members = self.groups.setdefault(alloc.group, {})
            members[i] = members.get(i, 0) + 1
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
        self.free_disk[i] += alloc.disk
        self.vms[i] -= 1
        if alloc.group is not None:
            members = self.groups[alloc.group]
            members[i] -= 1
            if members[i] == 0:
                del members[i]
            if not members:
                del self.groups[alloc.group]
        return alloc

    def restore(self, alloc: Allocation) -> None:
        """Put back an allocation taken away by :meth:`release` (undo of an uncommitted group)."""
        i = self.index.get(alloc.node, -1)
        self.allocations[alloc.task_id] = (i, alloc)
        if i < 0:
            return
        self.free_cpu[i] -= alloc.cpu
        self.free_mem[i] -= alloc.memory
        self.free_disk[i] -= alloc.disk
        self.vms[i] += 1
        if alloc.group is not None:
            members = self.groups.setdefault(alloc.group, {})
            members[i] = members.get(i, 0) + 1

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

    def configure_liveness(self, suspicious_after: float, offline_after: float) -> None:
        self.liveness = _Liveness(suspicious_after, offline_after)

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
        )

    def with_inventory(self, nodes: Sequence[Node]) -> FleetView:
        """A new view for a changed inventory, carrying over allocations and heartbeats."""
        fresh = FleetView.build(
            nodes,
            (alloc for _, alloc in self.allocations.values()),
            suspicious_after=self.liveness.suspicious_after,
            offline_after=self.liveness.offline_after,
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
        return {
            "cpu": int(self.cap_cpu[i] - self.free_cpu[i]),
            "memory": int(self.cap_mem[i] - self.free_mem[i]),
            "disk": int(self.cap_disk[i] - self.free_disk[i]),
            "vms": int(self.vms[i]),
        }

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
            *self.tags.values(),
        ]
        return sum(a.nbytes for a in arrays)


def _ratio(cap: IntArray, free: IntArray) -> float:
    total = int(cap.sum())
    return 0.0 if total == 0 else float(total - int(free.sum())) / total
