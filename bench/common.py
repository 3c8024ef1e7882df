"""Shared generators for the benchmarks: fleets, VM shapes and over-subscribing traces.

Why one module: the latency and the quality benchmarks must describe the same
kind of fleet and the same mix of VM shapes, or their figures cannot be read
together. Everything here is seeded (``numpy.random.default_rng``) so a run
can be repeated exactly.

The benchmarks are scripts, run from the repository root
(``python bench/bench_strategies.py``); this module makes the ``scheduler``
package importable from a plain checkout as well as from an installed one.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a plain checkout, not installed: import the package from the tree
    sys.path.insert(0, str(ROOT))

from scheduler.fleet import Allocation, FleetView  # noqa: E402
from scheduler.models import Node  # noqa: E402

GIB = 1024  # MiB

# Node shape of the benchmarks: a common 2-socket server.
NODE_CPU = 64
NODE_MEMORY = 256 * GIB
NODE_DISK = 4000
NODE_MAX_VMS = 128
# The largest VM is half a node in either resource, as clouds size their
# biggest flavours on a host type (a VM the size of a whole host is a
# dedicated host, not a VM to pack).
VM_MAX_MEMORY = NODE_MEMORY // 2

# VM sizes (vCPUs) and how often each is asked for: mostly small, a tail of big ones.
VM_SIZES = np.array([1, 2, 4, 8, 16, 32])
VM_SIZE_P = np.array([0.20, 0.25, 0.25, 0.15, 0.10, 0.05])

# VM families as GiB per vCPU. The mix is chosen so that the aggregate demand
# has roughly the nodes' own shape (4 GiB per vCPU): then neither resource is
# exhausted in aggregate long before the other, and a rejection while the pool
# still has room in aggregate is fragmentation, not a full pool.
FAMILIES: dict[str, tuple[tuple[int, ...], float]] = {
    "cpu-heavy": ((1, 2), 0.40),
    "balanced": ((4,), 0.40),
    "memory-heavy": ((8, 16), 0.20),
}


def node_name(i: int) -> str:
    return f"bm-{i:06d}"


def make_nodes(
    n: int,
    *,
    pool: str = "default",
    cpu: int = NODE_CPU,
    memory: int = NODE_MEMORY,
    disk: int = NODE_DISK,
    max_vms: int = NODE_MAX_VMS,
) -> list[Node]:
    """``n`` identical nodes in one pool (the worst case for a decision: every node is a candidate).

    ``model_construct`` skips validation: the values are known to be valid,
    and validating 100,000 nodes would dominate the set-up time.
    """
    return [
        Node.model_construct(
            name=node_name(i),
            ip=ipaddress.IPv4Address(0x0A000000 + i),  # 10.x.y.z
            pool=pool,
            dedicated=False,
            cpu=cpu,
            memory=memory,
            disk=disk,
            max_vms=max_vms,
            tags=[],
            zone=None,
            cordoned=False,
        )
        for i in range(n)
    ]


def vm_shapes(rng: np.random.Generator, count: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``count`` VMs from the mix above, as arrays of vCPUs and MiB; at most half a node in memory."""
    cpu = rng.choice(VM_SIZES, size=count, p=VM_SIZE_P).astype(np.int64)
    family = rng.choice(len(FAMILIES), size=count, p=[p for _ratios, p in FAMILIES.values()])
    pick = rng.random(count)
    ratio = np.zeros(count, dtype=np.int64)
    for k, (ratios, _p) in enumerate(FAMILIES.values()):
        options = np.asarray(ratios, dtype=np.int64)
        chosen = options[(pick * len(options)).astype(np.int64)]
        ratio = np.where(family == k, chosen, ratio)
    memory = np.minimum(cpu * ratio * GIB, VM_MAX_MEMORY)
    return cpu, memory


def partially_filled(nodes: list[Node], rng: np.random.Generator, fill: float = 0.8) -> FleetView:
    """A fleet view whose nodes carry VMs, unevenly: about half the cpu and memory allocated by default.

    Each node gets its own target utilization (uniform in [0, 2*fill], capped
    at 0.95) so that the fleet looks like a real one: some nodes nearly
    empty, some nearly full, most in between, which is what makes filters and
    scores do real work. A node takes VMs from its own random sequence until
    the next one would pass its target, so it ends somewhat below it.
    Allocations go through :meth:`FleetView.build`, the path the worker uses
    at start-up, so the view's bookkeeping is the real one.
    """
    n = len(nodes)
    per_node = 48
    cpu, memory = vm_shapes(rng, n * per_node)
    cpu = cpu.reshape(n, per_node)
    memory = memory.reshape(n, per_node)
    target = np.minimum(0.95, rng.uniform(0.0, 2 * fill, n))
    cap_cpu = np.array([x.cpu for x in nodes])
    cap_mem = np.array([x.memory for x in nodes])
    fits = (np.cumsum(cpu, axis=1) <= (cap_cpu * target)[:, None]) & (
        np.cumsum(memory, axis=1) <= (cap_mem * target)[:, None]
    )
    counts = np.minimum(np.argmin(np.c_[fits, np.zeros(n, bool)], axis=1), [x.max_vms - 1 for x in nodes])
    allocations = [
        Allocation(f"fill-{i}-{j}", nodes[i].name, int(cpu[i, j]), int(memory[i, j]), 10)
        for i in range(n)
        for j in range(int(counts[i]))
    ]
    return FleetView.build(nodes, allocations)


@dataclass(frozen=True, slots=True)
class Step:
    """One trace event: a request (cpu, memory) or the release of an earlier task."""

    task_id: str
    cpu: int = 0
    memory: int = 0
    release: bool = False


def churn_trace(rng: np.random.Generator, steps: int, release_p: float = 0.2) -> list[Step]:
    """Requests with VM deletions interleaved: after each request, ``release_p`` of releasing one.

    The released task is chosen uniformly among the tasks requested so far and
    not yet released (it may have been rejected: releasing it is then a no-op,
    as for the real service). Arrivals outpace departures, so a long enough
    trace over-subscribes any fleet.
    """
    cpu, memory = vm_shapes(rng, steps)
    release = rng.random(steps) < release_p
    which = rng.random(steps)
    out: list[Step] = []
    live: list[str] = []
    for i in range(steps):
        task_id = f"vm-{i}"
        out.append(Step(task_id, int(cpu[i]), int(memory[i])))
        live.append(task_id)
        if release[i]:
            j = int(which[i] * len(live))
            live[j], live[-1] = live[-1], live[j]
            out.append(Step(live.pop(), release=True))
    return out
