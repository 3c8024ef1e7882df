"""The HTTP face of a replica: health, metrics, the status API, submission and the dashboard.

Every replica serves it, leader or standby: reads come from the database
that all replicas share, and ``POST /schedule`` only publishes to the broker,
so any replica can take it. The app is built by :func:`create_app` from the
process's collaborators (store, publisher, worker state, metrics registry,
settings) and reaches for no global: tests build as many apps as they like.

The routes live in one module per concern (``routes_health``,
``routes_schedule``, ``routes_plan``, ``routes_tasks``, ``routes_nodes``,
``routes_dashboard``): plain functions that receive the collaborators as the
:data:`~.context.Api` dependency, which reads the :class:`~.context.ApiContext`
set here once in ``app.state``. Each module's ``add_routes`` declares its
routes on the app's own :class:`~fastapi.APIRouter` (``app.router``) rather
than on a router of its own that the app includes: since FastAPI 0.165
``include_router`` keeps an included router as one nested entry of
``app.routes`` instead of copying its routes, and the routes, their order
and the OpenAPI document stay exactly those of one flat app this way, on any
FastAPI the project allows.

Endpoints are plain ``def`` functions on purpose: the store and the publisher
block (SQLAlchemy, pika), and FastAPI runs ``def`` endpoints in its thread
pool, so a slow query never stalls the event loop or the other requests.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from scheduler.config import Settings
from scheduler.plan_service import PlanService
from scheduler.producer.publisher import Publisher
from scheduler.store import Store
from scheduler.worker.state import WorkerState

from . import routes_dashboard, routes_health, routes_nodes, routes_plan, routes_schedule, routes_tasks
from .auth import Gatekeeper, SubmissionLimiter, TokenTable
from .context import ApiContext, Lazy
from .errors import install_exception_handlers
from .middleware import HeadAsGet, RequestGuard, request_metrics
from .openapi import declare_bearer_auth
from .schemas import Health, Readiness
from .summary import SummaryBuilder


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
        docs_url=None,  # served by routes_dashboard from local files: no CDN
        redoc_url=None,
    )
    swagger = routes_dashboard.swagger_assets()
    app.state.api = ApiContext(
        store=store,
        settings=settings,
        state=state,
        summary=SummaryBuilder(store, settings, state),
        planner=Lazy(lambda: PlanService(store, settings)),
        submit=routes_schedule.Submitter(publisher),
        allow=list(settings.webhooks.allow),
        swagger_assets=swagger,
    )
    install_exception_handlers(app)

    # The order of the routes is the order of the paths in the OpenAPI document.
    routes_health.add_routes(app.router)
    routes_schedule.add_routes(app.router)
    routes_plan.add_routes(app.router)
    routes_tasks.add_routes(app.router)
    routes_nodes.add_routes(app.router)
    routes_dashboard.add_routes(app.router)
    routes_dashboard.mount_files(app, swagger)
    routes_dashboard.add_docs_route(app.router)

    app.add_middleware(HeadAsGet)  # the innermost: the gate and the metrics see the HEAD
    tokens = TokenTable(settings.http.tokens)
    app.add_middleware(Gatekeeper, tokens=tokens, limiter=SubmissionLimiter(settings.http.rate_limit))
    if tokens:
        declare_bearer_auth(app)
    requests, seconds = request_metrics(registry)
    app.add_middleware(RequestGuard, requests=requests, seconds=seconds)
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
        return routes_health.readiness(store, state)

    app.add_middleware(HeadAsGet)
    return app
