"""Publishing with pipelined publisher confirms and ``mandatory`` routing.

Why not pika's BlockingChannel in confirm mode: it waits for the broker's
confirm of each message before sending the next, and a persistent message
is confirmed only once it is on disk, so a batch crawls at one fsync per
message. Here a window of messages is in flight at once on pika's
asynchronous ``SelectConnection``; confirms (which the broker may coalesce
with ``multiple``) release the window. A message counts as sent only when
confirmed; a ``basic.return`` (unroutable with ``mandatory``) or a
``basic.nack`` marks it failed, and anything unconfirmed when the connection
drops is reported failed too, so the caller knows exactly which task ids to
send again.

Three things keep a large batch near the broker's pace: the frames of a
window-sized burst of messages leave in one socket write instead of three
per message (:class:`_BatchingConnection`); the frames of a message are
encoded by :func:`encode_publish` (a cached method frame and a header
encoded with a handful of ``struct`` calls, the same bytes pika would
write, at a tenth of its cost, which was about a third of the publisher's
time); and a ``multiple`` confirm releases the tags in order without
scanning everything in flight. The topology is declared on the publishing
connection itself, so a ``submit --file`` opens one connection, not two.
"""

from __future__ import annotations

import operator
import signal
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
from pika import frame, spec
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from scheduler.broker import (
    ROUTE_RELEASE,
    ROUTE_REQUEST,
    BrokerUnavailable,
    Declaration,
    Topology,
    connect,
    connection_parameters,
    describe_amqp_error,
    message_properties,
)
from scheduler.config import redact_url
from scheduler.models import MoveRequest, ReleaseRequest, SchedulingRequest


class _BatchingConnection(SelectConnection):  # type: ignore[misc]  # pika is untyped
    """A SelectConnection that can hold the frames of a burst and write them as one buffer.

    pika hands every frame (method, header, body: three per message) to the
    transport separately, and the transport sends each with its own
    ``send`` system call: for a batch that is most of the publisher's time.
    Between :meth:`hold` and :meth:`release` the frames are collected, in
    order, and handed over joined, which is the same bytes on the wire.
    Nothing else writes in between: the burst runs synchronously on the I/O
    loop. This overrides ``_output_marshaled_frames``, pika's single exit for
    outgoing frames (pika has no public hook for it).
    """

    _held: list[bytes] | None = None
    _publish_frames: dict[tuple[int, str, str, bool, bool], bytes] | None = None

    def hold(self) -> None:
        self._held = []

    def release(self) -> None:
        held, self._held = self._held, None
        if held:
            super()._output_marshaled_frames([b"".join(held)])
            self.frames_sent += len(held) - 1

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        if self._held is None:
            super()._output_marshaled_frames(marshaled_frames)
        else:
            self._held.extend(marshaled_frames)

    def _send_message(self, channel_number: int, method_frame: Any, content: tuple[Any, bytes]) -> None:
        """pika's ``Connection._send_message``, with the frames of a publish made by :func:`encode_publish`.

        Overridden like ``_output_marshaled_frames`` (pika's one path for a
        message's frames); anything :func:`encode_publish` does not cover
        goes through pika's own code.
        """
        if self._publish_frames is None:
            self._publish_frames = {}
        frames = None
        if isinstance(method_frame, Basic.Publish):
            properties, body = content
            frames = encode_publish(
                channel_number, method_frame, properties, body, self._body_max_length, self._publish_frames
            )
        if frames is None:
            super()._send_message(channel_number, method_frame, content)
        else:
            self._output_marshaled_frames(frames)


_FRAME_END = bytes([spec.FRAME_END])
_HEADER = struct.Struct(">BHIHxxQH")  # frame type, channel, size; class, weight, body size; flags
_BODY = struct.Struct(">BHI")
_UNSUPPORTED = operator.attrgetter(
    "priority", "correlation_id", "reply_to", "timestamp", "type", "user_id", "app_id", "cluster_id",
)  # fmt: skip
_NONE = (None,) * 8


