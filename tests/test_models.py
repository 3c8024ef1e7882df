"""The message contract: SchedulingRequest is strict, every error names its field, bad bodies never crash.

Why these matter: a request crosses a process boundary as JSON written by
other systems. Coercing ``"4"`` into 4 or ``true`` into 1 would hide a
producer's bug; an unbounded integer would overflow the int64 fleet arrays;
an unknown field is usually a typo (``requested_cpus``) that would otherwise
silently fall back to a default. And a body that cannot be parsed must turn
into a clear, recorded failure (docs/contracts.md invariant 6), with the task id when
it can be read so the task ends ``failed`` instead of vanishing.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from scheduler.models import (
    MAX_BODY_BYTES,
    MAX_CPU,
    BadMessage,
    Decision,
    Node,
    Reason,
    ReleaseRequest,
    SchedulingRequest,
    TaskStatus,
    format_validation_error,
    parse_message,
)

VALID: dict[str, Any] = {"task_id": "t-1", "requested_cpu": 4, "requested_memory": 8192}


def _errors(data: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        SchedulingRequest.model_validate(data)
    return info.value


def test_minimal_request_gets_the_contract_defaults() -> None:
    req = SchedulingRequest.model_validate({"requested_cpu": 1, "requested_memory": 1})
    assert (req.requested_disk, req.requested_pool, req.dedicated) == (0, "default", False)
    assert (req.required_tags, req.strategy, req.anti_affinity_group) == ([], None, None)
    assert (req.priority, req.callback_url) == (0, None)
    # The producer's UUID4 when absent (docs/contracts.md): a real version-4 UUID, different each time.
    assert uuid.UUID(req.task_id).version == 4
    assert (
        SchedulingRequest.model_validate({"requested_cpu": 1, "requested_memory": 1}).task_id != req.task_id
    )


def test_full_request_round_trips() -> None:
    data = {
        **VALID,
        "requested_disk": 100,
        "requested_pool": "ai",
        "dedicated": True,
        "required_tags": ["gpu", "cuda-12"],
        "strategy": "best_fit",
        "anti_affinity_group": "db:primary",
        "priority": 7,
        "callback_url": "https://hooks.example.com/x",
        "requested_resources": {"gpu": 2, "nvme": 1},
        "forbidden_tags": ["maintenance"],
        "anti_affinity_mode": "soft",
        "spread_group": "web",
        "spread_mode": "soft",
    }
    assert SchedulingRequest.model_validate(data).model_dump() == data


# (field, bad value, words the error must contain) -- each row is one rule of the contract.
STRICT_CASES: list[tuple[str, Any, str]] = [
    ("requested_cpu", "4", "valid integer"),  # a numeric string is not a number
    ("requested_cpu", True, "valid integer"),  # a bool is not an int, although Python says it is
    ("requested_cpu", 4.0, "valid integer"),  # nor is an integral float
    ("requested_cpu", 10**30, "less than or equal to 4096"),  # bounded, not overflowed
    ("requested_cpu", 0, "greater than or equal to 1"),
    ("requested_cpu", None, "valid integer"),
    ("requested_memory", -1, "greater than or equal to 1"),
    ("requested_memory", 2**63, "less than or equal to"),
    ("requested_disk", -1, "greater than or equal to 0"),
    ("requested_disk", "0", "valid integer"),
    ("dedicated", 1, "valid boolean"),  # 1 is not true
    ("dedicated", "true", "valid boolean"),
    ("requested_pool", "", "pattern"),
    ("requested_pool", "has space", "pattern"),
    ("required_tags", "gpu", "valid list"),
    ("required_tags", ["ok", "not ok"], "pattern"),
    ("required_tags", [f"t{i}" for i in range(65)], "at most 64"),
    ("strategy", "Fastest!", "pattern"),
    ("strategy", 3, "valid string"),
    ("anti_affinity_group", "", "pattern"),
    ("priority", 10**30, "less than or equal to"),
    ("priority", "high", "valid integer"),
    ("callback_url", "ftp://example.com/x", "http"),
    ("callback_url", "not a url", "URL"),
    ("task_id", "", "pattern"),
    ("task_id", "has space", "pattern"),
    ("task_id", "x" * 129, "pattern"),
    ("task_id", "é", "pattern"),
    ("task_id", 42, "valid string"),
    ("required_tags", ["a|"], "empty alternative"),
    ("required_tags", ["|b"], "empty alternative"),
    ("required_tags", ["a||b"], "empty alternative"),
    ("required_tags", ["a|b c"], "pattern"),
    ("required_tags", ["a|a"], "repeats"),
    ("forbidden_tags", ["a|b"], "pattern"),  # alternatives are for required tags only
    ("requested_resources", {"gpu": 0}, "gpu: the count must be >= 1"),
    ("requested_resources", {"gpu": -2}, "gpu: the count must be >= 1"),
    ("requested_resources", {"gpu": 1.5}, "gpu: the count must be an integer"),
    ("requested_resources", {"gpu": True}, "gpu: the count must be an integer"),
    ("requested_resources", {"GPU": 1}, "'GPU': a resource name is"),
    ("requested_resources", {"a" * 33: 1}, "a resource name is"),
    ("requested_resources", {"cpu": 1}, "built-in resource"),
    ("requested_resources", {"gpu": 5000}, "<= 4096"),
    ("requested_resources", [["gpu", 1]], "valid dictionary"),
    ("anti_affinity_mode", "sometimes", "'hard' or 'soft'"),
    ("spread_mode", "HARD", "'hard' or 'soft'"),
    ("spread_group", "", "pattern"),
]


@pytest.mark.parametrize(
    ("field", "value", "words"), STRICT_CASES, ids=[f"{c[0]}={c[1]!r:.20}" for c in STRICT_CASES]
)
def test_strict_fields_refuse_and_name_the_field(field: str, value: Any, words: str) -> None:
    exc = _errors({**VALID, field: value})
    locs = {err["loc"][0] for err in exc.errors()}
    assert locs == {field}, exc.errors()
    text = format_validation_error(exc)
    assert text.startswith(f"{field}")
    assert words in text


def test_unknown_fields_are_refused_by_name() -> None:
    exc = _errors({**VALID, "requested_cpus": 4})
    assert [err["loc"] for err in exc.errors()] == [("requested_cpus",)]
    assert format_validation_error(exc) == "requested_cpus: Extra inputs are not permitted"


def test_missing_required_fields_are_each_named() -> None:
    text = format_validation_error(_errors({"task_id": "t"}))
    assert text == "requested_cpu: Field required; requested_memory: Field required"


@pytest.mark.parametrize("task_id", ["a", "x" * 128, "A-Za-z0-9._:-", "550e8400-e29b-41d4-a716-446655440000"])
def test_task_id_pattern_accepts_its_whole_alphabet(task_id: str) -> None:
    assert SchedulingRequest.model_validate({**VALID, "task_id": task_id}).task_id == task_id


def test_bounds_are_inclusive() -> None:
    assert SchedulingRequest.model_validate({**VALID, "requested_cpu": MAX_CPU}).requested_cpu == MAX_CPU
    _errors({**VALID, "requested_cpu": MAX_CPU + 1})


def test_requests_are_immutable() -> None:
    """A decision is made on the request as received; nothing downstream may edit it."""
    req = SchedulingRequest.model_validate(VALID)
    with pytest.raises(ValidationError):
        req.requested_cpu = 8  # type: ignore[misc]


# ------------------------------------------------------------ parse_message
def _bad(body: bytes) -> BadMessage:
    with pytest.raises(BadMessage) as info:
        parse_message(body)
    assert info.value.reason is Reason.INVALID_REQUEST
    return info.value


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"requested_cpu": 4,', "malformed JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"task_id": "caf\xe9"}', "not UTF-8"),  # Latin-1, not UTF-8: the id is not readable
        (b"", "empty body"),
        (b" \n\t ", "empty body"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"a string"', "expected a JSON object, got str"),
        (b"null", "expected a JSON object, got NoneType"),
        (b"[" * 60_000, "nested too deeply"),  # under the size limit, over the parser's depth
        (b"[" * 100_000, f"exceeds {MAX_BODY_BYTES}"),  # refused before parsing at all
        (b'{"release": "not a valid id"}', "release"),
    ],
    ids=[
        "truncated",
        "binary",
        "latin1",
        "empty",
        "blank",
        "array",
        "string",
        "null",
        "deep",
        "huge-deep",
        "bad-release",
    ],
)
def test_unparseable_bodies_become_bad_messages_without_a_task_id(body: bytes, words: str) -> None:
    bad = _bad(body)
    assert words in bad.message
    assert bad.task_id is None


def test_deep_nesting_inside_an_object_is_refused_not_a_crash() -> None:
    body = b'{"task_id": "t-1", "required_tags": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(body) < MAX_BODY_BYTES
    assert "nested too deeply" in _bad(body).message


def test_huge_but_valid_json_is_refused_before_parsing() -> None:
    body = json.dumps({**VALID, "callback_url": "https://example.com/" + "x" * MAX_BODY_BYTES}).encode()
    bad = _bad(body)
    assert f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}" == bad.message
    # Too large to be worth parsing, so no id either: it is dead-lettered with this reason.
    assert bad.task_id is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({**VALID, "requested_cpu": "4"}, "requested_cpu"),
        ({**VALID, "dedicated": 1}, "dedicated"),
        ({**VALID, "surprise": True}, "surprise"),
        ({"task_id": "t-1"}, "requested_cpu"),
    ],
)
def test_task_id_is_recovered_when_readable(data: dict[str, Any], field: str) -> None:
    """So the worker can record a ``failed`` task instead of dead-lettering an anonymous message."""
    bad = _bad(json.dumps(data).encode())
    assert bad.task_id == "t-1"
    assert f"{field}:" in bad.message


@pytest.mark.parametrize("task_id", [42, "has space", "", None, ["t-1"]])
def test_unreadable_task_ids_are_not_recovered(task_id: Any) -> None:
    bad = _bad(json.dumps({**VALID, "task_id": task_id}).encode())
    assert bad.task_id is None
    assert "task_id" in bad.message


def test_valid_request_and_release_parse() -> None:
    req = parse_message(json.dumps({**VALID, "required_tags": ["gpu"]}).encode())
    assert isinstance(req, SchedulingRequest)
    assert (req.task_id, req.requested_cpu, req.required_tags) == ("t-1", 4, ["gpu"])
    rel = parse_message(b'{"release": "t-1"}')
    assert rel == ReleaseRequest(release="t-1")


def test_release_with_other_fields_is_not_a_release() -> None:
    """Only the exact ``{"release": ID}`` shape releases: anything more is a malformed request."""
    bad = _bad(b'{"release": "t-1", "requested_cpu": 1}')
    assert "release: Extra inputs are not permitted" in bad.message


def test_utf8_strings_inside_json_are_fine() -> None:
    """UTF-8 is the contract's encoding; non-ASCII where the pattern allows nothing is a field error."""
    bad = _bad(json.dumps({**VALID, "requested_pool": "池"}, ensure_ascii=False).encode("utf-8"))
    assert bad.message.startswith("requested_pool:")
    assert bad.task_id == "t-1"


