"""The producer's publisher: every message confirmed exactly once, in order, or reported failed.

The publisher writes a burst of messages' frames as one buffer; these tests
read back what the broker stored, byte for byte, so a frame written out of
order or lost would show.
"""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest

from scheduler.broker import ROUTE_REQUEST, Topology
from scheduler.producer.publisher import Outgoing, Publisher


@pytest.fixture
def topology(amqp_url: str, amqp_names: dict[str, str]) -> Iterator[Topology]:
    topo = Topology(amqp_names["exchange"], amqp_names["queue"])
    yield topo
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    for queue in (topo.queue, topo.retry_queue, topo.dead_queue, topo.heartbeat_queue):
        ch.queue_delete(queue)
    ch.exchange_delete(topo.exchange)
    conn.close()


def _drain(amqp_url: str, queue: str) -> list[tuple[str, bytes]]:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    out = []
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            break
        out.append((props.message_id, body))
    conn.close()
    return out


@pytest.mark.parametrize("window", [1, 7, 1000])
def test_a_batch_arrives_whole_once_and_in_order(amqp_url: str, topology: Topology, window: int) -> None:
    # Bodies of many sizes and one larger than a frame (131,072 bytes): frames of every kind interleave.
    messages = [
        Outgoing(f"m-{i}", ROUTE_REQUEST, (f'{{"n": {i}, "pad": "' + "x" * (i * 37 % 900) + '"}').encode())
        for i in range(1500)
    ]
    messages.append(Outgoing("big", ROUTE_REQUEST, b'{"pad": "' + b"y" * 200_000 + b'"}'))
    publisher = Publisher(amqp_url, topology, window=window)
    publisher.declare()
    confirmed: list[int] = []
    report = publisher.publish(messages, on_confirm=confirmed.append)
    assert report.ok, report.failed
    assert sorted(report.confirmed) == sorted(m.message_id for m in messages)
    assert sum(confirmed) == len(messages)
    stored = _drain(amqp_url, topology.queue)
    assert stored == [(m.message_id, m.body) for m in messages]


def test_unroutable_messages_are_reported_failed_not_confirmed(amqp_url: str, topology: Topology) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().exchange_declare(topology.exchange, "direct", durable=True)  # no queue bound
    conn.close()
    messages = [Outgoing(f"u-{i}", ROUTE_REQUEST, b"{}") for i in range(50)]
    report = Publisher(amqp_url, topology, window=16).publish(messages)
    assert report.confirmed == []
    assert sorted(report.failed) == sorted(m.message_id for m in messages)
    assert all(why.startswith("unroutable") for why in report.failed.values())
