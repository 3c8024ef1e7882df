"""Plan cost: a plan against a decision, and the committed-fleet cache (revision check vs reload).

Run from the repository root: ``python bench/bench_plan.py [--nodes 10000] [--plans 200]``.

Goals: a plan (pick, top 5 scored candidates, per-filter examples) costs no
more than a few decisions on a 10,000-node pool (it runs the same filters
and one scoring pass); a plan answered from the cached committed fleet pays
one revision read (three indexed lookups), not a fleet load, so on SQLite
it stays well under the load time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common
import numpy as np

from scheduler.config import Settings
from scheduler.models import SchedulingRequest
from scheduler.plan_service import PlanService
from scheduler.planning import plan
from scheduler.store import Placement, Store
from scheduler.strategies import Placer

GOAL_RATIO = 5.0
"""A plan may cost at most this many decisions."""


def _ms(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1000:.3f} ms, p99 {np.percentile(samples, 99) * 1000:.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--plans", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    nodes = common.make_nodes(args.nodes)
    fleet = common.partially_filled(nodes, rng)
    placer = Placer("least_loaded")
    cpu, memory = common.vm_shapes(rng, args.plans)
    reqs = [
        SchedulingRequest(task_id=f"p{i}", requested_cpu=int(c), requested_memory=int(m))
        for i, (c, m) in enumerate(zip(cpu, memory, strict=True))
    ]
    decide: list[float] = []
    plans: list[float] = []
    for req in reqs:
        t0 = time.perf_counter()
        placer.decide(fleet, req, now=0.0)
        t1 = time.perf_counter()
        plan(fleet, req, placer, now=0.0)
        t2 = time.perf_counter()
        decide.append(t1 - t0)
        plans.append(t2 - t1)
    ratio = statistics.median(plans) / statistics.median(decide)
    print(
        f"fleet: {args.nodes} nodes, {len(fleet.allocations)} VMs; {args.plans} requests of the benchmark mix"
    )
    print(f"decision: {_ms(decide)}")
    print(f"plan:     {_ms(plans)}  ({ratio:.1f} decisions; goal <= {GOAL_RATIO:g}: "
          f"{'met' if ratio <= GOAL_RATIO else 'NOT met'})")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.from_url(f"sqlite:///{Path(tmp) / 'bench.db'}")
        store.upgrade()
        small = nodes[: min(args.nodes, 2000)]
        store.import_nodes(small)
        store.claim_fence(1, "bench")
        store.commit(
            [
                Placement(SchedulingRequest(task_id=f"v{i}", requested_cpu=1, requested_memory=1024),
                          small[i % len(small)].name, "10.0.0.1", "least_loaded", "", 1)
                for i in range(20_000)
            ],
            1,
        )  # fmt: skip
        service = PlanService(store, Settings(database={"url": f"sqlite:///{Path(tmp) / 'bench.db'}"}))
        t0 = time.perf_counter()
        service.plan(reqs[0])
        first = time.perf_counter() - t0
        cached: list[float] = []
        for req in reqs[:50]:
            t0 = time.perf_counter()
            service.plan(req)
            cached.append(time.perf_counter() - t0)
        store.close()
    print(f"committed fleet (SQLite, {len(small)} nodes, 20000 VMs): first plan {first * 1000:.1f} ms; "
          f"cached plans {_ms(cached)}; loads {service.fleet.loads} (goal: 1)")  # fmt: skip


if __name__ == "__main__":
    main()
