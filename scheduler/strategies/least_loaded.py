"""least_loaded: spread VMs to the node with the lowest weighted utilization after placement.

The default strategy; weights cpu 0.4 / memory 0.4 / disk 0.2 as in the Swift
control plane this service grew from (configurable as ``strategy_weights``).
Spreading keeps headroom on every node for VMs that grow and limits the blast
radius of one node failing.
"""

from __future__ import annotations

from scheduler.fleet import FleetView, FloatArray
from scheduler.models import SchedulingRequest
from scheduler.strategies.base import ScoringStrategy, utilization_after
from scheduler.strategies.registry import StrategyOptions


class LeastLoaded(ScoringStrategy):
    @classmethod
    def build(cls, options: StrategyOptions) -> LeastLoaded:
        return cls(*options.weights)

    def __init__(self, cpu: float = 0.4, memory: float = 0.4, disk: float = 0.2) -> None:
        self.weights = (cpu, memory, disk)

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        cpu, mem, disk = utilization_after(fleet, start, stop, req)
        wc, wm, wd = self.weights
        # wc * cpu + wm * mem + wd * disk, accumulated in place (same order, same result, no temporaries).
        cpu *= wc
        mem *= wm
        cpu += mem
        disk *= wd
        cpu += disk
        return cpu
