"""The fast and the careful decoding of a message body agree, on any body.

:func:`scheduler.models.parse_message` validates a body straight from its
bytes with pydantic's JSON parser and falls back to
:func:`scheduler.models.parse_careful` (the standard library parser through
:mod:`scheduler.safetext`) on anything that parser refuses. That is only
correct if the fast path never accepts a body the careful path would decode
differently: a lone surrogate, ``NaN``, ``1e400``, a duplicate key, a
big integer, a byte-order mark, stray whitespace or bytes. Here hypothesis
writes bodies from the near-valid (every field right, one thing odd, keys
repeated, numbers spelt oddly) to the arbitrary, and both paths must give
the same request or the same error (message, task id and reason).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.models import (
    BadMessage,
    SchedulingRequest,
    _parse_json_line_careful,
    parse_careful,
    parse_json_line,
    parse_message,
)

FIXED_ID = uuid.UUID("12345678-1234-4678-9234-567812345678")

# JSON value spellings, some of them not JSON at all or read differently by different parsers.
_ODD_NUMBERS = ["1", "-0", "0", "1.0", "1e0", "1E2", "1e400", "-1e400", "NaN", "Infinity", "-Infinity",
                "123456789012345678901234567890", "-9223372036854775809", "18446744073709551616", "01",
                "1_0", "0x10", "+1", ".5", "4096", "4097", "1000000", "-1000000"]  # fmt: skip
_ODD_STRINGS = ['"default"', '"gpu"', '"least_loaded"', '"hard"', '"soft"', '"t-1"', '"\\ud800"',
                '"\\udfff"', '"\\ud83d\\ude00"', '"a\\u0000b"', '"\\u00e9"', '"\u00e9"', '"http://a.example/h"',
                '"http://a.example/\\ud800"', '"a\\/b"', '"a\\x"', '"\t"', '""', '"g|h"', '"release"',
                '"move"']  # fmt: skip
_ODD_OTHER = ["null", "true", "false", "[]", '["gpu"]', '["\\ud800"]', "{}", '{"gpu":1}', '{"gpu":1,"gpu":2}',
              '{"gpu":NaN}', '{"gpu":1e400}', '{"\\ud800":1}', "[[[[[]]]]]"]  # fmt: skip
_FIELDS = [*SchedulingRequest.model_fields, "release", "move", "node", "\\ud800", "extra"]
_SPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n", "\x0c", "\xa0", "\u2028"])


@st.composite
def _near_valid(draw: st.DrawFn) -> bytes:
    """A JSON-looking object: mostly valid fields, with odd keys, values, repeats and spacing."""
    pairs: list[tuple[str, str]] = [("requested_cpu", "2"), ("requested_memory", "512")]
    if draw(st.booleans()):
        pairs.append(("task_id", '"t-1"'))
    value = st.sampled_from(_ODD_NUMBERS) | st.sampled_from(_ODD_STRINGS) | st.sampled_from(_ODD_OTHER)
    extra = draw(st.lists(st.tuples(st.sampled_from(_FIELDS), value), max_size=5))
    pairs.extend(extra)
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    if draw(st.booleans()) and pairs:
        pairs.append(draw(st.sampled_from(pairs)))  # a key written twice
    space = draw(_SPACE)
    text = "{" + ",".join(f'{space}"{k}"{space}:{space}{v}' for k, v in pairs) + "}"
    text = draw(_SPACE) + text + draw(_SPACE)
    body = text.encode("utf-8", "surrogatepass")
    cut = draw(st.sampled_from(["none", "none", "none", "bom", "byte", "truncate"]))
    if cut == "bom":
        body = b"\xef\xbb\xbf" + body
    elif cut == "byte":
        at = draw(st.integers(0, len(body)))
        odd = draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\x00", b"\x80", b","]))
        body = body[:at] + odd + body[at:]
    elif cut == "truncate":
        body = body[: draw(st.integers(0, len(body)))]
    return body


def _from_values(values: dict[str, Any]) -> bytes:
    return json.dumps(values, ensure_ascii=False).encode("utf-8", "surrogatepass")


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_bodies = (
    _near_valid()
    | st.fixed_dictionaries(
        {"requested_cpu": st.integers(-2, 5000) | _json_value, "requested_memory": st.integers(0, 9)},
        optional={n: _json_value for n in SchedulingRequest.model_fields if not n.startswith("requested_")},
    ).map(_from_values)
    | st.binary(max_size=64)
    | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass"))
)


@contextmanager
def _fixed_uuid() -> Iterator[None]:
    """A request without a task id gets a fresh UUID; the same one on both paths, so they compare."""
    with mock.patch.object(uuid, "uuid4", return_value=FIXED_ID):
        yield


def _outcome(parse: Callable[[bytes], Any], body: bytes) -> tuple[Any, ...]:
    with _fixed_uuid():
        try:
            parsed = parse(body)
        except BadMessage as bad:
            return ("error", bad.message, bad.task_id, bad.reason)
    return ("ok", type(parsed).__name__, parsed.model_dump())


@settings(max_examples=1500, deadline=None)
@given(_bodies)
def test_fast_and_careful_paths_agree(body: bytes) -> None:
    assert _outcome(parse_message, body) == _outcome(parse_careful, body)


def _line_outcome(parse: Callable[[str], Any], line: str) -> tuple[Any, ...]:
    with _fixed_uuid():
        try:
            parsed = parse(line)
        except ValueError as exc:
            return ("error", str(exc))
    return ("ok", type(parsed).__name__, parsed.model_dump())


@settings(max_examples=800, deadline=None)
@given(_bodies)
def test_a_file_line_is_read_alike_on_both_paths(body: bytes) -> None:
    """``submit --file`` lines: the same request or the same ``field: rule`` text."""
    line = body.decode("utf-8", "replace")
    assert _line_outcome(parse_json_line, line) == _line_outcome(_parse_json_line_careful, line)


def test_the_fast_path_is_taken_for_a_plain_request() -> None:
    """Not a tautology of the property above: the fast path must actually serve the common body."""
    body = SchedulingRequest(task_id="t-1", requested_cpu=2, requested_memory=512).model_dump_json().encode()
    with mock.patch("scheduler.models.parse_careful", side_effect=AssertionError("careful path used")):
        assert parse_message(body) == SchedulingRequest(task_id="t-1", requested_cpu=2, requested_memory=512)


def test_odd_bodies_are_decided_by_the_careful_path() -> None:
    """A lone surrogate, NaN or 1e400 fails by field name, exactly as the careful path says."""
    for body in (
        b'{"task_id":"t-1","requested_cpu":2,"requested_memory":512,"requested_pool":"\\ud800"}',
        b'{"task_id":"t-1","requested_cpu":NaN,"requested_memory":512}',
        b'{"task_id":"t-1","requested_cpu":1e400,"requested_memory":512}',
    ):
        fast, careful = _outcome(parse_message, body), _outcome(parse_careful, body)
        assert fast == careful
        assert fast[0] == "error" and fast[2] == "t-1", fast
