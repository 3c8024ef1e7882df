"""What the worker publishes itself: dead letters and retries, each confirmed before any ack.

Why a module: the rules for writing a message back are the same for every
path that does it. Publishes are confirmed (the publishing channel is in
confirm mode, ``mandatory`` set), so a nack or a lost connection raises
before anything of the batch is acknowledged. A dead letter carries
``x-death-reason`` (printable, bounded); a body beyond
``amqp.dead_letter_max_body`` is cut, with its size in ``x-original-size``.

A message's own headers are written back with it (except ``CC`` and
``BCC``, which RabbitMQ would route by: see :data:`ROUTING_HEADERS`) when
they can be, and dropped for ours alone when they cannot: a value pika
decodes but cannot encode (a header double of 1e300 arrives as an integer
beyond 64 bits), or a table so large that ours added to it no longer fit in
one frame (the broker then closes the whole connection). Either failed the publish on
every redelivery of the message: the first killed the worker, the second
made it reconnect for ever, and the queue stalled behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pika
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from scheduler.broker import (
    HEADER_ATTEMPT,
    HEADER_DEATH_REASON,
    HEADER_ORIGINAL_SIZE,
    HEADER_PUBLISHED_AT,
    Topology,
    message_properties,
)
from scheduler.safetext import printable
from scheduler.worker.batch import Incoming, RetryLater

log = structlog.get_logger(__name__)

ROUTING_HEADERS = frozenset({"CC", "BCC"})
"""RabbitMQ's sender-selected distribution: extra routing keys, applied at every publish. Written
back with a dead letter (published to the default exchange), ``CC: [<queue>]`` sent it to the
request queue as well, to be dead-lettered again, for ever: one message made hundreds of dead
letters a second (evicting the real ones from the bounded dead-letter queue) and kept the worker
busy for nothing. They are never written back."""

HEADER_FRAME_OVERHEAD = 20
"""Bytes of a content-header frame besides the properties: frame type, channel, size, class, weight,
body size, frame end."""
DEFAULT_FRAME_MAX = 131072
"""RabbitMQ's and pika's default ``frame_max``; the session passes the one its connection negotiated."""


@dataclass(frozen=True)
class Outbound:
    """Publishing on the worker's confirm-mode channel for one broker session."""

    channel: BlockingChannel
    topology: Topology
    max_dead_body: int
    frame_max: int = DEFAULT_FRAME_MAX
    """The connection's negotiated frame size: a content header must fit in one frame."""

    def dead_letter(self, msg: Incoming, reason: str, *, kind: str) -> None:
        """``msg`` to ``<queue>.dead`` with ``x-death-reason`` (``kind`` names the cause in the log)."""
        body = msg.body
        extra: dict[str, Any] = {HEADER_DEATH_REASON: printable(reason, 1000)}
        if msg.size > self.max_dead_body:
            extra[HEADER_ORIGINAL_SIZE] = msg.size
            body = body[: self.max_dead_body]
        props = self._properties(msg.headers, extra, None)
        self._publish(self.topology.dead_queue, body, props)
        log.warning("dead-lettered", kind=kind, reason=printable(reason, 300), size=msg.size)

    def retry(self, retry: RetryLater) -> None:
        """A waiting request to ``<queue>.retry`` with its backoff as the per-message TTL.

        Of the message's own headers, the first publish time is kept even
        when the rest cannot be written back (latency counts the whole wait).
        """
        ours: dict[str, Any] = {HEADER_ATTEMPT: retry.attempt}
        published = retry.message.headers.get(HEADER_PUBLISHED_AT)
        if isinstance(published, int) and not isinstance(published, bool) and -(2**63) <= published < 2**63:
            ours = {HEADER_PUBLISHED_AT: published, **ours}
        props = self._properties(
            retry.message.headers, ours, retry.request.task_id, expiration_ms=retry.delay_ms
        )
        self._publish(self.topology.retry_queue, retry.message.body, props)

    def _properties(
        self,
        headers: dict[Any, Any],
        ours: dict[str, Any],
        message_id: str | None,
        *,
        expiration_ms: int | None = None,
    ) -> pika.BasicProperties:
        """Properties with the message's headers and ours (ours win), or ours alone when those cannot
        be written (see the module docstring)."""
        kept = {k: v for k, v in headers.items() if k not in ROUTING_HEADERS}
        props = message_properties(message_id or "", headers={**kept, **ours}, expiration_ms=expiration_ms)
        if not self._writable(props):
            log.warning(
                "a message's headers cannot be written back; keeping the service's own",
                headers=len(headers),
            )
            props = message_properties(message_id or "", headers=ours, expiration_ms=expiration_ms)
        if message_id is None:
            props.message_id = None
        return props

    def _writable(self, props: pika.BasicProperties) -> bool:
        """pika can encode ``props``, and they fit in one content-header frame of this connection."""
        try:
            size = sum(len(piece) for piece in props.encode())
        except Exception:  # pika raises struct.error, TypeError, its own errors... for what it cannot encode
            return False
        return size + HEADER_FRAME_OVERHEAD <= self.frame_max

    def _publish(self, routing_key: str, body: bytes, props: pika.BasicProperties) -> None:
        # Raises on nack or a lost connection, before anything of the batch is acked.
        self.channel.basic_publish("", routing_key, body, properties=props, mandatory=True)


__all__ = ["Outbound"]
