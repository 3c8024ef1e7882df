"""The request guard (request metrics, the body size limit before any parsing) and HEAD as GET (pure ASGI)."""

from __future__ import annotations

import time

from fastapi import HTTPException
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scheduler.models import MAX_BODY_BYTES

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
"""Methods counted under their own label in the request metrics; any other is counted as "other"."""

HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def request_metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    """The ``scheduler_http_*`` metrics, registered in ``registry`` (so once per registry)."""
    requests = Counter(
        "scheduler_http_requests_total",
        "HTTP requests served, by method, route template and status.",
        ["method", "route", "code"],
        registry=registry,
    )
    seconds = Histogram(
        "scheduler_http_request_seconds",
        "HTTP request duration by route template, seconds.",
        ["route"],
        buckets=HTTP_BUCKETS,
        registry=registry,
    )
    return requests, seconds


class RequestGuard:
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
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # As received (an inner middleware answers HEAD as GET), and only a standard one: the
        # method is whatever token the client sent, and each new label value is a new time series.
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        length = _content_length(scope)
        if length is not None and length > MAX_BODY_BYTES:
            await _too_large(send_wrapper)
        else:
            seen = {"bytes": 0}

            async def bounded_receive() -> Message:
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
        self.requests.labels(method=method, route=template, code=str(status["code"])).inc()
        self.seconds.labels(route=template).observe(time.perf_counter() - started)


class HeadAsGet:
    """Pure ASGI middleware: ``HEAD`` is answered as ``GET`` is, headers only.

    FastAPI routes declared with ``GET`` answer ``HEAD`` with 405, so a load
    balancer or an uptime check probing ``HEAD /healthz`` saw the replica as
    broken, and ``curl -I`` could not look at any route. The route runs as
    ``GET`` (same status, same headers, ``Content-Length`` included) and the
    body is dropped. Placed inside the :class:`~.auth.Gatekeeper`, which
    already asks the same role for ``HEAD`` as for ``GET``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        scope["method"] = "GET"
        try:
            await self.app(scope, receive, headers_only)
        finally:
            scope["method"] = "HEAD"


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send) -> None:
    body = b'{"detail":"request body larger than %d bytes"}' % MAX_BODY_BYTES
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
