"""The worker's observability callbacks (the metrics implement them) and how they are called.

Why a module: the worker must never stop or stall because a figure could not
be counted, so every optional hook goes through :func:`call_hook`, which
skips a hook the implementation lacks and logs one that raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import structlog

if TYPE_CHECKING:
    from scheduler.store import CommitResult
    from scheduler.worker.batch import BatchPlan

log = structlog.get_logger(__name__)


class WorkerHooks(Protocol):
    """Observability callbacks (metrics); every method must be quick and never raise."""

    def group_committed(self, plan: BatchPlan, result: CommitResult, seconds: float) -> None: ...
    def leadership_changed(self, leader: bool, epoch: int) -> None: ...


def call_hook(hooks: object | None, name: str, *args: Any) -> None:
    """Call an optional observability hook; hooks must never break the loop."""
    method = getattr(hooks, name, None) if hooks is not None else None
    if method is None:
        return
    try:
        method(*args)
    except Exception:
        log.exception("worker hook failed", hook=name)


__all__ = ["WorkerHooks", "call_hook"]
