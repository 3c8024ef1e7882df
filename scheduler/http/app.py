"""The HTTP face of a replica: health, metrics, the status API, submission and the dashboard.

Every replica serves it, leader or standby: reads come from the database
that all replicas share, and ``POST /schedule`` only publishes to the broker,
so any replica can take it. The app is built by :func:`create_app` from the
process's collaborators (store, publisher, worker state, metrics registry,
settings) and reaches for no global: tests build as many apps as they like.

Endpoints are plain ``def`` functions on purpose: the store and the publisher
block (SQLAlchemy, pika), and FastAPI runs ``def`` endpoints in its thread
pool, so a slow query never stalls the event loop or the other requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

import structlog
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from scheduler.broker import BrokerUnavailable
from scheduler.config import Settings
from scheduler.models import MAX_BODY_BYTES, SchedulingRequest, TaskStatus, format_validation_error
from scheduler.plan_service import PlanService
from scheduler.producer.publisher import Outgoing, Publisher
from scheduler.safetext import first_line
from scheduler.store import DatabaseUnavailable, Store, TaskRecord
from scheduler.store.views import nodes_with_usage
from scheduler.webhooks.policy import callback_refusal, display_url
from scheduler.worker.state import WorkerState

from .auth import Gatekeeper, SubmissionLimiter, TokenTable, required_role
from .schemas import (
    Accepted,
    Conflict,
    ErrorBody,
    Health,
    NodeOut,
    NodeRef,
    PlanOut,
    Readiness,
    Result,
    Summary,
    TaskDetail,
)
from .summary import SummaryBuilder, role_of

log = structlog.get_logger(__name__)
T = TypeVar("T")

TASK_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
STATIC_DIR = Path(__file__).parent / "static"
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

TaskIdParam = Annotated[str, PathParam(pattern=TASK_ID_PATTERN, description="the task id")]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "unknown task id"}}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "database unreachable"}
}

ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


def create_app(
    *,
    store: Store,
    publisher: Publisher | None,
    state: Callable[[], WorkerState] | None,
    registry: CollectorRegistry,
    settings: Settings,
) -> FastAPI:
    """The FastAPI app of one replica.

    ``publisher`` None makes ``POST /schedule`` answer 503 (a read-only
    replica). ``state`` None means no worker runs in this process: readiness
    then checks the database only, and the dashboard reads everything from
    the database. HTTP request metrics (``scheduler_http_*``) are registered
    in ``registry``, so call this once per registry.
    """
    app = FastAPI(
        title="virtflow-scheduler",
        version="0.1.0",
        summary="Places VMs on bare-metal nodes: submit requests, read their outcome, watch the fleet.",
        docs_url=None,  # served below from local files: no CDN
        redoc_url=None,
    )
    summary = SummaryBuilder(store, settings, state)
    planner = _Lazy(lambda: PlanService(store, settings))
    submit = _Submitter(publisher)
    allow = list(settings.webhooks.allow)

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(SQLAlchemyError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database error while serving", path=request.url.path, error=first_line(exc))
        return JSONResponse({"detail": f"database unavailable: {first_line(exc)}"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(request, exc)

    # ---------------------------------------------------------------- health
    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        """Liveness: the process serves HTTP; nothing else, so a database outage never restarts pods."""
        return Health()

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["health"],
        responses={503: {"model": Readiness, "description": "not ready; `reasons` says why"}},
    )
    def readyz() -> JSONResponse:
        """Readiness: the database answers (schema in place) and the worker holds a broker connection.

        A healthy standby is ready: it serves reads and accepts submissions.
        """
        return _readiness(store, state)

    # ------------------------------------------------------------ submission
    @app.post(
        "/schedule",
        status_code=202,
        response_model=Accepted,
        tags=["tasks"],
        responses={
            400: {"model": ErrorBody, "description": "the body cannot be read (not UTF-8)"},
            409: {"model": Conflict, "description": "the task id exists; nothing was published"},
            429: {"model": ErrorBody, "description": "over the per-token rate limit; see Retry-After"},
            413: {"model": ErrorBody, "description": f"body larger than {MAX_BODY_BYTES} bytes"},
            503: {"model": ErrorBody, "description": "the broker is unavailable; nothing was published"},
        },
    )
    def schedule(request: SchedulingRequest) -> Accepted | JSONResponse:
        """Publish one request (the queue's message contract) with publisher confirms; 202 with its task id.

        The task is recorded as ``queued`` once the broker confirmed the
        message, so ``GET /result`` answers at once. A ``callback_url`` must
        match ``webhooks.allow`` (422 otherwise). A task id that exists
        already is refused with 409 and that task's status, and nothing is
        published: nobody can take over someone else's task id. (Two
        submissions of a new id racing each other both pass this check; the
        worker keeps the first and fails the other as a conflict.)
        """
        existing = store.get_task(request.task_id)
        if existing is not None:
            conflict = Conflict(
                detail=f"task {request.task_id} exists ({existing.status.value}); nothing was published",
                task_id=request.task_id,
                status=existing.status,
            )
            return JSONResponse(conflict.model_dump(mode="json"), status_code=409)
        if request.callback_url is not None:
            refusal = callback_refusal(request.callback_url, allow)
            if refusal is not None:
                raise RequestValidationError(
                    [
                        {
                            "type": "callback_refused",
                            "loc": ("body", "callback_url"),
                            "msg": refusal,
                            "input": display_url(request.callback_url),  # credentials hidden
                        }
                    ]
                )
        # Publish first, record second. Recording first would leave a task ``queued`` forever
        # whenever the publish then failed (nothing would ever process it, and the store has no
        # way to take the row back); in this order a refused publish leaves no trace, and a worker
        # that commits before the record lands wins, since record_queued never overwrites a row.
        submit(request)
        try:
            store.record_queued(request)
        except Exception as exc:
            # The message is confirmed and will be processed; the task shows up when the worker commits it.
            log.warning(
                "could not record a published task as queued", task_id=request.task_id, error=first_line(exc)
            )
        return Accepted(task_id=request.task_id)

    @app.post(
        "/plan",
        tags=["tasks"],
        response_model=PlanOut,
        responses={
            400: {"model": ErrorBody, "description": "the body cannot be read (not UTF-8)"},
            413: {"model": ErrorBody, "description": f"body larger than {MAX_BODY_BYTES} bytes"},
            429: {"model": ErrorBody, "description": "over the per-token rate limit; see Retry-After"},
            **_UNAVAILABLE,
        },
    )
    def plan(request: SchedulingRequest) -> JSONResponse:
        """Where the request would be placed now, the top candidates, and why other nodes were not.

        Nothing is reserved and nothing is published. Answered by any
        replica from the committed state in the database (the fleet is
        cached by its revision, which the answer carries).
        """
        return JSONResponse(planner().plan(request))

    # ----------------------------------------------------------------- reads
    @app.get(
        "/result/{task_id}",
        response_model=Result,
        response_model_exclude_none=True,
        tags=["tasks"],
        responses={**_NOT_FOUND, **_UNAVAILABLE},
    )
    def result(task_id: TaskIdParam) -> Result:
        """The outcome as the first prototype answered it: processing, completed (with the node), failed."""
        return _result(_task_or_404(store, task_id))

    @app.get(
        "/tasks/{task_id}",
        response_model=TaskDetail,
        tags=["tasks"],
        responses={**_NOT_FOUND, **_UNAVAILABLE},
    )
    def task(task_id: TaskIdParam) -> TaskDetail:
        """The full task record: status, node, reason code and message, attempts, strategy, the request."""
        return TaskDetail.model_validate(_task_or_404(store, task_id).to_detail_json())

    @app.get(
        "/tasks/{task_id}/plan",
        response_model=PlanOut,
        tags=["tasks"],
        responses={
            **_NOT_FOUND,
            **_UNAVAILABLE,
            409: {"model": ErrorBody, "description": "no valid request is stored for this task"},
        },
    )
    def task_plan(task_id: TaskIdParam) -> JSONResponse:
        """The task's stored request planned now: where it would go and why not elsewhere ("why not").

        What the dashboard links to from each failure. The plan is computed on
        demand from the committed state, so it explains the fleet of now, which
        may differ from the fleet the task failed on; nothing is reserved.
        """
        record = _task_or_404(store, task_id)
        if record.request is None:
            raise HTTPException(409, f"task {task_id} has no stored request (it failed before one was read)")
        try:
            request = SchedulingRequest.model_validate(record.request, strict=False)
        except ValidationError as exc:
            raise HTTPException(
                409, f"task {task_id}'s stored request is not valid: {format_validation_error(exc)}"
            ) from None
        return JSONResponse(planner().plan(request))

    @app.get("/tasks", response_model=list[TaskDetail], tags=["tasks"], responses=_UNAVAILABLE)
    def tasks(
        status: Annotated[TaskStatus | None, Query(description="only tasks in this status")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[TaskDetail]:
        """Tasks, most recently updated first."""
        return [TaskDetail.model_validate(t.to_detail_json()) for t in store.list_tasks(status, limit=limit)]

    @app.get("/nodes", response_model=list[NodeOut], tags=["nodes"], responses=_UNAVAILABLE)
    def list_nodes(
        pool: Annotated[str | None, Query(max_length=63, description="only nodes of this pool")] = None,
    ) -> JSONResponse:
        """Every node, what its allocations hold, and the utilization ratios (as ``nodes list --json``).

        Answered as a ready JSONResponse (still documented as ``list[NodeOut]``):
        re-validating 10,000 node models on the way out cost seconds.
        """
        return JSONResponse(nodes_with_usage(store, pool, settings.capacity_defaults()))

    @app.get("/api/summary", response_model=Summary, tags=["dashboard"], responses=_UNAVAILABLE)
    def api_summary() -> Summary:
        """Everything the dashboard shows: leader, pools, every node's utilization, recent outcomes."""
        return summary.get()

    # ------------------------------------------------------- dashboard, docs
    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _mount_docs(app)

    tokens = TokenTable(settings.http.tokens)
    app.add_middleware(Gatekeeper, tokens=tokens, limiter=SubmissionLimiter(settings.http.rate_limit))
    if tokens:
        _declare_bearer_auth(app)
    app.add_middleware(
        _Guard,
        requests=Counter(
            "scheduler_http_requests_total",
            "HTTP requests served, by method, route template and status.",
            ["method", "route", "code"],
            registry=registry,
        ),
        seconds=Histogram(
            "scheduler_http_request_seconds",
            "HTTP request duration by route template, seconds.",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        ),
    )
    return app


