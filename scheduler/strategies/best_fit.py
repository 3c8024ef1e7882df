"""best_fit: pack VMs tightly to consolidate (the node left with the least room).

Textbook best fit looks at one resource. With several resources it strands
capacity: a node can end up with free vCPUs but no memory, and that vCPU is
lost to every future request. This scorer ranks nodes by the normalised
remaining capacity after placement (L2 norm of the free cpu / memory / disk
fractions: small means a tight fit) plus a penalty on how unbalanced the
remainder is (|free cpu fraction - free memory fraction|), so a node is
filled along the same shape in every dimension and what is left stays usable.
The balance weight was chosen on the fragmentation benchmark in
``bench/bench_quality.py``, which also reports the plain best-fit baseline.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from scheduler.fleet import FleetView, FloatArray
from scheduler.models import SchedulingRequest
from scheduler.strategies.base import ScoringStrategy, utilization_after


class BestFit(ScoringStrategy):
    name: ClassVar[str] = "best_fit"
    description: ClassVar[str] = "consolidate: least remaining capacity after placement, balanced across resources"

    def __init__(self, balance: float = 1.0) -> None:
        self.balance = balance

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        cpu, mem, disk = utilization_after(fleet, start, stop, req)
        free_cpu = 1.0 - cpu
        free_mem = 1.0 - mem
        has_disk = fleet.cap_disk[start:stop] > 0
        free_disk = np.where(has_disk, 1.0 - disk, 0.0)
        tight: FloatArray = np.sqrt(free_cpu * free_cpu + free_mem * free_mem + free_disk * free_disk)
        if self.balance:
            tight = tight + self.balance * np.abs(free_cpu - free_mem)
        return tight
