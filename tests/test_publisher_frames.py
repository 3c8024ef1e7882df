"""The publisher's own frame encoder writes exactly the bytes pika would, or leaves the message to pika.

:func:`scheduler.producer.publisher.encode_publish` replaces pika's
per-message encoding on the publishing hot path. It is only correct if,
for every message it takes, the method, header and body frames are pika's
own, byte for byte; hypothesis draws properties from the plain kind the
service sends to the unusual (booleans, floats and nested tables in the
headers, long strings, timestamps, priorities) and bodies of every size.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pika import frame, spec

from scheduler.broker import message_properties
from scheduler.producer.publisher import encode_publish

BODY_MAX = 131072 - 8

_text = st.text(max_size=40) | st.text(min_size=250, max_size=300)
_header_value = (
    st.integers(-(2**70), 2**70) | st.text(max_size=20) | st.booleans() | st.floats(allow_nan=False)
    | st.none() | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)
)  # fmt: skip
_properties = st.builds(
    spec.BasicProperties,
    content_type=st.none() | _text,
    content_encoding=st.none() | _text,
    headers=st.none() | st.dictionaries(_text, _header_value, max_size=4),
    delivery_mode=st.none() | st.sampled_from([1, 2]),
    priority=st.none() | st.integers(0, 9),
    correlation_id=st.none() | _text,
    expiration=st.none() | st.integers(0, 10**6).map(str),
    message_id=st.none() | _text,
    timestamp=st.none() | st.integers(0, 2**40),
)


def _pika(channel: int, method: spec.Basic.Publish, props: spec.BasicProperties, body: bytes) -> list[bytes]:
    frames = [frame.Method(channel, method).marshal(), frame.Header(channel, len(body), props).marshal()]
    if body:
        frames.append(frame.Body(channel, body).marshal())
    return frames


@settings(max_examples=400, deadline=None)
@given(
    channel=st.integers(1, 2047),
    exchange=st.sampled_from(["", "scheduler", "bench.x.1234"]),
    routing_key=st.sampled_from(["request", "release", "nodes.heartbeat"]),
    mandatory=st.booleans(),
    props=_properties,
    body=st.binary(max_size=300) | st.sampled_from([b"b" * (BODY_MAX + n) for n in (-1, 0, 1)]),
)
def test_encoded_frames_are_pikas_or_left_to_pika(
    channel: int, exchange: str, routing_key: str, mandatory: bool, props: spec.BasicProperties, body: bytes
) -> None:
    method = spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory)
    cache: dict[Any, bytes] = {}
    ours = encode_publish(channel, method, props, body, BODY_MAX, cache)
    try:
        theirs = _pika(channel, method, props, body)
    except Exception:  # pika cannot encode it either (a short string over 255 bytes)
        assert ours is None
        return
    if ours is not None:
        assert ours == theirs
        assert encode_publish(channel, method, props, body, BODY_MAX, cache) == theirs, "from the cache"


def test_every_message_the_service_publishes_takes_the_fast_path() -> None:
    method = spec.Basic.Publish(exchange="scheduler", routing_key="request", mandatory=True)
    for props in (
        message_properties("t-1"),
        message_properties("t-2", headers={"x-attempt": 3, "x-published-at": 2**41}, expiration_ms=1500),
        message_properties("t-3", headers={"x-death-reason": "invalid: body is not UTF-8 \u00e9"}),
    ):
        body = b'{"task_id":"t-1","requested_cpu":1,"requested_memory":1}'
        ours = encode_publish(1, method, props, body, BODY_MAX, {})
        assert ours is not None and ours == _pika(1, method, props, body)
