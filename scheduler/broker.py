"""RabbitMQ topology and connection helpers, shared by the producer and the worker.

Topology (declared idempotently by both sides at start):

* exchange ``amqp.exchange`` (direct, durable);
* ``amqp.queue``: durable, ``x-single-active-consumer`` so the broker itself
  never feeds two consumers at once, classic or quorum; bound with the
  routing keys ``request`` and ``release`` so a release is ordered after the
  request it releases; a message that expires there (a producer may set a
  per-message ``expiration``) is dead-lettered to ``<queue>.dead`` by the
  broker (``x-first-death-reason: expired``) instead of vanishing after its
  publish was confirmed. Declared on a channel of its own like the
  dead-letter queue: a queue declared before keeps its arguments (a
  warning says so; apply ``dead-letter-exchange`` and
  ``dead-letter-routing-key`` with a policy);
* ``<queue>.retry``: requests waiting for room sit here with a per-message
  TTL (the backoff); when it expires RabbitMQ dead-letters them back to the
  exchange with routing key ``request``;
* ``<queue>.dead``: messages that can never be processed, with an
  ``x-death-reason`` header saying why; bounded by ``x-max-length`` and
  ``x-max-length-bytes`` (the oldest are dropped first), and a body larger
  than ``amqp.dead_letter_max_body`` is kept cut, with its original size in
  ``x-original-size``. RabbitMQ refuses to redeclare a queue with other
  arguments: a dead-letter queue declared before the bounds existed keeps
  what it has (a warning says so); apply the bounds with a policy or delete
  the queue once it is drained;
* ``<queue>.heartbeats``: node heartbeats (routing key ``nodes.heartbeat``),
  bounded by length and TTL because only the latest ones matter.
"""

from __future__ import annotations

import ssl
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pika
import pika.data
from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.connection_workflow import AMQPConnectorException, AMQPConnectorStackTimeout

from scheduler.config import AmqpConfig, redact_url

# The header names live apart (the planning reads them without pika); re-exported here.
from scheduler.message_headers import HEADER_ATTEMPT as HEADER_ATTEMPT
from scheduler.message_headers import HEADER_DEATH_REASON as HEADER_DEATH_REASON
from scheduler.message_headers import HEADER_DELIVERY_COUNT as HEADER_DELIVERY_COUNT
from scheduler.message_headers import HEADER_ORIGINAL_SIZE as HEADER_ORIGINAL_SIZE
from scheduler.message_headers import HEADER_PUBLISHED_AT as HEADER_PUBLISHED_AT
from scheduler.message_headers import HEADER_SCHEMA
from scheduler.models import SCHEMA_VERSION

ROUTE_REQUEST = "request"
ROUTE_RELEASE = "release"
ROUTE_HEARTBEAT = "nodes.heartbeat"
HEARTBEAT_TTL_MS = 60_000
HEARTBEAT_MAX_LENGTH = 100_000


class BrokerUnavailable(Exception):
    """The broker cannot be reached or refused us; the message names the URL (password hidden)."""


@dataclass(frozen=True)
class Topology:
    """Names of everything declared on the broker, derived from ``amqp.*``."""

    exchange: str
    queue: str
    queue_type: str = "classic"
    dead_max_length: int = 100_000
    dead_max_bytes: int = 256 * 1024 * 1024

    @classmethod
    def from_config(cls, cfg: AmqpConfig) -> Topology:
        return cls(
            cfg.exchange, cfg.queue, cfg.queue_type, cfg.dead_letter_max_length, cfg.dead_letter_max_bytes
        )

    @property
    def retry_queue(self) -> str:
        return f"{self.queue}.retry"

    @property
    def dead_queue(self) -> str:
        return f"{self.queue}.dead"

    @property
    def heartbeat_queue(self) -> str:
        return f"{self.queue}.heartbeats"

    def declarations(self) -> list[Declaration]:
        """Everything :meth:`declare` declares, in order, as data (the asynchronous publisher declares
        the same list on its own connection).

        The request and dead-letter queues are declared on a channel of their
        own (``own_channel``): a queue that already exists with other
        arguments (declared by a version before these arguments) makes the
        broker close the declaring channel (406 PRECONDITION_FAILED), and the
        existing queue is then kept as it is.
        """
        durable_type = {"x-queue-type": self.queue_type}
        retry = {
            **durable_type,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": ROUTE_REQUEST,
        }
        dead = {
            **durable_type,
            "x-max-length": self.dead_max_length,
            "x-max-length-bytes": self.dead_max_bytes,
            "x-overflow": "drop-head",
        }
        beats = {
            "x-single-active-consumer": True,
            "x-message-ttl": HEARTBEAT_TTL_MS,
            "x-max-length": HEARTBEAT_MAX_LENGTH,
        }
        requests = {
            **durable_type,
            "x-single-active-consumer": True,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.dead_queue,
        }
        return [
            Declaration("exchange", self.exchange),
            Declaration("queue", self.queue, requests, own_channel=True),
            Declaration("bind", self.queue, routing_key=ROUTE_REQUEST),
            Declaration("bind", self.queue, routing_key=ROUTE_RELEASE),
            Declaration("queue", self.retry_queue, retry),
            Declaration("queue", self.dead_queue, dead, own_channel=True),
            Declaration("queue", self.heartbeat_queue, beats),
            Declaration("bind", self.heartbeat_queue, routing_key=ROUTE_HEARTBEAT),
        ]

    def declare(self, channel: BlockingChannel) -> None:
        """Declare the whole topology; safe to call from every process, every start."""
        for item in self.declarations():
            if item.kind == "exchange":
                channel.exchange_declare(item.name, exchange_type="direct", durable=True)
            elif item.kind == "bind":
                channel.queue_bind(item.name, self.exchange, routing_key=item.routing_key)
            elif item.own_channel:
                own = channel.connection.channel()
                try:
                    own.queue_declare(item.name, durable=True, arguments=item.arguments)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != 406:
                        raise
                    item.kept_as_is(exc.reply_text)
                    continue
                own.close()
            else:
                channel.queue_declare(item.name, durable=True, arguments=item.arguments)


