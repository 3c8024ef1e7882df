"""Decision latency per strategy at 500, 10,000 and 100,000 nodes in one pool, against a textbook baseline.

Run from the repository root:
``python bench/bench_strategies.py [--decisions 2000] [--sizes 500,10000,100000]``.

One pool is the worst case: every node of the fleet is a candidate for every
request. Each fleet is partially filled, unevenly, as a real one is
(``common.partially_filled``), so filters and scores see a realistic mix of
busy and idle nodes. A decision is timed the way the worker makes it,
``Placer.place`` (filter, score, reserve), with ``time.perf_counter_ns``;
between timed calls the oldest VMs placed by the run are released so the
fleet stays at the same fill level for the whole measurement. Each cell is
measured in several rounds and the quietest is reported, with the machine's
load average: on a shared machine a p99 of tens of microseconds otherwise
measures the other processes.

The baseline is the straightforward implementation the issue asks to beat:
nodes as a list of dicts, a list comprehension for the filters, ``sort`` on
(weighted utilization, name) for least_loaded, the first element reserved.
It is measured in the same run, on the same fleet and requests.

Goals printed next to the figures (issue 2): p99 <= 0.1 ms at 500 nodes,
<= 0.5 ms at 10,000, <= 3 ms at 100,000; at 10,000 nodes >= 20x faster than
the baseline; a 100,000-node fleet view in <= 100 MB.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import tracemalloc
from collections import deque
from typing import Any

import common
import numpy as np

from scheduler.fleet import FleetView
from scheduler.models import SchedulingRequest
from scheduler.strategies import STRATEGY_NAMES, Placer

GOAL_P99_US = {500: 100.0, 10_000: 500.0, 100_000: 3000.0}
GOAL_SPEEDUP = 20.0
GOAL_MEMORY_MB = 100.0
KEEP_PLACED = 200
"""VMs a run keeps placed at most; older ones are released, so the fill level stays steady."""


def requests(rng: np.random.Generator, count: int, prefix: str) -> list[SchedulingRequest]:
    cpu, memory = common.vm_shapes(rng, count)
    return [
        SchedulingRequest(task_id=f"{prefix}-{i}", requested_cpu=int(c), requested_memory=int(m))
        for i, (c, m) in enumerate(zip(cpu, memory, strict=True))
    ]


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    arr = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def time_strategies(
    fleet: FleetView, reqs: list[SchedulingRequest], warmup: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """Per strategy, p50 and p99 (µs) of ``Placer.place`` over ``reqs``: the quietest of ``rounds`` rounds.

    Each round replays the same requests on a fresh copy of ``fleet``, so the
    rounds do the same work and differ only by what else the machine was
    doing; the round with the lowest p99 is the one least disturbed by other
    processes (the reasoning of ``timeit`` taking the minimum). Rounds go
    round-robin over the strategies, so that a busy spell on a shared machine
    spoils one round of several strategies rather than every round of one.
    """
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in STRATEGY_NAMES}
    for _ in range(rounds):
        for name in STRATEGY_NAMES:
            runs[name].append(_one_round(fleet, name, reqs, warmup))
    return {name: min(results, key=lambda r: r[1]) for name, results in runs.items()}


def _one_round(
    fleet: FleetView, name: str, reqs: list[SchedulingRequest], warmup: int
) -> tuple[float, float]:
    view = fleet.snapshot()
    placer = Placer(name, seed=1)
    placed: deque[str] = deque()
    samples: list[int] = []
    clock = time.perf_counter_ns
    gc.collect()
    for k, req in enumerate(reqs):
        t0 = clock()
        decision = placer.place(view, req, now=0.0)
        t1 = clock()
        if k >= warmup:
            samples.append(t1 - t0)
        if decision.placed:
            placed.append(req.task_id)
            if len(placed) > KEEP_PLACED:
                view.release(placed.popleft())
    return percentiles(samples)


# ---------------------------------------------------------------- baseline
def baseline_nodes(fleet: FleetView) -> list[dict[str, Any]]:
    """The same fleet as plain dicts, the shape a first implementation would keep."""
    return [
        {
            "name": fleet.names[i],
            "pool": fleet.pools_of[i],
            "dedicated": bool(fleet.dedicated[i]),
            "cordoned": bool(fleet.cordoned[i]),
            "tags": set(),
            "cpu": int(fleet.cap_cpu[i]),
            "memory": int(fleet.cap_mem[i]),
            "disk": int(fleet.cap_disk[i]),
            "max_vms": int(fleet.max_vms[i]),
            "free_cpu": int(fleet.free_cpu[i]),
            "free_memory": int(fleet.free_mem[i]),
            "free_disk": int(fleet.free_disk[i]),
            "vms": int(fleet.vms[i]),
        }
        for i in range(fleet.size)
    ]


def baseline_place(nodes: list[dict[str, Any]], req: SchedulingRequest) -> dict[str, Any] | None:
    """Textbook least_loaded: filter with a comprehension, sort by (score, name), take the first."""
    tags = set(req.required_tags)
    candidates = [
        n
        for n in nodes
        if n["pool"] == req.requested_pool
        and not n["cordoned"]
        and n["dedicated"] == req.dedicated
        and tags <= n["tags"]
        and n["free_cpu"] >= req.requested_cpu
        and n["free_memory"] >= req.requested_memory
        and n["free_disk"] >= req.requested_disk
        and n["vms"] < n["max_vms"]
    ]
    if not candidates:
        return None

    def load(n: dict[str, Any]) -> tuple[float, str]:
        cpu = (n["cpu"] - n["free_cpu"] + req.requested_cpu) / n["cpu"]
        mem = (n["memory"] - n["free_memory"] + req.requested_memory) / n["memory"]
        disk = (n["disk"] - n["free_disk"] + req.requested_disk) / n["disk"] if n["disk"] else 0.0
        return 0.4 * cpu + 0.4 * mem + 0.2 * disk, n["name"]

    candidates.sort(key=load)
    chosen = candidates[0]
    chosen["free_cpu"] -= req.requested_cpu
    chosen["free_memory"] -= req.requested_memory
    chosen["free_disk"] -= req.requested_disk
    chosen["vms"] += 1
    return chosen


def time_baseline(fleet: FleetView, reqs: list[SchedulingRequest]) -> tuple[float, float]:
    nodes = baseline_nodes(fleet)
    placed: deque[tuple[dict[str, Any], SchedulingRequest]] = deque()
    samples: list[int] = []
    clock = time.perf_counter_ns
    for req in reqs:
        t0 = clock()
        chosen = baseline_place(nodes, req)
        samples.append(clock() - t0)
        if chosen is not None:
            placed.append((chosen, req))
            if len(placed) > KEEP_PLACED:
                node, old = placed.popleft()
                node["free_cpu"] += old.requested_cpu
                node["free_memory"] += old.requested_memory
                node["free_disk"] += old.requested_disk
                node["vms"] -= 1
    return percentiles(samples)


# ------------------------------------------------------------------ memory
def fleet_memory(n: int) -> tuple[float, float, float]:
    """(arrays MB, tracemalloc peak MB, retained MB) for building an ``n``-node view from its inventory."""
    nodes = common.make_nodes(n)
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    view = FleetView.build(nodes)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mb = 1024 * 1024
    return view.nbytes() / mb, (peak - before) / mb, (current - before) / mb


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def _mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000, help="timed decisions per strategy and size")
    parser.add_argument("--sizes", default="500,10000,100000")
    parser.add_argument(
        "--baseline-decisions",
        default="500:2000,10000:500,100000:50",
        help="decisions for the (slow) baseline per size",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per cell; the quietest one is reported")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base_counts = {int(k): int(v) for k, v in (p.split(":") for p in args.baseline_decisions.split(","))}
    warmup = min(100, args.decisions // 10)

    print(f"machine: {os.cpu_count()} cpus, load average {_load()} at start")
    rows: dict[int, dict[str, tuple[float, float]]] = {}
    for n in sizes:
        rng = np.random.default_rng(args.seed)
        t0 = time.perf_counter()
        fleet = common.partially_filled(common.make_nodes(n), rng)
        util = fleet.pool_utilization()["default"]
        print(
            f"fleet {n:>7,} nodes: cpu {util['cpu']:.0%} / memory {util['memory']:.0%} allocated, "
            f"{len(fleet.allocations):,} VMs (built in {time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        reqs = requests(rng, args.decisions + warmup, f"bench-{n}")
        rows[n] = time_strategies(fleet, reqs, warmup, args.rounds)
        count = base_counts.get(n, 0)
        if count:
            rows[n]["baseline"] = time_baseline(fleet, reqs[:count])

    print()
    print(
        f"decision latency, Placer.place (filter + score + reserve), µs: {args.decisions} timed decisions "
        f"per cell, quietest of {args.rounds} rounds"
    )
    header = f"{'strategy':<14}" + "".join(f"{f'{n:,} p50':>14}{f'{n:,} p99':>14}" for n in sizes)
    if 10_000 in sizes:
        header += f"{'x baseline @10k':>17}"
    print(header)
    print("-" * len(header))
    names = [*STRATEGY_NAMES, "baseline"]
    for name in names:
        line = f"{name:<14}"
        for n in sizes:
            p50, p99 = rows[n].get(name, (float("nan"), float("nan")))
            line += f"{p50:>14.1f}{p99:>14.1f}"
        if 10_000 in sizes and "baseline" in rows[10_000]:
            base = rows[10_000]["baseline"][0]
            line += f"{base / rows[10_000][name][0]:>16.0f}x" if name != "baseline" else f"{'1x':>17}"
        print(line)
    if any("baseline" in rows[n] for n in sizes):
        print(
            "(baseline = pure-Python filter-then-sort least_loaded over node dicts; "
            + ", ".join(f"{base_counts[n]} decisions at {n:,}" for n in sizes if "baseline" in rows[n])
            + ")"
        )

    print()
    print("goals")
    for n in sizes:
        if n in GOAL_P99_US:
            worst = max(STRATEGY_NAMES, key=lambda s: rows[n][s][1])
            p99 = rows[n][worst][1]
            print(
                f"  p99 at {n:>7,} nodes <= {GOAL_P99_US[n]:>6.0f} µs: worst {worst} {p99:.1f} µs "
                f"[{_mark(p99 <= GOAL_P99_US[n])}]"
            )
    if 10_000 in sizes and "baseline" in rows[10_000]:
        base = rows[10_000]["baseline"][0]
        slowest = max(STRATEGY_NAMES, key=lambda s: rows[10_000][s][0])
        ratio = base / rows[10_000][slowest][0]
        default = base / rows[10_000]["least_loaded"][0]
        print(
            f"  speed-up at 10,000 nodes >= {GOAL_SPEEDUP:.0f}x (p50): least_loaded {default:.0f}x, "
            f"slowest strategy {slowest} {ratio:.0f}x [{_mark(ratio >= GOAL_SPEEDUP)}]"
        )
    arrays, peak, retained = fleet_memory(100_000)
    print(
        f"  100,000-node fleet view <= {GOAL_MEMORY_MB:.0f} MB: arrays (nbytes) {arrays:.1f} MB, "
        f"tracemalloc peak while building {peak:.1f} MB, retained {retained:.1f} MB "
        f"[{_mark(max(peak, retained) <= GOAL_MEMORY_MB)}]"
    )
    print(
        f"machine load average {_load()} at the end (1/5/15 min; above the cpu count, p99 includes waiting)"
    )


if __name__ == "__main__":
    main()
