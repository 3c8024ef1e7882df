"""least_loaded: spread VMs to the node with the lowest weighted utilization after placement.

The default strategy; weights cpu 0.4 / memory 0.4 / disk 0.2 as in the Swift
control plane this service grew from (configurable as ``strategy_weights``).
Spreading keeps headroom on every node for VMs that grow and limits the blast
radius of one node failing.
"""

from __future__ import annotations

from scheduler.fleet import FleetView, FloatArray
from scheduler.models import SchedulingRequest
from scheduler.strategies.base import ScoringStrategy, WeightedUtilization
from scheduler.strategies.registry import StrategyOptions


class LeastLoaded(ScoringStrategy):
    @classmethod
    def build(cls, options: StrategyOptions) -> LeastLoaded:
        return cls(*options.weights)

    def __init__(self, cpu: float = 0.4, memory: float = 0.4, disk: float = 0.2) -> None:
        self.weights = (cpu, memory, disk)
        self._score = WeightedUtilization(self.weights)

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        return self._score(fleet, start, stop, req)