@dataclass(frozen=True)
class Declaration:
    """One step of declaring the topology: a direct durable exchange, a durable queue, or a binding
    of a queue to the topology's exchange."""

    kind: str
    """``exchange``, ``queue`` or ``bind``."""
    name: str
    arguments: dict[str, Any] | None = None
    routing_key: str = ""
    own_channel: bool = False
    """Declared on a channel of its own; a 406 (exists with other arguments) keeps the queue as it is."""

    def kept_as_is(self, error: str) -> None:
        """Say that the queue exists with other arguments and is kept as it is (a 406 on its channel).

        structlog is imported here, not with the module: the producer CLI imports this module,
        never logs otherwise, and importing structlog (and the rich it pulls in) would add about
        a sixth to every ``scheduler submit``'s start-up.
        """
        import structlog

        structlog.get_logger(__name__).warning(
            "queue exists with other arguments; keeping them",
            queue=self.name,
            wanted=self.arguments,
            error=error,
        )


STACK_TIMEOUT = 15.0
"""Seconds for a whole connection attempt (TCP, TLS, AMQP handshake) before it is given up."""


def connection_parameters(
    url: str, *, heartbeat: int | None = 30, name: str = "virtflow-scheduler"
) -> pika.URLParameters:
    """pika parameters from an ``amqp(s)://`` URL, with sane timeouts and a client name."""
    params = pika.URLParameters(url)
    params.heartbeat = 30 if heartbeat is None else heartbeat
    params.blocked_connection_timeout = 60
    params.socket_timeout = 5
    params.stack_timeout = STACK_TIMEOUT
    params.connection_attempts = 1
    params.client_properties = {"connection_name": name}
    if url.startswith("amqps://") and params.ssl_options is None:
        params.ssl_options = pika.SSLOptions(ssl.create_default_context())
    return params


def connect(
    url: str, *, heartbeat: int | None = 30, name: str = "virtflow-scheduler"
) -> pika.BlockingConnection:
    """A blocking connection, or :class:`BrokerUnavailable` with a one-line reason."""
    try:
        return pika.BlockingConnection(connection_parameters(url, heartbeat=heartbeat, name=name))
    except pika.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(f"RabbitMQ at {redact_url(url)} refused the credentials") from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise BrokerUnavailable(f"RabbitMQ at {redact_url(url)} denied access to the vhost") from None
    except pika.exceptions.AMQPError as exc:
        raise BrokerUnavailable(
            f"cannot connect to RabbitMQ at {redact_url(url)}: {describe_amqp_error(exc)}"
        ) from None
    except OSError as exc:
        raise BrokerUnavailable(f"cannot connect to RabbitMQ at {redact_url(url)}: {exc}") from None
    except AMQPConnectorException as exc:
        # Not an AMQPError: pika's connection workflow raises its own exceptions, the stack
        # timeout among them (a listener that accepts and never answers: a hung broker, a
        # proxy with nothing behind it). Uncaught, it ended the worker with a traceback.
        why = (
            f"no AMQP handshake within {STACK_TIMEOUT:g}s (the port accepts connections but nothing answers)"
            if isinstance(exc, AMQPConnectorStackTimeout)
            else describe_amqp_error(exc)
        )
        raise BrokerUnavailable(f"cannot connect to RabbitMQ at {redact_url(url)}: {why}") from None


def describe_amqp_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, pika.exceptions.AMQPConnectionError) and exc.args:
        inner = exc.args[0]
        text = str(inner) if not isinstance(inner, (list, tuple)) else "; ".join(str(x) for x in inner)
    return text or type(exc).__name__


HEADER_UNDECODABLE = "x-undecodable-table"
"""Stands in for a header table pika could not read (the value says why); see
:func:`tolerate_hostile_headers`."""