# ------------------------------------------------------------------- others
def test_node_parses_ip_strings_and_names_bad_fields() -> None:
    node = Node.model_validate({"name": "bm-001", "ip": "10.0.0.1", "cpu": 64, "memory": 262144})
    assert node.model_dump()["ip"] == "10.0.0.1"
    assert (node.pool, node.dedicated, node.disk, node.tags, node.cordoned) == (
        "default",
        False,
        0,
        [],
        False,
    )
    with pytest.raises(ValidationError) as info:
        Node.model_validate({"name": "bm-001", "ip": "10.0.0.300", "cpu": 64, "memory": 1})
    assert format_validation_error(info.value).startswith("ip:")
    with pytest.raises(ValidationError) as info:
        Node.model_validate({"name": "bm-001", "ip": "::1", "cpu": "64", "memory": 1})
    assert format_validation_error(info.value).startswith("cpu:")


def test_decision_placed_and_statuses_terminal() -> None:
    assert Decision(task_id="t", strategy="cpu", node="bm-1").placed
    assert not Decision(task_id="t", strategy="cpu", reason=Reason.INSUFFICIENT_RESOURCES).placed
    assert {s for s in TaskStatus if s.terminal} == {
        TaskStatus.SCHEDULED,
        TaskStatus.FAILED,
        TaskStatus.RELEASED,
    }


