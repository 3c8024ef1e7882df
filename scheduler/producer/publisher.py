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

Two things keep a large batch near the broker's pace: the frames of a
window-sized burst of messages leave in one socket write instead of three
per message (:class:`_BatchingConnection`), and a ``multiple`` confirm
releases the tags in order without scanning everything in flight.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from scheduler.broker import (
    ROUTE_RELEASE,
    ROUTE_REQUEST,
    BrokerUnavailable,
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
    ) -> PublishReport:
        """Publish everything with confirms; returns which ids were confirmed and which failed.

        ``rate`` (messages/s) paces the publishing on the I/O loop's timer, so
        each message leaves when it is due instead of in window-sized bursts;
        ``on_sent`` is called as each one is handed to the socket.
        """
        run = _PipelinedRun(self, iter(messages), on_confirm, rate=rate, on_sent=on_sent)
        return run.execute()


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
    ):
        self.owner = owner
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
        self.conn.ioloop.start()
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
        channel.confirm_delivery(ack_nack_callback=self._on_delivery, callback=lambda _frame: self._pump())

    def _on_channel_closed(self, channel: Channel, reason: BaseException) -> None:
        if self.error is None and not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            self.error = f"channel closed by the broker: {reason}"
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
        while not self.exhausted and len(self.pending) < self.owner.window:
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