def _short(value: object) -> bytes | None:
    """An AMQP short string (length octet and UTF-8), or None when it is not a short ``str``."""
    if type(value) is not str:
        return None
    data = value.encode()
    return bytes([len(data)]) + data if len(data) <= 255 else None


def _table(headers: object) -> bytes | None:
    """An AMQP field table of ``str`` keys and ``str`` or ``int`` values, as pika writes it; else None."""
    if type(headers) is not dict:
        return None
    parts: list[bytes] = []
    for key, value in headers.items():
        name = _short(key)
        if name is None:
            return None
        parts.append(name)
        kind = type(value)
        if kind is int and -(2**31) <= value < 2**31:
            parts.append(b"I" + value.to_bytes(4, "big", signed=True))
        elif kind is int and -(2**63) <= value < 2**63:
            parts.append(b"l" + value.to_bytes(8, "big", signed=True))
        elif kind is str:
            data = value.encode()
            parts.append(b"S" + len(data).to_bytes(4, "big") + data)
        else:
            return None
    payload = b"".join(parts)
    return len(payload).to_bytes(4, "big") + payload


def _octet(value: object) -> bytes | None:
    """An AMQP octet (the delivery mode), or None when it is not an ``int`` in 0-255."""
    return bytes([value]) if type(value) is int and 0 <= value <= 255 else None


_PROPERTIES: tuple[tuple[str, int, Callable[[object], bytes | None]], ...] = (
    ("content_type", BasicProperties.FLAG_CONTENT_TYPE, _short),
    ("content_encoding", BasicProperties.FLAG_CONTENT_ENCODING, _short),
    ("headers", BasicProperties.FLAG_HEADERS, _table),
    ("delivery_mode", BasicProperties.FLAG_DELIVERY_MODE, _octet),
    ("expiration", BasicProperties.FLAG_EXPIRATION, _short),
    ("message_id", BasicProperties.FLAG_MESSAGE_ID, _short),
)
"""The properties encoded here, in the order (and with the flag) of the AMQP property list."""


def encode_publish(
    channel_number: int,
    method: Basic.Publish,
    properties: BasicProperties,
    body: bytes,
    body_max: int,
    cache: dict[tuple[int, str, str, bool, bool], bytes],
) -> list[bytes] | None:
    """The method, header and body frames of one publish, byte for byte what pika writes; None when the
    message is not of the plain kind this encodes (pika's own encoder is then used).

    The plain kind is what this service publishes: properties among content
    type and encoding, headers (string keys; string or integer values),
    delivery mode, expiration and message id; a body that fits one frame.
    The method frame depends only on the channel, exchange, routing key and
    flags, so it is marshalled once by pika and reused.
    """
    if len(body) > body_max or type(properties) is not BasicProperties:
        return None
    if _UNSUPPORTED(properties) != _NONE:
        return None
    key = (channel_number, method.exchange, method.routing_key, method.mandatory, method.immediate)
    method_bytes = cache.get(key)
    if method_bytes is None:
        method_bytes = cache[key] = frame.Method(channel_number, method).marshal()
    flags = 0
    parts: list[bytes] = []
    for name, flag, encode in _PROPERTIES:
        value = getattr(properties, name)
        if value is not None:
            encoded = encode(value)
            if encoded is None:
                return None
            flags |= flag
            parts.append(encoded)
    fields = b"".join(parts)
    header = _HEADER.pack(
        spec.FRAME_HEADER, channel_number, 14 + len(fields), BasicProperties.INDEX, len(body), flags
    )
    frames = [method_bytes, header + fields + _FRAME_END]
    if body:
        frames.append(_BODY.pack(spec.FRAME_BODY, channel_number, len(body)) + body + _FRAME_END)
    return frames


