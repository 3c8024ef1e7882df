"""``POST /plan`` and ``GET /tasks/{task_id}/plan``: where a request would go now, and why not elsewhere.

Nothing is reserved and nothing is published. The planner is made on the
first call (it loads NumPy and the strategies) and caches the fleet by its
revision in the database.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from scheduler.models import SchedulingRequest, format_validation_error

from .context import Api
from .params import NOT_FOUND, RATE_LIMITED, TOO_LARGE, UNAVAILABLE, UNREADABLE, TaskIdParam
from .schemas import ErrorBody, PlanOut


def add_routes(router: APIRouter) -> None:
    """Declare ``POST /plan`` and ``GET /tasks/{task_id}/plan`` on ``router`` (the app's own)."""
    router.post(
        "/plan",
        tags=["tasks"],
        response_model=PlanOut,
        responses={**UNREADABLE, **TOO_LARGE, **RATE_LIMITED, **UNAVAILABLE},
    )(plan)
    router.get(
        "/tasks/{task_id}/plan",
        response_model=PlanOut,
        tags=["tasks"],
        responses={
            **NOT_FOUND,
            **UNAVAILABLE,
            409: {"model": ErrorBody, "description": "no valid request is stored for this task"},
        },
    )(task_plan)


def plan(request: SchedulingRequest, api: Api) -> JSONResponse:
    """Where the request would be placed now, the top candidates, and why other nodes were not.

    Nothing is reserved and nothing is published. Answered by any
    replica from the committed state in the database (the fleet is
    cached by its revision, which the answer carries).
    """
    return JSONResponse(api.planner().plan(request))


def task_plan(task_id: TaskIdParam, api: Api) -> JSONResponse:
    """The task's stored request planned now: where it would go and why not elsewhere ("why not").

    What the dashboard links to from each failure. The plan is computed on
    demand from the committed state, so it explains the fleet of now, which
    may differ from the fleet the task failed on; nothing is reserved.
    """
    record = api.task_or_404(task_id)
    if record.request is None:
        raise HTTPException(409, f"task {task_id} has no stored request (it failed before one was read)")
    try:
        request = SchedulingRequest.model_validate(record.request, strict=False)
    except ValidationError as exc:
        raise HTTPException(
            409, f"task {task_id}'s stored request is not valid: {format_validation_error(exc)}"
        ) from None
    return JSONResponse(api.planner().plan(request))
