"""Placement quality over trace families: how full does a pool get before fragmentation refuses a VM?

Run from the repository root: ``python bench/bench_quality.py [--seeds 5] [--family NAME ...]``.

Each family of :mod:`quality_traces` (mixed node shapes, skewed VM mixes,
churn, anti-affinity and spread, dedicated and tagged pools, shared GPU
nodes) is generated for several seeds, and every registered strategy and
the reference heuristics below replay the same fleet and trace through the
service's own simulator (:func:`scheduler.simulate.simulate`: same filters,
same reservations). Per family, the table shows the mean over seeds ± the
standard deviation of:

* ``util@frag``: utilization of the ``default`` pool's scarcer resource
  (the larger of its cpu and memory utilization) at its first
  *fragmentation rejection*, a request for no device refused although the
  nodes allowed to take it held enough free cpu and memory in aggregate
  (utilization at the end of the trace for a run that never fragmented);
  ``cpu@frag`` is the cpu utilization then. The scarcer resource, because
  on memory-heavy traces memory runs out first and cpu utilization says
  little about packing;
* ``VMs`` and ``vCPUs`` placed over the whole trace;
* ``strand cpu`` / ``strand mem``: at the end, free vCPUs on nodes without
  memory left for the smallest VM (and the reverse), as a fraction of the
  pool;
* ``dev@frag``: GPU utilization at the first GPU request refused while the
  pool had enough GPUs free in aggregate (GPU family only).

The reference heuristics (written here, not registered: nobody should run
them in production):

* ``ref_best_fit``: textbook best fit, the node left with the fewest free vCPUs;
* ``ref_first_fit``: the first node in name order that fits;
* ``ref_l2``: Panigrahy et al.'s L2-norm rule, least sum of squared free
  fractions left (cpu, memory) after placement;
* ``ref_dot``: Panigrahy et al.'s dot-product rule, largest dot product of
  the request's and the node's free fractions (alignment, as in Tetris);
* ``ref_drf_best_fit``: dominant-resource best fit, least largest free
  fraction left after placement.

The closing lines compare ``best_fit`` with the best reference per family
(the paired difference over seeds ± its standard error) and with textbook
best fit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from quality_traces import FAMILIES, Family

from scheduler.fleet import FleetView, FloatArray
from scheduler.models import SchedulingRequest
from scheduler.simulate import simulate
from scheduler.strategies.base import ScoringStrategy, Strategy
from scheduler.strategies.placer import Placer
from scheduler.strategies.registry import STRATEGY_NAMES, get_strategy


class RefBestFit(ScoringStrategy):
    """Textbook best fit on cpu: the node left with the fewest free vCPUs."""

    avoid_devices = False

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        return np.subtract(fleet.free_cpu[start:stop], req.requested_cpu, dtype=np.float64)


class RefFirstFit(ScoringStrategy):
    """First fit: the first feasible node in name order."""

    avoid_devices = False

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        return np.zeros(stop - start)


def _free_after(
    fleet: FleetView, start: int, stop: int, req: SchedulingRequest
) -> tuple[FloatArray, FloatArray]:
    sl = slice(start, stop)
    return (
        (fleet.free_cpu[sl] - req.requested_cpu) * fleet.inv_cpu[sl],
        (fleet.free_mem[sl] - req.requested_memory) * fleet.inv_mem[sl],
    )


class RefL2(ScoringStrategy):
    """Panigrahy et al. L2 norm: least sum of squared free fractions left after placement."""

    avoid_devices = False

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        c, m = _free_after(fleet, start, stop, req)
        result: FloatArray = c * c + m * m
        return result


class RefDot(ScoringStrategy):
    """Panigrahy et al. dot product: largest request . free, both as fractions of the node."""

    avoid_devices = False

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        sl = slice(start, stop)
        inv_c, inv_m = fleet.inv_cpu[sl], fleet.inv_mem[sl]
        dot = (req.requested_cpu * inv_c) * (fleet.free_cpu[sl] * inv_c)
        dot += (req.requested_memory * inv_m) * (fleet.free_mem[sl] * inv_m)
        result: FloatArray = -dot
        return result


class RefDrfBestFit(ScoringStrategy):
    """Dominant-resource best fit: least largest free fraction left after placement."""

    avoid_devices = False

    def score(self, fleet: FleetView, start: int, stop: int, req: SchedulingRequest) -> FloatArray:
        c, m = _free_after(fleet, start, stop, req)
        result: FloatArray = np.maximum(c, m)
        return result


REFERENCES: dict[str, Callable[[], Strategy]] = {
    "ref_best_fit": RefBestFit,
    "ref_first_fit": RefFirstFit,
    "ref_l2": RefL2,
    "ref_dot": RefDot,
    "ref_drf_best_fit": RefDrfBestFit,
}


@dataclass
class Run:
    """The figures of one strategy on one seed of one family."""

    util: float
    cpu: float
    fragmented: bool
    vms: int
    vcpus: int
    strand_cpu: float
    strand_mem: float
    device: float | None
    decisions: int
    seconds: float


def replay(family: Family, built: tuple[list, list], name: str, strategy: Strategy) -> Run:
    nodes, trace = built
    fleet = FleetView.build(nodes)
    placer = Placer(name if name in STRATEGY_NAMES else "least_loaded", extra={name: strategy})
    placer.default = name
    result = simulate(fleet, trace, placer, keep_lines=False)
    summary = result.summary()
    frag = summary["first_fragmentation"].get("default")
    at = frag if frag else summary["utilization"]["default"]
    util, cpu = max(at["cpu"], at["memory"]), at["cpu"]
    dev = summary["first_device_fragmentation"].get("gpu")
    strand = summary["stranded"]["default"]
    # A run whose GPUs never fragmented: their utilization at the end.
    device = dev["device"] if dev else summary["utilization"]["default"].get("gpu")
    return Run(
        util, cpu, frag is not None, result.placed, result.vcpus_placed, strand["cpu"], strand["memory"],
        device if family.devices else None, len(result.decision_ns), result.wall_seconds,
    )  # fmt: skip


def contenders() -> dict[str, Callable[[], Strategy]]:
    """Every registered strategy, then the references; built anew per run (some keep state)."""
    out: dict[str, Callable[[], Strategy]] = {
        name: (lambda n=name: get_strategy(n)) for name in STRATEGY_NAMES
    }
    out.update(REFERENCES)
    return out


def _ms(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f}±{sd:.{digits}f}"


def _paired(a: list[float], b: list[float]) -> tuple[float, float]:
    diff = [x - y for x, y in zip(a, b, strict=True)]
    se = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else 0.0
    return statistics.fmean(diff), se


def run_family(
    family: Family, seeds: int, strategies: dict[str, Callable[[], Strategy]]
) -> dict[str, list[Run]]:
    builds = [family.build(seed) for seed in range(seeds)]
    return {name: [replay(family, b, name, make()) for b in builds] for name, make in strategies.items()}


def print_family(family: Family, runs: dict[str, list[Run]], builds_info: str) -> None:
    print(f"\n== {family.name}: {family.description} ({builds_info})")
    head = (
        f"{'strategy':<17} {'util@frag':>13} {'cpu@frag':>13} {'VMs':>11} {'vCPUs':>13} {'strand cpu':>13} "
        f"{'strand mem':>13}" + (f" {'dev@frag':>13}" if family.devices else "")
    )
    print(head)
    print("-" * len(head))
    order = sorted(runs, key=lambda n: -statistics.fmean(r.util for r in runs[n]))
    for name in order:
        rs = runs[name]
        line = (
            f"{name:<17} {_ms([r.util for r in rs]):>13} {_ms([r.cpu for r in rs]):>13} "
            f"{_ms([r.vms for r in rs], 0):>11} "
            f"{_ms([r.vcpus for r in rs], 0):>13} {_ms([r.strand_cpu for r in rs]):>13} "
            f"{_ms([r.strand_mem for r in rs]):>13}"
        )
        if family.devices:
            line += f" {_ms([r.device if r.device is not None else 1.0 for r in rs]):>13}"
        print(line)
    never = sum(not r.fragmented for rs in runs.values() for r in rs)
    if never:
        print(f"({never} runs never fragmented: utilization at the end of the trace)")
    if "best_fit" in runs:
        bf = [r.util for r in runs["best_fit"]]
        refs = [n for n in runs if n in REFERENCES]
        if refs:
            best = max(refs, key=lambda n: statistics.fmean(r.util for r in runs[n]))
            d, se = _paired(bf, [r.util for r in runs[best]])
            print(f"best_fit - best reference ({best}): {d:+.4f} ± {se:.4f} (paired, se over seeds)")
        if "ref_best_fit" in runs:
            d, se = _paired(bf, [r.util for r in runs["ref_best_fit"]])
            print(f"best_fit - textbook best fit: {d:+.4f} ± {se:.4f}")
        if family.devices and refs:
            dev = lambda n: [r.device if r.device is not None else 1.0 for r in runs[n]]  # noqa: E731
            best = max(refs, key=lambda n: statistics.fmean(dev(n)))
            d, se = _paired(dev("best_fit"), dev(best))
            print(
                f"best_fit - best reference ({best}) on GPU utilization at the first GPU fragmentation: "
                f"{d:+.4f} ± {se:.4f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--family", action="append", help="only these families (repeatable)")
    parser.add_argument("--strategy", action="append", help="only these contenders (repeatable)")
    args = parser.parse_args()
    families = [f for f in FAMILIES if not args.family or f.name in args.family]
    strategies = {n: m for n, m in contenders().items() if not args.strategy or n in args.strategy}
    started = time.perf_counter()
    decisions = 0
    for family in families:
        runs = run_family(family, args.seeds, strategies)
        nodes, trace = family.build(0)
        print_family(family, runs, f"{len(nodes)} nodes, {len(trace)} lines for seed 0, {args.seeds} seeds")
        decisions += sum(r.decisions for rs in runs.values() for r in rs)
        sys.stdout.flush()
    took = time.perf_counter() - started
    print(f"\n{decisions} decisions in {took:.0f} s")


if __name__ == "__main__":
    main()
