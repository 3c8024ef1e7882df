"""Declarations the routers share: the task id path parameter and the common error answers in OpenAPI."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path as PathParam

from scheduler.models import MAX_BODY_BYTES, TASK_ID_PATTERN

from .schemas import ErrorBody

TaskIdParam = Annotated[str, PathParam(pattern=TASK_ID_PATTERN, description="the task id")]

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "unknown task id"}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "database unreachable"}
}
UNREADABLE: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "the body cannot be read (not UTF-8, a number of over 4300 digits, nested too deeply)",
    }
}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": f"body larger than {MAX_BODY_BYTES} bytes"}
}
RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorBody, "description": "over the per-token rate limit; see Retry-After"}
}
