"""``scheduler strategies`` and ``scheduler simulate``: the offline face of the placer."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from scheduler.cli.common import CliError, cli, emit_json, make_console, settings_or_exit
from scheduler.strategies.registry import STRATEGIES, STRATEGY_NAMES

if TYPE_CHECKING:
    from scheduler.simulate import SimulationResult

PROGRESS_THRESHOLD = 5000


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


def _strategy_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """``--compare a,b,c``: registered names, each once; the error names the flag and the valid names."""
    if value is None:
        return None
    names = [part.strip() for part in value.split(",")]
    if not value.strip() or any(not n for n in names):
        raise click.BadParameter("expected strategy names separated by commas, e.g. best_fit,least_loaded")
    unknown = [n for n in names if n not in STRATEGY_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown strategy {unknown[0]!r}; valid: {', '.join(STRATEGY_NAMES)}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise click.BadParameter(f"{dupes[0]!r} given twice")
    return names


@cli.command("simulate")
@click.option("--nodes", "nodes_file", required=True, type=click.Path(dir_okay=False), help="fleet YAML/JSON")
@click.option(
    "--requests", "requests_file", required=True, help="JSON lines of requests and releases ('-' = stdin)"
)
@click.option(
    "--strategy", type=click.Choice(STRATEGY_NAMES), default=None, help="default: the configured one"
)
@click.option(
    "--compare",
    callback=_strategy_list,
    default=None,
    metavar="S1,S2,...",
    help="run each strategy on the same fleet and trace and print them side by side",
)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="seed for `random` (default: config)")
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="also write a self-contained HTML page with plots of the run(s)",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="one JSON line per input line, then a summary line (--compare: one summary line per strategy)",
)
def simulate_cmd(
    nodes_file: str,
    requests_file: str,
    strategy: str | None,
    compare: list[str] | None,
    seed: int | None,
    report_file: str | None,
    as_json: bool,
) -> None:
    """Replay a request trace on a fleet file and report every placement (no broker, no database)."""
    from scheduler.fleet import FleetView
    from scheduler.simulate import TraceError, iter_json_lines, read_trace, simulate
    from scheduler.store.errors import NodesFileError
    from scheduler.store.nodesfile import load_nodes_file
    from scheduler.strategies import Placer

    if compare is not None and strategy is not None:
        raise click.UsageError("give either --strategy or --compare, not both")
    settings = settings_or_exit()
    try:
        nodes = load_nodes_file(nodes_file)
        trace = read_trace(requests_file)
    except (NodesFileError, TraceError) as exc:
        raise CliError(str(exc)) from None
    w = settings.strategy_weights
    names = compare if compare is not None else [strategy or settings.strategy]
    results: dict[str, SimulationResult] = {}
    show_progress = len(trace) * len(names) >= PROGRESS_THRESHOLD and sys.stderr.isatty()
    with Progress(
        TextColumn("simulating {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not show_progress,
    ) as bar:
        for name in names:
            placer = Placer(
                name,
                weights=(w.cpu, w.memory, w.disk),
                seed=settings.random_seed if seed is None else seed,
                dedicated_exclusive=settings.dedicated_nodes_exclusive,
                spread_max_skew=settings.spread_max_skew,
            )
            fleet = FleetView.build(nodes, defaults=settings.capacity_defaults())
            task = bar.add_task(name, total=len(trace))
            results[name] = simulate(
                fleet,
                trace,
                placer,
                progress=partial(bar.advance, task),
                keep_lines=compare is None,
            )
    if report_file is not None:
        from scheduler.simulate_report import render_report

        try:
            with open(report_file, "w", encoding="utf-8") as out:
                out.write(
                    render_report(
                        results, title=f"simulate: {Path(nodes_file).name} x {Path(requests_file).name}"
                    )
                )
        except OSError as exc:
            raise CliError(f"--report {report_file}: {exc.strerror or exc}") from None
    if compare is not None:
        if as_json:
            for name, result in results.items():
                emit_json({"strategy": name, "summary": result.summary()})
        else:
            _print_comparison(results)
        return
    (result,) = results.values()
    if as_json:
        out_stream = sys.stdout
        for line in iter_json_lines(result):
            out_stream.write(line + "\n")
        return
    _print_human(result, names[0])


def _print_human(result: SimulationResult, strategy: str) -> None:
    from scheduler.simulate import POOL_FIGURES

    console = make_console()  # piped, rich's 80 columns cut pool names and figures ("stora…", "25.…")
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
    summary.add_row("nodes used (end / peak)", f"{s['nodes_used']} / {s['nodes_used_peak']}")
    summary.add_row("vCPUs placed", str(s["vcpus_placed"]))
    summary.add_row("decisions/s", str(s["decisions_per_second"]))
    summary.add_row("decision p50 / p99", f"{s['decision_p50_us']} µs / {s['decision_p99_us']} µs")
    console.print(summary)
    util = Table(
        "pool", "nodes", "vms", "cpu", "memory", "disk", "devices", "at 1st fragmentation", "stranded",
        title="utilization per pool (effective)",
    )  # fmt: skip
    for pool, u in sorted(s["utilization"].items()):
        devices = " ".join(f"{k} {v:.0%}" for k, v in u.items() if k not in POOL_FIGURES)
        util.add_row(
            pool,
            str(int(u["nodes"])),
            str(int(u["vms"])),
            _bar(u["cpu"]),
            _bar(u["memory"]),
            _bar(u["disk"]),
            devices,
            _fragmentation(s["first_fragmentation"].get(pool)),
            _stranded(s["stranded"].get(pool)),
        )
    console.print(util)
    for kind, frag in s["first_device_fragmentation"].items():
        console.print(
            f"first {kind} request refused while enough {kind} was free in aggregate: line {frag['line']}, "
            f"{kind} {frag['device']:.1%} used"
        )


def _fragmentation(frag: dict[str, Any] | None) -> str:
    """Pool utilization when a request first failed for fragmentation, or ``never``."""
    if frag is None:
        return "never"
    return f"cpu {frag['cpu']:.1%} mem {frag['memory']:.1%} (line {frag['line']})"


def _stranded(figures: dict[str, float] | None) -> str:
    if figures is None:
        return "-"
    return f"cpu {figures['cpu']:.1%} mem {figures['memory']:.1%}"


def _print_comparison(results: dict[str, SimulationResult]) -> None:
    summaries = {name: r.summary() for name, r in results.items()}
    table = Table("", *summaries, title="strategies compared on the same fleet and trace")
    from scheduler.simulate import comparison_rows

    for label, values in comparison_rows(summaries):
        table.add_row(label, *values)
    console = make_console()
    console.print(table)
    console.print(
        "1st fragmentation: the first request refused while the nodes allowed to take it had enough free "
        "in aggregate; stranded: free cpu on nodes without memory for the smallest request, and the reverse"
    )


def _bar(fraction: float, width: int = 10) -> str:
    filled = round(fraction * width)
    return f"{'█' * filled}{'░' * (width - filled)} {fraction:6.1%}"


__all__ = ["emit_json", "simulate_cmd", "strategies_cmd"]