_pika_decode_value = pika.data.decode_value
_pika_decode_table = pika.data.decode_table


def _decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
    """pika's ``decode_value``, except that a timestamp Python cannot hold stays its integer.

    RabbitMQ accepts any 64-bit timestamp in a header table; pika turns it
    into a ``datetime``, which raises (OverflowError, ValueError, OSError)
    for anything after the year 9999. An integer is written back as one.
    """
    if encoded[offset : offset + 1] == b"T":
        (seconds,) = struct.unpack_from(">Q", encoded, offset + 1)
        try:
            return datetime.fromtimestamp(seconds, UTC), offset + 9
        except (OverflowError, ValueError, OSError):
            return int(seconds), offset + 9
    decoded: tuple[Any, int] = _pika_decode_value(encoded, offset)
    return decoded


def _decode_table(encoded: bytes, offset: int) -> tuple[dict[Any, Any], int]:
    """pika's ``decode_table``; a table it cannot read becomes ``{x-undecodable-table: why}``.

    The table's length comes first in the frame, so whatever is inside, the
    frame is read on past it: only that table (nested or the whole headers)
    is lost, never the message or the connection.
    """
    try:
        result: tuple[dict[Any, Any], int] = _pika_decode_table(encoded, offset)
        return result
    except Exception as exc:  # any field pika cannot read: the table's length still says where it ends
        (size,) = struct.unpack_from(">I", encoded, offset)
        why = f"{type(exc).__name__}: {exc}"[:200]
        return {HEADER_UNDECODABLE: why}, offset + 4 + size


def tolerate_hostile_headers() -> None:
    """Make pika read every header table the broker lets through, whatever a producer put in it.

    Why: pika decodes a delivery's properties while reading frames, inside
    the connection's I/O, before any of our code sees the message. A field
    it cannot read (a header timestamp after the year 9999, which RabbitMQ
    forwards as it came) made it abort the whole connection; the broker then
    redelivered the message to the next consumer, which aborted in turn: one
    published message stalled the queue for ever, and no redelivery count
    could catch it (the message never reached the worker). pika has no hook
    for this, so its two module functions are replaced (idempotently): a
    timestamp out of range stays an integer, and a table that still cannot be
    read becomes ``{"x-undecodable-table": why}``, with the frame read on past
    it by its length. Called by the worker at start.
    """
    pika.data.decode_value = _decode_value
    pika.data.decode_table = _decode_table


def negotiated_frame_max(conn: pika.BlockingConnection) -> int:
    """The largest frame ``conn`` may send (negotiated at connection tune; pika keeps it on its
    connection's parameters, with no public accessor); pika's default when it cannot be read."""
    value = getattr(getattr(getattr(conn, "_impl", None), "params", None), "frame_max", None)
    return value if isinstance(value, int) and value > 0 else int(pika.ConnectionParameters.DEFAULT_FRAME_MAX)


def message_properties(
    message_id: str, *, headers: dict[str, Any] | None = None, expiration_ms: int | None = None
) -> pika.BasicProperties:
    """Persistent JSON message properties with the schema version and publish-time headers.

    The caller's headers come last, so a retry keeps the original publish time
    and publish-to-commit latency counts the whole wait.
    """
    return pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message_id,
        headers={
            HEADER_SCHEMA: SCHEMA_VERSION,
            HEADER_PUBLISHED_AT: int(time.time() * 1000),
            **(headers or {}),
        },
        expiration=str(expiration_ms) if expiration_ms is not None else None,
    )


@dataclass(frozen=True)
class QueueFigures:
    """Ready messages and consumers per queue, by role (``requests``, ``retry``, ``dead``, ``heartbeats``)."""

    messages: Mapping[str, int]
    consumers: Mapping[str, int]


def read_queue_figures(url: str, topology: Topology) -> QueueFigures:
    """Passive ``queue.declare`` of each queue: counts without creating anything.

    A connection per read (heartbeats off, it lives a few milliseconds): a
    long-lived one would need its heartbeats serviced by a thread of its own,
    and the read happens at most once per cache period. A queue that does not
    exist (a passive declare answers 404 and closes the channel) is left out.
    """
    roles = {
        "requests": topology.queue,
        "retry": topology.retry_queue,
        "dead": topology.dead_queue,
        "heartbeats": topology.heartbeat_queue,
    }
    messages: dict[str, int] = {}
    consumers: dict[str, int] = {}
    conn = connect(url, heartbeat=0, name="virtflow-scheduler metrics")
    try:
        channel = conn.channel()
        for role, queue in roles.items():
            try:
                ok = channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                if role == "requests":  # nothing declared yet: the others are missing too
                    break
                channel = conn.channel()
                continue
            messages[role] = int(ok.method.message_count)
            consumers[role] = int(ok.method.consumer_count)
    finally:
        if conn.is_open:
            conn.close()
    return QueueFigures(messages, consumers)
