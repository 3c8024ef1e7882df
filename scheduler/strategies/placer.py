"""The placer: filter, then let the chosen strategy pick; no I/O, no clock of its own.

It owns the strategy instances (built once per name through the factory, so
``round_robin``'s cursor and ``random``'s generator persist across decisions)
and the configured default, which can be switched at run time
(:meth:`Placer.switch`) when the operator edits the ConfigMap.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from scheduler.fleet import FleetView, frozen_maker
from scheduler.models import Decision, Reason, SchedulingRequest
from scheduler.strategies.base import Strategy
from scheduler.strategies.filters import explain_counts, feasible_nodes
from scheduler.strategies.registry import STRATEGY_NAMES, UnknownStrategy, get_strategy

_decision = frozen_maker(Decision)
"""``Decision(task_id, strategy, node, node_index, reason, message, rejections, candidates, total)``, made
at half the cost of its ``__init__`` (see :func:`~scheduler.fleet.frozen_maker`): one per decision."""


class Placer:
    """Decides where each request goes; pure apart from the strategies' own state."""

    def __init__(
        self,
        default: str = "least_loaded",
        *,
        weights: tuple[float, float, float] = (0.4, 0.4, 0.2),
        seed: int = 0,
        dedicated_exclusive: bool = True,
        spread_max_skew: int = 1,
        extra: Mapping[str, Strategy] | None = None,
    ) -> None:
        """``extra``: strategy instances by name beside the registered ones (benchmarks compare
        reference heuristics through the same filters this way)."""
        self.weights = weights
        self.seed = seed
        self.dedicated_exclusive = dedicated_exclusive
        self.spread_max_skew = spread_max_skew
        self._instances: dict[str, Strategy] = dict(extra or {})
        self.default = default
        self.strategy(default)  # fail now, at start-up, on an unknown name

    def strategy(self, name: str) -> Strategy:
        found = self._instances.get(name)
        if found is None:
            found = get_strategy(name, weights=self.weights, seed=self.seed)
            self._instances[name] = found
        return found

    def switch(self, name: str) -> None:
        """Make ``name`` the default strategy; raises UnknownStrategy and keeps the old one."""
        self.strategy(name)
        self.default = name

    def decide(
        self, fleet: FleetView, req: SchedulingRequest, *, now: float | None = None, explain: bool = True
    ) -> Decision:
        """Where ``req`` should go on ``fleet`` now (nothing is reserved: see :meth:`place`).

        ``explain=False`` leaves ``message`` empty when it can be made later
        from the decision's own figures (:func:`explanation`, the same text):
        a replay of thousands of decisions reads few of them, and the text
        was a tenth of a decision. The rare messages that need more (an
        unknown pool or strategy) are always made.
        """
        name = req.strategy or self.default
        try:
            strategy = self.strategy(name)
        except UnknownStrategy as exc:
            return Decision(
                task_id=req.task_id,
                strategy=name,
                reason=Reason.UNKNOWN_STRATEGY,
                message=str(exc),
                total=fleet.size,
            )
        feas = feasible_nodes(
            fleet,
            req,
            now=time.monotonic() if now is None else now,
            exclusive=self.dedicated_exclusive,
            max_skew=self.spread_max_skew,
        )
        if feas.count == 0:
            reason = feas.failure_reason()
            message = feas.explain() if explain or reason is Reason.UNKNOWN_POOL else ""
            if reason is Reason.UNKNOWN_POOL:
                known = ", ".join(sorted(fleet.pools)) or "none"
                message = f"unknown pool {req.requested_pool!r} (known: {known}); {message}"
            return _decision(req.task_id, name, None, None, reason, message, feas.rejections, 0, feas.total)
        index = strategy.choose(fleet, feas.start, feas.stop, feas.feasible_mask(), req)
        node = fleet.names[index]
        message = f"{node} by {name}; {feas.explain()}" if explain else ""
        return _decision(
            req.task_id, name, node, index, None, message, feas.rejections, feas.count, feas.total
        )

    def place(
        self, fleet: FleetView, req: SchedulingRequest, *, now: float | None = None, explain: bool = True
    ) -> Decision:
        """Decide and, when a node was found, reserve it in ``fleet`` (``explain``: see :meth:`decide`)."""
        decision = self.decide(fleet, req, now=now, explain=explain)
        if decision.node_index is not None:
            fleet.reserve(decision.node_index, req)
        return decision


def explanation(decision: Decision) -> str:
    """The decision's message, made now if it was decided with ``explain=False``.

    The same text :meth:`Placer.decide` makes: ``NODE by STRATEGY; counts``
    for a placement, the counts alone for a refusal.
    """
    if decision.message:
        return decision.message
    counts = explain_counts(decision.candidates, decision.total, decision.rejections)
    return counts if decision.node is None else f"{decision.node} by {decision.strategy}; {counts}"


__all__ = ["STRATEGY_NAMES", "Placer", "UnknownStrategy", "explanation"]
