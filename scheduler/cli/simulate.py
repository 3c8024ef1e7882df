"""``scheduler strategies`` and ``scheduler simulate``: the offline face of the placer."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from scheduler.cli.common import CliError, cli, emit_json, make_console, settings_or_exit
from scheduler.strategies.registry import STRATEGIES, STRATEGY_NAMES

if TYPE_CHECKING:
    from scheduler.simulate import SimulationResult

PROGRESS_THRESHOLD = 5000
_POOL_FIGURES = frozenset({"cpu", "memory", "disk", "nodes", "vms"})
"""Keys of a pool's utilization that are not device kinds."""


@cli.command("strategies")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def strategies_cmd(as_json: bool) -> None:
    """List the placement strategies and what each does."""
    if as_json:
        for name, text in STRATEGIES.items():
            emit_json({"name": name, "description": text})
        return
    table = Table("strategy", "what it does", title="placement strategies (SCHEDULING_STRATEGY)")
    for name, text in STRATEGIES.items():
        table.add_row(name, text)
    make_console().print(table)


@cli.command("simulate")
@click.option("--nodes", "nodes_file", required=True, type=click.Path(dir_okay=False), help="fleet YAML/JSON")
@click.option(
    "--requests", "requests_file", required=True, help="JSON lines of requests and releases ('-' = stdin)"
)
@click.option(
    "--strategy", type=click.Choice(STRATEGY_NAMES), default=None, help="default: the configured one"
)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="seed for `random` (default: config)")
@click.option("--json", "as_json", is_flag=True, help="one JSON line per input line, then a summary line")
def simulate_cmd(
    nodes_file: str, requests_file: str, strategy: str | None, seed: int | None, as_json: bool
) -> None:
    """Replay a request trace on a fleet file and report every placement (no broker, no database)."""
    from scheduler.fleet import FleetView
    from scheduler.simulate import TraceError, iter_json_lines, read_trace, simulate
    from scheduler.store.errors import NodesFileError
    from scheduler.store.nodesfile import load_nodes_file
    from scheduler.strategies import Placer

    settings = settings_or_exit()
    try:
        nodes = load_nodes_file(nodes_file)
        trace = read_trace(requests_file)
    except (NodesFileError, TraceError) as exc:
        raise CliError(str(exc)) from None
    w = settings.strategy_weights
    placer = Placer(
        strategy or settings.strategy,
        weights=(w.cpu, w.memory, w.disk),
        seed=settings.random_seed if seed is None else seed,
        dedicated_exclusive=settings.dedicated_nodes_exclusive,
        spread_max_skew=settings.spread_max_skew,
    )
    fleet = FleetView.build(nodes, defaults=settings.capacity_defaults())
    show_progress = len(trace) >= PROGRESS_THRESHOLD and sys.stderr.isatty()
    if show_progress:
        with Progress(
            TextColumn("simulating"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task("simulate", total=len(trace))
            result = simulate(fleet, trace, placer, progress=lambda n: bar.advance(task, n))
    else:
        result = simulate(fleet, trace, placer)
    if as_json:
        out = sys.stdout
        for line in iter_json_lines(result):
            out.write(line + "\n")
        return
    _print_human(result, placer.default)


def _print_human(result: SimulationResult, strategy: str) -> None:
    console = Console()
    placements = Table("task", "node", "outcome", title=f"placements ({strategy})", show_lines=False)
    shown = result.lines if len(result.lines) <= 50 else result.lines[:25] + result.lines[-25:]
    for line in shown:
        outcome = (
            line["message"] if line["reason"] is None else f"[red]{line['reason']}[/]: {line['message']}"
        )
        placements.add_row(line["task_id"], line["node"] or "-", outcome)
    if len(result.lines) > 50:
        placements.caption = f"first and last 25 of {len(result.lines)} lines; --json for all"
    console.print(placements)
    s = result.summary()
    summary = Table("", "", title="summary", show_header=False)
    summary.add_row("placed", str(s["placed"]))
    summary.add_row("rejected", str(s["rejected"]))
    for reason, n in sorted(s["rejected_by_reason"].items()):
        summary.add_row(f"  {reason}", str(n))
    summary.add_row("released", str(s["released"]))
    summary.add_row("nodes used", str(s["nodes_used"]))
    summary.add_row("decisions/s", str(s["decisions_per_second"]))
    summary.add_row("decision p50 / p99", f"{s['decision_p50_us']} µs / {s['decision_p99_us']} µs")
    console.print(summary)
    util = Table(
        "pool", "nodes", "vms", "cpu", "memory", "disk", "devices", title="utilization per pool (effective)"
    )
    for pool, u in sorted(s["utilization"].items()):
        devices = " ".join(f"{k} {v:.0%}" for k, v in u.items() if k not in _POOL_FIGURES)
        util.add_row(
            pool,
            str(int(u["nodes"])),
            str(int(u["vms"])),
            _bar(u["cpu"]),
            _bar(u["memory"]),
            _bar(u["disk"]),
            devices,
        )
    console.print(util)


def _bar(fraction: float, width: int = 10) -> str:
    filled = round(fraction * width)
    return f"{'█' * filled}{'░' * (width - filled)} {fraction:6.1%}"


__all__ = ["emit_json", "simulate_cmd", "strategies_cmd"]
