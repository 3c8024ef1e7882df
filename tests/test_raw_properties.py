"""Hostile AMQP properties and headers published straight to the exchange of a real worker.

The body fuzz (``tests/test_raw_fuzz.py``) sends plain properties; these
messages carry header tables RabbitMQ accepts and forwards as they came, but
which pika could not read (a timestamp after the year 9999), could read but
not write back (a double of 1e300 becomes an integer beyond 64 bits), or
could write back only into a frame larger than the connection allows (a
table near ``frame_max``, plus the dead-letter reason). Each one once
stalled the queue for ever or killed the worker; now each gets its outcome
and the request behind it is placed. And a request whose body names no task
id takes it from the ``message_id`` property (or is dead-lettered), never a
new one at each delivery. SQLite only: none of this depends on the database.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.data
import pytest

from scheduler.broker import HEADER_DEATH_REASON, HEADER_UNDECODABLE, tolerate_hostile_headers
from scheduler.models import SCHEMA_VERSION, TaskStatus
from tests.harness import Deployment, make_nodes, wait_until


class _Encoded:
    """A header value given as its AMQP encoding (kind byte and value), for what pika cannot write."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob


def _timestamp(seconds: int) -> _Encoded:
    return _Encoded(b"T" + struct.pack(">Q", seconds))


def _double(value: float) -> _Encoded:
    return _Encoded(b"d" + struct.pack(">d", value))


@pytest.fixture
def raw_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let this process's pika write :class:`_Encoded` header values as they are."""
    original = pika.data.encode_value

    def encode_value(pieces: list[bytes], value: Any) -> int:
        if isinstance(value, _Encoded):
            pieces.append(value.blob)
            return len(value.blob)
        size: int = original(pieces, value)
        return size

    monkeypatch.setattr(pika.data, "encode_value", encode_value)


