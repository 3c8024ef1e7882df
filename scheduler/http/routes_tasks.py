"""``GET /result/{task_id}``, ``GET /tasks/{task_id}`` and ``GET /tasks``: tasks as the store holds them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from scheduler.models import TaskStatus
from scheduler.store import TaskRecord

from .context import Api
from .params import NOT_FOUND, UNAVAILABLE, TaskIdParam
from .schemas import NodeRef, Result, TaskDetail


def add_routes(router: APIRouter) -> None:
    """Declare the task reads on ``router`` (the app's own: see :mod:`.app`)."""
    router.get(
        "/result/{task_id}",
        response_model=Result,
        response_model_exclude_none=True,
        tags=["tasks"],
        responses={**NOT_FOUND, **UNAVAILABLE},
    )(result)
    router.get(
        "/tasks/{task_id}", response_model=TaskDetail, tags=["tasks"], responses={**NOT_FOUND, **UNAVAILABLE}
    )(task)
    router.get("/tasks", response_model=list[TaskDetail], tags=["tasks"], responses=UNAVAILABLE)(tasks)


def result(task_id: TaskIdParam, api: Api) -> Result:
    """The outcome as the first prototype answered it: processing, completed (with the node), failed."""
    return result_of(api.task_or_404(task_id))


def task(task_id: TaskIdParam, api: Api) -> TaskDetail:
    """The full task record: status, node, reason code and message, attempts, strategy, the request."""
    return TaskDetail.model_validate(api.task_or_404(task_id).to_detail_json())


def tasks(
    api: Api,
    status: Annotated[TaskStatus | None, Query(description="only tasks in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[TaskDetail]:
    """Tasks, most recently updated first."""
    return [TaskDetail.model_validate(t.to_detail_json()) for t in api.store.list_tasks(status, limit=limit)]


def result_of(task: TaskRecord) -> Result:
    """The prototype's three answers: a placed or released task is completed, a failed one failed."""
    if task.status in (TaskStatus.SCHEDULED, TaskStatus.RELEASED) and task.node is not None:
        return Result(status="completed", result=NodeRef(name=task.node, ip=task.node_ip))
    if task.status is TaskStatus.FAILED:
        error = task.message or (task.reason.value if task.reason else "failed")
        return Result(status="failed", error=error)
    return Result(status="processing")
