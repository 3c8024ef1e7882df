"""The producer's publisher: every message confirmed exactly once, in order, or reported failed.

The publisher writes a burst of messages' frames as one buffer; these tests
read back what the broker stored, byte for byte, so a frame written out of
order or lost would show.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from scheduler.broker import ROUTE_REQUEST, BrokerUnavailable, Topology
from scheduler.producer.publisher import Outgoing, Publisher
from tests.harness import delete_topology


@pytest.fixture
def topology(amqp_url: str, amqp_names: dict[str, str]) -> Iterator[Topology]:
    topo = Topology(amqp_names["exchange"], amqp_names["queue"])
    yield topo
    delete_topology(amqp_url, topo)


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


def test_submit_declares_the_topology_on_the_publishing_connection(
    amqp_url: str, amqp_names: dict[str, str], topology: Topology, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``submit --file`` opens one connection: the topology is declared on it, then the batch is sent."""
    from click.testing import CliRunner

    from scheduler.cli import cli
    from scheduler.producer import publisher

    opened: list[str] = []
    blocking, batching = pika.BlockingConnection, publisher._BatchingConnection.__init__

    def count_blocking(*args: Any, **kwargs: Any) -> Any:
        opened.append("blocking")
        return blocking(*args, **kwargs)

    def count_batching(self: Any, *args: Any, **kwargs: Any) -> None:
        opened.append("publishing")
        batching(self, *args, **kwargs)

    monkeypatch.setattr(pika, "BlockingConnection", count_blocking)
    monkeypatch.setattr(publisher._BatchingConnection, "__init__", count_batching)
    trace = tmp_path / "reqs.jsonl"
    trace.write_text("".join(f'{{"task_id": "d-{i}", "requested_cpu": 1, "requested_memory": 1}}\n'
                             for i in range(300)))  # fmt: skip
    (tmp_path / "config.yaml").write_text("strategy: least_loaded\n")
    env = {
        "SCHEDULER_CONFIG": str(tmp_path / "config.yaml"),
        "AMQP_URL": amqp_url,
        "SCHEDULER_AMQP__EXCHANGE": amqp_names["exchange"],
        "SCHEDULER_AMQP__QUEUE": amqp_names["queue"],
    }
    result = CliRunner().invoke(cli, ["submit", "--file", str(trace)], env=env)
    assert result.exit_code == 0, result.output
    assert opened == ["publishing"]
    monkeypatch.setattr(pika, "BlockingConnection", blocking)
    assert [mid for mid, _ in _drain(amqp_url, topology.queue)] == [f"d-{i}" for i in range(300)]
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:  # declared as Topology.declare would: the same arguments are accepted again
        ch = conn.channel()
        for queue in (topology.retry_queue, topology.dead_queue, topology.heartbeat_queue):
            ch.queue_declare(queue, passive=True)
        topology.declare(ch)
    finally:
        conn.close()


def test_publish_keeps_a_dead_letter_queue_declared_with_other_arguments(
    amqp_url: str, topology: Topology
) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().queue_declare(topology.dead_queue, durable=True)  # no bounds: an older deployment
    conn.close()
    report = Publisher(amqp_url, topology).publish([Outgoing("k-1", ROUTE_REQUEST, b"{}")], declare=True)
    assert report.ok, report.failed
    assert _drain(amqp_url, topology.queue) == [("k-1", b"{}")]


def test_a_request_queue_declared_by_an_earlier_version_is_kept(amqp_url: str, topology: Topology) -> None:
    """Before the request queue dead-lettered what expires in it, it was declared without
    ``x-dead-letter-*``; redeclaring it with them is a 406. The producer and the worker keep it as
    it is (a warning says so), and go on."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        old = {"x-queue-type": "classic", "x-single-active-consumer": True}
        conn.channel().queue_declare(topology.queue, durable=True, arguments=old)
        topology.declare(conn.channel())  # the worker's way
    finally:
        conn.close()
    report = Publisher(amqp_url, topology).publish([Outgoing("o-1", ROUTE_REQUEST, b"{}")], declare=True)
    assert report.ok, report.failed
    assert _drain(amqp_url, topology.queue) == [("o-1", b"{}")]


def test_publish_reports_a_topology_the_broker_refuses(amqp_url: str, topology: Topology) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().exchange_declare(topology.exchange, "fanout", durable=True)  # another type: 406
    conn.close()
    with pytest.raises(BrokerUnavailable, match="declaring the topology failed"):
        Publisher(amqp_url, topology).publish([Outgoing("r-1", ROUTE_REQUEST, b"{}")], declare=True)


def test_a_connection_reset_mid_batch_is_reported_as_lost_not_as_the_brokers_doing(
    amqp_url: str, topology: Topology
) -> None:
    """The channel closes with the connection under it; its reason named the broker, which said nothing."""
    from urllib.parse import urlsplit

    from tests.fault_proxy import FaultProxy

    parts = urlsplit(amqp_url)
    with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        publisher = Publisher(proxy.url_through(amqp_url), topology, window=100)
        publisher.declare()
        messages = [Outgoing(f"r-{i}", "request", b"{}") for i in range(5000)]
        report = publisher.publish(messages, on_confirm=lambda _n: proxy.fault("reset"))
    assert report.failed and len(report.confirmed) + len(report.failed) == len(messages)
    reasons = set(report.failed.values())
    assert all(r.startswith(("connection lost: ", "not sent: connection lost: ")) for r in reasons), reasons