@pytest.fixture
def dep(sqlite_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(sqlite_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path)
    d.store.import_nodes(make_nodes(3))
    d.start_worker()
    d.wait_leading("worker-0")
    wait_until(lambda: "leading: consuming" in d.log_of("worker-0"), 30, "the worker to consume")
    try:
        yield d
    finally:
        d.close()


def _publish(dep: Deployment, messages: list[tuple[bytes, dict[str, Any]]]) -> None:
    """Each (body, headers) to the exchange as a request, confirmed, then a good request behind them."""
    conn = pika.BlockingConnection(pika.URLParameters(dep.amqp_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        good = (json.dumps({"task_id": "behind", "requested_cpu": 1, "requested_memory": 1}).encode(), {})
        for body, headers in [*messages, good]:
            props = pika.BasicProperties(delivery_mode=2, headers=headers or None)
            ch.basic_publish(dep.exchange, "request", body, properties=props, mandatory=True)
    finally:
        conn.close()


def _request(task_id: str, cpu: int = 1) -> bytes:
    return json.dumps({"task_id": task_id, "requested_cpu": cpu, "requested_memory": 1}).encode()


def _settled(
    dep: Deployment, placed: list[str], failed: list[str], dead: list[bytes]
) -> list[dict[str, Any]]:
    """Wait for every outcome; check the worker lives, nothing is left on the queue, and the fleet
    holds; return the dead letters' headers, in the order of ``dead``."""
    states = dep.wait_terminal(["behind", *placed, *failed], timeout=60)
    assert states["behind"] is TaskStatus.SCHEDULED
    assert all(states[t] is TaskStatus.SCHEDULED for t in placed), states
    assert all(states[t] is TaskStatus.FAILED for t in failed), states
    wait_until(lambda: dep.queue_depth(dep.topology.dead_queue) >= len(dead), 30, "the dead letters")
    letters = {body: headers for headers, body in dep.drain(dep.topology.dead_queue)}
    assert sorted(letters) == sorted(dead)
    assert dep.procs[0].poll() is None, "the worker died"
    wait_until(lambda: dep.queue_depth(dep.queue) == 0, 30, "the request queue to empty")
    dep.check_invariants()
    return [letters[body] for body in dead]


@pytest.mark.usefixtures("raw_values")
def test_a_header_timestamp_after_the_year_9999_does_not_stall_the_queue(dep: Deployment) -> None:
    """pika turned it into a datetime while reading the frame, raised, and aborted the connection:
    the message came back to the next consumer, for ever, and nothing behind it was placed."""
    far = 2**64 - 1
    _publish(
        dep,
        [
            (_request("far-top"), {"when": _timestamp(far)}),
            (_request("far-nested"), {"t": {"when": _timestamp(far)}, "a": [1, _timestamp(far)]}),
            (b"not json, far", {"when": _timestamp(253402300800)}),  # 10000-01-01: ValueError
        ],
    )
    (letter,) = _settled(dep, ["far-top", "far-nested"], [], [b"not json, far"])
    assert letter["when"] == 253402300800, "the timestamp is written back as the integer it was"
    assert "malformed JSON" in letter[HEADER_DEATH_REASON]


@pytest.mark.usefixtures("raw_values")
def test_header_values_pika_cannot_write_back_do_not_kill_the_worker(dep: Deployment) -> None:
    """A double of 1e300 is read as an integer of 301 digits; writing it back raised struct.error
    from the dead-letter and the retry publish, which ended the worker process (and every replica
    after it, on each redelivery)."""
    huge = {"d": _double(1e300), "x-attempt": 1}
    _publish(
        dep,
        [
            (b"not json, huge", huge),
            (_request("huge-waits", cpu=4000), huge),  # fits nowhere: retried, then fails
        ],
    )
    (letter,) = _settled(dep, [], ["huge-waits"], [b"not json, huge"])
    assert "d" not in letter, "the header that cannot be written is dropped"
    assert "malformed JSON" in letter[HEADER_DEATH_REASON]
    record: Any = dep.store.get_task("huge-waits")
    assert record.reason == "insufficient_resources"
    assert "a message's headers cannot be written back" in dep.log_of("worker-0")


def test_a_header_table_near_frame_max_does_not_make_the_worker_reconnect_for_ever(dep: Deployment) -> None:
    """The broker accepted the table; ours added to it made the dead letter's (or the retry's)
    header frame larger than frame_max, and the broker closed the worker's connection (501
    FRAME_ERROR) on every redelivery: the queue stalled."""
    big = {"h": "x" * 130_900}
    _publish(dep, [(b"not json, big", big), (_request("big-waits", cpu=4000), big)])
    (letter,) = _settled(dep, [], ["big-waits"], [b"not json, big"])
    assert "h" not in letter
    assert "malformed JSON" in letter[HEADER_DEATH_REASON]
    assert "FRAME_ERROR" not in dep.log_of("worker-0")


def test_a_header_table_pika_cannot_read_becomes_a_marker_and_the_frame_is_read_on() -> None:
    """RabbitMQ 3.10 refuses unknown field kinds and non-finite floats at publish; another broker
    (or version) that forwards them must not make pika abort the connection either."""
    tolerate_hostile_headers()
    good = pika.BasicProperties(message_id="m", headers={"x-attempt": 2, "inner": {"ok": 1}})
    encoded = b"".join(good.encode())
    inner_ok = b"\x02okI\x00\x00\x00\x01"
    assert inner_ok in encoded
    broken = encoded.replace(inner_ok, b"\x02okZ\x00\x00\x00\x01")  # an unknown kind, same length
    props = pika.BasicProperties()
    props.decode(broken)
    assert props.message_id == "m", "the properties after the table are read"
    assert props.headers["x-attempt"] == 2
    assert HEADER_UNDECODABLE in props.headers["inner"]
    nan = encoded.replace(inner_ok, b"\x02okf" + struct.pack(">f", math.nan))
    props = pika.BasicProperties()
    props.decode(nan)
    assert props.message_id == "m" and HEADER_UNDECODABLE in props.headers["inner"]


def test_a_request_without_task_id_is_one_task_whatever_its_deliveries(dep: Deployment) -> None:
    """The worker made a new UUID at each delivery: a request that had to wait left a task
    ``waiting`` for ever at each retry (three tasks for one message here), and a redelivery after
    a crash between commit and ack was placed again. Its id is now its ``message_id``; without
    one it is dead-lettered, saying why."""
    body = json.dumps({"requested_cpu": 4000, "requested_memory": 1}).encode()  # fits nowhere
    conn = pika.BlockingConnection(pika.URLParameters(dep.amqp_url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for props in (pika.BasicProperties(message_id="named-by-property"), pika.BasicProperties()):
            ch.basic_publish(dep.exchange, "request", body, properties=props, mandatory=True)
    finally:
        conn.close()
    _publish(dep, [])
    (letter,) = _settled(dep, [], ["named-by-property"], [body])
    assert "task_id missing" in letter[HEADER_DEATH_REASON]
    record: Any = dep.store.get_task("named-by-property")
    assert record.reason == "insufficient_resources" and record.attempts == 3
    assert set(dep.outbox_counts()) == {"named-by-property", "behind"}, "one task each, nothing else"


def test_a_burst_of_huge_bodies_is_dead_lettered_cut_with_their_size(dep: Deployment) -> None:
    """Bodies of 4 MiB (RabbitMQ takes up to 128 MiB): each is dead-lettered with its start and its
    whole size, nothing is stored, and the request behind them is placed."""
    count, size = 8, 4 * 1024 * 1024
    body = b'{"task_id":"huge","pad":"' + b"a" * size + b'"}'
    _publish(dep, [(body, {}) for _ in range(count)])
    states = dep.wait_terminal(["behind"], timeout=60)
    assert states["behind"] is TaskStatus.SCHEDULED
    wait_until(lambda: dep.queue_depth(dep.topology.dead_queue) >= count, 60, "the dead letters")
    letters = dep.drain(dep.topology.dead_queue)
    assert len(letters) == count
    for headers, cut in letters:
        assert headers["x-original-size"] == len(body)
        assert f"body of {len(body)} bytes exceeds" in headers[HEADER_DEATH_REASON]
        assert body.startswith(cut) and len(cut) == 64 * 1024
    assert dep.store.task_states(["huge"]) == {}, "nothing is stored of a body too large to read"
    assert dep.procs[0].poll() is None


def test_the_session_keeps_only_the_start_of_a_body_too_large_to_read() -> None:
    """The worker held every delivered body whole until its batch was settled: a burst of bodies of
    4 MiB grew it by their total (the chart's memory limit is 512 MiB). The consumer callback now
    hands the flow the start of such a body and its size (docs/resilience.md, Huge bodies)."""
    import random
    import threading
    from types import SimpleNamespace

    from scheduler.models import MAX_BODY_BYTES
    from scheduler.worker.session import Sessions
    from scheduler.worker.state import WorkerState
    from tests.test_http_support import settings_for

    got: list[Any] = []
    flow: Any = SimpleNamespace(receive=got.append)
    sessions = Sessions(
        settings_for(), None, flow, None, None, WorkerState(strategy="least_loaded"),  # type: ignore[arg-type]
        threading.Event(), jitter=random.Random(1),
    )  # fmt: skip
    huge, small = b"{" + b" " * (4 * 2**20), b'{"release": "t"}'
    for tag, body in enumerate((huge, small), 1):
        method = SimpleNamespace(delivery_tag=tag, redelivered=False)
        sessions._on_request(None, method, pika.BasicProperties(message_id=f"m{tag}"), body)  # type: ignore[arg-type]
    cut, whole = got
    assert len(cut.body) == MAX_BODY_BYTES + 1 and huge.startswith(cut.body) and cut.size == len(huge)
    assert whole.body == small and whole.original_size is None and whole.message_id == "m2"


def test_cc_headers_are_not_written_back_so_a_dead_letter_does_not_loop(dep: Deployment) -> None:
    """``CC`` is RabbitMQ's sender-selected distribution: extra routing keys, at every publish. The
    worker wrote it back with the dead letter (published to the default exchange), so ``CC:
    [<queue>]`` sent the dead letter to the request queue too, to be dead-lettered again, for ever
    (hundreds a second, flooding the bounded dead-letter queue)."""
    loop = {"CC": [dep.queue], "BCC": [dep.queue]}
    _publish(dep, [(b"not json, cc", loop), (_request("cc-waits", cpu=4000), loop)])
    (letter,) = _settled(dep, [], ["cc-waits"], [b"not json, cc"])
    assert "CC" not in letter
    # Whatever was going to come round again has had the time of a whole request to do it.
    _publish(dep, [])
    wait_until(lambda: dep.queue_depth(dep.queue) == 0, 30, "the request queue to empty")
    assert dep.queue_depth(dep.topology.dead_queue) == 0
    assert dep.log_of("worker-0").count('"dead-lettered"') == 1


def test_a_request_that_expires_in_the_queue_is_dead_lettered_not_lost(
    sqlite_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path
) -> None:
    """A producer may set a per-message ``expiration``. Published while no worker consumed, such
    a request was confirmed, then vanished: no task, no dead letter, nothing in any log. The
    request queue now dead-letters what expires in it to ``<queue>.dead``."""
    d = Deployment(sqlite_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path)
    try:
        d.declare()
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            props = pika.BasicProperties(expiration="1", delivery_mode=2)
            ch.basic_publish(d.exchange, "request", _request("expires"), properties=props, mandatory=True)
        finally:
            conn.close()
        wait_until(lambda: d.queue_depth(d.topology.dead_queue) == 1, 30, "the expired request's dead letter")
        ((headers, body),) = d.drain(d.topology.dead_queue)
        assert body == _request("expires") and headers["x-first-death-reason"] == "expired"
        assert d.queue_depth(d.queue) == 0
    finally:
        d.close()


def test_a_request_of_a_newer_schema_waits_in_the_dead_letters_instead_of_failing(dep: Deployment) -> None:
    """During a rolling upgrade a new producer's request reached an old worker, which judged it by
    its own schema: a field it does not know made the task fail for good. A version above the
    worker's is now kept aside, intact; the current version, an older one, none at all or an
    unreadable one are read as usual."""
    newer = _request("from-the-future")
    _publish(
        dep,
        [
            (newer, {"x-schema-version": SCHEMA_VERSION + 1}),
            (_request("current"), {"x-schema-version": SCHEMA_VERSION}),
            (_request("older"), {"x-schema-version": SCHEMA_VERSION - 1}),
            (_request("unversioned"), {}),
            (_request("odd-version"), {"x-schema-version": "2"}),
        ],
    )
    (letter,) = _settled(dep, ["current", "older", "unversioned", "odd-version"], [], [newer])
    assert letter[HEADER_DEATH_REASON].startswith(
        f"unsupported_schema_version: the message is written to schema version {SCHEMA_VERSION + 1}"
    )
    assert "from-the-future" not in dep.statuses(["from-the-future"])
