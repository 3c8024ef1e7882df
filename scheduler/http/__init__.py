"""The HTTP face of every replica: health, Prometheus metrics, the status API and the dashboard.

:func:`create_app` builds the FastAPI app from the process's collaborators;
:class:`HttpServer` runs it with uvicorn in a background thread;
:func:`start_http` is the one-call wiring ``scheduler worker`` uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from scheduler.http.app import create_app, create_metrics_app
from scheduler.http.server import HttpServer

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from scheduler.config import Settings
    from scheduler.producer.publisher import Publisher
    from scheduler.store import Store
    from scheduler.worker.state import WorkerState


LOOPBACK = "127.0.0.1"


@dataclass
class HttpServers:
    """The two listeners of a replica: the API (and dashboard) and the metrics port."""

    api: HttpServer
    metrics: HttpServer

    @property
    def url(self) -> str:
        return self.api.url

    def stop(self) -> None:
        self.api.stop()
        self.metrics.stop()


def api_host(settings: Settings) -> str:
    """Where the API listens: ``http.host``, but only loopback while no token is configured.

    Without tokens the API answers anyone who reaches it, so it must not be
    reachable from the network.
    """
    return settings.http.host if settings.http.tokens else LOOPBACK


def start_http(
    settings: Settings,
    store: Store,
    *,
    registry: CollectorRegistry,
    state: Callable[[], WorkerState] | None,
    publisher: Publisher | None = None,
) -> HttpServers | None:
    """Start the API on ``http.host:http.port`` and the metrics port; None when ``http.enabled`` is false.

    Without an explicit ``publisher`` one is made from ``amqp.*``, so every
    replica accepts ``POST /schedule``. The metrics port starts first, so the
    probes answer as soon as the API does.
    """
    if not settings.http.enabled:
        return None
    if publisher is None:
        from scheduler.broker import Topology
        from scheduler.producer.publisher import Publisher

        publisher = Publisher(str(settings.amqp.url), Topology.from_config(settings.amqp))
    host = api_host(settings)
    if host != settings.http.host:
        log.warning(
            "no API token configured (http.tokens / HTTP_TOKENS): the API listens on 127.0.0.1 only",
            configured_host=settings.http.host,
        )
    metrics = HttpServer(
        create_metrics_app(store=store, state=state, registry=registry),
        host=settings.http.metrics_host,
        port=settings.http.metrics_port,
        limits=settings.http,
        name="metrics",
    )
    metrics.start()
    app = create_app(store=store, publisher=publisher, state=state, registry=registry, settings=settings)
    api = HttpServer(app, host=host, port=settings.http.port, limits=settings.http, name="http")
    try:
        api.start()
    except BaseException:
        metrics.stop()
        raise
    return HttpServers(api, metrics)


__all__ = ["HttpServer", "HttpServers", "api_host", "create_app", "create_metrics_app", "start_http"]
