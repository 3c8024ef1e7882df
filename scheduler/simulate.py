"""Offline what-if: replay a request trace against a fleet file with one strategy.

The same :class:`~scheduler.strategies.Placer` and
:class:`~scheduler.fleet.FleetView` as the worker, without a broker or a
database, so an operator can compare strategies on their own fleet and trace
before switching the ConfigMap. Everything is in memory and deterministic
for a given seed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.fleet import BoolArray, FleetView
from scheduler.gc_tuning import cycle_collection_paused
from scheduler.jsonlines import json_lines
from scheduler.models import MAX_BODY_BYTES, Decision, ReleaseRequest, SchedulingRequest, parse_json_line
from scheduler.strategies import Placer
from scheduler.strategies.filters import FILTERS, Feasibility, FilterInput, Narrowing
from scheduler.strategies.placer import explanation

TraceItem = SchedulingRequest | ReleaseRequest


class TraceError(ValueError):
    """A requests file with bad lines; the message names each line and field."""


def read_trace(path: str | Path, *, max_problems: int = 10) -> list[TraceItem]:
    """Parse a JSON-lines trace; all lines are validated before any is used."""
    p = Path(path)
    try:
        handle = p.open("rb") if str(path) != "-" else None
    except OSError as exc:
        raise TraceError(f"{p}: {exc.strerror or exc}") from None
    import sys

    if handle is None and sys.stdin is None:  # descriptor 0 closed when the process started (``<&-``)
        raise TraceError("-: standard input is closed")
    stream = handle if handle is not None else sys.stdin.buffer
    items: list[TraceItem] = []
    problems: list[str] = []
    try:
        # Bounded as submit's lines are (a request over it could not be published): without a bound,
        # a trace line without an end (``--requests /dev/zero``) was read whole, to the last byte of memory.
        for lineno, line, problem in json_lines(stream, MAX_BODY_BYTES):
            if line is None:
                problems.append(f"line {lineno}: {problem}")
                continue
            try:
                items.append(parse_json_line(line))
            except ValueError as exc:
                problems.append(f"line {lineno}: {exc}")
    finally:
        if handle is not None:
            handle.close()
    if problems:
        more = len(problems) - max_problems
        raise TraceError(
            f"{p}: "
            + "; ".join(problems[:max_problems])
            + (f"; ... and {more} more bad lines" if more > 0 else "")
        )
    return items


CAPACITY_FILTERS = frozenset({"cpu", "memory", "disk", "devices", "max_vms"})
"""Filters about room on a node; the others (state, pool rules, tags, affinity, spread) are constraints."""

TIMELINE_POINTS = 400
"""About how many utilization samples a run keeps for plots (one every len(trace) / this items)."""


def eligible_nodes(fleet: FleetView, req: SchedulingRequest) -> tuple[int, int, BoolArray] | None:
    """The nodes ``req`` could use if room were no object: every filter but the capacity ones.

    This is what makes a rejection a *fragmentation* rejection: the nodes
    allowed to take the VM hold enough free capacity in aggregate, but no
    single one of them holds it all. None for an unknown pool.
    """
    span = fleet.pools.get(req.requested_pool)
    if span is None:
        return None
    s, e = span
    out = Feasibility(s, e, None, 0, fleet.size)
    narrowing = Narrowing(out)
    x = FilterInput(fleet, req, s, e, 0.0, True, 1)
    for flt in FILTERS:
        if flt.name not in CAPACITY_FILTERS and not flt.run(x, narrowing):
            return s, e, np.zeros(e - s, dtype=np.bool_)
    return s, e, narrowing.current()


@dataclass
class Fragmentation:
    """The first request of a pool (or device kind) refused while its eligible nodes had room in aggregate."""

    line: int
    cpu: float
    memory: float
    device: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line, "cpu": round(self.cpu, 4), "memory": round(self.memory, 4)}
        if self.device is not None:
            out["device"] = round(self.device, 4)
        return out


def _line(entry: dict[str, Any] | Decision) -> dict[str, Any]:
    """One output line: releases and duplicates are kept as lines, decisions as decided."""
    if isinstance(entry, dict):
        return entry
    return {
        "task_id": entry.task_id,
        "node": entry.node,
        "reason": str(entry.reason) if entry.reason else None,
        "message": explanation(entry),
    }


@dataclass
class SimulationResult:
    """Per-line outcomes and the summary of one run.

    ``entries`` holds each line as it was recorded: a decision stays the
    :class:`~scheduler.models.Decision` (decided without its message) until
    :attr:`lines` is read, because a replay of 20,000 lines spent a tenth of
    its time writing explanations that ``--compare``, the benchmarks and the
    summary never read; the text is the same when it is made.
    """

    entries: list[dict[str, Any] | Decision] = field(default_factory=list, repr=False)
    placed: int = 0
    rejected: int = 0
    released: int = 0
    vcpus_placed: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    decision_ns: list[int] = field(default_factory=list)
    wall_seconds: float = 0.0
    fleet: FleetView | None = None
    peak_nodes_used: int = 0
    first_fragmentation: dict[str, Fragmentation] = field(default_factory=dict)
    """Per pool: the first request for no device refused for fragmentation."""
    first_device_fragmentation: dict[str, Fragmentation] = field(default_factory=dict)
    """Per device kind: the first request for it refused while its pool had enough of it free in aggregate;
    ``device`` is the kind's utilization in that pool then."""
    min_cpu: int = 0
    min_memory: int = 0
    timeline: list[tuple[int, float, float]] = field(default_factory=list)
    """(line, cpu utilization, memory utilization) of the whole fleet, sampled along the trace."""
    _lines: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def lines(self) -> list[dict[str, Any]]:
        """One outcome per trace item, in order: ``task_id``, ``node``, ``reason``, ``message``."""
        made = self._lines
        if len(made) < len(self.entries):
            made.extend(_line(entry) for entry in self.entries[len(made) :])
        return made

    def summary(self) -> dict[str, Any]:
        ns = np.asarray(self.decision_ns, dtype=np.float64) if self.decision_ns else np.zeros(1)
        decide_s = float(ns.sum()) / 1e9
        fleet = self.fleet
        used = int(np.count_nonzero(fleet.vms)) if fleet is not None else 0
        return {
            "placed": self.placed,
            "rejected": self.rejected,
            "released": self.released,
            "vcpus_placed": self.vcpus_placed,
            "nodes_used": used,
            "nodes_used_peak": self.peak_nodes_used,
            "decisions_per_second": round(len(self.decision_ns) / decide_s, 1) if decide_s > 0 else None,
            "decision_p50_us": round(float(np.percentile(ns, 50)) / 1000, 2),
            "decision_p99_us": round(float(np.percentile(ns, 99)) / 1000, 2),
            "rejected_by_reason": dict(self.rejected_by_reason),
            "utilization": fleet.pool_utilization() if fleet is not None else {},
            "first_fragmentation": {p: f.as_dict() for p, f in sorted(self.first_fragmentation.items())},
            "first_device_fragmentation": {
                k: f.as_dict() for k, f in sorted(self.first_device_fragmentation.items())
            },
            "stranded": stranded(fleet, self.min_cpu, self.min_memory) if fleet is not None else {},
            "wall_seconds": round(self.wall_seconds, 4),
        }


