"""Requests without devices keep off nodes with free devices while other nodes fit, in every strategy.

Why: a CPU-only VM on a GPU node takes the cpu and memory a GPU VM needs
there, and the GPUs are stranded; on a production GPU cluster a GPU request
was refused while the GPU nodes were half used. Each case is checked both
ways: with the avoidance switched off the strategy does pick the GPU node
(so the case can fail), with it on it does not, unless nothing else fits.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from scheduler.fleet import Allocation, FleetView
from scheduler.models import Node, ReleaseRequest, SchedulingRequest
from scheduler.simulate import simulate
from scheduler.strategies import STRATEGY_NAMES, Placer, get_strategy

GIB = 1024
_seq = itertools.count()


def node(name: str, cpu: int = 64, memory: int = 256 * GIB, **kw: Any) -> Node:
    return Node.model_validate(
        {"name": name, "ip": "10.0.0.1", "cpu": cpu, "memory": memory, "disk": 100, **kw}
    )


def req(cpu: int = 4, memory: int = 16 * GIB, **kw: Any) -> SchedulingRequest:
    return SchedulingRequest(task_id=f"t-{next(_seq)}", requested_cpu=cpu, requested_memory=memory, **kw)


def pick(strategy: str, fleet: FleetView, request: SchedulingRequest, *, avoid: bool, seed: int = 0) -> str:
    chosen = get_strategy(strategy, seed=seed)
    chosen.avoid_devices = avoid
    placer = Placer("least_loaded", extra={strategy: chosen})
    placer.default = strategy
    decision = placer.decide(fleet, request, now=0.0)
    assert decision.node is not None, decision.message
    return decision.node


SPREADERS = [s for s in STRATEGY_NAMES if s != "best_fit"]


def spread_fleet(gpus_used: int = 0) -> FleetView:
    """a-gpu: bigger, emptier, first by name, fewest VMs: what every spreading strategy prefers."""
    allocations = [Allocation("busy", "b-cpu", 16, 64 * GIB, 0)]
    if gpus_used:
        allocations.append(Allocation("gpu-vm", "a-gpu", 1, 1, 0, resources=(("gpu", gpus_used),)))
        allocations.append(Allocation("busy-2", "b-cpu", 0, 0, 0))
    return FleetView.build(
        [node("a-gpu", 128, 512 * GIB, resources={"gpu": 4}, max_vms=100), node("b-cpu", max_vms=10)],
        allocations,
    )


def pack_fleet() -> FleetView:
    """a-gpu is nearly full in cpu and memory but its GPUs are free: the tightest fit for best_fit."""
    return FleetView.build(
        [node("a-gpu", resources={"gpu": 4}), node("b-cpu")], [Allocation("busy", "a-gpu", 56, 224 * GIB, 0)]
    )


@pytest.mark.parametrize("strategy", SPREADERS)
def test_spreading_strategies_keep_cpu_only_vms_off_gpu_nodes(strategy: str) -> None:
    seeds = range(8) if strategy == "random" else range(1)
    without = {pick(strategy, spread_fleet(), req(), avoid=False, seed=s) for s in seeds}
    assert "a-gpu" in without  # the case can fail: left alone, the strategy takes the GPU node
    assert {pick(strategy, spread_fleet(), req(), avoid=True, seed=s) for s in seeds} == {"b-cpu"}


def test_best_fit_keeps_cpu_only_vms_off_gpu_nodes() -> None:
    assert pick("best_fit", pack_fleet(), req(), avoid=False) == "a-gpu"
    assert pick("best_fit", pack_fleet(), req(), avoid=True) == "b-cpu"


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_a_gpu_node_is_used_when_nothing_else_fits(strategy: str) -> None:
    """Spread fleet: b-cpu keeps 48 vCPUs, the VM asks 56. Pack fleet: b-cpu is filled to 2 free, the
    VM asks 4. Either way only the GPU node fits, and it takes the VM."""
    fleet = spread_fleet() if strategy != "best_fit" else pack_fleet()
    if strategy == "best_fit":
        fleet.reserve(fleet.index["b-cpu"], req(62, 8 * GIB))
    big = req(56 if strategy != "best_fit" else 4, 16 * GIB)
    assert Placer(strategy).decide(fleet, big, now=0.0).node == "a-gpu"


@pytest.mark.parametrize("strategy", SPREADERS)
def test_a_gpu_node_whose_gpus_are_all_taken_is_not_avoided(strategy: str) -> None:
    """Nothing is left there to strand: the strategy ranks it as any other node."""
    fleet = spread_fleet(gpus_used=4)
    assert pick(strategy, fleet, req(), avoid=True, seed=1) == pick(
        strategy, fleet, req(), avoid=False, seed=1
    )
    if strategy not in {"random", "round_robin"}:
        assert pick(strategy, fleet, req(), avoid=True) == "a-gpu"


def test_best_fit_packs_gpu_requests_onto_nodes_with_the_fewest_free_gpus() -> None:
    """a-whole has 8 free GPUs, b-partial 2 (6 in use): a 2-GPU VM takes b-partial, keeping a-whole
    for an 8-GPU VM, although a-whole is the tighter cpu/memory fit."""
    fleet = FleetView.build(
        [node("a-whole", resources={"gpu": 8}), node("b-partial", resources={"gpu": 8})],
        [
            Allocation("busy", "a-whole", 48, 192 * GIB, 0),
            Allocation("gpus", "b-partial", 1, 1, 0, resources=(("gpu", 6),)),
        ],
    )
    assert Placer("best_fit").decide(fleet, req(requested_resources={"gpu": 2}), now=0.0).node == "b-partial"


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_gpu_request_still_fits_after_a_stream_of_cpu_only_vms(strategy: str) -> None:
    """Two CPU nodes and one GPU node of 32 vCPUs each; sixteen 4-vCPU VMs (64 vCPUs, the CPU nodes'
    worth) then a VM asking all 4 GPUs and 32 vCPUs: it needs the whole GPU node, and gets it."""
    nodes = [node(f"cpu-{i}", 32, 128 * GIB) for i in range(2)] + [
        node("gpu-0", 32, 128 * GIB, resources={"gpu": 4})
    ]
    trace: list[SchedulingRequest | ReleaseRequest] = [req(4, 8 * GIB) for _ in range(16)]
    trace.append(req(32, 64 * GIB, requested_resources={"gpu": 4}))
    result = simulate(FleetView.build(nodes), trace, Placer(strategy), keep_lines=True)
    assert result.rejected == 0, [line["message"] for line in result.lines if line["reason"]]
    assert result.lines[-1]["node"] == "gpu-0"
