"""random: a uniformly random feasible node, from a seeded generator.

Seeded (``random_seed`` in config, ``--seed`` in simulate) so that a placement
sequence can be replayed exactly: randomness for spreading, not for surprises.
"""

from __future__ import annotations

import numpy as np

from scheduler.fleet import BoolArray, FleetView
from scheduler.models import SchedulingRequest
from scheduler.strategies.base import Strategy, avoid_device_nodes
from scheduler.strategies.registry import StrategyOptions


class RandomChoice(Strategy):
    @classmethod
    def build(cls, options: StrategyOptions) -> RandomChoice:
        return cls(options.seed)

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def choose(
        self, fleet: FleetView, start: int, stop: int, feasible: BoolArray, req: SchedulingRequest
    ) -> int:
        if self.avoid_devices:
            feasible = avoid_device_nodes(fleet, start, stop, feasible, req)
        candidates = np.flatnonzero(feasible)
        return start + int(candidates[int(self._rng.integers(len(candidates)))])
