"""Migration plans: which VMs to move where so that whole nodes empty (pack) or the hottest cool (spread).

Fleets fragment as VMs come and go: many nodes half used, none free for a
large VM or for maintenance. A plan here is a sequence of moves computed on
a copy of the committed fleet, each one checked with every filter on the
fleet *as the moves before it left it* (:func:`~scheduler.moves.check_move`),
so the whole sequence keeps every invariant when applied in order: no
overcommit, anti-affinity, zone spread, devices, pools, cordons.

Goals:

* ``pack``: empty whole nodes. Nodes are tried from the least used; a node
  counts only if *all* its VMs can leave it within the move budget, onto
  nodes that are already in use (moving onto an empty node frees nothing),
  tightest fit first (the ``best_fit`` score); otherwise its tentative moves
  are undone. Larger VMs are placed first, as in first-fit decreasing. A
  node that received VMs is not emptied afterwards, so no VM moves twice.
* ``spread``: bring the most loaded node down, one move at a time: the
  largest VM of the hottest node that fits a node which stays cooler than
  the hottest one was, onto the least loaded such node (the ``least_loaded``
  score); it stops when no move lowers the peak.

``drain`` plans moves for every VM of one node (which the caller cordons),
onto the nodes the configured strategy would pick, and lists the VMs that
cannot move with the reason.

Figures (:class:`Figures`), before and after: empty nodes, the most loaded
node (load = the highest of its cpu, memory and disk fractions), and
stranded capacity: the free cpu and memory on nodes in use that cannot
take a *typical VM* (the median cpu and memory of the VMs in scope), as a
fraction of the scope's capacity, averaged over the two resources. That is
capacity that exists but that the next ordinary request cannot use.

Pure: the caller loads the fleet and the tasks' requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from scheduler.fleet import Allocation, BoolArray, FleetView, FloatArray, IntArray
from scheduler.models import SchedulingRequest
from scheduler.moves import MoveOutcome, check_move, feasible_targets, undo_move
from scheduler.strategies.base import ScoringStrategy, Strategy
from scheduler.strategies.filters import feasible_nodes
from scheduler.strategies.registry import get_strategy

Goal = Literal["pack", "spread"]
GOALS: tuple[Goal, ...] = ("pack", "spread")


@dataclass(frozen=True, slots=True)
class Move:
    task_id: str
    source: str
    target: str

    def to_json(self) -> dict[str, str]:
        return {"task_id": self.task_id, "from": self.source, "to": self.target}


@dataclass(frozen=True, slots=True)
class Figures:
    """How fragmented a scope of the fleet is (see the module docstring)."""

    nodes: int
    empty_nodes: int
    stranded: float
    most_loaded_node: str | None
    most_loaded: float

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "empty_nodes": self.empty_nodes,
            "stranded": round(self.stranded, 4),
            "most_loaded_node": self.most_loaded_node,
            "most_loaded": round(self.most_loaded, 4),
        }


@dataclass(frozen=True, slots=True)
class Unmovable:
    task_id: str
    node: str
    reason: str


@dataclass
class MigrationPlan:
    goal: str
    moves: list[Move]
    before: Figures
    after: Figures
    unmovable: list[Unmovable] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The last ``rebalance --json`` line: the keys of docs/contracts.md (CLI) and the figures in full."""
        return {
            "goal": self.goal,
            "moves": len(self.moves),
            # The nodes the plan empties, not the change in empty nodes: a spread (or a drain) that fills
            # an empty node said -1 here beside an empty "emptied" list.
            "nodes_emptied": len(self.emptied),
            "stranded_before": round(self.before.stranded, 4),
            "stranded_after": round(self.after.stranded, 4),
            "most_loaded_before": round(self.before.most_loaded, 4),
            "most_loaded_after": round(self.after.most_loaded, 4),
            "most_loaded_node_before": self.before.most_loaded_node,
            "most_loaded_node_after": self.after.most_loaded_node,
            "empty_nodes_before": self.before.empty_nodes,
            "empty_nodes_after": self.after.empty_nodes,
            "emptied": list(self.emptied),
            "unmovable": [{"task_id": u.task_id, "node": u.node, "reason": u.reason} for u in self.unmovable],
        }


@dataclass(frozen=True, slots=True)
class Rules:
    """The decision settings the moves are checked with (the worker's)."""

    exclusive: bool = True
    max_skew: int = 1
    now: float = 0.0


