"""``GET /healthz`` and ``GET /readyz``: the probes, open to anyone, on the API port and the metrics port."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from scheduler.safetext import first_line
from scheduler.store import Store
from scheduler.worker.state import WorkerState

from .context import Api
from .schemas import Health, Readiness
from .summary import role_of


def add_routes(router: APIRouter) -> None:
    """Declare ``GET /healthz`` and ``GET /readyz`` on ``router`` (the app's own: see :mod:`.app`)."""
    router.get("/healthz", response_model=Health, tags=["health"])(healthz)
    router.get(
        "/readyz",
        response_model=Readiness,
        tags=["health"],
        responses={503: {"model": Readiness, "description": "not ready; `reasons` says why"}},
    )(readyz)


def healthz() -> Health:
    """Liveness: the process serves HTTP; nothing else, so a database outage never restarts pods."""
    return Health()


def readyz(api: Api) -> JSONResponse:
    """Readiness: the database answers (schema in place) and the worker holds a broker connection.

    A healthy standby is ready: it serves reads and accepts submissions.
    """
    return readiness(api.store, api.state)


def readiness(store: Store, state: Callable[[], WorkerState] | None) -> JSONResponse:
    """The readiness answer, 200 or 503, with every check's verdict (the metrics port answers it too)."""
    checks: dict[str, str] = {}
    try:
        store.fence_epoch()
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {first_line(exc)}"
    current = state() if state is not None else None
    if current is not None:
        checks["broker"] = "ok" if current.broker_connected else "not connected"
        checks.update(current.readiness_checks())
    reasons = [f"{name}: {verdict}" for name, verdict in checks.items() if verdict != "ok"]
    body = Readiness(ready=not reasons, role=role_of(current), checks=checks, reasons=reasons)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.ready else 503)
