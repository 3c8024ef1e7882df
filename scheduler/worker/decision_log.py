"""The log lines of a committed batch: decisions (at debug, with a summary at info), releases, conflicts.

Why a module: these lines are the audit trail an operator greps for ("why
did task X land on node Y"), so their fields are kept together and apart
from the loop that acks.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

import structlog

from scheduler.store.records import CommitResult, Release
from scheduler.worker.batch import BatchPlan

log = structlog.get_logger(__name__)


SUMMARY_FAILED_IDS = 20
"""At most this many failed task ids are named in a batch's summary line (the rest are counted)."""


def log_committed(plan: BatchPlan, result: CommitResult, hook: Callable[..., None], seconds: float) -> None:
    """Every decision, release and conflict of a committed batch; ``hook`` counts release outcomes."""
    log_decisions(plan, seconds)
    log_releases(plan, result, hook)
    for tid in result.conflicts:
        log.warning("task id reused with a different request; the newcomer failed", task_id=tid)


def log_decisions(plan: BatchPlan, seconds: float) -> None:
    """One ``decision`` line per decision at debug, and one ``group committed`` summary at info.

    Why debug and not sampled: a sample drops the very line someone looks
    for (one task's decision), while every decision's outcome and its
    explanation are stored with the task anyway (``scheduler status ID``,
    ``GET /tasks/ID``); at ``LOG_LEVEL=debug`` the full line is back. At info
    a line per decision cost more than the metrics of the whole batch, so
    the info stream gets one summary per committed batch: counts per
    outcome and strategy, and the ids of the tasks not placed (failed, or
    waiting for a retry).
    """
    if log.is_enabled_for(logging.DEBUG):
        for decision in plan.decisions:
            log.debug(
                "decision",
                task_id=decision.task_id,
                node=decision.node,
                strategy=decision.strategy,
                reason=str(decision.reason) if decision.reason else None,
                rejections=decision.rejections,
            )
    if not plan.decisions or not log.is_enabled_for(logging.INFO):
        return
    outcomes: collections.Counter[str] = collections.Counter()
    strategies: collections.Counter[str] = collections.Counter()
    for (strategy, outcome), n in plan.tally.items():
        outcomes[outcome] += n
        strategies[strategy] += n
    # Not placed: failed, or waiting for a retry (the task's row says which, and why).
    failed = [d.task_id for d in plan.decisions if d.node is None]
    log.info(
        "group committed",
        decisions=len(plan.decisions),
        outcomes=dict(outcomes),
        strategies=dict(strategies),
        not_placed=failed[:SUMMARY_FAILED_IDS],
        not_placed_more=max(0, len(failed) - SUMMARY_FAILED_IDS),
        seconds=round(seconds, 4),
    )


def log_releases(plan: BatchPlan, result: CommitResult, hook: Callable[..., None]) -> None:
    """One line and one count per release: it ended an allocation, cancelled a task, or was ignored."""
    ended = {a.task_id for a in result.released}
    cancelled = set(result.cancelled)
    ignored = set(result.ignored)
    for item in plan.items:
        if not isinstance(item, Release):
            continue
        tid = item.task_id
        outcome = (
            "released" if tid in ended else "cancelled" if tid in cancelled
            else "ignored" if tid in ignored else "released"
        )  # fmt: skip
        log.info("release", task_id=tid, outcome=outcome)
        hook("release_recorded", outcome)


__all__ = ["log_committed", "log_decisions", "log_releases"]