# ------------------------------------------------------------------ figures


def scope_indices(fleet: FleetView, pool: str | None) -> IntArray:
    """The node indices of ``pool`` (every node when None)."""
    if pool is None:
        return np.arange(fleet.size, dtype=np.int64)
    s, e = fleet.pools.get(pool, (0, 0))
    return np.arange(s, e, dtype=np.int64)


def loads(fleet: FleetView) -> FloatArray:
    """Per node, the highest of its cpu, memory and disk fractions in use (effective capacity)."""
    cpu = (fleet.cap_cpu - fleet.free_cpu) * fleet.inv_cpu
    mem = (fleet.cap_mem - fleet.free_mem) * fleet.inv_mem
    disk = (fleet.cap_disk - fleet.free_disk) * fleet.inv_disk
    out: FloatArray = np.maximum(np.maximum(cpu, mem), disk)
    return out


def typical_vm(fleet: FleetView, scope: IntArray) -> tuple[int, int]:
    """The median vCPUs and MiB of the VMs on the scope's nodes ((1, 1) when there is none)."""
    inside = {int(i) for i in scope}
    cpus = [a.cpu for i, a in fleet.allocations.values() if i in inside]
    mems = [a.memory for i, a in fleet.allocations.values() if i in inside]
    if not cpus:
        return 1, 1
    return max(1, int(np.median(cpus))), max(1, int(np.median(mems)))


def figures(fleet: FleetView, scope: IntArray, typical: tuple[int, int]) -> Figures:
    if not len(scope):
        return Figures(0, 0, 0.0, None, 0.0)
    vms = fleet.vms[scope]
    used = vms > 0
    free_cpu, free_mem = fleet.free_cpu[scope], fleet.free_mem[scope]
    cannot = (free_cpu < typical[0]) | (free_mem < typical[1]) | (vms >= fleet.max_vms[scope])
    stuck = used & cannot
    cap_cpu, cap_mem = int(fleet.cap_cpu[scope].sum()), int(fleet.cap_mem[scope].sum())
    s_cpu = float(np.maximum(free_cpu[stuck], 0).sum()) / cap_cpu if cap_cpu else 0.0
    s_mem = float(np.maximum(free_mem[stuck], 0).sum()) / cap_mem if cap_mem else 0.0
    load = loads(fleet)[scope]
    top = int(np.argmax(load))
    return Figures(
        nodes=len(scope),
        empty_nodes=int(np.count_nonzero(~used)),
        stranded=(s_cpu + s_mem) / 2,
        most_loaded_node=fleet.names[int(scope[top])],
        most_loaded=float(load[top]),
    )


# ------------------------------------------------------------------ planners


class _Moves:
    """Applies moves to the working fleet, keeping the per-node task lists and an undo log."""

    def __init__(self, fleet: FleetView, requests: dict[str, SchedulingRequest], rules: Rules) -> None:
        self.fleet = fleet
        self.requests = requests
        self.rules = rules
        self.on: dict[int, list[str]] = {}
        for tid, (i, _) in fleet.allocations.items():
            if i >= 0 and tid in requests:
                self.on.setdefault(i, []).append(tid)
        self.done: list[Move] = []
        self._log: list[tuple[MoveOutcome, Allocation]] = []

    def targets(self, tid: str) -> tuple[int, BoolArray] | None:
        r = self.rules
        return feasible_targets(
            self.fleet, self.requests[tid], now=r.now, exclusive=r.exclusive, max_skew=r.max_skew
        )

    def apply(self, tid: str, target: int) -> MoveOutcome:
        r, fleet = self.rules, self.fleet
        original = fleet.allocation(tid)
        assert original is not None
        outcome = check_move(
            fleet, self.requests[tid], fleet.names[target], now=r.now, exclusive=r.exclusive,
            max_skew=r.max_skew, apply=True,
        )  # fmt: skip
        if outcome.ok:
            source = fleet.index[original.node]
            self.on[source].remove(tid)
            self.on.setdefault(target, []).append(tid)
            self.done.append(Move(tid, original.node, outcome.target))
            self._log.append((outcome, original))
        return outcome

    def mark(self) -> int:
        return len(self._log)

    def rollback(self, mark: int) -> None:
        while len(self._log) > mark:
            outcome, original = self._log.pop()
            self.done.pop()
            undo_move(self.fleet, outcome, original)
            target, source = self.fleet.index[outcome.target], self.fleet.index[original.node]
            self.on[target].remove(outcome.task_id)
            self.on.setdefault(source, []).append(outcome.task_id)


