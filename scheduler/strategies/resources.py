"""cpu, memory and hybrid: the node with the most free resources after placement.

``cpu`` and ``memory`` look at one resource in absolute units (the node with
the most free vCPUs, or MiB); ``hybrid`` weighs the free fraction of every
resource (weights from ``strategy_weights``), so big and small nodes compare
fairly.
"""

from __future__ import annotations

import numpy as np

from scheduler.fleet import FleetView, FloatArray
from scheduler.models import SchedulingRequest
from scheduler.strategies.base import ScoringStrategy, WeightedUtilization
from scheduler.strategies.registry import StrategyOptions


class MostFreeCpu(ScoringStrategy):
    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        return np.negative(fleet.free_cpu[start:stop], dtype=np.float64)


class MostFreeMemory(ScoringStrategy):
    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        return np.negative(fleet.free_mem[start:stop], dtype=np.float64)


class Hybrid(ScoringStrategy):
    @classmethod
    def build(cls, options: StrategyOptions) -> Hybrid:
        return cls(*options.weights)

    def __init__(self, cpu: float = 0.4, memory: float = 0.4, disk: float = 0.2) -> None:
        self.weights = (cpu, memory, disk)
        self._utilization = WeightedUtilization(self.weights)
        self._total = cpu + memory + disk

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        # Most weighted free fraction: -(wc * (1 - cpu) + wm * (1 - mem) + wd * (1 - disk)), which is
        # the weighted utilization minus the sum of the weights (a node without disk counts its disk
        # as free, as before). Minimized as it is; same ranking as least_loaded's with the same weights.
        out = self._utilization(fleet, start, stop, req)
        out -= self._total
        return out
