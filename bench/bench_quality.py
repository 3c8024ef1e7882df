"""Placement quality: how full can a pool get before fragmentation rejects a VM?

Run from the repository root: ``python bench/bench_quality.py [--seeds 5] [--nodes 200] [--steps 6000]``.

A seeded trace over-subscribes one pool of identical nodes (64 vCPU / 256 GiB)
with a mix of cpu-heavy, balanced and memory-heavy VMs of 1-32 vCPUs, and
deletes some VMs along the way. Each strategy places the same trace. A
*fragmentation rejection* is a request that no single node can take although
the pool's aggregate free cpu AND memory would hold it: capacity that exists
but is stranded in pieces too small or of the wrong shape. The figure that
matters for consolidation is the pool's CPU utilization at the first such
rejection (how full the pool got before packing failed); the utilization at
the end of the trace says how well the strategy keeps packing under churn.

Besides the eight registered strategies, two textbook baselines run the same
trace through the same filters: single-resource best fit (least free vCPUs
left, the classic bin-packing rule) and plain L2 best fit (least Euclidean
norm of the free cpu/memory fractions left).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import common
import numpy as np

from scheduler.fleet import FleetView, FloatArray
from scheduler.models import SchedulingRequest
from scheduler.strategies.base import ScoringStrategy, Strategy, utilization_after
from scheduler.strategies.filters import feasible_nodes
from scheduler.strategies.registry import STRATEGY_NAMES, get_strategy


class TextbookBestFit(ScoringStrategy):
    """Classic one-dimensional best fit: the node left with the fewest free vCPUs."""

    name: ClassVar[str] = "textbook_best_fit"
    description: ClassVar[str] = "baseline: least free cpu after placement"

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        result: FloatArray = (fleet.free_cpu[start:stop] - req.requested_cpu).astype(np.float64)
        return result


class L2BestFit(ScoringStrategy):
    """Plain vector best fit: least L2 norm of the free cpu and memory fractions after placement."""

    name: ClassVar[str] = "l2_best_fit"
    description: ClassVar[str] = "baseline: least L2 norm of free fractions after placement"

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        cpu, mem, _disk = utilization_after(fleet, start, stop, req)
        result: FloatArray = np.hypot(1.0 - cpu, 1.0 - mem)
        return result


BASELINES: dict[str, Callable[[], Strategy]] = {
    TextbookBestFit.name: TextbookBestFit,
    L2BestFit.name: L2BestFit,
}


@dataclass
class Run:
    """What one strategy did on one trace."""

    first_cpu: float | None = None  # pool utilization at the first fragmentation rejection
    first_memory: float | None = None
    end_cpu: float = 0.0
    end_memory: float = 0.0
    placed: int = 0
    fragmentation_rejections: int = 0


def replay(strategy: Strategy, steps: list[common.Step], nodes: int) -> Run:
    """Place ``steps`` on a fresh pool with ``strategy``, through the service's own filters and reserve."""
    fleet = FleetView.build(common.make_nodes(nodes))
    run = Run()
    cap_cpu = int(fleet.cap_cpu.sum())
    cap_mem = int(fleet.cap_mem.sum())
    for step in steps:
        if step.release:
            fleet.release(step.task_id)
            continue
        req = SchedulingRequest(task_id=step.task_id, requested_cpu=step.cpu, requested_memory=step.memory)
        feas = feasible_nodes(fleet, req, now=0.0)
        if feas.count:
            fleet.reserve(strategy.choose(fleet, feas.start, feas.stop, feas.feasible_mask(), req), req)
            run.placed += 1
            continue
        free_cpu = int(fleet.free_cpu.sum())
        free_mem = int(fleet.free_mem.sum())
        if free_cpu >= step.cpu and free_mem >= step.memory:
            run.fragmentation_rejections += 1
            if run.first_cpu is None:
                run.first_cpu = 1.0 - free_cpu / cap_cpu
                run.first_memory = 1.0 - free_mem / cap_mem
    run.end_cpu = 1.0 - int(fleet.free_cpu.sum()) / cap_cpu
    run.end_memory = 1.0 - int(fleet.free_mem.sum()) / cap_mem
    return run


def contenders() -> dict[str, Callable[[], Strategy]]:
    """Every registered strategy, then the baselines; built anew per run (round_robin, random keep state)."""
    out: dict[str, Callable[[], Strategy]] = {name: partial(get_strategy, name) for name in STRATEGY_NAMES}
    out.update(BASELINES)
    return out


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="traces to average over (seeds 0..N-1)")
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=6000, help="requests per trace")
    parser.add_argument("--release", type=float, default=0.2, help="chance of a deletion after each request")
    args = parser.parse_args()

    traces = [
        common.churn_trace(np.random.default_rng(seed), args.steps, args.release)
        for seed in range(args.seeds)
    ]
    demand = sum(s.cpu for s in traces[0] if not s.release) / (args.nodes * common.NODE_CPU)
    print(
        f"fleet: {args.nodes} nodes x {common.NODE_CPU} vCPU / {common.NODE_MEMORY // common.GIB} GiB, "
        "one pool; "
        f"trace: {args.steps} requests, release p={args.release}, {args.seeds} seeds; "
        f"requested cpu = {demand:.1f}x the pool"
    )
    results: dict[str, list[Run]] = {}
    for name, factory in contenders().items():
        results[name] = [replay(factory(), trace, args.nodes) for trace in traces]

    header = (
        f"{'strategy':<18} {'cpu @ 1st frag':>15} {'mem @ 1st frag':>15} {'cpu @ end':>15} "
        f"{'mem @ end':>15} {'frag rej':>8} {'placed':>7}"
    )
    print(header)
    print("-" * len(header))

    def first_cpu(runs: list[Run]) -> float:
        # A trace that never fragmented counts as fully used: it did as well as it could.
        return statistics.fmean(1.0 if r.first_cpu is None else r.first_cpu for r in runs)

    for name, runs in sorted(results.items(), key=lambda kv: -first_cpu(kv[1])):
        print(
            f"{name:<18} {_mean_sd([r.first_cpu or 1.0 for r in runs]):>15} "
            f"{_mean_sd([r.first_memory or 1.0 for r in runs]):>15} "
            f"{_mean_sd([r.end_cpu for r in runs]):>15} {_mean_sd([r.end_memory for r in runs]):>15} "
            f"{statistics.fmean(r.fragmentation_rejections for r in runs):>8.1f} "
            f"{statistics.fmean(r.placed for r in runs):>7.0f}"
        )
    never = sum(r.first_cpu is None for runs in results.values() for r in runs)
    print(
        "(pool utilization, mean ± sd over seeds; 'frag rej' = requests rejected while the pool had room "
        f"in aggregate; {never} runs never fragmented and count as 1.0)"
    )
    gain = first_cpu(results["best_fit"]) - first_cpu(results[TextbookBestFit.name])
    print(f"best_fit vs textbook best fit: {gain:+.3f} cpu utilization at the first fragmentation rejection")


if __name__ == "__main__":
    main()