def _size(a: Allocation, fleet: FleetView, i: int) -> float:
    return a.cpu * float(fleet.inv_cpu[i]) + a.memory * float(fleet.inv_mem[i])


def rebalance(
    fleet: FleetView,
    requests: dict[str, SchedulingRequest],
    *,
    goal: Goal = "pack",
    pool: str | None = None,
    max_moves: int = 50,
    rules: Rules | None = None,
) -> MigrationPlan:
    """A migration plan for ``fleet`` (not modified: the moves are simulated on a snapshot).

    ``requests`` holds each placed task's request; a VM whose request is
    unknown is never moved (and listed as unmovable).
    """
    rules = rules or Rules()
    work = fleet.snapshot()
    scope = scope_indices(work, pool)
    typical = typical_vm(work, scope)
    before = figures(work, scope, typical)
    moves = _Moves(work, requests, rules)
    inside = {int(k) for k in scope}
    unmovable = [
        Unmovable(tid, alloc.node, "its request is not recorded")
        for tid, (i, alloc) in work.allocations.items()
        if tid not in requests and i in inside
    ]
    held_before = work.vms[scope] > 0
    emptied: list[str] = []
    if goal == "pack":
        emptied = _pack(moves, scope, max_moves, typical)
    else:
        _spread(moves, scope, max_moves)
        emptied = [
            work.names[int(k)] for k, held in zip(scope, held_before, strict=True) if held and not work.vms[k]
        ]
    after = figures(work, scope, typical)
    return MigrationPlan(goal, list(moves.done), before, after, unmovable, emptied)


def _pack(moves: _Moves, scope: IntArray, max_moves: int, typical: tuple[int, int]) -> list[str]:
    fleet = moves.fleet
    best_fit = get_strategy("best_fit")
    assert isinstance(best_fit, ScoringStrategy)
    load = loads(fleet)
    order = sorted((int(i) for i in scope if fleet.vms[i] > 0), key=lambda i: (int(fleet.vms[i]), load[i], i))
    emptied: list[str] = []
    closed: set[int] = set()  # emptied: never a target again, so nothing returns
    receivers: set[int] = set()  # took a VM: never emptied afterwards, so no VM moves twice
    for node in order:
        if node in receivers:
            continue
        tids = list(moves.on.get(node, ()))
        if not tids or len(tids) != int(fleet.vms[node]):
            continue  # empty by now, or holds VMs whose requests are unknown: cannot be emptied
        if len(moves.done) + len(tids) > max_moves:
            continue
        mark = moves.mark()
        closed.add(node)
        tids.sort(key=lambda t: -_size(fleet.allocations[t][1], fleet, node))
        ok = True
        for tid in tids:
            found = moves.targets(tid)
            if found is None:
                ok = False
                break
            start, mask = found
            in_use = fleet.vms[start : start + len(mask)] > 0
            mask &= in_use
            for c in closed:
                if start <= c < start + len(mask):
                    mask[c - start] = False
            if not mask.any():
                ok = False
                break
            target = _tightest(fleet, best_fit, start, mask, moves.requests[tid], typical)
            if not moves.apply(tid, target).ok:  # pragma: no cover - targets() and check_move agree
                ok = False
                break
        if ok:
            emptied.append(fleet.names[node])
            receivers.update(fleet.index[m.target] for m in moves.done[len(moves.done) - len(tids) :])
        else:
            moves.rollback(mark)
            closed.discard(node)
    return emptied


def _tightest(
    fleet: FleetView,
    best_fit: ScoringStrategy,
    start: int,
    mask: BoolArray,
    req: SchedulingRequest,
    typical: tuple[int, int],
) -> int:
    """The target that strands least, then fits tightest (``best_fit``'s score).

    Stranding first: a node the move leaves unable to take a typical VM
    strands the free cpu and memory it keeps (as fractions of the node), so
    a target that the VM fills up exactly, or that keeps room for a typical
    VM, is preferred to one left with an unusable sliver.
    """
    stop = start + len(mask)
    sl = slice(start, stop)
    cpu_left = fleet.free_cpu[sl] - req.requested_cpu
    mem_left = fleet.free_mem[sl] - req.requested_memory
    stuck = (cpu_left < typical[0]) | (mem_left < typical[1])
    stranded = np.where(stuck, cpu_left * fleet.inv_cpu[sl] + mem_left * fleet.inv_mem[sl], 0.0)
    score = best_fit.score(fleet, start, stop, req)
    # Lexicographic: stranding (rounded, so float noise does not hide the tie-break), then best fit,
    # then the node order (lexsort is stable), so ties break by name as in every decision.
    idx = np.flatnonzero(mask)
    order = np.lexsort((score[idx], np.round(stranded[idx], 9)))
    return start + int(idx[order[0]])


