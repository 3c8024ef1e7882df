"""The HTTP face of every replica: health, Prometheus metrics, the status API and the dashboard.

:func:`create_app` builds the FastAPI app from the process's collaborators;
:class:`HttpServer` runs it with uvicorn in a background thread;
:func:`start_http` is the one-call wiring ``scheduler worker`` uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from scheduler.http.app import create_app
from scheduler.http.server import HttpServer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from scheduler.config import Settings
    from scheduler.producer.publisher import Publisher
    from scheduler.store import Store
    from scheduler.worker.daemon import WorkerState


def start_http(
    settings: Settings,
    store: Store,
    *,
    registry: CollectorRegistry,
    state: Callable[[], WorkerState] | None,
    publisher: Publisher | None = None,
) -> HttpServer | None:
    """Build the app and start serving on ``http.host:http.port``; None when ``http.enabled`` is false.

    Without an explicit ``publisher`` one is made from ``amqp.*``, so every
    replica accepts ``POST /schedule``.
    """
    if not settings.http.enabled:
        return None
    if publisher is None:
        from scheduler.broker import Topology
        from scheduler.producer.publisher import Publisher

        publisher = Publisher(str(settings.amqp.url), Topology.from_config(settings.amqp))
    app = create_app(store=store, publisher=publisher, state=state, registry=registry, settings=settings)
    server = HttpServer(app, host=settings.http.host, port=settings.http.port)
    server.start()
    return server


__all__ = ["HttpServer", "create_app", "start_http"]
