"""Raw fuzz: hypothesis-made bodies published straight to the exchange of a real worker process.

On SQLite and PostgreSQL. After each batch: the worker is alive, every
message is a terminal task or a dead letter (what :func:`parse_message`
says it must be), and a good request sent after the batch is scheduled.
At the end nothing is left unacknowledged on the request queue.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from scheduler.models import BadMessage, ReleaseRequest, SchedulingRequest, TaskStatus, parse_message
from scheduler.producer.publisher import Outgoing
from tests.harness import TERMINAL, Deployment, make_nodes, make_requests, wait_until

_counter = itertools.count()

_nasty = st.text(max_size=12) | st.sampled_from(
    ["\ud800", "\x00", "a\x00b", "\udfff", "\x1b[31m", "\u2028", "default", "x" * 200]
)
_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _nasty,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_nasty, inner, max_size=3),
    max_leaves=8,
)
_request = st.fixed_dictionaries(
    {},
    optional={
        "requested_cpu": st.integers(1, 4) | _value,
        "requested_memory": st.integers(1, 4096) | _value,
        "requested_pool": st.just("default") | _value,
        "callback_url": _value,
        "priority": st.integers(-5, 5) | _value,
        "strategy": _value,
        "required_tags": _value,
        "anti_affinity_group": _value,
    },
)


@st.composite
def _body(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["request", "request", "request", "release", "bytes", "deep", "json"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "deep":
        # Clear of the interpreter's recursion limit (1000) either way: how deep a parse may go
        # near it depends on the caller's own stack, which differs between this test and the worker.
        depth = draw(st.integers(10, 400) | st.integers(2000, 5000))
        return b'{"task_id":"deep","x":' + b"[" * depth + b"]" * depth + b"}"
    if kind == "json":
        return json.dumps(draw(_value)).encode("utf-8", "surrogatepass")
    tid = f"fz{next(_counter)}"
    if kind == "release":
        return json.dumps({"release": tid}).encode()
    fields = {**draw(st.dictionaries(_nasty, _value, max_size=2)), **draw(_request), "task_id": tid}
    text = json.dumps(fields)  # NaN / Infinity written as such: not JSON, but it arrives
    if draw(st.booleans()):
        text = text.replace('"task_id"', '"task_id":"dupe-key","task_id"', 1)  # duplicate key
    return text.encode("utf-8", "surrogatepass")


def _expected(body: bytes) -> tuple[str | None, bool]:
    """(task id that must end terminal, or None; True if it must be dead-lettered).

    Parsed under the interpreter's default recursion limit, as the worker
    parses it (hypothesis raises the limit while a test runs).
    """
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        # On a thread of its own: a fresh, shallow stack like the worker's, whatever the caller's depth.
        with ThreadPoolExecutor(1) as pool:
            parsed = pool.submit(parse_message, body).result()
    except BadMessage as bad:
        return bad.task_id, bad.task_id is None
    finally:
        sys.setrecursionlimit(limit)
    if isinstance(parsed, ReleaseRequest):
        return parsed.release, False  # a release of a task not arrived: a cancel, ends released
    if isinstance(parsed, SchedulingRequest) and "task_id" not in parsed.model_fields_set:
        return None, True  # no id in the body and none as message_id: dead-lettered
    return parsed.task_id, False


@pytest.fixture
def fuzzed(db_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(db_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path)
    dep.store.import_nodes(make_nodes(50))
    dep.start_worker()
    dep.wait_leading("worker-0")
    try:
        yield dep
    finally:
        dep.close()


def _unacked(queue: str) -> int | None:
    """Unacknowledged messages on ``queue`` by rabbitmqctl, or None where it cannot be asked."""
    try:
        out = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1])
    return None


@pytest.mark.slow
def test_raw_fuzz_never_kills_or_stalls_the_worker(fuzzed: Deployment) -> None:
    dep = fuzzed
    survived: list[int] = []

    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking against a live worker: it fills the fleet
    )
    @given(bodies=st.lists(_body(), min_size=1, max_size=8))
    def batch(bodies: list[bytes]) -> None:
        expected = [_expected(b) for b in bodies]
        dep.publish_raw(bodies)
        good = make_requests(1, prefix=f"good{next(_counter)}", requested_cpu=1, requested_memory=1)
        dep.publish([Outgoing.request(r) for r in good])
        ids = sorted({tid for tid, _ in expected if tid is not None} | {good[0].task_id})
        dead = sum(1 for _, d in expected if d)
        states = dep.wait_terminal(ids, timeout=60)
        assert states[good[0].task_id] is TaskStatus.SCHEDULED
        assert all(s in TERMINAL for s in states.values())
        letters = (
            wait_until(lambda: dep.queue_depth(dep.topology.dead_queue) >= dead, 30, f"{dead} dead letters")
            if dead
            else True
        )
        assert letters
        assert len(dep.drain(dep.topology.dead_queue)) == dead
        assert dep.procs[0].poll() is None, "the worker died"
        survived.append(len(bodies))

    batch()
    dep.check_invariants()
    wait_until(lambda: dep.queue_depth(dep.queue) == 0, 30, "the request queue to empty")
    unacked = _unacked(dep.queue)
    assert unacked in (0, None), f"{unacked} messages left unacknowledged"
    print(f"raw fuzz: {sum(survived)} messages in {len(survived)} batches survived")


def test_the_issue_bodies_do_not_stall_the_queue(fuzzed: Deployment) -> None:
    """A lone surrogate, a NUL in a key, NaN: failed tasks, and the request behind them is placed."""
    dep = fuzzed
    bodies = [
        b'{"task_id":"sur","requested_cpu":1,"requested_memory":1,"requested_pool":"\\ud800"}',
        b'{"task_id":"nul","requested_cpu":1,"requested_memory":1,"a\\u0000b":1}',
        b'{"task_id":"nan","requested_cpu":NaN,"requested_memory":1}',
    ]
    dep.publish_raw(bodies)
    good = dep.publish(Outgoing.request(r) for r in make_requests(3, prefix="behind"))
    states = dep.wait_terminal(["sur", "nul", "nan", *good], timeout=60)
    assert [states[t] for t in ("sur", "nul", "nan")] == [TaskStatus.FAILED] * 3
    assert all(states[t] is TaskStatus.SCHEDULED for t in good)
    record: Any = dep.store.get_task("nul")
    assert "a\\x00b" in record.message


def test_an_unstorable_placement_is_isolated_and_the_rest_of_its_group_commits(fuzzed: Deployment) -> None:
    """A node removed behind the worker's back (no inventory revision) breaks the foreign key of
    every placement on it: those tasks fail with the error, the others in the same groups commit."""
    from sqlalchemy import delete

    from scheduler.models import Node
    from scheduler.store.schema import nodes

    dep = fuzzed
    # The fence is claimed before the term's fleet is read: import only once the term has begun,
    # or the fleet may hold the new nodes already and no reload is ever logged.
    wait_until(lambda: "leading: consuming" in dep.log_of("worker-0"), 30, "the term to begin")
    dep.store.import_nodes(
        [
            Node.model_validate(
                {"name": "gone", "ip": "10.9.0.1", "pool": "doomed", "cpu": 64, "memory": 65536}
            ),
            Node.model_validate(
                {"name": "kept", "ip": "10.9.0.2", "pool": "fine", "cpu": 64, "memory": 65536}
            ),
        ]
    )
    # Let the worker see both nodes, then remove one under it without telling it.
    wait_until(lambda: "inventory reloaded" in dep.log_of("worker-0"), 90, "the worker to load the new nodes")
    with dep.store.engine.begin() as conn:
        conn.execute(delete(nodes).where(nodes.c.name == "gone"))
    doomed = make_requests(5, prefix="doomed", requested_pool="doomed", requested_cpu=1, requested_memory=1)
    fine = make_requests(5, prefix="fine", requested_pool="fine", requested_cpu=1, requested_memory=1)
    mixed = [r for pair in zip(doomed, fine, strict=True) for r in pair]
    ids = dep.publish(Outgoing.request(r) for r in mixed)
    states = dep.wait_terminal(ids, timeout=60)
    assert all(states[r.task_id] is TaskStatus.FAILED for r in doomed)
    assert all(states[r.task_id] is TaskStatus.SCHEDULED for r in fine)
    record: Any = dep.store.get_task(doomed[0].task_id)
    assert record.message.startswith("the request could not be stored")
    dep.check_invariants()
    assert dep.procs[0].poll() is None
    assert "message could not be stored; task failed" in dep.log_of("worker-0")
