"""What the routers work with, set once per app by :func:`scheduler.http.create_app`.

Each route reaches the process's collaborators (store, settings, worker
state, planner, submitter) through the :data:`Api` dependency, which reads the
one :class:`ApiContext` the app carries in ``app.state``. No module holds a
client or a global, so tests build as many apps as they like, each with its
own store and settings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Generic, TypeVar

from fastapi import Depends, HTTPException, Request

from scheduler.config import Settings
from scheduler.plan_service import PlanService
from scheduler.store import Store, TaskRecord
from scheduler.worker.state import WorkerState

from .summary import SummaryBuilder

if TYPE_CHECKING:
    from .routes_schedule import Submitter

T = TypeVar("T")


class Lazy(Generic[T]):
    """Made on first use (a planner loads NumPy and the strategies: no cost for a replica never asked)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._lock = threading.Lock()

    def __call__(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value


@dataclass(frozen=True)
class ApiContext:
    """The collaborators of one app; ``state`` None means no worker runs in this process."""

    store: Store
    settings: Settings
    state: Callable[[], WorkerState] | None
    summary: SummaryBuilder
    planner: Lazy[PlanService]
    submit: Submitter
    allow: list[str]
    """``webhooks.allow``: the patterns a submission's ``callback_url`` must match."""
    swagger_assets: Path | None
    """Where Swagger UI's files are served from (``/docs/assets``), or None to load them from a CDN."""

    def task_or_404(self, task_id: str) -> TaskRecord:
        found = self.store.get_task(task_id)
        if found is None:
            raise HTTPException(404, f"unknown task {task_id}")
        return found


async def api_context(request: Request) -> ApiContext:
    """The app's :class:`ApiContext`. ``async`` because it only reads an attribute: no thread pool hop."""
    context: ApiContext = request.app.state.api
    return context


Api = Annotated[ApiContext, Depends(api_context)]
"""A route's parameter of this type receives the app's :class:`ApiContext` (no query or body parameter)."""
