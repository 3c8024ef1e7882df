"""What the worker publishes itself: dead letters and retries, each confirmed before any ack.

Why a module: the rules for writing a message back are the same for every
path that does it. Publishes are confirmed (the publishing channel is in
confirm mode, ``mandatory`` set), so a nack or a lost connection raises
before anything of the batch is acknowledged. A dead letter carries
``x-death-reason`` (printable, bounded); a body beyond
``amqp.dead_letter_max_body`` is cut, with its size in ``x-original-size``;
headers that cannot be written back (hostile or exotic field types) are
dropped for ours alone rather than failing the publish for ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from pika.adapters.blocking_connection import BlockingChannel

from scheduler.broker import (
    HEADER_ATTEMPT,
    HEADER_DEATH_REASON,
    HEADER_ORIGINAL_SIZE,
    Topology,
    message_properties,
)
from scheduler.safetext import printable
from scheduler.worker.batch import Incoming, RetryLater

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Outbound:
    """Publishing on the worker's confirm-mode channel for one broker session."""

    channel: BlockingChannel
    topology: Topology
    max_dead_body: int

    def dead_letter(self, msg: Incoming, reason: str, *, kind: str) -> None:
        """``msg`` to ``<queue>.dead`` with ``x-death-reason`` (``kind`` names the cause in the log)."""
        body = msg.body
        extra: dict[str, Any] = {HEADER_DEATH_REASON: printable(reason, 1000)}
        if len(body) > self.max_dead_body:
            extra[HEADER_ORIGINAL_SIZE] = len(body)
            body = body[: self.max_dead_body]
        try:
            self._publish(self.topology.dead_queue, body, {**msg.headers, **extra}, None)
        except (TypeError, ValueError, UnicodeError, AssertionError):
            self._publish(self.topology.dead_queue, body, extra, None)
        log.warning("dead-lettered", kind=kind, reason=printable(reason, 300), size=len(msg.body))

    def retry(self, retry: RetryLater) -> None:
        """A waiting request to ``<queue>.retry`` with its backoff as the per-message TTL."""
        self._publish(
            self.topology.retry_queue,
            retry.message.body,
            {**retry.message.headers, HEADER_ATTEMPT: retry.attempt},
            retry.request.task_id,
            expiration_ms=retry.delay_ms,
        )

    def _publish(
        self,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any],
        message_id: str | None,
        *,
        expiration_ms: int | None = None,
    ) -> None:
        props = message_properties(message_id or "", headers=headers, expiration_ms=expiration_ms)
        if message_id is None:
            props.message_id = None
        # Raises on nack or a lost connection, before anything of the batch is acked.
        self.channel.basic_publish("", routing_key, body, properties=props, mandatory=True)


__all__ = ["Outbound"]