NODE = {"name": "gpu-017", "ip": "10.0.0.17", "cpu": 128, "memory": 1048576, "disk": 4000}

# (field, bad value, words the error must contain) for the resource model of a node.
NODE_CASES: list[tuple[str, Any, str]] = [
    ("resources", {"gpu": 0}, "gpu: the count must be >= 1"),
    ("resources", {"gpu": -8}, "gpu: the count must be >= 1"),
    ("resources", {"Gpu": 8}, "a resource name is"),
    ("resources", {"9gpu": 8}, "a resource name is"),
    ("resources", {"memory": 8}, "built-in resource"),
    ("resources", {f"d{i}": 1 for i in range(17)}, "at most 16 kinds"),
    ("reserved", {"cpu": 129}, "cpu: 129 is larger than the capacity (cpu: 128)"),
    ("reserved", {"memory": 1048577}, "memory: 1048577 is larger than the capacity"),
    ("reserved", {"disk": 4001}, "disk: 4001 is larger than the capacity"),
    ("reserved", {"cpu": -1}, "greater than or equal to 0"),
    ("reserved", {"gpu": 1}, "Extra inputs are not permitted"),
    ("cpu_allocation_ratio", 0, "greater than 0"),
    ("cpu_allocation_ratio", -1.5, "greater than 0"),
    ("memory_allocation_ratio", 100.5, "less than or equal to 100"),
    ("disk_allocation_ratio", float("nan"), "finite number"),
    ("disk_allocation_ratio", float("inf"), "finite number"),
    ("cpu_allocation_ratio", "4", "valid number"),
    ("cpu_allocation_ratio", True, "valid number"),
]