def stranded(fleet: FleetView, min_cpu: int, min_memory: int) -> dict[str, dict[str, float]]:
    """Per pool, the capacity no request of the trace could use because the other resource is gone.

    ``cpu``: free vCPUs on nodes whose free memory is below the smallest
    memory request seen, as a fraction of the pool's cpu; ``memory``: free
    memory on nodes with fewer free vCPUs than the smallest cpu request, as a
    fraction of the pool's memory. Nothing is stranded before any request.
    """
    out: dict[str, dict[str, float]] = {}
    for pool, (s, e) in sorted(fleet.pools.items()):
        free_cpu, free_mem = fleet.free_cpu[s:e], fleet.free_mem[s:e]
        no_mem = free_mem < min_memory
        no_cpu = free_cpu < min_cpu
        cap_cpu, cap_mem = int(fleet.cap_cpu[s:e].sum()), int(fleet.cap_mem[s:e].sum())
        out[pool] = {
            "cpu": round(int(np.maximum(free_cpu[no_mem], 0).sum()) / cap_cpu, 4) if cap_cpu else 0.0,
            "memory": round(int(np.maximum(free_mem[no_cpu], 0).sum()) / cap_mem, 4) if cap_mem else 0.0,
        }
    return out


def _pool_used(fleet: FleetView, s: int, e: int) -> tuple[float, float]:
    cap_cpu, cap_mem = int(fleet.cap_cpu[s:e].sum()), int(fleet.cap_mem[s:e].sum())
    return (
        1.0 - int(fleet.free_cpu[s:e].sum()) / cap_cpu if cap_cpu else 0.0,
        1.0 - int(fleet.free_mem[s:e].sum()) / cap_mem if cap_mem else 0.0,
    )