def _spread(moves: _Moves, scope: IntArray, max_moves: int) -> None:
    fleet = moves.fleet
    least: Strategy = get_strategy("least_loaded")
    inside = np.zeros(fleet.size, dtype=np.bool_)
    inside[scope] = True
    while len(moves.done) < max_moves:
        load = loads(fleet)
        masked = np.where(inside & (fleet.vms > 0), load, -1.0)
        hot = int(np.argmax(masked))
        if masked[hot] <= 0:
            return
        peak = float(load[hot])
        tids = sorted(moves.on.get(hot, ()), key=lambda t: -_size(fleet.allocations[t][1], fleet, hot))
        moved = False
        for tid in tids:
            found = moves.targets(tid)
            if found is None:
                continue
            start, mask = found
            alloc = fleet.allocations[tid][1]
            sl = slice(start, start + len(mask))
            after = np.maximum(
                (fleet.cap_cpu[sl] - fleet.free_cpu[sl] + alloc.cpu) * fleet.inv_cpu[sl],
                (fleet.cap_mem[sl] - fleet.free_mem[sl] + alloc.memory) * fleet.inv_mem[sl],
            )
            after = np.maximum(
                after, (fleet.cap_disk[sl] - fleet.free_disk[sl] + alloc.disk) * fleet.inv_disk[sl]
            )
            mask &= after < peak - 1e-9
            if not mask.any():
                continue
            target = least.choose(fleet, start, start + len(mask), mask, moves.requests[tid])
            if moves.apply(tid, target).ok:
                moved = True
                break
        if not moved:
            return


def drain(
    fleet: FleetView,
    requests: dict[str, SchedulingRequest],
    node: str,
    strategy: Strategy,
    *,
    rules: Rules | None = None,
) -> MigrationPlan:
    """Moves for every VM of ``node`` onto the nodes ``strategy`` picks; ``node`` is treated as cordoned.

    Each VM is placed on the fleet as the moves before it left it; a VM
    that fits nowhere (or whose request is unknown) is listed with the reason.
    """
    rules = rules or Rules()
    work = fleet.snapshot()
    work.set_cordoned(node, True)
    i = work.index[node]
    scope = scope_indices(work, work.pools_of[i])
    typical = typical_vm(work, scope)
    before = figures(work, scope, typical)
    moves = _Moves(work, requests, rules)
    unmovable: list[Unmovable] = []
    held = sorted(
        (tid for tid, (k, _) in work.allocations.items() if k == i),
        key=lambda t: (-_size(work.allocations[t][1], work, i), t),
    )
    for tid in held:
        if tid not in requests:
            unmovable.append(Unmovable(tid, node, "its request is not recorded"))
            continue
        found = moves.targets(tid)
        if found is None:
            r = rules
            held_alloc = work.allocations[tid][1]
            work.release(tid)
            feas = feasible_nodes(work, requests[tid], now=r.now, exclusive=r.exclusive, max_skew=r.max_skew)
            work.restore(held_alloc)
            unmovable.append(Unmovable(tid, node, f"no node fits: {feas.explain()}"))
            continue
        start, mask = found
        target = strategy.choose(work, start, start + len(mask), mask, requests[tid])
        outcome = moves.apply(tid, target)
        if not outcome.ok:  # pragma: no cover - targets() and check_move agree
            unmovable.append(Unmovable(tid, node, outcome.message))
    after = figures(work, scope, typical)
    emptied = [node] if not work.vms[i] else []
    return MigrationPlan("drain", list(moves.done), before, after, unmovable, emptied)


__all__ = ["GOALS", "Figures", "MigrationPlan", "Move", "Rules", "Unmovable", "drain", "figures", "rebalance"]
