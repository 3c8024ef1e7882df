"""The leader's consuming channel: open it, cancel its consumers, close it, requeue a batch.

Why a module: closing this channel is how the worker hands every unacked
message back to the queue at once (on losing leadership, a fence refusal or
a database outage), so its lifetime is the lifetime of one leadership term's
consumption. It lives on the worker's thread only (pika is not thread-safe).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from scheduler.broker import BrokerUnavailable, Topology
from scheduler.worker.batch import Incoming

AMQP_ERRORS = (pika.exceptions.AMQPError, OSError, BrokerUnavailable)

OnMessage = Callable[[BlockingChannel, Any, pika.BasicProperties, bytes], None]


class Consumer:
    """The channel requests and heartbeats are consumed on, while this replica leads."""

    def __init__(self, topology: Topology, prefetch: int) -> None:
        self.topology = topology
        self.prefetch = prefetch
        self.channel: BlockingChannel | None = None
        self._tags: list[str] = []

    def open(
        self, conn: pika.BlockingConnection, on_request: OnMessage, on_heartbeat: OnMessage
    ) -> BlockingChannel:
        """Open the channel and consume requests (acked by the worker) and heartbeats (auto-acked)."""
        channel = conn.channel()
        channel.basic_qos(prefetch_count=self.prefetch)
        self.channel = channel
        self._tags = [
            channel.basic_consume(self.topology.queue, on_request),
            channel.basic_consume(self.topology.heartbeat_queue, on_heartbeat, auto_ack=True),
        ]
        return channel

    def cancel(self) -> None:
        """Stop deliveries (graceful stop) while keeping the channel open for the acks still due."""
        ch = self.channel
        if ch is None or not ch.is_open:
            return
        for tag in self._tags:
            with contextlib.suppress(*AMQP_ERRORS):
                ch.basic_cancel(tag)
        self._tags = []

    def close(self) -> None:
        """Closing the channel hands every unacked message back to the queue at once."""
        ch, self.channel = self.channel, None
        self._tags = []
        if ch is not None and ch.is_open:
            with contextlib.suppress(*AMQP_ERRORS):
                ch.close()

    def requeue(self, channel: BlockingChannel, batch: list[Incoming]) -> None:
        """Hand an uncommitted batch back to the queue, if its channel is still ours and open."""
        ours = self.channel
        if batch and ours is not None and ours is channel and ours.is_open:
            ours.basic_nack(delivery_tag=max(m.delivery_tag for m in batch), multiple=True, requeue=True)


__all__ = ["AMQP_ERRORS", "Consumer"]
