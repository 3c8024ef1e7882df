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

from scheduler.fleet import FleetView
from scheduler.models import ReleaseRequest, SchedulingRequest, parse_json_line
from scheduler.strategies import Placer

TraceItem = SchedulingRequest | ReleaseRequest


class TraceError(ValueError):
    """A requests file with bad lines; the message names each line and field."""


def read_trace(path: str | Path, *, max_problems: int = 10) -> list[TraceItem]:
    """Parse a JSON-lines trace; all lines are validated before any is used."""
    p = Path(path)
    try:
        handle = p.open(encoding="utf-8") if str(path) != "-" else None
    except OSError as exc:
        raise TraceError(f"{p}: {exc.strerror or exc}") from None
    import sys

    stream = handle if handle is not None else sys.stdin
    items: list[TraceItem] = []
    problems: list[str] = []
    try:
        for lineno, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                items.append(parse_json_line(line))
            except ValueError as exc:
                problems.append(f"line {lineno}: {exc}")
    except UnicodeDecodeError:
        raise TraceError(f"{p}: not UTF-8 text") from None
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


@dataclass
class SimulationResult:
    """Per-line outcomes and the summary of one run."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    placed: int = 0
    rejected: int = 0
    released: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    decision_ns: list[int] = field(default_factory=list)
    wall_seconds: float = 0.0
    fleet: FleetView | None = None

    def summary(self) -> dict[str, Any]:
        ns = np.asarray(self.decision_ns, dtype=np.float64) if self.decision_ns else np.zeros(1)
        decide_s = float(ns.sum()) / 1e9
        fleet = self.fleet
        used = int(np.count_nonzero(fleet.vms)) if fleet is not None else 0
        return {
            "placed": self.placed,
            "rejected": self.rejected,
            "released": self.released,
            "nodes_used": used,
            "decisions_per_second": round(len(self.decision_ns) / decide_s, 1) if decide_s > 0 else None,
            "decision_p50_us": round(float(np.percentile(ns, 50)) / 1000, 2),
            "decision_p99_us": round(float(np.percentile(ns, 99)) / 1000, 2),
            "rejected_by_reason": dict(self.rejected_by_reason),
            "utilization": fleet.pool_utilization() if fleet is not None else {},
            "wall_seconds": round(self.wall_seconds, 4),
        }


def simulate(
    fleet: FleetView,
    trace: list[TraceItem],
    placer: Placer,
    *,
    progress: Callable[[int], None] | None = None,
) -> SimulationResult:
    """Replay ``trace`` on ``fleet`` (mutated in place); one outcome per trace item, in order."""
    result = SimulationResult(fleet=fleet)
    clock = time.perf_counter_ns
    started = clock()
    for n, item in enumerate(trace, start=1):
        if isinstance(item, ReleaseRequest):
            alloc = fleet.release(item.release)
            if alloc is not None:
                result.released += 1
            result.lines.append(
                {
                    "task_id": item.release,
                    "node": alloc.node if alloc else None,
                    "reason": None,
                    "message": f"released from {alloc.node}" if alloc else "nothing to release",
                }
            )
        else:
            existing = fleet.allocation(item.task_id)
            if existing is not None:
                result.lines.append(
                    {
                        "task_id": item.task_id,
                        "node": existing.node,
                        "reason": None,
                        "message": f"duplicate: already placed on {existing.node}",
                    }
                )
            else:
                t0 = clock()
                decision = placer.place(fleet, item, now=0.0)
                result.decision_ns.append(clock() - t0)
                if decision.placed:
                    result.placed += 1
                else:
                    result.rejected += 1
                    result.rejected_by_reason[str(decision.reason)] += 1
                result.lines.append(
                    {
                        "task_id": item.task_id,
                        "node": decision.node,
                        "reason": str(decision.reason) if decision.reason else None,
                        "message": decision.message,
                    }
                )
        if progress is not None and n % 1000 == 0:
            progress(1000)
    result.wall_seconds = (clock() - started) / 1e9
    return result


def iter_json_lines(result: SimulationResult) -> Iterator[str]:
    """The ``simulate --json`` output: one line per input line, then the summary."""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for line in result.lines:
        yield dumps(line)
    summary = result.summary()
    yield dumps({"summary": summary})
