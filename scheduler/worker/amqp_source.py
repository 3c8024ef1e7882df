"""The flow's broker, over pika: acks and requeues on the term's consuming channel, publishes confirmed.

Why a module: :class:`~scheduler.worker.flow.Flow` knows the broker only as
a :class:`~scheduler.worker.flow.MessageSource`; this is the one that speaks
AMQP, for one leadership term (its consuming channel) within one broker
session (its confirm-mode publishing channel). It lives on the worker's
thread only (pika is not thread-safe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel

from scheduler.worker.batch import Incoming, RetryLater
from scheduler.worker.consumer import Consumer
from scheduler.worker.outbound import Outbound


@dataclass(frozen=True)
class AmqpSource:
    """The consuming channel of one term, the session's publisher, and the connection they share."""

    conn: pika.BlockingConnection
    consumer: Consumer
    channel: BlockingChannel
    outbound: Outbound

    def ack(self, tag: int, *, multiple: bool = False) -> None:
        self.channel.basic_ack(delivery_tag=tag, multiple=multiple)

    def nack_requeue(self, tag: int) -> None:
        self.channel.basic_nack(delivery_tag=tag, requeue=True)

    def requeue(self, batch: Sequence[Incoming]) -> None:
        """Nothing when the term's channel was closed already: the queue has the messages back."""
        self.consumer.requeue(self.channel, list(batch))

    def dead_letter(self, msg: Incoming, reason: str, *, kind: str) -> None:
        self.outbound.dead_letter(msg, reason, kind=kind)

    def retry(self, retry: RetryLater) -> None:
        self.outbound.retry(retry)

    def service(self) -> None:
        if self.conn.is_open:
            self.conn.process_data_events(time_limit=0)


__all__ = ["AmqpSource"]
