"""Placement strategies: filters, scorers, the registry and factory, and the placer."""

from scheduler.strategies.placer import Placer
from scheduler.strategies.registry import STRATEGIES, STRATEGY_NAMES, UnknownStrategy, get_strategy

__all__ = ["STRATEGIES", "STRATEGY_NAMES", "Placer", "UnknownStrategy", "get_strategy"]
