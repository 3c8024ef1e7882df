"""round_robin: the next feasible node after the last one chosen in the pool.

The one strategy with memory: a cursor per pool. It is deliberately not
persisted; after a restart or failover it starts again from the first node,
which only shifts where the rotation begins.
"""

from __future__ import annotations

import numpy as np

from scheduler.fleet import BoolArray, FleetView
from scheduler.models import SchedulingRequest
from scheduler.strategies.base import Strategy, avoid_device_nodes


class RoundRobin(Strategy):
    def __init__(self) -> None:
        self._cursor: dict[str, str] = {}

    def choose(
        self, fleet: FleetView, start: int, stop: int, feasible: BoolArray, req: SchedulingRequest
    ) -> int:
        if self.avoid_devices:
            feasible = avoid_device_nodes(fleet, start, stop, feasible, req)
        candidates = np.flatnonzero(feasible)
        last = self._cursor.get(req.requested_pool)
        pos = 0
        if last is not None:
            # Names, not indices: indices move when the inventory changes.
            names = fleet.names
            lo, hi = 0, len(candidates)
            while lo < hi:
                mid = (lo + hi) // 2
                if names[start + int(candidates[mid])] <= last:
                    lo = mid + 1
                else:
                    hi = mid
            pos = lo if lo < len(candidates) else 0
        chosen = start + int(candidates[pos])
        self._cursor[req.requested_pool] = fleet.names[chosen]
        return chosen