def _note_rejection(result: SimulationResult, fleet: FleetView, req: SchedulingRequest, line: int) -> None:
    """Record the first fragmentation rejection of the request's pool and of each device kind it asks for.

    Only looked at until both are known, so a saturated fleet's long tail of
    rejections costs nothing extra.
    """
    pool = req.requested_pool
    kinds = [k for k in req.requested_resources if k not in result.first_device_fragmentation]
    if pool in result.first_fragmentation and not kinds:
        return
    found = eligible_nodes(fleet, req)
    if found is None:
        return
    s, e, mask = found
    if not mask.any():
        return
    cpu_ok = int(fleet.free_cpu[s:e][mask].sum()) >= req.requested_cpu
    mem_ok = int(fleet.free_mem[s:e][mask].sum()) >= req.requested_memory
    dev_ok = all(
        (j := fleet.dev_index.get(k)) is not None and int(fleet.free_dev[j, s:e][mask].sum()) >= n
        for k, n in req.requested_resources.items()
    )
    cpu_used, mem_used = _pool_used(fleet, s, e)
    # A request for devices counts for the devices alone: its refusal says where the devices went.
    if (
        not req.requested_resources
        and cpu_ok
        and mem_ok
        and dev_ok
        and pool not in result.first_fragmentation
    ):
        result.first_fragmentation[pool] = Fragmentation(line, cpu_used, mem_used)
    for kind in kinds:
        j = fleet.dev_index.get(kind)
        if j is None:
            continue
        free = fleet.free_dev[j, s:e]
        if int(free[mask].sum()) >= req.requested_resources[kind]:
            cap = int(fleet.cap_dev[j, s:e].sum())
            device = 1.0 - int(free.sum()) / cap if cap else 0.0
            result.first_device_fragmentation[kind] = Fragmentation(line, cpu_used, mem_used, device)


def simulate(
    fleet: FleetView,
    trace: list[TraceItem],
    placer: Placer,
    *,
    progress: Callable[[int], None] | None = None,
    keep_lines: bool = True,
) -> SimulationResult:
    """Replay ``trace`` on ``fleet`` (mutated in place); one outcome per trace item, in order.

    ``keep_lines=False`` keeps the summary figures only (benchmarks replay
    many traces and never print the lines).
    """
    with cycle_collection_paused():  # the loop makes no reference cycles
        return _replay(fleet, trace, placer, progress, keep_lines)


