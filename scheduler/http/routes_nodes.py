"""``GET /nodes``: every node with what its allocations hold (as ``scheduler nodes list --json``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from scheduler.models import NAME_PATTERN
from scheduler.store.views import nodes_with_usage

from .context import Api
from .params import UNAVAILABLE
from .schemas import NodeOut


def add_routes(router: APIRouter) -> None:
    """Declare ``GET /nodes`` on ``router`` (the app's own: see :mod:`.app`)."""
    router.get("/nodes", response_model=list[NodeOut], tags=["nodes"], responses=UNAVAILABLE)(list_nodes)


def list_nodes(
    api: Api,
    # A filter outside the name pattern can match nothing, and a NUL in it would reach PostgreSQL,
    # which refuses it as if the database were down.
    pool: Annotated[str | None, Query(pattern=NAME_PATTERN, description="only nodes of this pool")] = None,
) -> JSONResponse:
    """Every node, what its allocations hold, and the utilization ratios (as ``nodes list --json``).

    Answered as a ready JSONResponse (still documented as ``list[NodeOut]``):
    re-validating 10,000 node models on the way out cost seconds.
    """
    return JSONResponse(nodes_with_usage(api.store, pool, api.settings.capacity_defaults()))
