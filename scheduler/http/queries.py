"""Read-only queries of the HTTP face that must stay fast on 10,000 nodes.

Why not :meth:`Store.list_nodes` and :meth:`Store.node_usage`: those build a
validated-model object per node, and serialising 10,000 of them again for a
response took seconds. Here one read transaction returns plain tuples (nodes,
and their active allocations summed in SQL) that become JSON-ready dicts
directly, consistent with each other because they come from one snapshot.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from scheduler.store.engine import READ_ONLY_OPTION
from scheduler.store.schema import allocations, nodes
from scheduler.store.store import ACTIVE_USAGE

if TYPE_CHECKING:
    from scheduler.store import Store


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
