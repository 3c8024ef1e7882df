"""Trace families for the placement-quality benchmark: fleets and request traces nobody tuned for.

Why families and not one trace: a packing rule tuned on one generator
(identical nodes, no releases, no constraints) learns that generator. Each
family here stresses one thing a real fleet has: node shapes of 32-128 vCPU
and 2-16 GiB per vCPU, VM mixes skewed small, large, memory- or cpu-heavy,
churn (0-30% of requests later released), anti-affinity and zone-spread
groups, dedicated and tagged pools, and GPU nodes shared by CPU-only and GPU
tenants. Every family over-subscribes its fleet (requests keep coming until
the net requested vCPUs are 1.5x the fleet's) so that every strategy meets
fragmentation. Everything is seeded.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import common  # noqa: F401  (puts the package on sys.path for a plain checkout)
import numpy as np

from scheduler.models import Node, ReleaseRequest, SchedulingRequest

GIB = 1024
OVERSUBSCRIBE = 1.5
"""Requests continue until the live requested vCPUs reach this multiple of the fleet's."""

NODE_CPUS = (32, 48, 64, 96, 128)
GIB_PER_CPU = (2, 4, 8, 16)

# VM sizes (vCPUs) and their odds per size mix.
SIZES: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {
    "balanced": ((1, 2, 4, 8, 16, 32), (0.20, 0.25, 0.25, 0.15, 0.10, 0.05)),
    "small": ((1, 2, 4, 8, 16), (0.35, 0.30, 0.20, 0.10, 0.05)),
    "large": ((2, 4, 8, 16, 32), (0.05, 0.10, 0.25, 0.35, 0.25)),
}
# GiB per vCPU of the VMs and their odds per shape mix.
RATIOS: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {
    "balanced": ((1, 2, 4, 8, 16), (0.10, 0.25, 0.35, 0.20, 0.10)),
    "memory": ((4, 8, 16), (0.20, 0.40, 0.40)),
    "cpu": ((1, 2, 4), (0.40, 0.40, 0.20)),
}

TraceItem = SchedulingRequest | ReleaseRequest


@dataclass(frozen=True)
class Family:
    """One kind of fleet and workload; ``build(seed)`` gives the nodes and the trace."""

    name: str
    description: str
    build: Callable[[int], tuple[list[Node], list[TraceItem]]]
    devices: bool = False


def _node(name: str, cpu: int, gib_per_cpu: int, **extra: object) -> Node:
    fields: dict[str, object] = {
        "name": name, "ip": ipaddress.IPv4Address(0x0A000000 + int(name.rsplit("-", 1)[1])),
        "pool": "default", "dedicated": False, "cpu": cpu, "memory": cpu * gib_per_cpu * GIB,
        "disk": 4000, "max_vms": 256, "tags": [], "zone": None, "cordoned": False, "resources": {},
    }  # fmt: skip
    fields.update(extra)
    return Node.model_construct(**fields)  # type: ignore[arg-type]


def mixed_nodes(rng: np.random.Generator, count: int, first: int = 0, **extra: object) -> list[Node]:
    """``count`` nodes of random shapes (32-128 vCPU, 2-16 GiB per vCPU); names do not follow size."""
    cpus = rng.choice(NODE_CPUS, size=count)
    ratios = rng.choice(GIB_PER_CPU, size=count, p=(0.2, 0.4, 0.3, 0.1))
    return [
        _node(f"bm-{first + i:05d}", int(c), int(r), **extra)
        for i, (c, r) in enumerate(zip(cpus, ratios, strict=True))
    ]


