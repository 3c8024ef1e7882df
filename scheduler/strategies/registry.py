"""The strategy registry and factory: names -> classes, and ``get_strategy``.

This module is imported by the configuration (to validate
``SCHEDULING_STRATEGY``) and so must stay import-light: the strategy classes
are imported only when a strategy is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.strategies.base import Strategy

# name -> one-line description; the order is the order `scheduler strategies` prints.
STRATEGIES: dict[str, str] = {
    "least_loaded": "spread: lowest weighted utilization after placement (cpu .4, memory .4, disk .2)",
    "best_fit": "consolidate: least remaining capacity after placement, balanced across resources",
    "cpu": "most free vCPUs after placement",
    "memory": "most free memory after placement",
    "hybrid": "most weighted free fraction of cpu, memory and disk (weights in config)",
    "load_ratio": "fewest VMs per max_vms",
    "round_robin": "the next feasible node after the previous choice, in name order",
    "random": "a uniformly random feasible node (seeded, reproducible)",
}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)


class UnknownStrategy(ValueError):
    """A strategy name that is not registered; the message lists the valid names."""

    def __init__(self, name: str):
        super().__init__(f"unknown strategy {name!r}; valid: {', '.join(STRATEGY_NAMES)}")
        self.name = name


def get_strategy(
    name: str,
    *,
    weights: tuple[float, float, float] = (0.4, 0.4, 0.2),
    seed: int = 0,
) -> Strategy:
    """Build the strategy called ``name`` (``SCHEDULING_STRATEGY`` or a request's override)."""
    from scheduler.strategies.best_fit import BestFit
    from scheduler.strategies.least_loaded import LeastLoaded
    from scheduler.strategies.load_ratio import LoadRatio
    from scheduler.strategies.random_choice import RandomChoice
    from scheduler.strategies.resources import Hybrid, MostFreeCpu, MostFreeMemory
    from scheduler.strategies.round_robin import RoundRobin

    if name == "least_loaded":
        return LeastLoaded(*weights)
    if name == "best_fit":
        return BestFit()
    if name == "cpu":
        return MostFreeCpu()
    if name == "memory":
        return MostFreeMemory()
    if name == "hybrid":
        return Hybrid(*weights)
    if name == "load_ratio":
        return LoadRatio()
    if name == "round_robin":
        return RoundRobin()
    if name == "random":
        return RandomChoice(seed)
    raise UnknownStrategy(name)
