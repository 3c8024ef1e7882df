"""A plan: where a request would go now, the runners-up, and why every other node was left out.

Nomad answers ``job plan`` before a job is submitted; this is the same for
one VM. Nothing is reserved: the fleet view is only read. The filters are
the worker's own (:data:`~scheduler.strategies.filters.FILTERS`), run through
a :class:`RecordingNarrowing` that notes which nodes each one removed, and
each filter's ``example`` text says why with its numbers
(``bm-017: needs 8192 MiB memory, 4096 free``). Counts are those of a real
decision: a node is counted once, under the first filter it fails.

The pick is the strategy's own. Scoring strategies also rank the runners-up
by score (lower wins); ``round_robin`` and ``random`` have no score, and
are asked on a fresh instance (a plan must not move the worker's cursor or
draw from its generator), so their pick is "what a fresh replica would do".

Pure: no I/O; the caller loads the fleet and passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

import numpy as np

from scheduler.fleet import BoolArray, FleetView
from scheduler.models import Reason, SchedulingRequest
from scheduler.strategies.base import ScoringStrategy, Strategy, avoid_device_nodes
from scheduler.strategies.filters import (
    FILTERS,
    POOL_MISMATCH,
    Feasibility,
    FilterInput,
    Narrowing,
    feasible_nodes,
)
from scheduler.strategies.placer import Placer
from scheduler.strategies.registry import UnknownStrategy, get_strategy

TOP = 5
"""How many candidates and how many example nodes per filter a plan shows."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A node that passed every filter, with the strategy's score (None for a strategy without one)."""

    node: str
    score: float | None


@dataclass(frozen=True, slots=True)
class Plan:
    """The answer to "where would this go now, and why not elsewhere"."""

    task_id: str
    strategy: str
    node: str | None
    candidates: tuple[Candidate, ...]
    rejections: dict[str, int]
    examples: dict[str, list[str]]
    reason: Reason | None
    message: str
    feasible: int = 0
    total: int = 0

    def to_json(self, revision: str | None = None) -> dict[str, Any]:
        """The ``plan --json`` / ``POST /plan`` body of docs/contracts.md (CLI)."""
        return {
            "task_id": self.task_id,
            "node": self.node,
            "strategy": self.strategy,
            "candidates": [{"node": c.node, "score": c.score} for c in self.candidates],
            "rejections": dict(self.rejections),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "reason": self.reason.value if self.reason is not None else None,
            "message": self.message,
            "feasible": self.feasible,
            "total": self.total,
            "revision": revision,
        }


class RecordingNarrowing(Narrowing):
    """A :class:`Narrowing` that also keeps, per label, the first few nodes (slice positions) removed."""

    __slots__ = ("removed",)

    def __init__(self, out: Feasibility) -> None:
        super().__init__(out)
        self.removed: dict[str, list[int]] = {}

    def _note(self, label: str, gone: BoolArray) -> None:
        have = self.removed.setdefault(label, [])
        if len(have) < TOP:
            have.extend(int(k) for k in np.flatnonzero(gone)[: TOP - len(have)])

    def keep(self, label: str, keep: BoolArray) -> bool:
        before = self.current() if self.mask is None else self.mask
        self._note(label, before & ~keep)
        return super().keep(label, keep)

    def drop(self, label: str, local: list[int]) -> bool:
        before = self.current()
        gone = np.zeros_like(before)
        gone[local] = True
        self._note(label, gone & before)
        return super().drop(label, local)


def plan(fleet: FleetView, req: SchedulingRequest, placer: Placer, *, now: float, top: int = TOP) -> Plan:
    """Where ``req`` would be placed on ``fleet`` by ``placer``'s configuration; nothing is reserved."""
    name = req.strategy or placer.default
    try:
        strategy = _planning_instance(placer, name)
    except UnknownStrategy as exc:
        return Plan(req.task_id, name, None, (), {}, {}, Reason.UNKNOWN_STRATEGY, str(exc), 0, fleet.size)
    recorder: list[RecordingNarrowing] = []

    def narrowing(out: Feasibility) -> Narrowing:
        recorder.append(RecordingNarrowing(out))
        return recorder[0]

    feas = feasible_nodes(
        fleet,
        req,
        now=now,
        exclusive=placer.dedicated_exclusive,
        max_skew=placer.spread_max_skew,
        narrowing=narrowing,
    )
    examples = _examples(fleet, req, feas, recorder[0] if recorder else None, placer, now, top)
    if feas.count == 0:
        reason = feas.failure_reason()
        message = feas.explain()
        if reason is Reason.UNKNOWN_POOL:
            known = ", ".join(sorted(fleet.pools)) or "none"
            message = f"unknown pool {req.requested_pool!r} (known: {known}); {message}"
        return Plan(req.task_id, name, None, (), feas.rejections, examples, reason, message, 0, feas.total)
    mask = feas.feasible_mask()
    chosen = strategy.choose(fleet, feas.start, feas.stop, mask, req)
    candidates = _candidates(fleet, strategy, feas, mask, chosen, req, top)
    return Plan(
        req.task_id,
        name,
        fleet.names[chosen],
        candidates,
        feas.rejections,
        examples,
        None,
        f"{fleet.names[chosen]} by {name}; {feas.explain()}",
        feas.count,
        feas.total,
    )


