"""best_fit: pack VMs tightly to consolidate, without stranding one resource behind another.

Textbook best fit looks at one resource and picks the node left with the
least of it. With several resources that strands capacity: a node filled
with cpu-heavy VMs keeps free memory that no VM can use once its vCPUs are
gone (and the reverse), and the pool rejects a VM while holding, in
aggregate, plenty of room for it.

So the score (lower wins) has two parts, over the free fractions of the node
*after* placement (``f_cpu``, ``f_mem``, and ``f_disk`` when the request asks
for disk):

* ``sum(f)``: how much room the node keeps, the best-fit term (L1 over the
  normalised resources). Small means a tight fit; it fills busy nodes first
  and keeps empty ones empty for the large VMs that only they can take.
* ``STRANDING * (max(f) - min(f))``: how unevenly the room is left, which is
  the capacity that would be stranded if the scarcest resource ran out. It
  steers a cpu-heavy VM onto a node whose memory is already the busier
  resource, so VMs of complementary shapes end up together (the alignment
  idea of Tetris and of the vector bin-packing heuristics of Panigrahy et
  al., kept next to best fit as Borg combines them).

``STRANDING`` is large on purpose: stranding is avoided first, tightness
decides among nodes that strand alike. It was chosen on the fragmentation
benchmark (``bench/bench_quality.py``: pool CPU utilization at the first
request rejected while the pool had room in aggregate), where weights of 16-32
all reach 0.97-0.98 against about 0.91 for textbook best fit and 0.92 for plain
L2 best fit; pure balance (a weight in the thousands) drops back to 0.96,
because without the best-fit term the empty nodes fill up. Disk joins only when the request
asks for it: a resource nobody requests would otherwise pull every VM
towards empty nodes.

Everything is a handful of vectorised passes over the pool slice, with no
square root, so ``best_fit`` costs less than ``least_loaded``.
"""

from __future__ import annotations

import numpy as np

from scheduler.fleet import FleetView, FloatArray
from scheduler.models import SchedulingRequest
from scheduler.strategies.base import ScoringStrategy

STRANDING = 24.0
"""Weight of the stranding term against the best-fit term (see the module docstring)."""


class BestFit(ScoringStrategy):
    def __init__(self, stranding: float = STRANDING) -> None:
        self.stranding = stranding

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        sl = slice(start, stop)
        s = self.stranding
        # Free fractions after placement, (free - requested) / capacity, sharing one integer temporary.
        left = np.subtract(fleet.free_cpu[sl], req.requested_cpu)
        f_cpu: FloatArray = np.multiply(left, fleet.inv_cpu[sl])
        np.subtract(fleet.free_mem[sl], req.requested_memory, out=left)
        f_mem: FloatArray = np.multiply(left, fleet.inv_mem[sl])
        if req.requested_disk:
            np.subtract(fleet.free_disk[sl], req.requested_disk, out=left)
            f_disk = np.multiply(left, fleet.inv_disk[sl])
            high = np.maximum(np.maximum(f_cpu, f_mem), f_disk)
            low = np.minimum(np.minimum(f_cpu, f_mem), f_disk)
            f_cpu += f_mem
            f_cpu += f_disk  # room
            high -= low
            high *= s
            high += f_cpu
            return high
        # Two resources: room + s * spread = (high + low) + s * (high - low) = (1 + s) * high + (1 - s) * low,
        # which needs neither the room nor the spread as arrays of their own.
        high = np.maximum(f_cpu, f_mem)
        low = np.minimum(f_cpu, f_mem, out=f_mem)
        high *= 1.0 + s
        low *= 1.0 - s
        high += low
        return high
