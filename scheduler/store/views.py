"""Read models over the store's tables: what the HTTP API and the dashboard show, fast on 10,000 nodes.

Why not :meth:`Store.list_nodes` and :meth:`Store.node_usage`: those build a
validated-model object per node, and serialising 10,000 of them again for a
response took seconds. Here one read transaction returns plain tuples (nodes,
and their active allocations summed in SQL, with the store's own
``ACTIVE_USAGE`` statement) that become JSON-ready dicts or columns directly,
consistent with each other because they come from one snapshot.

The SQL lives here, next to the schema it reads, so that the HTTP layer never
names a table; the shapes returned are plain dicts and lists, so this module
knows nothing of the HTTP schemas either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, false, func, select

from scheduler.fleet import CapacityDefaults, effective_amount
from scheduler.pool_figures import RESOURCES, PoolFigures
from scheduler.store.engine import READ_ONLY_OPTION
from scheduler.store.schema import FENCE_ROW, allocations, deliveries, fence, nodes, outbox, tasks
from scheduler.store.store import ACTIVE_DEVICES, ACTIVE_USAGE, device_usage

if TYPE_CHECKING:
    from scheduler.store.store import Store

NODE_COLUMNS = (
    "name", "ip", "pool", "cpu", "memory", "disk", "vms", "max_vms", "cordoned", "zone", "devices",
    "overcommitted",
)  # fmt: skip


def nodes_with_usage(
    store: Store, pool: str | None = None, defaults: CapacityDefaults | None = None
) -> list[dict[str, Any]]:
    """Every node (of ``pool``) by name: its inventory fields, ``allocated`` and ``utilization``.

    The fields are those of ``scheduler nodes list --json``, plus the ratios;
    utilization is against effective capacity (``defaults``: the configured
    ratios and reserves for nodes without their own).
    """
    d = defaults or CapacityDefaults()
    stmt = select(
        nodes.c.name,
        nodes.c.ip,
        nodes.c.pool,
        nodes.c.dedicated,
        nodes.c.cpu,
        nodes.c.memory,
        nodes.c.disk,
        nodes.c.max_vms,
        nodes.c.tags,
        nodes.c.zone,
        nodes.c.cordoned,
        *_CAPACITY,
    ).order_by(nodes.c.name)
    usage_stmt = ACTIVE_USAGE
    if pool is not None:
        stmt = stmt.where(nodes.c.pool == pool)
        usage_stmt = usage_stmt.where(
            allocations.c.node.in_(select(nodes.c.name).where(nodes.c.pool == pool))
        )
    used, held, rows = _snapshot(store, stmt, usage_stmt)
    out = []
    for row in rows:
        (name, ip, pool_, dedicated, cpu, memory, disk, max_vms, tags, zone, cordoned, resources,
         r_cpu, r_mem, r_disk, x_cpu, x_mem, x_disk) = row  # fmt: skip
        u = used.get(name)
        devices: dict[str, int] = json.loads(resources) if resources != "{}" else {}
        a_cpu, a_mem, a_disk, a_vms = (int(u[1]), int(u[2]), int(u[3]), int(u[4])) if u else (0, 0, 0, 0)
        a_dev = held.get(name, {})
        e_cpu = _effective(cpu, r_cpu, d.reserved_cpu, x_cpu, d.cpu_ratio)
        e_mem = _effective(memory, r_mem, d.reserved_memory, x_mem, d.memory_ratio)
        e_disk = _effective(disk, r_disk, d.reserved_disk, x_disk, d.disk_ratio)
        over = (a_cpu > e_cpu or a_mem > e_mem or a_disk > e_disk or a_vms > max_vms) or any(
            n > devices.get(k, 0) for k, n in a_dev.items()
        )
        alloc = {"cpu": a_cpu, "memory": a_mem, "disk": a_disk, "vms": a_vms, **a_dev}
        eff = {"cpu": e_cpu, "memory": e_mem, "disk": e_disk, "vms": int(max_vms), **devices}
        reserved = (
            None
            if r_cpu is None and r_mem is None and r_disk is None
            else {"cpu": r_cpu, "memory": r_mem, "disk": r_disk}
        )
        out.append(
            {
                "name": name,
                "ip": ip,
                "pool": pool_,
                "dedicated": bool(dedicated),
                "cpu": int(cpu),
                "memory": int(memory),
                "disk": int(disk),
                "max_vms": int(max_vms),
                "tags": json.loads(tags) if tags != "[]" else [],
                "zone": zone,
                "cordoned": bool(cordoned),
                "allocated": alloc,
                "utilization": {
                    "cpu": ratio(a_cpu, e_cpu),
                    "memory": ratio(a_mem, e_mem),
                    "disk": ratio(a_disk, e_disk),
                    "vms": ratio(a_vms, max_vms),
                },
                "resources": devices,
                "reserved": reserved,
                "cpu_allocation_ratio": x_cpu,
                "memory_allocation_ratio": x_mem,
                "disk_allocation_ratio": x_disk,
                "effective": eff,
                "overcommitted": over,
            }
        )
    return out


_CAPACITY = (
    nodes.c.resources,
    nodes.c.reserved_cpu,
    nodes.c.reserved_memory,
    nodes.c.reserved_disk,
    nodes.c.cpu_allocation_ratio,
    nodes.c.memory_allocation_ratio,
    nodes.c.disk_allocation_ratio,
)
"""The columns effective capacity is computed from (after a view's own columns, in this order)."""


def _snapshot(
    store: Store, stmt: Any, usage_stmt: Any
) -> tuple[dict[str, Any], dict[str, dict[str, int]], list[Any]]:
    """Usage per node, devices held per node, and ``stmt``'s rows, from one read-only snapshot."""
    with store.engine.connect() as conn:
        conn.execution_options(**{READ_ONLY_OPTION: True})
        with conn.begin():
            used = {row[0]: row for row in conn.execute(usage_stmt)}
            held = device_usage(conn.execute(ACTIVE_DEVICES).all())
            rows = list(conn.execute(stmt).all())
    return used, held, rows


def ratio(used: int, cap: int) -> float:
    """``used / cap`` rounded to 4 places; 0 for a zero capacity (a node without local disk)."""
    return 0.0 if cap <= 0 else round(used / cap, 4)


def node_columns(store: Store, defaults: CapacityDefaults | None = None) -> dict[str, list[Any]]:
    """Every node in (pool, name) order, as columns (``NODE_COLUMNS``); cpu, memory, disk are ratios.

    Columns rather than one object per node: the dashboard draws 10,000 nodes
    from them, and a column of floats is a fraction of the JSON of as many
    objects. Ratios are against effective capacity (``defaults`` for nodes
    without their own ratios and reserves); ``devices`` reads "gpu 3/8".
    """
    d = defaults or CapacityDefaults()
    stmt = select(
        nodes.c.name,
        nodes.c.ip,
        nodes.c.pool,
        nodes.c.cpu,
        nodes.c.memory,
        nodes.c.disk,
        nodes.c.max_vms,
        nodes.c.cordoned,
        nodes.c.zone,
        *_CAPACITY,
    ).order_by(nodes.c.pool, nodes.c.name)
    cols: dict[str, list[Any]] = {k: [] for k in NODE_COLUMNS}
    used, held, rows = _snapshot(store, stmt, ACTIVE_USAGE)
    for row in rows:
        (name, ip, pool, cpu, memory, disk, max_vms, cordoned, zone, resources,
         r_cpu, r_mem, r_disk, x_cpu, x_mem, x_disk) = row  # fmt: skip
        u = used.get(name)
        a_cpu, a_mem, a_disk, a_vms = (int(u[1]), int(u[2]), int(u[3]), int(u[4])) if u else (0, 0, 0, 0)
        a_dev = held.get(name, {})
        devices: dict[str, int] = json.loads(resources) if resources != "{}" else {}
        e_cpu = _effective(cpu, r_cpu, d.reserved_cpu, x_cpu, d.cpu_ratio)
        e_mem = _effective(memory, r_mem, d.reserved_memory, x_mem, d.memory_ratio)
        e_disk = _effective(disk, r_disk, d.reserved_disk, x_disk, d.disk_ratio)
        cols["name"].append(name)
        cols["ip"].append(ip)
        cols["pool"].append(pool)
        cols["cpu"].append(ratio(a_cpu, e_cpu))
        cols["memory"].append(ratio(a_mem, e_mem))
        cols["disk"].append(ratio(a_disk, e_disk))
        cols["vms"].append(a_vms)
        cols["max_vms"].append(int(max_vms))
        cols["cordoned"].append(bool(cordoned))
        cols["zone"].append(zone)
        cols["devices"].append(devices_text(a_dev, devices))
        cols["overcommitted"].append(
            a_cpu > e_cpu
            or a_mem > e_mem
            or a_disk > e_disk
            or a_vms > max_vms
            or any(n > devices.get(k, 0) for k, n in a_dev.items())
        )
    return cols


def devices_text(used: dict[str, int], capacity: dict[str, int]) -> str:
    """Devices in use against the node's count, per kind in name order: ``"gpu 3/8 nvme 0/4"``."""
    kinds = sorted(set(capacity) | set(used))
    return " ".join(f"{k} {used.get(k, 0)}/{capacity.get(k, 0)}" for k in kinds)


# ------------------------------------------------- figures for the metrics and the dashboard


@dataclass(frozen=True)
class DatabaseFigures:
    """Everything the collector reads from the database in one read transaction."""

    tasks: Mapping[str, int]
    pools: Mapping[str, PoolFigures]
    deliveries: Mapping[str, int]
    outbox_pending: int
    fence_epoch: int
    fence_holder: str | None


def read_database_figures(store: Store, defaults: CapacityDefaults | None = None) -> DatabaseFigures:
    """Aggregates only (GROUP BY in SQL): the answer's size depends on pools and node shapes, not nodes.

    Why not :meth:`Store.list_nodes` and :meth:`Store.node_usage`: they build a
    Python object per node, which on 10,000 nodes costs more than the whole
    scrape budget; here the database groups and Python sees one row per pool
    and node shape. Capacities are effective capacities (``defaults``: the
    configured ratios and reserves): the floor of the resource model is per
    node, so nodes are grouped by everything it depends on, counted, and the
    exact formula is applied once per group.
    """
    shape = (
        nodes.c.pool, nodes.c.cpu, nodes.c.memory, nodes.c.disk, nodes.c.reserved_cpu,
        nodes.c.reserved_memory, nodes.c.reserved_disk, nodes.c.cpu_allocation_ratio,
        nodes.c.memory_allocation_ratio, nodes.c.disk_allocation_ratio,
    )  # fmt: skip
    pool_caps = select(
        *shape,
        func.count(),
        func.sum(nodes.c.max_vms),
        func.sum(case((nodes.c.cordoned, 1), else_=0)),
    ).group_by(*shape)
    pool_used = (
        select(
            nodes.c.pool,
            func.sum(allocations.c.cpu),
            func.sum(allocations.c.memory),
            func.sum(allocations.c.disk),
            func.count(),
        )
        .select_from(allocations.join(nodes, nodes.c.name == allocations.c.node))
        .where(allocations.c.released_at.is_(None))
        .group_by(nodes.c.pool)
    )
    with store.engine.connect() as conn:
        conn.execution_options(**{READ_ONLY_OPTION: True})
        with conn.begin():
            task_rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)).all()
            caps = conn.execute(pool_caps).all()
            used = {row[0]: row for row in conn.execute(pool_used)}
            delivery_rows = conn.execute(
                select(deliveries.c.status, func.count()).group_by(deliveries.c.status)
            ).all()
            pending = conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.dispatched == false())
            ).scalar_one()
            fence_row = conn.execute(
                select(fence.c.epoch, fence.c.holder).where(fence.c.name == FENCE_ROW)
            ).first()
    d = defaults or CapacityDefaults()
    sums: dict[str, list[int]] = {}
    for pool, cpu, memory, disk, r_cpu, r_mem, r_disk, x_cpu, x_mem, x_disk, count, max_vms, cordoned in caps:
        acc = sums.setdefault(pool, [0, 0, 0, 0, 0, 0])
        acc[0] += int(count)
        acc[1] += int(cordoned or 0)
        acc[2] += int(count) * _effective(cpu, r_cpu, d.reserved_cpu, x_cpu, d.cpu_ratio)
        acc[3] += int(count) * _effective(memory, r_mem, d.reserved_memory, x_mem, d.memory_ratio)
        acc[4] += int(count) * _effective(disk, r_disk, d.reserved_disk, x_disk, d.disk_ratio)
        acc[5] += int(max_vms or 0)
    pools: dict[str, PoolFigures] = {}
    for pool, (count, cordoned, cpu, memory, disk, max_vms) in sums.items():
        u = used.get(pool)
        pools[pool] = PoolFigures(
            nodes=count,
            cordoned=cordoned,
            capacity={"cpu": cpu, "memory": memory, "disk": disk, "vms": max_vms},
            allocated={
                "cpu": int(u[1] or 0),
                "memory": int(u[2] or 0),
                "disk": int(u[3] or 0),
                "vms": int(u[4]),
            }
            if u is not None
            else {r: 0 for r in RESOURCES},
        )
    return DatabaseFigures(
        tasks={str(s): int(n) for s, n in task_rows},
        pools=pools,
        deliveries={str(s): int(n) for s, n in delivery_rows},
        outbox_pending=int(pending or 0),
        fence_epoch=int(fence_row.epoch) if fence_row is not None else 0,
        fence_holder=fence_row.holder if fence_row is not None else None,
    )


def _effective(capacity: Any, reserved: Any, default_reserve: int, ratio: Any, default_ratio: float) -> int:
    kept = default_reserve if reserved is None else int(reserved)
    return effective_amount(int(capacity), kept, default_ratio if ratio is None else float(ratio))
