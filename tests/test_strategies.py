"""The eight strategies, each on a situation small enough to compute by hand.

Why hand-computed: a strategy is a ranking rule, and the only convincing
test of a rule is a case where it disagrees with the plausible alternatives
(cpu-only vs weighted, before vs after placement, absolute vs fractional,
tight vs balanced). Each case below says in its comments what every
candidate scores, so a failure shows which rule changed.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from scheduler.fleet import Allocation, FleetView
from scheduler.models import Node, SchedulingRequest
from scheduler.strategies import STRATEGIES, STRATEGY_NAMES, Placer, UnknownStrategy, get_strategy
from scheduler.strategies.base import ScoringStrategy

GIB = 1024
_seq = itertools.count()


def node(name: str, **kw: Any) -> Node:
    base: dict[str, Any] = {"name": name, "ip": "10.0.0.1", "cpu": 100, "memory": 1000, "disk": 1000}
    return Node.model_validate({**base, **kw})


def used(node_name: str, cpu: int = 0, memory: int = 0, disk: int = 0, vms: int = 1) -> list[Allocation]:
    """Existing VMs on a node: the first carries the resources, the rest only count as VMs."""
    first = Allocation(f"old-{next(_seq)}", node_name, cpu, memory, disk)
    return [first] + [Allocation(f"old-{next(_seq)}", node_name, 0, 0, 0) for _ in range(vms - 1)]


def req(cpu: int = 1, memory: int = 1, disk: int = 0, **kw: Any) -> SchedulingRequest:
    return SchedulingRequest(
        task_id=kw.pop("task_id", f"t-{next(_seq)}"),
        requested_cpu=cpu,
        requested_memory=memory,
        requested_disk=disk,
        **kw,
    )


def choose(strategy: str, fleet: FleetView, request: SchedulingRequest, **placer: Any) -> str | None:
    return Placer(strategy, **placer).decide(fleet, request, now=0.0).node


# -------------------------------------------------------------- least_loaded
def test_least_loaded_weighs_cpu_and_memory_over_disk() -> None:
    """Seed 002's weights: cpu .4, memory .4, disk .2, on utilization *after* placement.

    Request 10 cpu / 100 MiB on nodes of 100 cpu / 1000 MiB / 1000 GiB:
      x-disky: after cpu .1, mem .1, disk .9 -> .04 + .04 + .18 = .26
      a-busy:  after cpu .4, mem .3, disk 0  -> .16 + .12 + 0   = .28
    40/40/20 picks x-disky; equal weights would pick a-busy (1.1/3 vs 0.7/3).
    """
    fleet = FleetView.build(
        [node("x-disky"), node("a-busy")], used("x-disky", disk=900) + used("a-busy", 30, 200)
    )
    assert choose("least_loaded", fleet, req(10, 100)) == "x-disky"
    assert choose("least_loaded", fleet, req(10, 100), weights=(1.0, 1.0, 1.0)) == "a-busy"


def test_least_loaded_counts_disk_at_all() -> None:
    """x-balanced: .3/.3/.8 -> .12 + .12 + .16 = .40; a-cpu: .4/.4/0 -> .32.

    Ignoring disk (weights .5/.5/0) flips it: .3 vs .4.
    """
    allocations = used("x-balanced", 20, 200, 800) + used("a-cpu", 30, 300)
    fleet = FleetView.build([node("x-balanced"), node("a-cpu")], allocations)
    assert choose("least_loaded", fleet, req(10, 100)) == "a-cpu"
    assert choose("least_loaded", fleet, req(10, 100), weights=(0.5, 0.5, 0.0)) == "x-balanced"


def test_least_loaded_judges_utilization_after_placement() -> None:
    """small (10 cpu, idle) vs big (100 cpu, 20% used), request 5 cpu / 50 MiB.

    Before placement small is idler (0 vs .2). After: small cpu .5 mem .5 disk 0 -> .40;
    big cpu .25 mem .25 disk .2 -> .24, so the VM goes to big.
    """
    fleet = FleetView.build(
        [node("small", cpu=10, memory=100, disk=100), node("big")], used("big", 20, 200, 200)
    )
    assert choose("least_loaded", fleet, req(5, 50)) == "big"


# ------------------------------------------------------------------ best_fit
BIG = {"cpu": 64, "memory": 256 * GIB, "disk": 1000}


def test_best_fit_prefers_the_tightest_fit() -> None:
    """Request 4 cpu / 16 GiB. b-half keeps .4375 of each (score .875), a-quarter .6875 of each (1.375)."""
    fleet = FleetView.build(
        [node("a-quarter", **BIG), node("b-half", **BIG)],
        used("a-quarter", 16, 64 * GIB) + used("b-half", 32, 128 * GIB),
    )
    assert choose("best_fit", fleet, req(4, 16 * GIB)) == "b-half"


def test_best_fit_exact_fit_wins() -> None:
    fleet = FleetView.build([node("a", **BIG), node("b", **BIG)], used("b", 60, 240 * GIB))
    assert choose("best_fit", fleet, req(4, 16 * GIB)) == "b"


def test_best_fit_avoids_stranding_over_tightness() -> None:
    """A cpu-heavy VM (16 cpu / 16 GiB) on 64 cpu / 256 GiB nodes; free fractions after placement:

      a-tight: cpu 8/64 = .125, mem 192/256 = .75  -> room .875,  spread .625
      b-match: cpu 40/64 = .625, mem 144/256 = .5625 -> room 1.1875, spread .0625
      c-empty: cpu .75, mem .9375                  -> room 1.6875, spread .1875

    Textbook best fit (least cpu left) and plain L2 best fit (.760 vs .841 vs 1.2) both take
    a-tight and strand 192 GiB behind 8 vCPUs; best_fit weighs the spread and takes b-match,
    whose memory-heavy load the cpu-heavy VM complements.
    """
    allocations = used("a-tight", 40, 48 * GIB) + used("b-match", 8, 96 * GIB)
    fleet = FleetView.build(
        [node("a-tight", **BIG), node("b-match", **BIG), node("c-empty", **BIG)], allocations
    )
    assert choose("best_fit", fleet, req(16, 16 * GIB)) == "b-match"


def test_best_fit_weighs_disk_only_when_asked_for() -> None:
    """Both nodes at 32 cpu / 128 GiB used; b's disk is 40% used.

    Asking 16 cpu / 64 GiB / 100 GiB disk: a keeps disk .9 (room 1.4, spread .65), b keeps .5
    (room 1.0, spread .25): b. Asking no disk, the nodes are alike for the VM: the lower name, a.
    """
    fleet = FleetView.build(
        [node("a-disk-free", **BIG), node("b-disk-busy", **BIG)],
        used("a-disk-free", 32, 128 * GIB) + used("b-disk-busy", 32, 128 * GIB, 400),
    )
    assert choose("best_fit", fleet, req(16, 64 * GIB, 100)) == "b-disk-busy"
    assert choose("best_fit", fleet, req(16, 64 * GIB)) == "a-disk-free"


def test_best_fit_scores_match_the_documented_formula() -> None:
    """max(c, m) + STRANDING * (|c - m| - |c0 - m0|), leftovers in pool-mean-node units (here one node's).

    On the stranding case above, before -> after placement of 16 cpu / 16 GiB:
      a-tight: c .375 -> .125, m .8125 -> .75:  .75   + 8 * (.625 - .4375) =  2.25
      b-match: c .875 -> .625, m .625 -> .5625: .625  + 8 * (.0625 - .25)  = -.875
      c-empty: c 1 -> .75,     m 1 -> .9375:    .9375 + 8 * (.1875 - 0)    =  2.4375
    """
    from scheduler.strategies.best_fit import STRANDING, BestFit

    allocations = used("a-tight", 40, 48 * GIB) + used("b-match", 8, 96 * GIB)
    fleet = FleetView.build(
        [node("a-tight", **BIG), node("b-match", **BIG), node("c-empty", **BIG)], allocations
    )
    assert STRANDING == 8.0
    scores = BestFit().score(fleet, 0, 3, req(16, 16 * GIB))
    np.testing.assert_allclose(scores, [2.25, -0.875, 2.4375], rtol=1e-12)
    # The tight-fit term alone (no stranding), as the mean of the leftovers: (.125 + .75) / 2 ...
    np.testing.assert_allclose(
        BestFit(stranding=0.0, dominance=0.0).score(fleet, 0, 3, req(16, 16 * GIB)),
        [0.4375, 0.59375, 0.84375],
        rtol=1e-12,
    )


def test_best_fit_compares_absolute_leftovers_across_node_sizes() -> None:
    """A 32-vCPU node with 6 free and a 128-vCPU node with 10 free, both 4 GiB per vCPU, request 4 / 16 GiB.

    As fractions of each node the big one looks fuller (6/128 = .047 left against 2/32 = .0625);
    in absolute terms it keeps more (6 vCPUs against 2): best_fit fills the small one, as
    textbook best fit would, keeping the big node's room for a bigger VM.
    """
    fleet = FleetView.build(
        [node("a-big", cpu=128, memory=512 * GIB), node("b-small", cpu=32, memory=128 * GIB)],
        used("a-big", 118, 472 * GIB) + used("b-small", 26, 104 * GIB),
    )
    assert choose("best_fit", fleet, req(4, 16 * GIB)) == "b-small"


def test_best_fit_keeps_filling_an_uneven_node_rather_than_opening_an_empty_one() -> None:
    """Memory-rich nodes (64 vCPU / 512 GiB), a cpu-heavy VM (8 / 16 GiB).

    a-used already runs cpu-heavy VMs (48 vCPU / 96 GiB): it is uneven whatever comes next. A
    stranding term on the *level* of unevenness sends the VM to the empty node (the most even
    one), and small VMs then spread over every node; measured as a *change* it costs the same on
    both nodes, and the tight fit decides: a-used.
    """
    fleet = FleetView.build(
        [node("a-used", cpu=64, memory=512 * GIB), node("b-empty", cpu=64, memory=512 * GIB)],
        used("a-used", 48, 96 * GIB),
    )
    assert choose("best_fit", fleet, req(8, 16 * GIB)) == "a-used"


# ------------------------------------------------------------- cpu, memory, hybrid
def test_cpu_takes_most_free_vcpus_absolute_and_hybrid_most_free_fraction() -> None:
    """a-small: 24 cpu, 20 free; b-big: 128 cpu, 30 free. Request 4 cpu / 100 MiB.

    cpu: 30 > 20 free vCPUs: b-big.
    hybrid (.4/.4/.2 of free fractions after placement): a-small cpu 16/24 = .667, mem .6, disk 1
    -> .2667 + .24 + .2 = .7067; b-big cpu 26/128 = .203, mem .9, disk 1 -> .0813 + .36 + .2 = .6413:
    a-small. With memory alone weighted (0/1/0) b-big wins (.9 vs .6).
    """
    fleet = FleetView.build(
        [node("a-small", cpu=24), node("b-big", cpu=128)], used("a-small", 4, 300) + used("b-big", 98)
    )
    assert choose("cpu", fleet, req(4, 100)) == "b-big"
    assert choose("hybrid", fleet, req(4, 100)) == "a-small"
    assert choose("hybrid", fleet, req(4, 100), weights=(0.0, 1.0, 0.0)) == "b-big"


def test_memory_takes_most_free_mib_absolute() -> None:
    """a: 1000 MiB, 600 free; b: 4000 MiB, 700 free (a much smaller fraction): b."""
    fleet = FleetView.build(
        [node("a"), node("b", memory=4000)], used("a", memory=400) + used("b", memory=3300)
    )
    assert choose("memory", fleet, req(1, 100)) == "b"
    assert choose("cpu", fleet, req(1, 100)) == "a"  # equal free cpu: the lower name


# -------------------------------------------------------------------- load_ratio
def test_load_ratio_takes_fewest_vms_per_max_vms() -> None:
    """Seed 004: a 3/10 = .3, b 5/40 = .125, c 1/4 = .25: b, although it runs the most VMs."""
    fleet = FleetView.build(
        [node("a", max_vms=10), node("b", max_vms=40), node("c", max_vms=4)],
        used("a", vms=3) + used("b", vms=5) + used("c", vms=1),
    )
    assert choose("load_ratio", fleet, req()) == "b"


def test_load_ratio_ties_break_by_name() -> None:
    """e 1/4 and d 2/8 are both .25, f 3/8 = .375: d, the lower name, whatever the inventory order."""
    fleet = FleetView.build(
        [node("f", max_vms=8), node("e", max_vms=4), node("d", max_vms=8)],
        used("f", vms=3) + used("e", vms=1) + used("d", vms=2),
    )
    assert choose("load_ratio", fleet, req()) == "d"


# ------------------------------------------------------------------ round_robin
def place_sequence(placer: Placer, fleet: FleetView, count: int, **kw: Any) -> list[str | None]:
    return [placer.place(fleet, req(**kw), now=0.0).node for _ in range(count)]


def test_round_robin_rotates_in_name_order_and_wraps() -> None:
    fleet = FleetView.build([node("n3"), node("n1"), node("n4"), node("n2")])
    assert place_sequence(Placer("round_robin"), fleet, 6) == ["n1", "n2", "n3", "n4", "n1", "n2"]


def test_round_robin_skips_nodes_that_do_not_fit() -> None:
    fleet = FleetView.build([node("n1"), node("n2"), node("n3"), node("n4")], used("n3", cpu=100))
    fleet.set_cordoned("n2", True)
    assert place_sequence(Placer("round_robin"), fleet, 4) == ["n1", "n4", "n1", "n4"]


def test_round_robin_keeps_one_cursor_per_pool() -> None:
    fleet = FleetView.build(
        [node("a1", pool="a"), node("a2", pool="a"), node("b1", pool="b"), node("b2", pool="b")]
    )
    placer = Placer("round_robin")
    got = [placer.place(fleet, req(requested_pool=p), now=0.0).node for p in ["a", "b", "b", "a", "b", "a"]]
    assert got == ["a1", "b1", "b2", "a2", "b1", "a1"]


def test_round_robin_cursor_follows_names_across_inventory_changes() -> None:
    placer = Placer("round_robin")
    fleet = FleetView.build([node("n1"), node("n2"), node("n3")])
    assert place_sequence(placer, fleet, 2) == ["n1", "n2"]
    # n2b sorts between n2 and n3, and n1 leaves: the rotation continues after n2.
    fleet = fleet.with_inventory([node("n2"), node("n2b"), node("n3")])
    assert place_sequence(placer, fleet, 3) == ["n2b", "n3", "n2"]
    # The last chosen node (n2) disappears: continue with the first name after it.
    fleet = fleet.with_inventory([node("n1"), node("n3")])
    assert place_sequence(placer, fleet, 2) == ["n3", "n1"]


# ----------------------------------------------------------------------- random
def random_run(seed: int, fleet: FleetView, count: int = 40) -> list[str | None]:
    return place_sequence(Placer("random", seed=seed), fleet.snapshot(), count)


def test_random_is_reproducible_from_its_seed() -> None:
    fleet = FleetView.build([node(f"n{i}") for i in range(10)])
    first = random_run(5, fleet)
    assert random_run(5, fleet) == first
    assert random_run(6, fleet) != first  # 40 draws among 10 nodes: equal only by a 1e-40 fluke
    assert len(set(first)) > 1


def test_random_picks_only_feasible_nodes_and_all_of_them() -> None:
    nodes = [node(f"n{i}") for i in range(8)]
    fleet = FleetView.build(nodes, [a for i in range(0, 8, 2) for a in used(f"n{i}", cpu=100)])
    placer = Placer("random", seed=11)
    picks = [placer.decide(fleet, req(), now=0.0).node for _ in range(400)]
    counts = {name: picks.count(name) for name in set(picks)}
    assert set(counts) == {"n1", "n3", "n5", "n7"}
    assert min(counts.values()) > 60  # uniform over 4: about 100 each


# ------------------------------------------------------------ effective capacity
# a: 100 cpu / 1000 MiB raw but 60 cpu / 600 MiB kept for the host -> 40 / 400 effective.
# b: 50 cpu / 500 MiB raw at ratio 2 -> 100 / 1000 effective. Request 10 cpu / 100 MiB.
# On raw capacity every strategy would rank the two the other way round; each must use effective capacity.
EFFECTIVE = [
    node("a-reserved", reserved={"cpu": 60, "memory": 600}),
    node("b-overcommit", cpu=50, memory=500, cpu_allocation_ratio=2.0, memory_allocation_ratio=2.0),
]
EFFECTIVE_CASES = [
    (
        "least_loaded",
        "b-overcommit",
    ),  # a: .4 x .25 + .4 x .25 = .2; b: .4 x .1 + .4 x .1 = .08 (raw: a .08, b .16)
    ("best_fit", "a-reserved"),  # a keeps .75 / .75 (room 1.5), b .9 / .9 (1.8) (raw: a 1.8, b 1.6)
    ("cpu", "b-overcommit"),  # 100 free vCPUs against 40 (raw: 100 against 50)
    ("memory", "b-overcommit"),  # 1000 MiB against 400 (raw: 1000 against 500)
    ("hybrid", "b-overcommit"),  # free fractions .9 / .9 / 1 against .75 / .75 / 1 (raw: .9 against .8)
    ("load_ratio", "a-reserved"),  # max_vms is never scaled: both 0 VMs, the lower name
    ("round_robin", "a-reserved"),
]


@pytest.mark.parametrize(("strategy", "expected"), EFFECTIVE_CASES)
def test_strategies_rank_by_effective_capacity(strategy: str, expected: str) -> None:
    assert choose(strategy, FleetView.build(EFFECTIVE), req(10, 100)) == expected


def test_effective_capacity_table_covers_every_deterministic_strategy() -> None:
    assert {s for s, _ in EFFECTIVE_CASES} == set(STRATEGY_NAMES) - {"random"}


# ------------------------------------------------------------ common behaviour
@pytest.mark.parametrize("strategy", [s for s in STRATEGY_NAMES if s != "random"])
def test_identical_nodes_tie_break_by_name(strategy: str) -> None:
    fleet = FleetView.build([node("c"), node("b"), node("a"), node("d")])
    assert choose(strategy, fleet, req(2, 10)) == "a"


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_seed_000_pool_and_dedicated_prefilter(strategy: str) -> None:
    """Seed 000's example: {"requested_cpu": 8, "requested_memory": 16384, "requested_pool": "ai",
    "dedicated": true} may only land on a dedicated node of pool ai, whatever ranks higher elsewhere."""
    nodes = [
        node("bm-001", pool="general", cpu=128, memory=1 << 20),
        node("bm-002", pool="general", dedicated=True, cpu=128, memory=1 << 20),
        node("bm-003", pool="ai", cpu=128, memory=1 << 20),
        node("bm-004", pool="ai", dedicated=True, cpu=16, memory=32768),
        node("bm-005", pool="ai", dedicated=True, cpu=32, memory=65536),
    ]
    fleet = FleetView.build(nodes)
    placer = Placer(strategy)
    for _ in range(4):
        decision = placer.place(fleet, req(8, 16384, requested_pool="ai", dedicated=True), now=0.0)
        assert decision.node in {"bm-004", "bm-005"}
    shared = placer.place(fleet, req(8, 16384, requested_pool="ai"), now=0.0)
    assert shared.node == "bm-003"


def test_registry_builds_every_strategy_under_its_name() -> None:
    assert STRATEGY_NAMES == (
        "least_loaded",
        "best_fit",
        "cpu",
        "memory",
        "hybrid",
        "load_ratio",
        "round_robin",
        "random",
    )
    for name in STRATEGY_NAMES:
        strategy = get_strategy(name)
        assert strategy.name == name
        assert strategy.description == STRATEGIES[name]  # `scheduler strategies` prints the registry's text
    scoring = {name for name in STRATEGY_NAMES if isinstance(get_strategy(name), ScoringStrategy)}
    assert scoring == set(STRATEGY_NAMES) - {"round_robin", "random"}


def test_unknown_strategy_lists_valid_names() -> None:
    with pytest.raises(UnknownStrategy) as info:
        get_strategy("fastest")
    assert str(info.value) == "unknown strategy 'fastest'; valid: " + ", ".join(STRATEGY_NAMES)
    with pytest.raises(UnknownStrategy):
        Placer("fastest")  # refused at start-up, not at the first request


def test_placer_override_and_switch() -> None:
    fleet = FleetView.build([node("a", max_vms=10), node("b", max_vms=10)], used("a", cpu=50, memory=500))
    placer = Placer("cpu")
    assert placer.decide(fleet, req(), now=0.0).node == "b"
    # Per-request override, without changing the default.
    override = placer.decide(fleet, req(strategy="load_ratio"), now=0.0)
    assert (override.node, override.strategy) == ("b", "load_ratio")
    assert placer.default == "cpu"
    with pytest.raises(UnknownStrategy):
        placer.switch("fastest")
    assert placer.default == "cpu"  # a bad switch keeps the old strategy
    placer.switch("best_fit")
    assert placer.decide(fleet, req(), now=0.0).node == "a"