@dataclass
class _Trace:
    """Builds a trace: requests with releases of earlier ones interleaved, up to the over-subscription."""

    rng: np.random.Generator
    churn: float
    capacity: int
    items: list[TraceItem] = field(default_factory=list)
    live: list[tuple[str, int]] = field(default_factory=list)
    live_cpu: int = 0
    count: int = 0

    def full(self) -> bool:
        return self.live_cpu >= OVERSUBSCRIBE * self.capacity

    def add(self, cpu: int, memory: int, **extra: object) -> None:
        task_id = f"vm-{self.count}"
        self.count += 1
        self.items.append(
            SchedulingRequest.model_construct(
                task_id=task_id,
                requested_cpu=cpu,
                requested_memory=memory,
                **extra,  # type: ignore[arg-type]
            )
        )
        self.live.append((task_id, cpu))
        self.live_cpu += cpu
        if self.rng.random() < self.churn:
            j = int(self.rng.integers(len(self.live)))
            self.live[j], self.live[-1] = self.live[-1], self.live[j]
            gone, gone_cpu = self.live.pop()
            self.live_cpu -= gone_cpu
            self.items.append(ReleaseRequest.model_construct(release=gone))


def vm_shape(rng: np.random.Generator, sizes: str = "balanced", ratios: str = "balanced") -> tuple[int, int]:
    values, odds = SIZES[sizes]
    cpu = int(rng.choice(values, p=odds))
    r_values, r_odds = RATIOS[ratios]
    gib = int(rng.choice(r_values, p=r_odds))
    return cpu, min(cpu * gib, 512) * GIB


def _simple(
    sizes: str, ratios: str, churn: float, nodes: int = 120
) -> Callable[[int], tuple[list[Node], list[TraceItem]]]:
    def build(seed: int) -> tuple[list[Node], list[TraceItem]]:
        rng = np.random.default_rng(seed)
        fleet = mixed_nodes(rng, nodes)
        trace = _Trace(rng, churn, sum(n.cpu for n in fleet))
        while not trace.full():
            trace.add(*vm_shape(rng, sizes, ratios))
        return fleet, trace.items

    return build


def _affinity(seed: int) -> tuple[list[Node], list[TraceItem]]:
    """Three zones; 40% of VMs in hard anti-affinity groups of 2-8, 20% in hard zone-spread groups."""
    rng = np.random.default_rng(seed)
    fleet = mixed_nodes(rng, 120)
    fleet = [n.model_copy(update={"zone": f"z{i % 3}"}) for i, n in enumerate(fleet)]
    trace = _Trace(rng, 0.10, sum(n.cpu for n in fleet))
    groups = 0
    while not trace.full():
        roll = rng.random()
        if roll < 0.4:
            size, group = int(rng.integers(2, 9)), f"aa-{groups}"
            groups += 1
            cpu, mem = vm_shape(rng)
            for _ in range(size):
                trace.add(cpu, mem, anti_affinity_group=group)
        elif roll < 0.6:
            size, group = int(rng.integers(3, 10)), f"sp-{groups}"
            groups += 1
            cpu, mem = vm_shape(rng)
            for _ in range(size):
                trace.add(cpu, mem, spread_group=group)
        else:
            trace.add(*vm_shape(rng))
    return fleet, trace.items


def _pools(seed: int) -> tuple[list[Node], list[TraceItem]]:
    """Three pools: default (mixed shapes), batch (half tagged ssd), db (dedicated nodes); anti-affinity."""
    rng = np.random.default_rng(seed)
    default = mixed_nodes(rng, 90)
    batch = [
        n.model_copy(update={"pool": "batch", "tags": ["ssd"] if i % 2 else []})
        for i, n in enumerate(mixed_nodes(rng, 30, first=90))
    ]
    db = [n.model_copy(update={"pool": "db", "dedicated": True}) for n in mixed_nodes(rng, 10, first=120)]
    fleet = default + batch + db
    trace = _Trace(rng, 0.15, sum(n.cpu for n in fleet))
    groups = 0
    while not trace.full():
        roll = rng.random()
        if roll < 0.68:
            if rng.random() < 0.2:
                group = f"aa-{groups}"
                groups += 1
                cpu, mem = vm_shape(rng)
                for _ in range(int(rng.integers(2, 5))):
                    trace.add(cpu, mem, anti_affinity_group=group)
            else:
                trace.add(*vm_shape(rng))
        elif roll < 0.92:
            extra: dict[str, object] = {"requested_pool": "batch"}
            if rng.random() < 0.5:
                extra["required_tags"] = ["ssd"]
            trace.add(*vm_shape(rng, "small", "cpu"), **extra)
        else:
            trace.add(*vm_shape(rng, "large", "memory"), requested_pool="db", dedicated=True)
    return fleet, trace.items


