"""The log lines of a committed batch: one per decision, one per release, one per conflict.

Why a module: these lines are the audit trail an operator greps for ("why
did task X land on node Y"), so their fields are kept together and apart
from the loop that acks.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from scheduler.store.records import CommitResult, Release
from scheduler.worker.group import GroupPlan

log = structlog.get_logger(__name__)


def log_committed(plan: GroupPlan, result: CommitResult, hook: Callable[..., None]) -> None:
    """Every decision, release and conflict of a committed batch; ``hook`` counts release outcomes."""
    for decision in plan.decisions:
        log.info(
            "decision",
            task_id=decision.task_id,
            node=decision.node,
            strategy=decision.strategy,
            reason=str(decision.reason) if decision.reason else None,
            rejections=decision.rejections,
        )
    log_releases(plan, result, hook)
    for tid in result.conflicts:
        log.warning("task id reused with a different request; the newcomer failed", task_id=tid)


def log_releases(plan: GroupPlan, result: CommitResult, hook: Callable[..., None]) -> None:
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


__all__ = ["log_committed", "log_releases"]
