"""What a strategy is: given the nodes that passed the filters, pick one.

Filtering (can this node take the VM at all?) is shared by every strategy and
lives in :mod:`scheduler.strategies.filters`; a strategy only ranks the
survivors, like a kube-scheduler score plugin or a Nova weigher. Scoring
strategies return one score per node of the pool slice (lower is better);
the base class masks out infeasible nodes and takes the first minimum, which
is the lowest node name because the fleet is sorted by name within a pool.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from scheduler.fleet import BoolArray, FleetView, FloatArray, IntArray
from scheduler.models import SchedulingRequest

if TYPE_CHECKING:
    from scheduler.strategies.registry import StrategyOptions


class Strategy(ABC):
    """Chooses one node among the feasible nodes of a pool slice.

    ``name`` and ``description`` are set by the registry when it builds the
    strategy (:func:`~scheduler.strategies.registry.get_strategy`): they are
    written in one place only.
    """

    name: str = ""
    description: str = ""

    @classmethod
    def build(cls, options: StrategyOptions) -> Strategy:
        """An instance configured from ``options``; strategies without settings take none."""
        return cls()

    @abstractmethod
    def choose(
        self, fleet: FleetView, start: int, stop: int, feasible: BoolArray, req: SchedulingRequest
    ) -> int:
        """Absolute index of the chosen node; ``feasible`` (length stop-start) has at least one True."""


class ScoringStrategy(Strategy):
    """A strategy defined by a vectorised score over the pool slice: lowest score wins."""

    @abstractmethod
    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        """One score per node in ``[start:stop]``; only feasible nodes' scores are looked at."""

    def choose(
        self, fleet: FleetView, start: int, stop: int, feasible: BoolArray, req: SchedulingRequest
    ) -> int:
        scores = self.score(fleet, start, stop, req)
        masked = np.where(feasible, scores, np.inf)
        return start + int(np.argmin(masked))


def utilization_after(
    fleet: FleetView, start: int, stop: int, req: SchedulingRequest
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Fraction of cpu, memory and disk in use on each node if ``req`` were placed there.

    Each is ``(cap - free + requested) * (1 / cap)``, computed with one
    temporary less than the plain expression (the add is done in place):
    the same operations in the same order, so the same bits, but at 100,000
    nodes every array allocated is a measurable part of a decision. The
    returned arrays are fresh; callers may modify them in place.
    """
    sl = slice(start, stop)
    cpu = _after(fleet.cap_cpu[sl], fleet.free_cpu[sl], req.requested_cpu, fleet.inv_cpu[sl])
    mem = _after(fleet.cap_mem[sl], fleet.free_mem[sl], req.requested_memory, fleet.inv_mem[sl])
    disk = _after(fleet.cap_disk[sl], fleet.free_disk[sl], req.requested_disk, fleet.inv_disk[sl])
    return cpu, mem, disk


def _after(cap: IntArray, free: IntArray, amount: int, inv: FloatArray) -> FloatArray:
    used = np.subtract(cap, free)
    used += amount
    result: FloatArray = np.multiply(used, inv)
    return result
