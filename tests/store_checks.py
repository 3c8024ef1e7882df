"""What the tests check the database against: the capacity and allocation invariants, the active allocations.

Why here and not on :class:`~scheduler.store.Store`: no part of the service
reads these (the worker's fleet and the store's commit keep the invariants;
these only verify them), so they live with the tests that assert them. Each
takes the store and reads through its engine or its public read models.
See docs/contracts.md, Invariants.
"""

from __future__ import annotations

from sqlalchemy import func, select

from scheduler.fleet import Allocation, CapacityDefaults, node_capacity
from scheduler.store import Store
from scheduler.store.batch_plan import make_allocation
from scheduler.store.schema import allocations

ALLOCATION_COLUMNS = (
    allocations.c.task_id, allocations.c.node, allocations.c.cpu, allocations.c.memory, allocations.c.disk,
    allocations.c.anti_affinity_group, allocations.c.resources, allocations.c.spread_group,
    allocations.c.anti_affinity_mode,
)  # fmt: skip
"""An allocation's columns in :func:`~scheduler.store.batch_plan.make_allocation` order."""


def overcommitted_nodes(store: Store, defaults: CapacityDefaults | None = None) -> dict[str, list[str]]:
    """Nodes whose active allocations exceed an effective capacity, with what is over
    (docs/contracts.md invariants 1 and 8): cpu, memory and disk under ``defaults`` (the configured
    ratios and reserves), max_vms, and every device count.

    Empty when all is well, so ``assert overcommitted_nodes(store) == {}``
    prints the culprits when it fails. A node whose ratio was lowered under
    its running VMs is listed too: that is accepted, and it takes nothing
    more until it fits again. The nodes and their usage are two reads: call
    it on a settled database (no inventory change in between), as every
    test does.
    """
    usage = store.node_usage()
    d = defaults or CapacityDefaults()
    out: dict[str, list[str]] = {}
    for node in store.list_nodes():
        used = usage.get(node.name)
        if used is None:
            continue
        cap = node_capacity(node, d)
        over = [
            f"{label} {have}/{limit}"
            for label, have, limit in (
                ("cpu", used.cpu, cap.effective_cpu),
                ("memory", used.memory, cap.effective_memory),
                ("disk", used.disk, cap.effective_disk),
                ("vms", used.vms, node.max_vms),
                *((k, n, node.resources.get(k, 0)) for k, n in sorted(used.devices.items())),
            )
            if have > limit
        ]
        if over:
            out[node.name] = over
    return out


def duplicate_active_allocations(store: Store) -> dict[str, int]:
    """Task ids holding more than one active allocation, with the count (docs/contracts.md invariant 2)."""
    stmt = (
        select(allocations.c.task_id, func.count())
        .where(allocations.c.released_at.is_(None))
        .group_by(allocations.c.task_id)
        .having(func.count() > 1)
    )
    with store.engine.connect() as conn:
        return {tid: int(n) for tid, n in conn.execute(stmt)}


def active_allocations(store: Store, node: str | None = None) -> list[Allocation]:
    """Active allocations (of ``node``), by task id."""
    stmt = (
        select(*ALLOCATION_COLUMNS).where(allocations.c.released_at.is_(None)).order_by(allocations.c.task_id)
    )
    if node is not None:
        stmt = stmt.where(allocations.c.node == node)
    with store.engine.connect() as conn:
        return [make_allocation(*row) for row in conn.execute(stmt)]
