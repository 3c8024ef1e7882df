"""Placement strategies: filters, scorers, the registry and factory, and the placer.

The package namespace is lazy: the configuration imports the registry to
validate ``SCHEDULING_STRATEGY`` in every CLI command, and that must not
drag NumPy and the whole placer into commands that never place anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scheduler.strategies.registry import STRATEGIES, STRATEGY_NAMES, UnknownStrategy, get_strategy

if TYPE_CHECKING:
    from scheduler.strategies.placer import Placer


def __getattr__(name: str) -> Any:
    if name == "Placer":
        from scheduler.strategies.placer import Placer

        return Placer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["STRATEGIES", "STRATEGY_NAMES", "Placer", "UnknownStrategy", "get_strategy"]
