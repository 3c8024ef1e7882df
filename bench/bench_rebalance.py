"""Rebalance quality: nodes freed per move and stranded capacity after, against a naive baseline.

Run from the repository root:
``python bench/bench_rebalance.py [--seeds 5] [--nodes 200] [--budgets 20,50,100]``.

Each seed builds a fragmented fleet the way a real one fragments: a pool
of identical nodes (64 vCPU / 256 GiB) is fed a churning trace through
``simulate`` (requests of the benchmark VM mix, with deletions interleaved)
until about two thirds of it is allocated, with the configured default
strategy (``least_loaded``, which spreads). Then, with the same move
budget, two planners try to empty whole nodes:

* ``rebalance --goal pack`` (:func:`scheduler.rebalance.rebalance`): least
  used nodes first, all of a node's VMs or none, largest first, onto the
  tightest fit among nodes in use; a node that received VMs is not emptied.
* the naive baseline: the smallest VMs off the emptiest nodes, one by one,
  each onto the tightest fit among the other nodes in use, until the budget
  is spent (no all-or-nothing).

Both check every move with every filter (:func:`scheduler.moves.check_move`)
on the fleet as the moves before left it. Figures: nodes freed, moves,
nodes freed per move, and the stranded capacity after (free cpu and memory
on used nodes that cannot take the median VM, as a share of the pool).
"""

from __future__ import annotations

import argparse
import statistics

import common
import numpy as np

from scheduler.fleet import FleetView
from scheduler.models import ReleaseRequest, SchedulingRequest
from scheduler.moves import check_move, feasible_targets
from scheduler.rebalance import figures, rebalance, scope_indices, typical_vm
from scheduler.simulate import simulate
from scheduler.strategies import Placer
from scheduler.strategies.registry import get_strategy

GOAL_FREED_PER_MOVE = "pack frees more nodes per move than the baseline"
GOAL_STRANDED = "pack leaves no more stranded capacity than the baseline"


def fragmented(seed: int, nodes: int, fill: float = 0.65) -> tuple[FleetView, dict[str, SchedulingRequest]]:
    """A fleet fragmented by churn through ``simulate``, and the requests of the VMs it holds."""
    rng = np.random.default_rng(seed)
    fleet = FleetView.build(common.make_nodes(nodes))
    target = fill * nodes * common.NODE_CPU
    placer = Placer("least_loaded")
    requests: dict[str, SchedulingRequest] = {}
    batch = 0
    while int((fleet.cap_cpu - fleet.free_cpu).sum()) < target:
        steps = common.churn_trace(rng, 500, release_p=0.45)
        trace: list[SchedulingRequest | ReleaseRequest] = []
        for s in steps:
            tid = f"b{batch}-{s.task_id}"
            if s.release:
                trace.append(ReleaseRequest(release=tid))
            else:
                req = SchedulingRequest(task_id=tid, requested_cpu=s.cpu, requested_memory=s.memory)
                requests[tid] = req
                trace.append(req)
        simulate(fleet, trace, placer)
        batch += 1
    held = {tid: requests[tid] for tid in fleet.allocations}
    return fleet, held


def baseline(fleet: FleetView, requests: dict[str, SchedulingRequest], budget: int) -> tuple[FleetView, int]:
    """The naive plan: smallest VMs off the emptiest nodes, onto the tightest fit; (fleet after, moves)."""
    work = fleet.snapshot()
    best_fit = get_strategy("best_fit")
    used = np.flatnonzero(work.vms > 0)
    order = sorted(used, key=lambda i: (int(work.cap_cpu[i] - work.free_cpu[i]), int(i)))
    moves = 0
    emptied: set[int] = set()
    for node in order:
        tids = sorted(
            (t for t, (i, _) in work.allocations.items() if i == node),
            key=lambda t: (work.allocations[t][1].cpu, work.allocations[t][1].memory, t),
        )
        for tid in tids:
            if moves >= budget:
                return work, moves
            found = feasible_targets(work, requests[tid], now=0.0)
            if found is None:
                continue
            start, mask = found
            mask &= work.vms[start : start + len(mask)] > 0
            for e in emptied:
                mask[e - start] = False
            if not mask.any():
                continue
            target = best_fit.choose(work, start, start + len(mask), mask, requests[tid])
            if check_move(work, requests[tid], work.names[target], now=0.0, apply=True).ok:
                moves += 1
        if work.vms[node] == 0:
            emptied.add(int(node))
    return work, moves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--budgets", default="20,50,100")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    print(
        f"fleet: {args.nodes} nodes x 64 vCPU / 256 GiB, churned to ~65% cpu by least_loaded; "
        f"{args.seeds} seeds"
    )
    header = (
        f"{'budget':>6} {'planner':<9} {'freed':>6} {'moves':>6} {'freed/move':>11} {'stranded after':>15}"
    )
    rows: dict[tuple[int, str], list[tuple[int, int, float]]] = {}
    before_stranded: list[float] = []
    before_empty: list[int] = []
    for seed in range(args.seeds):
        fleet, requests = fragmented(seed, args.nodes)
        scope = scope_indices(fleet, None)
        typical = typical_vm(fleet, scope)
        start = figures(fleet, scope, typical)
        before_stranded.append(start.stranded)
        before_empty.append(start.empty_nodes)
        for budget in budgets:
            plan = rebalance(fleet, requests, goal="pack", max_moves=budget)
            rows.setdefault((budget, "pack"), []).append(
                (plan.after.empty_nodes - plan.before.empty_nodes, len(plan.moves), plan.after.stranded)
            )
            after, moves = baseline(fleet, requests, budget)
            fig = figures(after, scope, typical)
            rows.setdefault((budget, "baseline"), []).append(
                (fig.empty_nodes - start.empty_nodes, moves, fig.stranded)
            )
    print(
        f"before: empty nodes {statistics.mean(before_empty):.1f}, "
        f"stranded capacity {statistics.mean(before_stranded):.2%} (means over seeds)"
    )
    print(header)
    met_per_move = met_stranded = True
    for budget in budgets:
        summary = {}
        for planner in ("pack", "baseline"):
            got = rows[(budget, planner)]
            freed = statistics.mean(float(g[0]) for g in got)
            moved = statistics.mean(float(g[1]) for g in got)
            stranded = statistics.mean(g[2] for g in got)
            per_move = freed / moved if moved else 0.0
            summary[planner] = (per_move, stranded)
            print(f"{budget:>6} {planner:<9} {freed:>6.1f} {moved:>6.1f} {per_move:>11.3f} {stranded:>15.2%}")
        met_per_move &= summary["pack"][0] > summary["baseline"][0]
        met_stranded &= summary["pack"][1] <= summary["baseline"][1] + 1e-12
    print(f"goal: {GOAL_FREED_PER_MOVE}: {'met' if met_per_move else 'NOT met'}")
    print(f"goal: {GOAL_STRANDED}: {'met' if met_stranded else 'NOT met'}")


if __name__ == "__main__":
    main()