def _planning_instance(placer: Placer, name: str) -> Strategy:
    """The placer's own instance for a scoring strategy (stateless), a fresh one otherwise."""
    strategy = placer.strategy(name)
    if isinstance(strategy, ScoringStrategy):
        return strategy
    return get_strategy(name, weights=placer.weights, seed=placer.seed)


def _candidates(
    fleet: FleetView,
    strategy: Strategy,
    feas: Feasibility,
    mask: BoolArray,
    chosen: int,
    req: SchedulingRequest,
    top: int,
) -> tuple[Candidate, ...]:
    """The pick first, then the best-scored others (by name for a strategy without scores).

    Ranked among the nodes the strategy itself ranks: a request without
    devices is kept off nodes with free devices while others fit
    (:func:`~scheduler.strategies.base.avoid_device_nodes`), so those are
    not offered as runners-up either.
    """
    if strategy.avoid_devices:  # the nodes the strategy ranks (its own pick among them)
        mask = avoid_device_nodes(fleet, feas.start, feas.stop, mask, req)
    local = np.flatnonzero(mask)
    if isinstance(strategy, ScoringStrategy):
        scores = strategy.score(fleet, feas.start, feas.stop, req)
        vals = scores[local]
        if len(local) > top:
            # The ``top`` lowest without sorting the pool: everything below the k-th value, then the
            # first (lowest names) of those equal to it, which is how the strategy breaks ties.
            kth = np.partition(vals, top - 1)[top - 1]
            below, equal = vals < kth, np.flatnonzero(vals == kth)
            keep = np.concatenate([np.flatnonzero(below), equal[: top - int(np.count_nonzero(below))]])
            local, vals = local[keep], vals[keep]
        order = local[np.lexsort((local, vals))]
        picked = [feas.start + int(k) for k in order[:top]]
        if chosen not in picked:
            picked = [chosen, *picked[: top - 1]]
        return tuple(Candidate(fleet.names[i], _finite(float(scores[i - feas.start]))) for i in picked)
    rest = [feas.start + int(k) for k in local if feas.start + int(k) != chosen]
    return tuple(Candidate(fleet.names[i], None) for i in [chosen, *rest][:top])


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def _examples(
    fleet: FleetView,
    req: SchedulingRequest,
    feas: Feasibility,
    recorder: RecordingNarrowing | None,
    placer: Placer,
    now: float,
    top: int,
) -> dict[str, list[str]]:
    """Per rejection label, up to ``top`` nodes it removed, each with the filter's own reason text."""
    out: dict[str, list[str]] = {}
    if feas.rejections.get(POOL_MISMATCH):
        outside = list(islice(chain(range(feas.start), range(feas.stop, fleet.size)), top))
        out[POOL_MISMATCH] = [
            f"{fleet.names[i]}: in pool {fleet.pools_of[i]}, not {req.requested_pool}" for i in outside
        ]
    if recorder is None:
        return out
    x = FilterInput(
        fleet, req, feas.start, feas.stop, now, placer.dedicated_exclusive, placer.spread_max_skew
    )
    by_label = {_label_key(label): flt for flt in FILTERS for label in flt.labels}
    for label, positions in recorder.removed.items():
        if not positions or not feas.rejections.get(label):
            continue
        flt = by_label.get(_label_key(label))
        texts = []
        for k in positions[:top]:
            i = feas.start + k
            why = flt.example(x, i, label) if flt is not None and flt.example is not None else label
            texts.append(f"{fleet.names[i]}: {why}")
        out[label] = texts
    return out


def _label_key(label: str) -> str:
    """Labels with a device kind (``insufficient gpu``) match their template (``insufficient {kind}``)."""
    for prefix in ("no ", "insufficient "):
        if label.startswith(prefix) and label.removeprefix(prefix) not in ("cpu", "memory", "disk"):
            return prefix + "{kind}"
    return label


__all__ = ["TOP", "Candidate", "Plan", "RecordingNarrowing", "plan"]
