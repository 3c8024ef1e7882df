"""One move: can a placed VM go to another node, and if so, take it there (on a fleet view).

A move is judged exactly as a placement would be on the fleet *without*
the VM: the task's allocation is taken off its node, every filter of the
registry runs for the task's own request, and the target must survive them
all (preferences aside: a soft constraint never refuses a node). When it
does not, the answer names the first filter that removed it and that
filter's own numbers (``bm-017: needs 8192 MiB memory, 4096 free``), and
the fleet is put back as it was. When it does, the VM's allocation is
re-made on the target with :meth:`FleetView.reserve`, which re-checks
capacity itself.

The same check serves the planners (``rebalance``, ``drain``) on a copy of
the fleet, step after step, and the leader when a move message arrives.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.fleet import Allocation, BoolArray, FleetView
from scheduler.models import SchedulingRequest
from scheduler.strategies.filters import (
    FILTERS,
    Feasibility,
    FilterInput,
    Narrowing,
    feasible_nodes,
)


@dataclass(frozen=True, slots=True)
class MoveOutcome:
    """The verdict on one move; ``message`` explains a refusal (and names the move when it is allowed)."""

    task_id: str
    source: str | None
    target: str
    ok: bool
    message: str
    allocation: Allocation | None = None
    """The allocation on the target, when the move was applied."""
    lasting: bool = False
    """A refusal no change of allocations can undo (an unknown node, a node of another pool):
    ``scheduler move`` refuses those at once, and leaves the others to the leader."""


class _Watch(Narrowing):
    """Narrows as usual, notes the label under which one slice position was removed, ignores preferences."""

    __slots__ = ("label", "position")

    def __init__(self, out: Feasibility, position: int) -> None:
        super().__init__(out)
        self.position = position
        self.label: str | None = None

    def keep(self, label: str, keep: BoolArray) -> bool:
        if self.label is None and (self.mask is None or self.mask[self.position]) and not keep[self.position]:
            self.label = label
        return super().keep(label, keep)

    def drop(self, label: str, local: list[int]) -> bool:
        if self.label is None and self.position in local and (self.mask is None or self.mask[self.position]):
            self.label = label
        return super().drop(label, local)

    def prefer(self, keep: BoolArray) -> None:
        """A move only has to pass the filters: a preference never refuses a node."""


def check_move(
    fleet: FleetView,
    req: SchedulingRequest,
    target: str,
    *,
    now: float,
    exclusive: bool = True,
    max_skew: int = 1,
    apply: bool = False,
) -> MoveOutcome:
    """Would the placed task of ``req`` fit ``target`` (every filter)? With ``apply``, move it in ``fleet``.

    ``req`` is the task's own request (its pool, tags, groups, devices).
    Without ``apply`` (or when refused) ``fleet`` ends exactly as it was.
    """
    tid = req.task_id
    held = fleet.allocation(tid)
    if held is None:
        return MoveOutcome(tid, None, target, False, f"task {tid} holds no allocation to move")
    source = held.node
    i = fleet.index.get(target)
    if i is None:
        return MoveOutcome(tid, source, target, False, f"unknown node {target}", lasting=True)
    if source == target:
        return MoveOutcome(tid, source, target, False, f"task {tid} is on {target} already")
    span = fleet.pools.get(req.requested_pool)
    if span is None or not span[0] <= i < span[1]:
        return MoveOutcome(
            tid, source, target, False,
            f"{target}: in pool {fleet.pools_of[i]}, the task's pool is {req.requested_pool}", lasting=True,
        )  # fmt: skip
    start = span[0]
    fleet.release(tid)
    watch: list[_Watch] = []

    def narrowing(out: Feasibility) -> Narrowing:
        watch.append(_Watch(out, i - start))
        return watch[0]

    feas = feasible_nodes(fleet, req, now=now, exclusive=exclusive, max_skew=max_skew, narrowing=narrowing)
    label = watch[0].label if watch else None
    passed = label is None and feas.count > 0 and bool(feas.feasible_mask()[i - start])
    if not passed:
        why = _why(fleet, req, feas, i, label, now, exclusive, max_skew)
        fleet.restore(held)
        return MoveOutcome(tid, source, target, False, f"{target}: {why}")
    if not apply:
        fleet.restore(held)
        return MoveOutcome(tid, source, target, True, f"{tid}: {source} -> {target}")
    moved = fleet.reserve(i, req)
    return MoveOutcome(tid, source, target, True, f"{tid}: {source} -> {target}", moved)


def undo_move(fleet: FleetView, outcome: MoveOutcome, original: Allocation) -> None:
    """Take an applied move back: the VM leaves the target and holds ``original`` again."""
    fleet.release(outcome.task_id)
    fleet.restore(original)


def _why(
    fleet: FleetView,
    req: SchedulingRequest,
    feas: Feasibility,
    i: int,
    label: str | None,
    now: float,
    exclusive: bool,
    max_skew: int,
) -> str:
    if label is None:
        return "no node fits the task at all: " + feas.explain()
    x = FilterInput(fleet, req, feas.start, feas.stop, now, exclusive, max_skew)
    for flt in FILTERS:
        if label in flt.labels or any(_matches(template, label) for template in flt.labels):
            if flt.example is not None:
                return f"{label}: {flt.example(x, i, label)}"
            break
    return label


def _matches(template: str, label: str) -> bool:
    """``insufficient {kind}`` matches ``insufficient gpu``."""
    if "{kind}" not in template:
        return False
    head, _, tail = template.partition("{kind}")
    return label.startswith(head) and label.endswith(tail) and len(label) > len(head) + len(tail)


def feasible_targets(
    fleet: FleetView, req: SchedulingRequest, *, now: float, exclusive: bool = True, max_skew: int = 1
) -> tuple[int, BoolArray] | None:
    """(pool start, mask over the pool) of the nodes the placed task of ``req`` could move to, its own
    node excluded; None when it holds nothing. The fleet ends as it was."""
    held = fleet.allocation(req.task_id)
    if held is None:
        return None
    fleet.release(req.task_id)
    try:
        feas = feasible_nodes(
            fleet, req, now=now, exclusive=exclusive, max_skew=max_skew, narrowing=lambda out: _Watch(out, 0)
        )
    finally:
        fleet.restore(held)
    if feas.count == 0 or feas.unknown_pool:
        return None
    mask = feas.feasible_mask().copy()
    own = fleet.index.get(held.node, -1) - feas.start
    if 0 <= own < len(mask):
        mask[own] = False
    return feas.start, mask


__all__ = ["MoveOutcome", "check_move", "feasible_targets", "undo_move"]
