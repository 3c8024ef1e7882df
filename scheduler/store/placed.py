"""The requests of the tasks that hold an active allocation: what a move must be checked against.

A move is judged with the task's own request (pool, tags, groups, devices),
which the tasks table keeps as JSON; the allocation row alone holds only
the amounts. Rows whose request no longer validates (written by an older
version with other rules) are left out, and the planners list those VMs as
unmovable instead of guessing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pydantic import ValidationError
from sqlalchemy import select

from scheduler.models import SchedulingRequest
from scheduler.store.engine import READ_ONLY_OPTION
from scheduler.store.schema import allocations, tasks

if TYPE_CHECKING:
    from scheduler.store.store import Store


def placed_requests(store: Store, task_ids: Iterable[str] | None = None) -> dict[str, SchedulingRequest]:
    """task id -> request, for the tasks (of ``task_ids``) with an active allocation."""
    stmt = (
        select(tasks.c.task_id, tasks.c.request)
        .join(allocations, allocations.c.task_id == tasks.c.task_id)
        .where(allocations.c.released_at.is_(None))
    )
    if task_ids is not None:
        wanted = list(task_ids)
        if not wanted:
            return {}
        stmt = stmt.where(tasks.c.task_id.in_(wanted))
    out: dict[str, SchedulingRequest] = {}
    with store.engine.connect() as conn:
        conn.execution_options(**{READ_ONLY_OPTION: True})
        with conn.begin():
            for tid, body in conn.execute(stmt):
                try:
                    out[tid] = SchedulingRequest.model_validate_json(body)
                except ValidationError:
                    continue
    return out