@dataclass(frozen=True)
class Outgoing:
    """One message to publish: its id (the task id), routing key and body."""

    message_id: str
    routing_key: str
    body: bytes

    @classmethod
    def request(cls, req: SchedulingRequest) -> Outgoing:
        return cls(req.task_id, ROUTE_REQUEST, req.model_dump_json(exclude_none=False).encode())

    @classmethod
    def release(cls, task_id: str) -> Outgoing:
        return cls(task_id, ROUTE_RELEASE, ReleaseRequest(release=task_id).model_dump_json().encode())

    @classmethod
    def move(cls, task_id: str, node: str) -> Outgoing:
        """A move rides the request routing key: the worker tells the kinds apart by their bodies."""
        return cls(task_id, ROUTE_REQUEST, MoveRequest(move=task_id, node=node).model_dump_json().encode())


@dataclass
class PublishReport:
    """What happened to each message: confirmed, or failed with a reason."""

    confirmed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    """Ctrl-C (SIGINT) ended the publishing: what was confirmed by then is in ``confirmed``, the rest
    in ``failed``."""

    @property
    def ok(self) -> bool:
        return not self.failed


class Publisher:
    """Publishes batches to the scheduler exchange; one connection per :meth:`publish` call."""

    def __init__(
        self, url: str, topology: Topology, *, window: int = 1000, heartbeat: int | None = 30
    ) -> None:
        self.url = url
        self.topology = topology
        self.window = window
        self.heartbeat = heartbeat

    def declare(self) -> None:
        """Declare the topology (idempotent), so a message published before any worker started is kept."""
        conn = connect(self.url, heartbeat=self.heartbeat, name="virtflow-scheduler producer")
        try:
            self.topology.declare(conn.channel())
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise BrokerUnavailable(f"declaring the topology failed: {exc.reply_text}") from None
        finally:
            if conn.is_open:
                conn.close()

    def publish(
        self,
        messages: Iterable[Outgoing],
        *,
        on_confirm: Callable[[int], None] | None = None,
        rate: float | None = None,
        on_sent: Callable[[Outgoing], None] | None = None,
        declare: bool = False,
    ) -> PublishReport:
        """Publish everything with confirms; returns which ids were confirmed and which failed.

        ``rate`` (messages/s) paces the publishing on the I/O loop's timer, so
        each message leaves when it is due instead of in window-sized bursts;
        ``on_sent`` is called as each one is handed to the socket.
        ``declare`` declares the topology first, on the same connection (what
        :meth:`declare` does on a connection of its own); a refusal raises
        :class:`BrokerUnavailable` before anything is published.
        """
        run = _PipelinedRun(self, iter(messages), on_confirm, rate=rate, on_sent=on_sent, declare=declare)
        return run.execute()


INTERRUPT_CHECK = 0.1
"""Seconds between two looks of the I/O loop at the Ctrl-C flag (the loop may be waiting for confirms)."""


