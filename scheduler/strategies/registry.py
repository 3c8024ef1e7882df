"""The strategy registry and factory: every strategy is registered once, here, in :data:`REGISTRY`.

One line per strategy: its name (``SCHEDULING_STRATEGY``, a request's
``strategy``), where its class lives, and the one-line description
``scheduler strategies`` prints. Everything else (:data:`STRATEGY_NAMES`,
:data:`STRATEGIES`, :func:`get_strategy`, the instance's ``name`` and
``description``) is derived from that line, so adding a strategy is one
class and one entry.

This module is imported by the configuration (to validate
``SCHEDULING_STRATEGY``) and so must stay import-light: a strategy's module
(and NumPy with it) is imported only when the strategy is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.strategies.base import Strategy


@dataclass(frozen=True, slots=True)
class StrategyEntry:
    """One registered strategy: ``target`` is ``module:Class``."""

    name: str
    target: str
    description: str


@dataclass(frozen=True, slots=True)
class StrategyOptions:
    """What the configuration can tell a strategy when it is built (each takes what it needs)."""

    weights: tuple[float, float, float] = (0.4, 0.4, 0.2)
    seed: int = 0


_M = "scheduler.strategies."
# The order is the order `scheduler strategies` prints.
REGISTRY: tuple[StrategyEntry, ...] = (
    StrategyEntry("least_loaded", _M + "least_loaded:LeastLoaded",
                  "spread: lowest weighted utilization after placement (cpu .4, memory .4, disk .2)"),
    StrategyEntry("best_fit", _M + "best_fit:BestFit",
                  "consolidate: least capacity left after placement, keeping free cpu and memory even"),
    StrategyEntry("cpu", _M + "resources:MostFreeCpu", "most free vCPUs after placement"),
    StrategyEntry("memory", _M + "resources:MostFreeMemory", "most free memory after placement"),
    StrategyEntry("hybrid", _M + "resources:Hybrid",
                  "most weighted free fraction of cpu, memory and disk (weights in config)"),
    StrategyEntry("load_ratio", _M + "load_ratio:LoadRatio", "fewest VMs per max_vms"),
    StrategyEntry("round_robin", _M + "round_robin:RoundRobin",
                  "the next feasible node after the previous choice, in name order"),
    StrategyEntry("random", _M + "random_choice:RandomChoice",
                  "a uniformly random feasible node (seeded, reproducible)"),
)  # fmt: skip
_BY_NAME = {entry.name: entry for entry in REGISTRY}
STRATEGIES: dict[str, str] = {entry.name: entry.description for entry in REGISTRY}
"""name -> one-line description."""
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
    entry = _BY_NAME.get(name)
    if entry is None:
        raise UnknownStrategy(name)
    module, _, attr = entry.target.partition(":")
    cls: type[Strategy] = getattr(importlib.import_module(module), attr)
    strategy = cls.build(StrategyOptions(weights, seed))
    strategy.name, strategy.description = entry.name, entry.description
    return strategy