def _replay(
    fleet: FleetView,
    trace: list[TraceItem],
    placer: Placer,
    progress: Callable[[int], None] | None,
    keep_lines: bool,
) -> SimulationResult:
    result = SimulationResult(fleet=fleet)
    lines = result.entries
    clock = time.perf_counter_ns
    started = clock()
    total_cpu = max(1, int(fleet.cap_cpu.sum()))
    total_mem = max(1, int(fleet.cap_mem.sum()))
    used_cpu = total_cpu - int(fleet.free_cpu.sum())
    used_mem = total_mem - int(fleet.free_mem.sum())
    nodes_used = int(np.count_nonzero(fleet.vms))
    peak = nodes_used
    every = max(1, len(trace) // TIMELINE_POINTS)
    timeline = result.timeline
    min_cpu = min_mem = 0
    vms = fleet.vms
    decision_ns = result.decision_ns
    # What the worker's database holds per task id: the first request (placed or not), or None for a
    # release that came first (a cancel). A task id decides once, as the worker's does (its
    # "exactly-once effect"): the same request again is a duplicate, another one a conflict, a request
    # after its cancel is never placed. Before, a released or refused task id was placed anew and a
    # different request under a placed id was called a duplicate of it.
    held: dict[str, SchedulingRequest | None] = {}
    gone: set[str] = set()  # placed, then released
    for n, item in enumerate(trace, start=1):
        if isinstance(item, ReleaseRequest):
            alloc = fleet.release(item.release)
            cancel = alloc is None and item.release not in held
            if cancel:
                held[item.release] = None
            if alloc is not None:
                gone.add(item.release)
                result.released += 1
                i = fleet.index.get(alloc.node, -1)
                if i >= 0:
                    used_cpu -= alloc.cpu
                    used_mem -= alloc.memory
                    if vms[i] == 0:
                        nodes_used -= 1
            if keep_lines:
                lines.append(
                    {
                        "task_id": item.release,
                        "node": alloc.node if alloc else None,
                        "reason": None,
                        "message": (
                            f"released from {alloc.node}"
                            if alloc
                            else "cancelled: not placed yet, its request will not be placed"
                            if cancel
                            else "nothing to release"
                        ),
                    }
                )
        else:
            tid = item.task_id
            if tid in held:
                first = held[tid]
                existing = fleet.allocation(tid)
                if first is not None and first == item:
                    state = (
                        f"placed on {existing.node}" if existing else "released" if tid in gone else "refused"
                    )
                    entry = {"task_id": tid, "node": existing.node if existing else None, "reason": None}
                    entry["message"] = f"duplicate: already {state}"
                else:
                    result.rejected += 1
                    why = "cancelled" if first is None else "conflict"
                    result.rejected_by_reason[why] += 1
                    entry = {"task_id": tid, "node": None, "reason": why}
                    entry["message"] = (
                        "released before it arrived: never placed"
                        if first is None
                        else "task id already exists with a different request; the original is unchanged"
                    )
                if keep_lines:
                    lines.append(entry)
            else:
                held[tid] = item
                cpu, mem = item.requested_cpu, item.requested_memory
                if not min_cpu or cpu < min_cpu:
                    min_cpu = cpu
                if not min_mem or mem < min_mem:
                    min_mem = mem
                t0 = clock()
                decision = placer.place(fleet, item, now=0.0, explain=False)
                decision_ns.append(clock() - t0)
                index = decision.node_index
                if index is not None:
                    result.placed += 1
                    result.vcpus_placed += cpu
                    used_cpu += cpu
                    used_mem += mem
                    if vms[index] == 1:
                        nodes_used += 1
                        if nodes_used > peak:
                            peak = nodes_used
                else:
                    result.rejected += 1
                    result.rejected_by_reason[str(decision.reason)] += 1
                    _note_rejection(result, fleet, item, n)
                if keep_lines:
                    lines.append(decision)  # made into a line when read (SimulationResult.lines)
        if n % every == 0:
            timeline.append((n, used_cpu / total_cpu, used_mem / total_mem))
        if progress is not None and n % 1000 == 0:
            progress(1000)
    result.peak_nodes_used = peak
    result.min_cpu, result.min_memory = min_cpu, min_mem
    result.wall_seconds = (clock() - started) / 1e9
    return result


POOL_FIGURES = frozenset({"cpu", "memory", "disk", "nodes", "vms"})
"""Keys of a pool's utilization that are not device kinds."""


def comparison_rows(summaries: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The side-by-side figures of ``--compare``: one (label, value per strategy) row each.

    Pools and device kinds are the union over the runs (they share the fleet,
    so they are the same); a figure a run lacks prints as ``-``.
    """
    runs = list(summaries.values())
    rows: list[tuple[str, list[str]]] = [
        ("placed", [str(x["placed"]) for x in runs]),
        ("rejected", [str(x["rejected"]) for x in runs]),
    ]
    reasons = sorted({r for x in runs for r in x["rejected_by_reason"]})
    rows += [(f"  {r}", [str(x["rejected_by_reason"].get(r, 0)) for x in runs]) for r in reasons]
    rows += [
        ("released", [str(x["released"]) for x in runs]),
        ("vCPUs placed", [str(x["vcpus_placed"]) for x in runs]),
        ("nodes used (end)", [str(x["nodes_used"]) for x in runs]),
        ("nodes used (peak)", [str(x["nodes_used_peak"]) for x in runs]),
    ]
    pools = sorted({p for x in runs for p in x["utilization"]})
    for pool in pools:
        us = [x["utilization"].get(pool) for x in runs]
        rows.append((f"{pool}: cpu used", [f"{u['cpu']:.1%}" if u else "-" for u in us]))
        rows.append((f"{pool}: memory used", [f"{u['memory']:.1%}" if u else "-" for u in us]))
        kinds = sorted({k for u in us if u for k in u if k not in POOL_FIGURES})
        for kind in kinds:
            rows.append((f"{pool}: {kind} used", [f"{u[kind]:.1%}" if u and kind in u else "-" for u in us]))
        frags = [x["first_fragmentation"].get(pool) for x in runs]
        rows.append(
            (f"{pool}: cpu at 1st fragmentation", [f"{f['cpu']:.1%}" if f else "never" for f in frags])
        )
        rows.append(
            (f"{pool}: memory at 1st fragmentation", [f"{f['memory']:.1%}" if f else "never" for f in frags])
        )
        strands = [x["stranded"].get(pool) for x in runs]
        rows.append((f"{pool}: stranded cpu", [f"{t['cpu']:.1%}" if t else "-" for t in strands]))
        rows.append((f"{pool}: stranded memory", [f"{t['memory']:.1%}" if t else "-" for t in strands]))
    for kind in sorted({k for x in runs for k in x["first_device_fragmentation"]}):
        frags = [x["first_device_fragmentation"].get(kind) for x in runs]
        rows.append(
            (
                f"{kind} used at 1st {kind} fragmentation",
                [f"{f['device']:.1%}" if f else "never" for f in frags],
            )
        )
    rows += [
        ("decisions/s", [str(x["decisions_per_second"]) for x in runs]),
        ("decision p99", [f"{x['decision_p99_us']} µs" for x in runs]),
    ]
    return rows


def iter_json_lines(result: SimulationResult) -> Iterator[str]:
    """The ``simulate --json`` output: one line per input line, then the summary."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for line in result.lines:
        yield dumps(line)
    summary = result.summary()
    yield dumps({"summary": summary})
