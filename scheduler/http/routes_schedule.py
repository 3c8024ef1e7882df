"""``POST /schedule``: a submission, published to the broker with confirms and recorded as ``queued``."""

from __future__ import annotations

import threading

import structlog
from fastapi import APIRouter, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from scheduler.broker import BrokerUnavailable
from scheduler.models import SchedulingRequest
from scheduler.producer.publisher import Outgoing, Publisher
from scheduler.safetext import first_line
from scheduler.strategies.registry import STRATEGY_NAMES
from scheduler.webhooks.policy import callback_refusal, display_url

from .context import Api
from .params import RATE_LIMITED, TOO_LARGE, UNREADABLE
from .schemas import Accepted, Conflict, ErrorBody

log = structlog.get_logger(__name__)


def add_routes(router: APIRouter) -> None:
    """Declare ``POST /schedule`` on ``router`` (the app's own: see :mod:`.app`)."""
    router.post(
        "/schedule",
        status_code=202,
        response_model=Accepted,
        tags=["tasks"],
        responses={
            **UNREADABLE,
            409: {"model": Conflict, "description": "the task id exists; nothing was published"},
            **RATE_LIMITED,
            **TOO_LARGE,
            503: {"model": ErrorBody, "description": "the broker is unavailable; nothing was published"},
        },
    )(schedule)


def schedule(request: SchedulingRequest, api: Api) -> Accepted | JSONResponse:
    """Publish one request (the queue's message contract) with publisher confirms; 202 with its task id.

    The task is recorded as ``queued`` once the broker confirmed the
    message, so ``GET /result`` answers at once. A ``callback_url`` must
    match ``webhooks.allow``, and a ``strategy`` must be one this
    scheduler has (422 otherwise). A task id that exists
    already is refused with 409 and that task's status, and nothing is
    published: nobody can take over someone else's task id. (Two
    submissions of a new id racing each other both pass this check; the
    worker keeps the first and fails the other as a conflict.)
    """
    existing = api.store.get_task(request.task_id)
    if existing is not None:
        conflict = Conflict(
            detail=f"task {request.task_id} exists ({existing.status.value}); nothing was published",
            task_id=request.task_id,
            status=existing.status,
        )
        return JSONResponse(conflict.model_dump(mode="json"), status_code=409)
    if request.strategy is not None and request.strategy not in STRATEGY_NAMES:
        # The schema takes any well-formed name; the worker would fail this one with
        # unknown_strategy, so a 202 would promise what cannot happen (``scheduler submit`` refuses it too).
        raise RequestValidationError(
            [
                {
                    "type": "unknown_strategy",
                    "loc": ("body", "strategy"),
                    "msg": f"unknown strategy {request.strategy!r}; valid: {', '.join(STRATEGY_NAMES)}",
                    "input": request.strategy,
                }
            ]
        )
    if request.callback_url is not None:
        refusal = callback_refusal(request.callback_url, api.allow)
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
    api.submit(request)
    try:
        api.store.record_queued(request)
    except Exception as exc:
        # The message is confirmed and will be processed; the task shows up when the worker commits it.
        log.warning(
            "could not record a published task as queued", task_id=request.task_id, error=first_line(exc)
        )
    return Accepted(task_id=request.task_id)


SUBMISSIONS_IN_FLIGHT = 8
"""``POST /schedule`` calls waiting for the broker at once, per replica; one more is a 503 at once.

Endpoints run on a shared pool of 40 threads. A broker that accepts the TCP
connection and never answers (stalled, behind a load balancer whose backend
died) holds each submission for the connection's 15 s handshake deadline; found
from outside, 60 of them at once took every thread and ``GET /nodes`` (every
read, the dashboard, ``/readyz`` on the API port) waited minutes with them."""


class Submitter:
    """Publishes one request with confirms, declaring the topology on the first publish that succeeds.

    Why one shared :class:`Publisher` is safe across request threads: it holds
    only settings; every :meth:`Publisher.publish` call opens its own
    connection on the calling thread and closes it, so no pika object is ever
    shared between threads (pika is not thread-safe). The cost is a
    connection handshake per submission (a few milliseconds on a LAN), which
    suits an HTTP entry point meant for people and provisioning systems;
    bulk producers publish to the broker directly (``scheduler submit``).
    ``publisher`` None makes every submission a 503 (a read-only replica).

    At most :data:`SUBMISSIONS_IN_FLIGHT` run at once, so a broker that does
    not answer never holds the threads the reads need. The topology is
    declared on the publishing connection itself until one publish has
    succeeded (no lock: a declaration held under a lock made every waiting
    submission take its own handshake deadline in turn). Any failure to
    reach the broker is a 503 with the reason, never a 500: pika raises
    some (a handshake that never completes) outside its ``AMQPError`` family.
    """

    def __init__(self, publisher: Publisher | None, in_flight: int = SUBMISSIONS_IN_FLIGHT) -> None:
        self.publisher = publisher
        self._declared = False
        self._slots = threading.BoundedSemaphore(in_flight)
        self.in_flight = in_flight

    def __call__(self, request: SchedulingRequest) -> None:
        if self.publisher is None:
            raise HTTPException(
                503, "this replica does not accept submissions (no broker publisher configured)"
            )
        if not self._slots.acquire(blocking=False):
            log.warning("submission refused: too many waiting for the broker", in_flight=self.in_flight)
            raise HTTPException(
                503,
                f"{self.in_flight} submissions are already waiting for the broker; nothing was published",
                headers={"Retry-After": "1"},
            )
        try:
            report = self.publisher.publish([Outgoing.request(request)], declare=not self._declared)
        except BrokerUnavailable as exc:
            log.warning("submission refused: broker unavailable", task_id=request.task_id, error=str(exc))
            raise HTTPException(503, f"broker unavailable: {exc}") from None
        except Exception as exc:
            error = first_line(exc)
            log.warning("submission refused: broker unavailable", task_id=request.task_id, error=error)
            raise HTTPException(503, f"broker unavailable: {error}") from None
        finally:
            self._slots.release()
        if not report.ok:
            reason = report.failed.get(request.task_id, "not confirmed")
            log.warning("submission not confirmed by the broker", task_id=request.task_id, reason=reason)
            raise HTTPException(503, f"broker did not confirm the message: {reason}")
        self._declared = True
