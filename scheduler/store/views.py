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
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from scheduler.store.engine import READ_ONLY_OPTION
from scheduler.store.schema import allocations, nodes
from scheduler.store.store import ACTIVE_USAGE

if TYPE_CHECKING:
    from scheduler.store.store import Store

NODE_COLUMNS = ("name", "ip", "pool", "cpu", "memory", "disk", "vms", "max_vms", "cordoned")


def nodes_with_usage(store: Store, pool: str | None = None) -> list[dict[str, Any]]:
    """Every node (of ``pool``) by name: its inventory fields, ``allocated`` and ``utilization``.

    The fields are those of ``scheduler nodes list --json``, plus the ratios.
    """
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
    ).order_by(nodes.c.name)
    usage_stmt = ACTIVE_USAGE
    if pool is not None:
        stmt = stmt.where(nodes.c.pool == pool)
        usage_stmt = usage_stmt.where(
            allocations.c.node.in_(select(nodes.c.name).where(nodes.c.pool == pool))
        )
    with store.engine.connect() as conn:
        conn.execution_options(**{READ_ONLY_OPTION: True})
        with conn.begin():
            used = {row[0]: row for row in conn.execute(usage_stmt)}
            rows = conn.execute(stmt).all()
    out = []
    for name, ip, pool_, dedicated, cpu, memory, disk, max_vms, tags, zone, cordoned in rows:
        u = used.get(name)
        alloc = {
            "cpu": int(u[1]) if u else 0,
            "memory": int(u[2]) if u else 0,
            "disk": int(u[3]) if u else 0,
            "vms": int(u[4]) if u else 0,
        }
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
                    "cpu": ratio(alloc["cpu"], cpu),
                    "memory": ratio(alloc["memory"], memory),
                    "disk": ratio(alloc["disk"], disk),
                    "vms": ratio(alloc["vms"], max_vms),
                },
            }
        )
    return out


def ratio(used: int, cap: int) -> float:
    """``used / cap`` rounded to 4 places; 0 for a zero capacity (a node without local disk)."""
    return 0.0 if cap <= 0 else round(used / cap, 4)


def node_columns(store: Store) -> dict[str, list[Any]]:
    """Every node in (pool, name) order, as columns (``NODE_COLUMNS``); cpu, memory, disk are ratios.

    Columns rather than one object per node: the dashboard draws 10,000 nodes
    from them, and a column of floats is a fraction of the JSON of as many
    objects.
    """
    stmt = select(
        nodes.c.name,
        nodes.c.ip,
        nodes.c.pool,
        nodes.c.cpu,
        nodes.c.memory,
        nodes.c.disk,
        nodes.c.max_vms,
        nodes.c.cordoned,
    ).order_by(nodes.c.pool, nodes.c.name)
    cols: dict[str, list[Any]] = {k: [] for k in NODE_COLUMNS}
    with store.engine.connect() as conn:
        conn.execution_options(**{READ_ONLY_OPTION: True})
        with conn.begin():
            used = {row[0]: row for row in conn.execute(ACTIVE_USAGE)}
            rows = conn.execute(stmt).all()
    for name, ip, pool, cpu, memory, disk, max_vms, cordoned in rows:
        u = used.get(name)
        cols["name"].append(name)
        cols["ip"].append(ip)
        cols["pool"].append(pool)
        cols["cpu"].append(ratio(int(u[1]) if u else 0, cpu))
        cols["memory"].append(ratio(int(u[2]) if u else 0, memory))
        cols["disk"].append(ratio(int(u[3]) if u else 0, disk))
        cols["vms"].append(int(u[4]) if u else 0)
        cols["max_vms"].append(int(max_vms))
        cols["cordoned"].append(bool(cordoned))
    return cols