class _PipelinedRun:
    """One publishing session on a SelectConnection; all callbacks run on its I/O loop."""

    def __init__(
        self,
        owner: Publisher,
        messages: Iterator[Outgoing],
        on_confirm: Callable[[int], None] | None,
        *,
        rate: float | None = None,
        on_sent: Callable[[Outgoing], None] | None = None,
        declare: bool = False,
    ):
        self.owner = owner
        self.declaring = declare
        self.rate = rate
        self.on_sent = on_sent
        self.sent = 0
        self.started_at = 0.0
        self.timer_armed = False
        self.messages = messages
        self.on_confirm = on_confirm
        self.report = PublishReport()
        self.pending: dict[int, str] = {}  # delivery tag -> message id
        self.order: deque[int] = deque()  # the tags in flight, oldest first (some may be settled)
        self.returned: dict[str, str] = {}
        self.next_tag = 1
        self.exhausted = False
        self.channel: Channel | None = None
        self.error: str | None = None
        self.conn: _BatchingConnection | None = None
        self.interrupted = False

    def execute(self) -> PublishReport:
        params = connection_parameters(
            self.owner.url, heartbeat=self.owner.heartbeat, name="virtflow-scheduler producer"
        )
        self.conn = _BatchingConnection(
            params,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed,
        )
        previous = self._catch_interrupt()
        try:
            self.conn.ioloop.start()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self.interrupted and not self.report.confirmed and not self.pending and not self.report.failed:
            raise KeyboardInterrupt  # nothing was sent: an interrupt as any other
        if self.error and not self.report.confirmed and not self.pending and not self.report.failed:
            raise BrokerUnavailable(self.error)
        for tag in sorted(self.pending):
            self.report.failed[self.pending[tag]] = self.error or "not confirmed before the connection closed"
        self.pending.clear()
        # Whatever was never sent is failed too, so the caller can resend it.
        if self.error:
            for msg in self.messages:
                self.report.failed[msg.message_id] = f"not sent: {self.error}"
        return self.report

    def _catch_interrupt(self) -> Any:
        """Turn Ctrl-C into a flag the I/O loop checks, and return the handler it replaced (or None).

        Why: a KeyboardInterrupt raised wherever the main thread happens to be
        (in pika, or between a confirm and its bookkeeping) ended the command
        without a word about the messages already confirmed, so a batch could
        be neither trusted nor safely sent again. With the flag, the loop stops
        between two callbacks and the report says what was confirmed; the rest
        is failed, as on a lost connection. Only in the main thread, and only
        over Python's default handler (a process with its own keeps it).
        """
        if threading.current_thread() is not threading.main_thread():
            return None
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return None

        def on_interrupt(_signum: int, _frame: object) -> None:
            self.interrupted = True  # only a flag: the handler runs between any two bytecodes

        previous = signal.signal(signal.SIGINT, on_interrupt)
        assert self.conn is not None
        self.conn.ioloop.call_later(INTERRUPT_CHECK, self._check_interrupt)
        return previous

    def _check_interrupt(self) -> None:
        assert self.conn is not None
        if not self.interrupted:
            self.conn.ioloop.call_later(INTERRUPT_CHECK, self._check_interrupt)
            return
        self.report.interrupted = True
        if self.error is None:
            self.error = "interrupted (Ctrl-C)"
        self.conn.ioloop.stop()  # not a close: through a stalled broker its answer may never come

    # -- connection lifecycle
    def _on_open(self, conn: SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, conn: SelectConnection, exc: BaseException) -> None:
        url = redact_url(self.owner.url)
        if isinstance(exc, pika.exceptions.ProbableAuthenticationError):
            self.error = f"RabbitMQ at {url} refused the credentials"
        else:
            self.error = f"cannot connect to RabbitMQ at {url}: {describe_amqp_error(exc)}"
        conn.ioloop.stop()

    def _on_closed(self, conn: SelectConnection, reason: BaseException) -> None:
        if not isinstance(reason, pika.exceptions.ConnectionClosedByClient) and self.error is None:
            self.error = f"connection lost: {describe_amqp_error(reason)}"
        conn.ioloop.stop()

    def _on_channel(self, channel: Channel) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        if self.declaring:
            self._declare(self.owner.topology.declarations())
        else:
            self._confirm()

    def _confirm(self) -> None:
        self.declaring = False
        channel = self.channel
        assert channel is not None
        channel.confirm_delivery(ack_nack_callback=self._on_delivery, callback=lambda _frame: self._pump())

    def _declare(self, steps: list[Declaration]) -> None:
        """Declare ``steps`` one after the other (each waits for the broker's answer), then publish."""
        if not steps:
            self._confirm()
            return
        item, rest = steps[0], steps[1:]
        channel, conn = self.channel, self.conn
        assert channel is not None and conn is not None

        def next_step(_frame: object = None) -> None:
            self._declare(rest)

        if item.kind == "exchange":
            channel.exchange_declare(item.name, exchange_type="direct", durable=True, callback=next_step)
        elif item.kind == "bind":
            channel.queue_bind(
                item.name, self.owner.topology.exchange, routing_key=item.routing_key, callback=next_step
            )
        elif not item.own_channel:
            channel.queue_declare(item.name, durable=True, arguments=item.arguments, callback=next_step)
        else:

            def on_own_closed(_own: Channel, reason: BaseException) -> None:
                if isinstance(reason, pika.exceptions.ChannelClosedByClient):
                    next_step()  # declared, and closed by us
                elif isinstance(reason, pika.exceptions.ChannelClosedByBroker) and reason.reply_code == 406:
                    item.kept_as_is(reason.reply_text)
                    next_step()
                else:
                    self._on_channel_closed(channel, reason)

            def on_own(own: Channel) -> None:
                own.add_on_close_callback(on_own_closed)
                own.queue_declare(
                    item.name, durable=True, arguments=item.arguments, callback=lambda _frame: own.close()
                )

            conn.channel(on_open_callback=on_own)

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if self.error is None and not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            if self.declaring:
                text = getattr(reason, "reply_text", None) or str(reason)
                self.error = f"declaring the topology failed: {text}"
            elif isinstance(reason, pika.exceptions.ChannelClosedByBroker):
                self.error = f"channel closed by the broker: {reason.reply_code} {reason.reply_text}"
            else:  # the connection under it went away (reset, stalled past its heartbeats): no broker's word
                self.error = f"connection lost: {describe_amqp_error(reason)}"
        if self.conn is not None and self.conn.is_open:
            self.conn.close()

    # -- publishing
    def _pump(self) -> None:
        assert self.conn is not None
        self.conn.hold()
        try:
            self._pump_burst()
        finally:
            self.conn.release()
        if self.exhausted and not self.pending:
            self._finish()

    def _pump_burst(self) -> None:
        assert self.channel is not None and self.conn is not None
        while not self.exhausted and not self.interrupted and len(self.pending) < self.owner.window:
            if self.rate:
                now = time.monotonic()
                if not self.started_at:
                    self.started_at = now
                due = self.started_at + self.sent / self.rate
                if due > now:
                    if not self.timer_armed:
                        self.timer_armed = True
                        self.conn.ioloop.call_later(due - now, self._on_timer)
                    return
            msg = next(self.messages, None)
            if msg is None:
                self.exhausted = True
                break
            self.channel.basic_publish(
                self.owner.topology.exchange,
                msg.routing_key,
                msg.body,
                properties=message_properties(msg.message_id),
                mandatory=True,
            )
            self.pending[self.next_tag] = msg.message_id
            self.order.append(self.next_tag)
            self.next_tag += 1
            self.sent += 1
            if self.on_sent is not None:
                self.on_sent(msg)

    def _on_timer(self) -> None:
        self.timer_armed = False
        self._pump()

    def _on_return(self, channel: Channel, method: Basic.Return, props: BasicProperties, body: bytes) -> None:
        # A return always precedes the ack of the same message.
        self.returned[str(props.message_id)] = (
            f"unroutable ({method.reply_text}): no queue bound for {method.routing_key!r}"
        )

    def _on_delivery(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, Basic.Ack)
        tags: Iterable[int]
        if method.multiple:
            order, settled = self.order, []
            while order and order[0] <= method.delivery_tag:
                settled.append(order.popleft())
            tags = settled
        else:
            tags = [method.delivery_tag]
        confirmed = 0
        for tag in tags:
            message_id = self.pending.pop(tag, None)
            if message_id is None:
                continue
            if not acked:
                self.report.failed[message_id] = "nacked by the broker"
            elif message_id in self.returned:
                self.report.failed[message_id] = self.returned.pop(message_id)
            else:
                self.report.confirmed.append(message_id)
                confirmed += 1
        if confirmed and self.on_confirm is not None:
            self.on_confirm(confirmed)
        self._pump()

    def _finish(self) -> None:
        if self.conn is not None and self.conn.is_open:
            self.conn.close()
