"""What the resource model costs a decision, and what it adds to the fleet view's memory.

Run from the repository root: ``python bench/bench_resources.py [--nodes 10000] [--decisions 2000]``.

One fleet of ``--nodes`` nodes in one pool (every node a candidate), built
the way the worker builds it and partially filled as in
``bench_strategies.py``; every node has two kinds of countable device
(``gpu: 8``, ``nvme: 4``), a zone (three zones), a host reserve, and half
of them a cpu allocation ratio of 2.0 (the rest the configured 1.0). On that
same fleet, in the same run, two request streams are timed through
``Placer.place`` (filter, score, reserve) for every strategy:

* **plain**: cpu and memory only, the request of today's service;
* **resource model**: the same cpu and memory plus ``{gpu: 1, nvme: 1}``
  and a hard ``spread_group`` whose VMs are already spread over the zones.

The goal (printed next to the figures) is the resource-model decision
within 1.5x of the plain one at 10,000 nodes. Each cell is the quietest of
``--rounds`` rounds (lowest p99), as in ``bench_strategies.py``, because on a
shared machine a p99 of tens of microseconds otherwise measures the
neighbours.

Memory: a 100,000-node fleet view with the devices, zones and ratios, built
under ``tracemalloc`` (peak while building and retained), next to the same
fleet without them; the goal is under 100 MB.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import time
import tracemalloc
from collections import deque

import common
import numpy as np

from scheduler.fleet import Allocation, FleetView
from scheduler.models import Node, Reserve, SchedulingRequest
from scheduler.strategies import STRATEGY_NAMES, Placer

GOAL_RATIO = 1.5
GOAL_MEMORY_MB = 100.0
KEEP_PLACED = 200
ZONES = ("az1", "az2", "az3")
SPREAD_MEMBERS = 300


def resource_nodes(n: int) -> list[Node]:
    """``n`` nodes of the benchmark shape with devices, zones, a reserve and (every other one) a ratio."""
    return [
        Node.model_construct(
            name=common.node_name(i),
            ip=ipaddress.IPv4Address(0x0A000000 + i),
            pool="default",
            dedicated=False,
            cpu=common.NODE_CPU,
            memory=common.NODE_MEMORY,
            disk=common.NODE_DISK,
            max_vms=common.NODE_MAX_VMS,
            tags=[],
            zone=ZONES[i % len(ZONES)],
            cordoned=False,
            resources={"gpu": 8, "nvme": 4},
            reserved=Reserve.model_construct(cpu=2, memory=8 * common.GIB, disk=None),
            cpu_allocation_ratio=2.0 if i % 2 else None,
        )
        for i in range(n)
    ]


def build_fleet(n: int, seed: int) -> FleetView:
    """The partially filled resource fleet, with a spread group already spread over the zones."""
    rng = np.random.default_rng(seed)
    fleet = common.partially_filled(resource_nodes(n), rng)
    placer = Placer("least_loaded")
    for k in range(SPREAD_MEMBERS):
        req = SchedulingRequest(
            task_id=f"web-{k}", requested_cpu=1, requested_memory=1024, spread_group="web"
        )
        placer.place(fleet, req, now=0.0)
    return fleet


def request_streams(count: int, seed: int) -> tuple[list[SchedulingRequest], list[SchedulingRequest]]:
    rng = np.random.default_rng(seed + 1)
    cpu, memory = common.vm_shapes(rng, count)
    plain, rich = [], []
    for i, (c, m) in enumerate(zip(cpu, memory, strict=True)):
        plain.append(SchedulingRequest(task_id=f"plain-{i}", requested_cpu=int(c), requested_memory=int(m)))
        rich.append(
            SchedulingRequest(
                task_id=f"rich-{i}",
                requested_cpu=int(c),
                requested_memory=int(m),
                requested_resources={"gpu": 1, "nvme": 1},
                spread_group="web",
            )
        )
    return plain, rich


def one_round(fleet: FleetView, name: str, reqs: list[SchedulingRequest], warmup: int) -> tuple[float, float]:
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
    arr = np.asarray(samples, dtype=np.float64) / 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def memory_mb(nodes: list[Node]) -> tuple[float, float, float]:
    """(arrays MB, tracemalloc peak MB, retained MB) of building a view of ``nodes`` with one VM each."""
    allocations = [
        Allocation(f"m-{i}", x.name, 1, 1, 0, None, (("gpu", 1),) if x.resources else (), None)
        for i, x in enumerate(nodes)
    ]
    gc.collect()
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    view = FleetView.build(nodes, allocations)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mb = 1024 * 1024
    return view.nbytes() / mb, (peak - before) / mb, (current - before) / mb


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--memory-nodes", type=int, default=100_000)
    args = parser.parse_args()
    warmup = min(100, args.decisions // 10)

    print(f"machine: {os.cpu_count()} cpus, load average {_load()} at start")
    t0 = time.perf_counter()
    fleet = build_fleet(args.nodes, args.seed)
    util = fleet.pool_utilization()["default"]
    print(
        f"fleet {args.nodes:,} nodes, 2 device kinds, 3 zones, reserves, ratio 2.0 on half: "
        f"cpu {util['cpu']:.0%} / memory {util['memory']:.0%} of effective capacity allocated, "
        f"{len(fleet.allocations):,} VMs, spread group of {SPREAD_MEMBERS} "
        f"(built in {time.perf_counter() - t0:.1f} s)"
    )
    plain, rich = request_streams(args.decisions + warmup, args.seed)
    rows: dict[str, dict[str, list[tuple[float, float]]]] = {
        name: {"plain": [], "rich": []} for name in STRATEGY_NAMES
    }
    for _ in range(args.rounds):
        for name in STRATEGY_NAMES:
            rows[name]["plain"].append(one_round(fleet, name, plain, warmup))
            rows[name]["rich"].append(one_round(fleet, name, rich, warmup))

    print()
    print(
        f"decision latency at {args.nodes:,} nodes, Placer.place, µs: {args.decisions} timed decisions "
        f"per cell, quietest of {args.rounds} rounds; plain = cpu + memory, "
        "resource model = + gpu, nvme, hard spread"
    )
    header = (
        f"{'strategy':<14}"
        + "".join(f"{h:>12}" for h in ("plain p50", "plain p99", "model p50", "model p99"))
        + f"{'x p50':>8}{'x p99':>8}"
    )
    print(header)
    print("-" * len(header))
    worst = ("", 0.0)
    for name in STRATEGY_NAMES:
        p50, p99 = min(rows[name]["plain"], key=lambda r: r[1])
        r50, r99 = min(rows[name]["rich"], key=lambda r: r[1])
        ratio = r50 / p50
        if ratio > worst[1]:
            worst = (name, ratio)
        print(f"{name:<14}{p50:>12.1f}{p99:>12.1f}{r50:>12.1f}{r99:>12.1f}{ratio:>7.2f}x{r99 / p99:>7.2f}x")

    print()
    print("goals")
    default = (
        min(rows["least_loaded"]["rich"], key=lambda r: r[1])[0]
        / min(rows["least_loaded"]["plain"], key=lambda r: r[1])[0]
    )
    print(
        f"  resource-model decision <= {GOAL_RATIO}x plain at {args.nodes:,} nodes (p50): least_loaded "
        f"{default:.2f}x [{'ok' if default <= GOAL_RATIO else 'MISSED'}]; worst strategy {worst[0]} "
        f"{worst[1]:.2f}x [{'ok' if worst[1] <= GOAL_RATIO else 'MISSED'}]"
    )
    n = args.memory_nodes
    plain_mem = memory_mb(common.make_nodes(n))
    rich_mem = memory_mb(resource_nodes(n))
    print(
        f"  {n:,}-node fleet view <= {GOAL_MEMORY_MB:.0f} MB: plain arrays {plain_mem[0]:.1f} MB "
        f"(tracemalloc peak {plain_mem[1]:.1f}, retained {plain_mem[2]:.1f}); with devices, zones and ratios "
        f"arrays {rich_mem[0]:.1f} MB (peak {rich_mem[1]:.1f}, retained {rich_mem[2]:.1f}) "
        f"[{'ok' if max(rich_mem[1], rich_mem[2]) <= GOAL_MEMORY_MB else 'MISSED'}]"
    )
    print(f"machine load average {_load()} at the end (1/5/15 min)")


if __name__ == "__main__":
    main()