@pytest.mark.parametrize(
    ("field", "value", "words"), NODE_CASES, ids=[f"{c[0]}={c[1]!r:.20}" for c in NODE_CASES]
)
def test_node_resource_model_refuses_and_names_the_field(field: str, value: Any, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        Node.model_validate({**NODE, field: value})
    assert {err["loc"][0] for err in info.value.errors()} == {field}, info.value.errors()
    text = format_validation_error(info.value)
    assert text.startswith(field)
    assert words in text


def test_node_resource_model_accepts_the_design_example() -> None:
    node = Node.model_validate(
        {
            **NODE,
            "resources": {"gpu": 8, "nvme": 4},
            "reserved": {"cpu": 4, "memory": 16384, "disk": 100},
            "cpu_allocation_ratio": 4,  # an int is a fine ratio
            "memory_allocation_ratio": 1.5,
            "disk_allocation_ratio": 1.0,
        }
    )
    assert node.resources == {"gpu": 8, "nvme": 4}
    assert node.reserved is not None and (node.reserved.cpu, node.reserved.memory) == (4, 16384)
    assert node.cpu_allocation_ratio == 4.0
    # A reserve equal to the capacity is allowed: the node then offers nothing of it.
    assert Node.model_validate({**NODE, "reserved": {"disk": 4000}}).reserved is not None
