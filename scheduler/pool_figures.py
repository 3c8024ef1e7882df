"""Per-pool capacity and allocation figures, and how to read them off the leader's live fleet.

Pure (no I/O): the same :class:`PoolFigures` come from the database
(:func:`scheduler.store.views.read_database_figures`) on a replica that does
not lead, and from the in-memory fleet (:func:`fleet_pool_figures`) on the
leader, with no database round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from scheduler.fleet import FleetView

RESOURCES = ("cpu", "memory", "disk", "vms")


@dataclass(frozen=True)
class PoolFigures:
    """One pool's capacity and what its active allocations use."""

    nodes: int = 0
    cordoned: int = 0
    capacity: Mapping[str, int] = field(default_factory=dict)
    allocated: Mapping[str, int] = field(default_factory=dict)

    def utilization(self, resource: str) -> float:
        cap = self.capacity.get(resource, 0)
        return 0.0 if cap <= 0 else self.allocated.get(resource, 0) / cap


def fleet_pool_figures(fleet: FleetView) -> dict[str, PoolFigures]:
    """The same figures from the leader's in-memory fleet: live, and no database round trip."""
    out: dict[str, PoolFigures] = {}
    for pool, (s, e) in fleet.pools.items():
        cap = {
            "cpu": int(fleet.cap_cpu[s:e].sum()),
            "memory": int(fleet.cap_mem[s:e].sum()),
            "disk": int(fleet.cap_disk[s:e].sum()),
            "vms": int(fleet.max_vms[s:e].sum()),
        }
        used = {
            "cpu": cap["cpu"] - int(fleet.free_cpu[s:e].sum()),
            "memory": cap["memory"] - int(fleet.free_mem[s:e].sum()),
            "disk": cap["disk"] - int(fleet.free_disk[s:e].sum()),
            "vms": int(fleet.vms[s:e].sum()),
        }
        out[pool] = PoolFigures(
            nodes=e - s, cordoned=int(fleet.cordoned[s:e].sum()), capacity=cap, allocated=used
        )
    return out


__all__ = ["RESOURCES", "PoolFigures", "fleet_pool_figures"]
