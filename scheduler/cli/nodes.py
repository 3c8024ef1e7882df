"""``scheduler nodes import|list|cordon|uncordon``: the node inventory.

``import`` validates the whole file before it touches the database and then
upserts in one transaction, so a broken file leaves the inventory exactly as
it was; every change bumps the inventory revision, which running workers poll
to reload their fleet view. ``list`` shows how full each node and each pool
is, from the active allocations in the database (what the leader committed),
not from any worker's memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table
from rich.text import Text

from scheduler.cli.common import CliError, cli, emit_json, make_console, settings_or_exit
from scheduler.cli.db import store_session
from scheduler.fleet import CapacityDefaults, NodeCapacity, node_capacity
from scheduler.models import Node
from scheduler.store import NodesFileError, NodeUsage, UnknownNode, load_nodes_file

BAR_WIDTH = 8
NARROW_BAR_WIDTH = 4
WIDE_COLUMNS = 140  # from this terminal width on, `nodes list` adds IPs and absolute figures


@cli.group("nodes")
def nodes_group() -> None:
    """The node inventory: import, list, cordon, uncordon, drain."""


@nodes_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_cmd(file: Path) -> None:
    """Upsert the nodes of FILE (YAML or JSON: `nodes: [...]`), all or nothing."""
    try:
        nodes = load_nodes_file(file)
    except NodesFileError as exc:
        raise CliError(str(exc)) from None
    with store_session(migrate=True) as store:
        counts = store.import_nodes(nodes)
    click.echo(
        f"imported {counts.total} node(s) from {file}: {counts.created} created, {counts.updated} updated, "
        f"{counts.unchanged} unchanged (inventory revision {counts.revision})"
    )


@nodes_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per node")
@click.option("--pool", default=None, help="only the nodes of this pool")
def list_cmd(as_json: bool, pool: str | None) -> None:
    """The nodes with their allocated resources, per node and per pool."""
    settings = settings_or_exit()
    defaults = settings.capacity_defaults()
    with store_session(settings, migrate=False) as store:
        nodes = store.list_nodes(pool=pool)
        usage = store.node_usage()
    if as_json:
        for node in nodes:
            emit_json(node_json(node, usage.get(node.name, NodeUsage()), defaults))
        return
    console = make_console(highlight=False)
    if not nodes:
        console.print(
            f"no nodes in pool {pool!r}" if pool else "no nodes: import some with `scheduler nodes import`"
        )
        return
    wide = console.width >= WIDE_COLUMNS
    console.print(node_table(nodes, usage, defaults, wide=wide))
    console.print(pool_table(nodes, usage, defaults, wide=wide))


@nodes_group.command("cordon")
@click.argument("name")
def cordon_cmd(name: str) -> None:
    """Stop placing new VMs on node NAME (running ones stay)."""
    _set_cordoned(name, True)


@nodes_group.command("uncordon")
@click.argument("name")
def uncordon_cmd(name: str) -> None:
    """Let node NAME receive new VMs again."""
    _set_cordoned(name, False)


@nodes_group.command("drain")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="one JSON line per move, then a summary line")
@click.option("--apply", "apply_", is_flag=True, help="publish the moves (the leader checks each again)")
def drain_cmd(name: str, as_json: bool, apply_: bool) -> None:
    """Cordon node NAME and plan a move for every VM on it; lists what cannot move, and why (exit 3)."""
    from scheduler.cli.rebalance import drain_node

    drain_node(name, as_json, apply_)


def _set_cordoned(name: str, cordoned: bool) -> None:
    verb = "cordoned" if cordoned else "uncordoned"
    with store_session(migrate=True) as store:
        try:
            changed = store.set_cordoned(name, cordoned)
        except UnknownNode:
            raise CliError(f"unknown node {name!r} (see `scheduler nodes list`)") from None
    click.echo(f"node {name} {verb}" if changed else f"node {name} was already {verb}")


# ------------------------------------------------------------------ rendering


def node_json(node: Node, used: NodeUsage, defaults: CapacityDefaults | None = None) -> dict[str, Any]:
    """The ``nodes list --json`` line of docs/contracts.md (CLI): the node's fields (raw capacity,
    ``resources``, its own ``reserved`` and ratios, None where the configured default applies) plus
    ``allocated``, ``effective`` (capacity after reserves and ratios) and ``overcommitted``."""
    out = node.model_dump(mode="json")
    out["allocated"] = used.to_json()
    cap = node_capacity(node, defaults or CapacityDefaults())
    out["effective"] = {**cap.effective(), "vms": node.max_vms, **node.resources}
    out["overcommitted"] = bool(over_limits(node, used, cap))
    return out


def over_limits(node: Node, used: NodeUsage, cap: NodeCapacity) -> list[str]:
    """The resources ``node`` holds more of than its effective capacity (a ratio lowered under it)."""
    pairs = [
        ("cpu", used.cpu, cap.effective_cpu),
        ("memory", used.memory, cap.effective_memory),
        ("disk", used.disk, cap.effective_disk),
        ("vms", used.vms, node.max_vms),
        *((k, n, node.resources.get(k, 0)) for k, n in used.devices.items()),
    ]
    return [name for name, have, limit in pairs if have > limit]


def bar(used: int, capacity: int, width: int = BAR_WIDTH) -> Text:
    """``███░░░░░  31%``: green below 70 %, yellow below 90 %, red from 90 %."""
    if width <= 0:
        width = BAR_WIDTH
    ratio = used / capacity if capacity > 0 else 0.0
    filled = min(width, round(ratio * width))
    style = "green" if ratio < 0.7 else "yellow" if ratio < 0.9 else "red"
    text = Text("█" * filled, style=style)
    text.append("░" * (width - filled), style="dim")
    text.append(f" {ratio * 100:3.0f}%")
    return text


def _gib(mib: int) -> str:
    return f"{mib / 1024:,.0f}"


def node_table(
    nodes: list[Node],
    usage: dict[str, NodeUsage],
    defaults: CapacityDefaults | None = None,
    *,
    wide: bool = False,
) -> Table:
    """One row per node, by pool then name; ``wide`` adds the IP and absolute figures.

    Bars are against effective capacity; the wide figures read ``used/effective`` with the raw
    capacity in brackets where reserves or ratios make them differ. A node holding more than its
    effective capacity is flagged ``overcommitted(cpu,...)``: it takes nothing until it fits.
    """
    d = defaults or CapacityDefaults()
    table = Table(title="nodes", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    width = BAR_WIDTH if wide else NARROW_BAR_WIDTH
    columns = ["node", "pool", *(["ip"] if wide else []), "cpu", "memory", "disk", "vms", "devices", "flags"]
    for col in columns:
        if col == "flags":
            table.add_column(col, min_width=12, overflow="fold")
        else:
            table.add_column(col, no_wrap=True)
    for node in sorted(nodes, key=lambda n: (n.pool, n.name)):
        used = usage.get(node.name, NodeUsage())
        cap = node_capacity(node, d)
        over = over_limits(node, used, cap)
        flags = [f for f, on in (("dedicated", node.dedicated), ("cordoned", node.cordoned)) if on]
        flags += [f"overcommitted({','.join(over)})"] if over else []
        flags += [f"#{t}" for t in node.tags]
        cpu = bar(used.cpu, cap.effective_cpu, width)
        mem = bar(used.memory, cap.effective_memory, width)
        disk = bar(used.disk, cap.effective_disk, width)
        if wide:
            cpu.append(f" {used.cpu}/{cap.effective_cpu}{_raw(node.cpu, cap.effective_cpu)}")
            mem.append(
                f" {_gib(used.memory)}/{_gib(cap.effective_memory)} GiB"
                f"{_raw(node.memory, cap.effective_memory, _gib)}"
            )
            disk.append(f" {used.disk}/{cap.effective_disk} GiB{_raw(node.disk, cap.effective_disk)}")
        devices = " ".join(f"{k} {used.devices.get(k, 0)}/{n}" for k, n in node.resources.items())
        cells: list[Any] = [Text(node.name, style="strike" if node.cordoned else ""), node.pool]
        if wide:
            cells.append(str(node.ip))
        cells += [cpu, mem, disk, f"{used.vms}/{node.max_vms}", devices, " ".join(flags)]
        table.add_row(*cells)
    return table


def _raw(raw: int, effective: int, fmt: Any = str) -> str:
    return "" if raw == effective else f" (raw {fmt(raw)})"


def pool_table(
    nodes: list[Node],
    usage: dict[str, NodeUsage],
    defaults: CapacityDefaults | None = None,
    *,
    wide: bool = False,
) -> Table:
    """One row per pool: utilization of its effective capacity, how many nodes, cordoned or dedicated."""
    d = defaults or CapacityDefaults()
    table = Table(title="pools", title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for col in ("pool", "nodes", "cpu", "memory", "disk", "vms"):
        table.add_column(col, no_wrap=True)
    table.add_column("of which", min_width=12, overflow="fold")
    width = BAR_WIDTH if wide else NARROW_BAR_WIDTH
    pools: dict[str, list[Node]] = {}
    for node in nodes:
        pools.setdefault(node.pool, []).append(node)
    for pool, members in sorted(pools.items()):
        used = [usage.get(n.name, NodeUsage()) for n in members]
        caps = [node_capacity(n, d) for n in members]
        cordoned = sum(n.cordoned for n in members)
        dedicated = sum(n.dedicated for n in members)
        notes = [f"{cordoned} cordoned"] if cordoned else []
        notes += [f"{dedicated} dedicated"] if dedicated else []
        table.add_row(
            pool,
            str(len(members)),
            bar(sum(u.cpu for u in used), sum(c.effective_cpu for c in caps), width),
            bar(sum(u.memory for u in used), sum(c.effective_memory for c in caps), width),
            bar(sum(u.disk for u in used), sum(c.effective_disk for c in caps), width),
            f"{sum(u.vms for u in used)}/{sum(n.max_vms for n in members)}",
            ", ".join(notes),
        )
    return table