GPU_NODE = (64, 8, 8)  # vCPU, GiB per vCPU, GPUs


def _gpu(seed: int) -> tuple[list[Node], list[TraceItem]]:
    """One pool: mixed CPU nodes and 20% GPU nodes; 85% CPU-only VMs, 15% asking 1-8 GPUs."""
    rng = np.random.default_rng(seed)
    cpu_nodes = mixed_nodes(rng, 96)
    cpu, ratio, gpus = GPU_NODE
    gpu_nodes = [_node(f"bm-{96 + i:05d}", cpu, ratio, resources={"gpu": gpus}) for i in range(24)]
    order = rng.permutation(120)  # GPU nodes are not all at the end of the name order
    fleet = [
        n.model_copy(update={"name": f"bm-{int(order[i]):05d}"}) for i, n in enumerate(cpu_nodes + gpu_nodes)
    ]
    trace = _Trace(rng, 0.10, sum(n.cpu for n in fleet))
    while not trace.full():
        if rng.random() < 0.15:
            count = int(rng.choice((1, 2, 4, 8), p=(0.4, 0.3, 0.2, 0.1)))
            trace.add(6 * count, 6 * count * 8 * GIB, requested_resources={"gpu": count})
        else:
            trace.add(*vm_shape(rng))
    return fleet, trace.items


FAMILIES: tuple[Family, ...] = (
    Family("mixed", "mixed node shapes, balanced VM mix, 10% churn", _simple("balanced", "balanced", 0.10)),
    Family("small-heavy", "mostly 1-4 vCPU VMs, 30% churn", _simple("small", "balanced", 0.30)),
    Family("large-heavy", "mostly 8-32 vCPU VMs, no churn", _simple("large", "balanced", 0.0)),
    Family("memory-heavy", "4-16 GiB per vCPU VMs, 15% churn", _simple("balanced", "memory", 0.15)),
    Family("cpu-heavy", "1-4 GiB per vCPU VMs, 20% churn", _simple("balanced", "cpu", 0.20)),
    Family("affinity", "3 zones, anti-affinity and spread groups, 10% churn", _affinity),
    Family("pools", "default, tagged batch and dedicated db pools, 15% churn", _pools),
    Family("gpu-shared", "20% GPU nodes shared by CPU-only and GPU VMs, 10% churn", _gpu, devices=True),
)


def export(family: str, seed: int, directory: Path) -> tuple[Path, Path]:
    """Write one family's fleet (``fleet.json``) and trace (``trace.jsonl``) for ``scheduler simulate``."""
    found = {f.name: f for f in FAMILIES}.get(family)
    if found is None:
        raise SystemExit(f"unknown family {family!r}; valid: {', '.join(f.name for f in FAMILIES)}")
    nodes, trace = found.build(seed)
    directory.mkdir(parents=True, exist_ok=True)
    fleet_path, trace_path = directory / "fleet.json", directory / "trace.jsonl"
    fleet = [n.model_dump(mode="json", exclude_defaults=True) | {"name": n.name} for n in nodes]
    fleet_path.write_text(json.dumps({"nodes": fleet}, indent=1) + "\n")
    with trace_path.open("w") as out:
        for item in trace:
            out.write(item.model_dump_json(exclude_defaults=True) + "\n")
    return fleet_path, trace_path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write a family's fleet and trace for `scheduler simulate`")
    parser.add_argument("family", choices=[f.name for f in FAMILIES])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    for path in export(args.family, args.seed, args.out):
        print(path)
