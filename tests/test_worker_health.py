"""Readiness verdicts, the redelivery count, and the loop-stall check the worker gives its elector."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.broker import HEADER_DELIVERY_COUNT
from scheduler.worker.redelivery import RedeliveryCounter
from scheduler.worker.state import WorkerState


def _not_ok(checks: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in checks.items() if v != "ok"}


def test_a_consuming_leader_and_a_standby_are_ready() -> None:
    leader = WorkerState(leader=True, lease_held=True, consuming=True, broker_connected=True)
    standby = WorkerState(broker_connected=True)
    assert _not_ok(leader.readiness_checks(now=100)) == {}
    assert _not_ok(standby.readiness_checks(now=100)) == {}


def test_a_leader_that_does_not_consume_is_not_ready_and_says_why() -> None:
    state = WorkerState(lease_held=True, broker_connected=True, not_consuming_why="database unavailable: x")
    assert _not_ok(state.readiness_checks(now=0)) == {
        "consumer": "leader not consuming: database unavailable: x"
    }


def test_a_group_retried_too_often_is_not_ready() -> None:
    state = WorkerState(broker_connected=True, max_group_retries=2, group_retries=2, last_retry_error="boom")
    assert _not_ok(state.readiness_checks(now=0)) == {}
    state.group_retries = 3
    assert "requeued 3 times" in _not_ok(state.readiness_checks(now=0))["commits"]


def test_a_stuck_commit_is_not_ready() -> None:
    state = WorkerState(broker_connected=True, commit_stuck_after=30, commit_started=100.0)
    assert _not_ok(state.readiness_checks(now=120)) == {}
    assert _not_ok(state.readiness_checks(now=131)) == {"commit": "a commit has been running for 31s"}


def test_redeliveries_are_counted_per_body_on_classic_queues() -> None:
    counter = RedeliveryCounter(broker_counts=False)
    assert counter.deliveries(b"a", {}, redelivered=False) == 1
    assert [counter.deliveries(b"a", {}, redelivered=True) for _ in range(3)] == [2, 3, 4]
    assert counter.deliveries(b"b", {}, redelivered=True) == 2
    # A header a publisher set is not the broker's count on a classic queue.
    assert counter.deliveries(b"c", {HEADER_DELIVERY_COUNT: 99}, redelivered=False) == 1


def test_quorum_queues_use_the_brokers_count() -> None:
    counter = RedeliveryCounter(broker_counts=True)
    assert counter.deliveries(b"a", {HEADER_DELIVERY_COUNT: 4}, redelivered=True) == 5


def test_a_redelivery_the_worker_caused_itself_is_not_counted() -> None:
    """Handed back because the database failed: the next redelivery is forgiven, on either queue type."""
    from scheduler.worker.batch import Incoming

    classic = RedeliveryCounter(broker_counts=False)
    assert classic.deliveries(b"a", {}, redelivered=False) == 1
    classic.forgive([Incoming(1, b"a", {})])
    assert classic.deliveries(b"a", {}, redelivered=True) == 1
    assert classic.deliveries(b"a", {}, redelivered=True) == 2  # not forgiven: counted
    quorum = RedeliveryCounter(broker_counts=True)
    for _ in range(3):
        quorum.forgive([Incoming(1, b"q", {})])
    assert quorum.deliveries(b"q", {HEADER_DELIVERY_COUNT: 3}, redelivered=True) == 1
    assert quorum.deliveries(b"q", {HEADER_DELIVERY_COUNT: 5}, redelivered=True) == 3


def test_the_count_is_bounded_in_memory() -> None:
    counter = RedeliveryCounter(broker_counts=False, capacity=2)
    for body in (b"1", b"2", b"3"):
        counter.deliveries(body, {}, redelivered=True)
    assert counter.deliveries(b"1", {}, redelivered=True) == 2  # forgotten, counted afresh


def test_the_amqp_heartbeat_stays_below_a_third_of_the_lease(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from scheduler.config import load_settings

    monkeypatch.chdir(tmp_path)  # no config file, no environment: the built-in defaults
    for name in ("SCHEDULER_CONFIG", "AMQP_URL", "SCHEDULER_AMQP__HEARTBEAT"):
        monkeypatch.delenv(name, raising=False)
    default = load_settings()
    assert default.broker_heartbeat() == 5 and not default.heartbeat_lowered()
    shrunk = load_settings(election={"lease_duration": 1.5, "renew_deadline": 1.0, "retry_period": 0.25})
    assert shrunk.broker_heartbeat() == 1
    slow = load_settings(amqp={"heartbeat": 30})
    assert slow.broker_heartbeat() == 5 and slow.heartbeat_lowered()
    fast = load_settings(amqp={"heartbeat": 2})
    assert fast.broker_heartbeat() == 2 and not fast.heartbeat_lowered()


def test_the_loop_counts_as_stuck_only_after_it_has_not_run_for_longer_than_allowed() -> None:
    """The elector's liveness check (``Worker.loop_stalled``) reads this: a loop that went round
    at 100 is alive until 115 with 15 s allowed, stuck after; never judged before its first round."""
    state = WorkerState()
    assert state.loop_stall(1_000.0, 15.0) is None
    state.loop_ran_at = 100.0
    assert state.loop_stall(115.0, 15.0) is None
    assert state.loop_stall(115.5, 15.0) == "the worker's loop has not run for 16 s"


def test_the_worker_gives_its_elector_the_loop_stall_check(sqlite_url: str) -> None:
    """``scheduler worker`` wires the liveness check: the elector asks ``Worker.loop_stalled``, which
    stays quiet while the loop runs and names the stall past ``election.lease_duration`` (at least
    10 s); without the wiring a stuck loop kept the lease renewed."""
    from collections.abc import Callable

    from scheduler.config import Settings
    from scheduler.elector import AlwaysLeader
    from scheduler.store import Store
    from scheduler.worker.daemon import Worker

    class Recording(AlwaysLeader):
        check: Callable[[], str | None] | None = None

        def watch_liveness(self, check: Callable[[], str | None]) -> None:
            self.check = check

    now = [1_000.0]
    settings = Settings(identity="liveness-wiring", database={"url": sqlite_url})
    leadership = Recording(settings.identity)
    with Store.from_url(sqlite_url) as store:
        store.upgrade()
        worker = Worker(settings, store, leadership, clock=lambda: now[0])
        worker.stopping.set()  # run() wires the elector, then returns at once
        assert worker.run() == 0
    assert leadership.check is not None
    assert leadership.check() is None  # the loop has not gone round yet: nothing to judge
    worker.state.loop_ran_at = now[0]
    now[0] += max(settings.election.lease_duration, 10.0)
    assert leadership.check() is None
    now[0] += 1
    assert leadership.check() is not None and "has not run for" in leadership.check()