def create_metrics_app(
    *, store: Store, state: Callable[[], WorkerState] | None, registry: CollectorRegistry
) -> FastAPI:
    """The app of the metrics port: ``/metrics``, ``/healthz`` and ``/readyz``, and no API route.

    It sits on its own port so Prometheus and the kubelet's probes can be let
    in (by a NetworkPolicy) without letting them reach the API; it carries no
    authentication, and serves nothing but these three.
    """
    app = FastAPI(title="virtflow-scheduler metrics", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """Prometheus text exposition of this replica's metrics (names prefixed ``scheduler_``)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """Liveness, as on the API port."""
        return Health()

    @app.get("/readyz", response_model=Readiness)
    def readyz() -> JSONResponse:
        """Readiness, as on the API port."""
        return _readiness(store, state)

    return app


def _readiness(store: Store, state: Callable[[], WorkerState] | None) -> JSONResponse:
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


def _declare_bearer_auth(app: FastAPI) -> None:
    """Say in the OpenAPI document that every operation but the health checks takes a bearer token.

    The Swagger UI at ``/docs`` then offers its "Authorize" button.
    """
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "roles: read, submit, admin"}
            }
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    if required_role(method.upper(), path) is not None:
                        operation["security"] = [{"bearer": []}]
                        operation.setdefault("responses", {}).update(
                            {
                                "401": {"description": "missing or invalid bearer token"},
                                "403": {"description": "the token's role is too low"},
                            }
                        )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ---------------------------------------------------------------- submission


class _Submitter:
    """Publishes one request with confirms, declaring the topology the first time.

    Why one shared :class:`Publisher` is safe across request threads: it holds
    only settings; every :meth:`Publisher.publish` call opens its own
    connection on the calling thread and closes it, so no pika object is ever
    shared between threads (pika is not thread-safe). The cost is a
    connection handshake per submission (a few milliseconds on a LAN), which
    suits an HTTP entry point meant for people and provisioning systems;
    bulk producers publish to the broker directly (``scheduler submit``).
    """

    def __init__(self, publisher: Publisher | None) -> None:
        self.publisher = publisher
        self._declared = False
        self._lock = threading.Lock()

    def __call__(self, request: SchedulingRequest) -> None:
        if self.publisher is None:
            raise HTTPException(
                503, "this replica does not accept submissions (no broker publisher configured)"
            )
        try:
            self._declare_once(self.publisher)
            report = self.publisher.publish([Outgoing.request(request)])
        except BrokerUnavailable as exc:
            log.warning("submission refused: broker unavailable", task_id=request.task_id, error=str(exc))
            raise HTTPException(503, f"broker unavailable: {exc}") from None
        if not report.ok:
            reason = report.failed.get(request.task_id, "not confirmed")
            log.warning("submission not confirmed by the broker", task_id=request.task_id, reason=reason)
            raise HTTPException(503, f"broker did not confirm the message: {reason}")

    def _declare_once(self, publisher: Publisher) -> None:
        """Declare the topology once, so a submission before any worker started is kept, not unroutable."""
        with self._lock:
            if not self._declared:
                publisher.declare()
                self._declared = True


# ------------------------------------------------------------------ helpers


class _Lazy(Generic[T]):
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


def _task_or_404(store: Store, task_id: str) -> TaskRecord:
    found = store.get_task(task_id)
    if found is None:
        raise HTTPException(404, f"unknown task {task_id}")
    return found


def _result(task: TaskRecord) -> Result:
    if task.status in (TaskStatus.SCHEDULED, TaskStatus.RELEASED) and task.node is not None:
        return Result(status="completed", result=NodeRef(name=task.node, ip=task.node_ip))
    if task.status is TaskStatus.FAILED:
        error = task.message or (task.reason.value if task.reason else "failed")
        return Result(status="failed", error=error)
    return Result(status="processing")


def _mount_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` from the ``swagger-ui-py`` package's files: works without internet.

    Without that package the page falls back to FastAPI's default, which
    loads Swagger UI from a CDN.
    """
    try:
        assets = resources.files("swagger_ui") / "static"
        local = Path(str(assets))
        available = (local / "swagger-ui-bundle.js").is_file()
    except (ModuleNotFoundError, TypeError):
        available = False
    if available:
        app.mount("/docs/assets", StaticFiles(directory=local), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if not available:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="virtflow-scheduler API")
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="virtflow-scheduler API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )


# --------------------------------------------------------------- middleware


class _Guard:
    """Pure ASGI middleware: request metrics, and the body size limit before any parsing.

    Pure ASGI rather than Starlette's ``BaseHTTPMiddleware`` because the
    latter copies every response through a memory stream, which would cost
    the ``/metrics`` budget. Request bodies are bounded like queue messages
    (``MAX_BODY_BYTES``): a declared ``Content-Length`` over the limit is
    refused at once, and a chunked body is counted as it streams in.
    """

    def __init__(self, app: ASGIApp, *, requests: Counter, seconds: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.seconds = seconds

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        length = _content_length(scope)
        if length is not None and length > MAX_BODY_BYTES:
            await _too_large(send_wrapper)
        else:
            seen = {"bytes": 0}

            async def bounded_receive() -> MutableMapping[str, Any]:
                message = await receive()
                if message["type"] == "http.request":
                    seen["bytes"] += len(message.get("body", b""))
                    if seen["bytes"] > MAX_BODY_BYTES:
                        # Raised inside the endpoint's body read: FastAPI turns it into the 413 answer.
                        raise HTTPException(413, f"request body larger than {MAX_BODY_BYTES} bytes")
                return message

            await self.app(scope, bounded_receive, send_wrapper)
        # The route's path template keeps the label set small (no task ids); a mount (static
        # files) is known by the root path it set; anything unmatched is "other".
        template = getattr(scope.get("route"), "path", None) or scope.get("root_path") or "other"
        self.requests.labels(method=scope["method"], route=template, code=str(status["code"])).inc()
        self.seconds.labels(route=template).observe(time.perf_counter() - started)


def _content_length(scope: MutableMapping[str, Any]) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
    body = b'{"detail":"request body larger than %d bytes"}' % MAX_BODY_BYTES
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _json_content_type(value: str) -> bool:
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _validation_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with the reason first when the body was not sent as JSON.

    A body sent with another content type (``curl -d`` sends
    ``application/x-www-form-urlencoded``) is not parsed as JSON, and the
    errors that follow from it ("Input should be a valid dictionary") do not
    say why: the first error then names the header and the value to send.
    """
    errors = list(exc.errors())
    content_type = request.headers.get("content-type")
    has_body = request.method in ("POST", "PUT")
    if has_body and content_type is not None and not _json_content_type(content_type):
        errors.insert(
            0,
            {
                "type": "content_type",
                "loc": ["header", "content-type"],
                "msg": "the body must be JSON sent with Content-Type: application/json, "
                f"not {content_type!r}",
                "input": content_type,
            },
        )
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)
