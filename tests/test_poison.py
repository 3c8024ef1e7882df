"""Hostile bodies and unstorable items: what reaches the database is always storable, on both backends.

The store and the commit pipeline are exercised for real (SQLite and
PostgreSQL); the bodies are the ones that once stalled the worker, plus
hypothesis-generated ones.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from scheduler import safetext
from scheduler.models import Node, Reason, SchedulingRequest, TaskStatus, parse_message
from scheduler.store import CommitItem, Placement, Release, Store
from scheduler.store.schema import outbox
from scheduler.strategies import Placer
from scheduler.webhooks.policy import callback_checker
from scheduler.worker.batch import Incoming, RetryPolicy, decide_batch
from scheduler.worker.pipeline import CommitPipeline, Committed, Fenced
from tests.store_checks import duplicate_active_allocations, overcommitted_nodes

ISSUE_BODIES = [
    b'{"task_id":"t-sur","requested_cpu":1,"requested_memory":1,"requested_pool":"\\ud800"}',
    b'{"task_id":"t-nul","requested_cpu":1,"requested_memory":1,"a\\u0000b":1}',
    b'{"task_id":"t-nan","requested_cpu":NaN,"requested_memory":1}',
    b'{"task_id":"t-inf","requested_cpu":1,"requested_memory":1e400}',
    b'{"task_id":"t-ctl","requested_cpu":1,"requested_memory":1,"x\\u001b[31m":"\\u0000\\udfff"}',
    b'{"task_id":"t-cb","requested_cpu":1,"requested_memory":1,"callback_url":"https://a.example/\\u0000"}',
]


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.from_url(db_url)
    s.upgrade()
    s.import_nodes([Node(name="bm-1", ip="10.0.0.1", cpu=64, memory=262144, disk=1000)])  # type: ignore[arg-type]
    s.claim_fence(1, "test")
    yield s
    s.close()


def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _plan(store: Store, bodies: list[bytes]) -> Any:
    fleet = store.load_fleet()
    messages = [Incoming(i + 1, b, {}) for i, b in enumerate(bodies)]
    return decide_batch(
        messages,
        fleet,
        Placer(),
        now=0.0,
        retry=RetryPolicy(),
        callback_refusal=callback_checker([]),
        rng=random.Random(0),
    )


def _assert_outbox_strict(store: Store) -> None:
    with store.engine.connect() as conn:
        for (payload,) in conn.execute(select(outbox.c.payload)):
            assert safetext.is_clean(payload)
            _strict(payload)


def test_the_bodies_that_once_stalled_the_worker_become_failed_tasks(store: Store) -> None:
    plan = _plan(store, ISSUE_BODIES)
    assert not plan.dead
    store.commit(plan.items, 1)  # one transaction: nothing in it may be unstorable
    for body in ISSUE_BODIES:
        tid = json.loads(body.decode(), parse_constant=str)["task_id"]
        rec = store.get_task(tid)
        assert rec is not None and rec.status is TaskStatus.FAILED and rec.reason is Reason.INVALID_REQUEST
        assert rec.message and safetext.is_clean(rec.message) and "\x1b" not in rec.message
    _assert_outbox_strict(store)


def test_validation_messages_name_the_field_printably() -> None:
    with pytest.raises(Exception) as info:
        parse_message(ISSUE_BODIES[1])
    assert "a\\x00b" in str(info.value) and "\x00" not in str(info.value)


def test_a_commit_that_fails_on_one_item_isolates_it_and_commits_the_rest(store: Store) -> None:
    """A placement on a node missing from the inventory breaks a foreign key: only it fails."""

    def place(tid: str, node: str) -> Placement:
        req = SchedulingRequest(task_id=tid, requested_cpu=1, requested_memory=1)
        return Placement(req, node, "10.0.0.1", "least_loaded", "placed", 1)

    items: list[CommitItem] = [place(f"ok-{i}", "bm-1") for i in range(5)]
    items.insert(3, place("bad", "no-such-node"))
    items.append(Release("ok-0"))
    outcome = CommitPipeline(store).commit(items, 1)
    assert isinstance(outcome, Committed)
    assert [(p.index, p.stored_as_failure) for p in outcome.poisoned] == [(3, True)]
    assert outcome.commits > 1
    states = store.task_states([f"ok-{i}" for i in range(5)] + ["bad"])
    assert states.pop("bad") is TaskStatus.FAILED
    assert states == {"ok-0": TaskStatus.RELEASED, **{f"ok-{i}": TaskStatus.SCHEDULED for i in range(1, 5)}}
    bad = store.get_task("bad")
    assert bad is not None and bad.message and bad.message.startswith("the request could not be stored")
    assert duplicate_active_allocations(store) == {} and overcommitted_nodes(store) == {}
    # Committing the same group again is harmless: duplicates, nothing new.
    again = CommitPipeline(store).commit([i for i in items if i.task_id != "bad"], 1)
    assert isinstance(again, Committed) and not again.poisoned and not again.result.applied


def test_an_unstorable_release_is_handed_back_for_dead_lettering(store: Store) -> None:
    """A release whose commit fails alone is never turned into a failure: the caller dead-letters it."""

    class ReleaseBreaks:
        def commit(self, items: Any, epoch: int) -> Any:
            if any(isinstance(i, Release) for i in items):
                raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
            return store.commit(items, epoch)

    req = SchedulingRequest(task_id="a", requested_cpu=1, requested_memory=1)
    items: list[CommitItem] = [
        Placement(req, "bm-1", "10.0.0.1", "least_loaded", "placed", 1),
        Release("zzz"),
    ]
    outcome = CommitPipeline(ReleaseBreaks()).commit(items, 1)
    assert isinstance(outcome, Committed)
    assert [(p.index, p.stored_as_failure) for p in outcome.poisoned] == [(1, False)]
    assert store.task_states(["a", "zzz"]) == {"a": TaskStatus.SCHEDULED}


def test_the_fence_is_an_outcome_not_poison(store: Store) -> None:
    store.claim_fence(5, "newer")
    req = SchedulingRequest(task_id="a", requested_cpu=1, requested_memory=1)
    outcome = CommitPipeline(store).commit([Placement(req, "bm-1", "10.0.0.1", "s", "m", 1)], 1)
    assert isinstance(outcome, Fenced)
    assert store.task_states(["a"]) == {}


# Any JSON value, with the nasty corners over-represented.
_nasty_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=20) | st.sampled_from(
    ["\ud800", "\x00", "a\x00b", "\udfff\ud800", "\x1b[2J", "\u2028"]
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _nasty_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_nasty_text, inner, max_size=4),
    max_leaves=12,
)
_fields = st.fixed_dictionaries(
    {"task_id": st.sampled_from(["f-1", "f-2", "f-3"])},
    optional={
        "requested_cpu": _json | st.integers(1, 8),
        "requested_memory": _json | st.integers(1, 1024),
        "requested_pool": _json,
        "callback_url": _json,
        "priority": _json,
        "strategy": _json,
    },
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(st.tuples(_fields, st.dictionaries(_nasty_text, _json, max_size=3)), max_size=4))
def test_any_hostile_request_is_storable_in_one_transaction(
    store: Store, bodies: list[tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    raw = [json.dumps({**extra, **fields}).encode("utf-8", "surrogatepass") for fields, extra in bodies]
    plan = _plan(store, raw)
    store.commit(plan.items, 1)  # must not raise: no bisection needed for anything parse_message lets by
    _assert_outbox_strict(store)
    for rec in store.list_tasks():
        assert rec.message is None or safetext.is_clean(rec.message)
