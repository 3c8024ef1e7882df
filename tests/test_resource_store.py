"""The resource model through the store, on SQLite and PostgreSQL: what is committed is what was decided.

Why: the worker decides on its in-memory fleet but the database is the
record (docs/contracts.md invariants 1 and 8 are stated "in the database, at any
moment"), and a restarted or new leader rebuilds its fleet from it. So the
same random sequences as ``test_resource_properties.py`` (requests,
releases, cancels, ratio, reserve and device changes) are replayed through
:meth:`Store.commit` and :meth:`Store.import_nodes`, and after every step
the database must agree with the independent model: the usage per node
including devices, exactly the nodes the model says are over their
effective capacity (only ever after a change of inventory, never because of
a placement), no two members of a hard anti-affinity group on one node, and
a fleet rebuilt from the database equal to the model.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from scheduler.models import Node
from scheduler.store import Store
from scheduler.store.records import Placement, Release
from scheduler.strategies import STRATEGY_NAMES, Placer
from tests.store_checks import active_allocations, overcommitted_nodes
from tests.test_resource_properties import (
    DEFAULTS,
    KINDS,
    Cancel,
    Model,
    Reconfigure,
    Record,
    Scenario,
    amounts,
    check_arrays,
    scenario_st,
)
from tests.test_resource_properties import Release as ReleaseOp

EPOCH = 1


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store.from_url(db_url) as s:
        s.upgrade()
        yield s


def _reset(store: Store) -> None:
    with store.engine.begin() as conn:
        for table in ("deliveries", "outbox", "allocations", "tasks", "nodes"):
            conn.execute(text(f"DELETE FROM {table}"))


def _check_database(store: Store, model: Model) -> None:
    over = overcommitted_nodes(store, DEFAULTS)
    assert set(over) == {name for name in model.nodes if model.over(name)}, over
    usage = store.node_usage()
    for name in model.nodes:
        want = model.usage(name)
        got = usage.get(name)
        figures = (got.cpu, got.memory, got.disk, got.vms) if got else (0, 0, 0, 0)
        assert figures == (want["cpu"], want["memory"], want["disk"], want["vms"]), name
        assert (got.devices if got else {}) == {k: want[k] for k in KINDS if want[k]}, name
    active = active_allocations(store)
    assert {a.task_id for a in active} == set(model.active)
    for a in active:
        if a.group is not None and not a.soft:
            neighbours = [b for b in active if b.node == a.node and b.group == a.group and b is not a]
            assert not neighbours, f"hard anti-affinity broken on {a.node}: {a} with {neighbours}"


def run_through_store(store: Store, scenario: Scenario, strategy: str) -> None:
    store.import_nodes(scenario.nodes)
    fleet = store.load_fleet(defaults=DEFAULTS)
    placer = Placer(strategy, seed=scenario.seed, spread_max_skew=scenario.max_skew)
    model = Model({n.name: n for n in scenario.nodes})
    requested: list[str] = []
    for op in scenario.ops:
        if isinstance(op, ReleaseOp):
            if requested:
                task_id = requested[op.which % len(requested)]
                result = store.commit([Release(task_id)], EPOCH)
                ended = {a.task_id for a in result.released}
                assert (task_id in ended) == (task_id in model.active)
                fleet.release(task_id)
                model.active.pop(task_id, None)
        elif isinstance(op, Cancel):
            # A cancel before arrival (first time) or of a task already ended: no capacity moves.
            result = store.commit([Release("never-placed")], EPOCH)
            assert result.released == ()
            assert "never-placed" in result.cancelled + result.ignored
        elif isinstance(op, Reconfigure):
            names = sorted(model.nodes)
            old = model.nodes[names[op.which % len(names)]]
            changed = Node.model_validate({**old.model_dump(mode="json"), "reserved": None, **op.changes})
            store.import_nodes([changed])
            model.nodes[old.name] = changed
            fleet = fleet.with_inventory(store.list_nodes())
        else:
            requested.append(op.task_id)
            allowed = model.spread_ok(
                [n for n in model.nodes.values() if model.admissible(n, op)], op, scenario.max_skew
            )
            decision = placer.place(fleet, op, now=0.0)
            if decision.node is None:
                assert allowed == []
            else:
                assert model.nodes[decision.node] in allowed
                ip = fleet.ips[fleet.index[decision.node]]
                store.commit([Placement(op, decision.node, ip, strategy, decision.message, 1)], EPOCH)
                model.active[op.task_id] = Record(
                    decision.node, amounts(op), op.anti_affinity_group, op.anti_affinity_mode == "soft",
                    op.spread_group,
                )  # fmt: skip
        _check_database(store, model)
    check_arrays(store.load_fleet(defaults=DEFAULTS), model)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(scenario=scenario_st(), strategy=st.sampled_from(STRATEGY_NAMES))
def test_store_keeps_effective_capacity_devices_and_anti_affinity(
    store: Store, scenario: Scenario, strategy: str
) -> None:
    _reset(store)
    run_through_store(store, scenario, strategy)
