"""load_ratio: the node with the fewest VMs relative to its ``max_vms``.

From the Go task scheduler this service grew from: when VMs are similar in
size, counting them is a cheap and robust proxy for load, and it respects a
node's own limit on how many VMs it can run well.
"""

from __future__ import annotations

from scheduler.fleet import FleetView, FloatArray
from scheduler.models import SchedulingRequest
from scheduler.strategies.base import ScoringStrategy


class LoadRatio(ScoringStrategy):
    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        result: FloatArray = fleet.vms[start:stop] / fleet.max_vms[start:stop]
        return result
