"""Prometheus metrics after a known workload: real decisions, real commits, real broker and database."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from scheduler.metrics import SchedulerMetrics, StateCollector, install_metrics
from scheduler.producer.publisher import Outgoing, Publisher
from scheduler.store.schema import deliveries
from scheduler.worker.state import WorkerState
from tests.harness import Deployment, make_requests
from tests.test_http_support import EPOCH, LEADER, run_group, settings_for, standard_workload

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Parse the exposition text the way Prometheus would; keyed by (sample name, sorted labels)."""
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("scheduler_"), family.name
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def add_deliveries(dep: Deployment, event_ids: list[str], outcomes: list[str]) -> None:
    now = datetime.now(UTC)
    rows = [
        {"event_id": e, "task_id": "t", "url": f"https://hooks.example.com/{i}", "status": o, "attempts": 1,
         "next_attempt_at": now, "created_at": now}
        for i, (e, o) in enumerate(zip(event_ids, outcomes, strict=False))
    ]  # fmt: skip
    with dep.store.engine.begin() as conn:
        conn.execute(insert(deliveries), rows)


def test_metrics_after_a_known_workload(deployment: Deployment) -> None:
    registry = CollectorRegistry()
    hooks, collector = install_metrics(registry, store=deployment.store, settings=settings_for(deployment))
    work = standard_workload(deployment.store, hooks=hooks)
    hooks.leadership_changed(True, EPOCH)
    events = [e for _, result in work.plans for e in result.event_ids]
    add_deliveries(deployment, events[:4], ["delivered", "delivered", "pending", "dead"])
    report = Publisher(deployment.amqp_url, deployment.topology).publish(
        [Outgoing.request(r) for r in make_requests(3, prefix="queued")]
    )
    assert report.ok
    assert collector.broker is not None and collector.database is not None
    collector.broker.refresh_now()
    collector.database.refresh_now()

    s = scrape(registry)
    # Decisions by strategy and result: five general VMs and the GPU job placed, one pool unknown,
    # one too big for any node; the malformed request never reached the placer.
    assert value(s, "scheduler_decisions_total", strategy="least_loaded", result="placed") == 6
    assert value(s, "scheduler_decisions_total", strategy="least_loaded", result="unknown_pool") == 1
    assert (
        value(s, "scheduler_decisions_total", strategy="least_loaded", result="insufficient_resources") == 1
    )
    assert value(s, "scheduler_task_outcomes_total", status="scheduled", reason="") == 6
    assert value(s, "scheduler_task_outcomes_total", status="failed", reason="unknown_pool") == 1
    assert value(s, "scheduler_task_outcomes_total", status="failed", reason="invalid_request") == 1
    assert value(s, "scheduler_task_outcomes_total", status="waiting", reason="") == 1
    assert value(s, "scheduler_task_outcomes_total", status="released", reason="") == 1
    assert value(s, "scheduler_retries_total") == 1
    assert value(s, "scheduler_dead_letters_total", reason="invalid") == 0
    # Two groups: nine items (6 placements, 2 failures, 1 wait), then one release.
    assert value(s, "scheduler_commit_group_size_count") == 2
    assert value(s, "scheduler_commit_group_size_sum") == 10
    assert value(s, "scheduler_commit_group_size_bucket", le="10.0") == 2
    assert value(s, "scheduler_commit_seconds_count") == 2
    assert 0 < value(s, "scheduler_commit_seconds_sum") < 10
    # Role and epochs.
    assert value(s, "scheduler_leader") == 1
    assert value(s, "scheduler_epoch") == EPOCH
    assert value(s, "scheduler_fence_epoch") == EPOCH
    assert value(s, "scheduler_leadership_changes_total", change="acquired") == 1
    assert value(s, "scheduler_info", identity="replica-test", strategy="least_loaded") == 1
    # Tasks by status, from the database.
    assert value(s, "scheduler_tasks", status="scheduled") == 5  # vm-5 was released
    assert value(s, "scheduler_tasks", status="released") == 1
    assert value(s, "scheduler_tasks", status="failed") == 2
    assert value(s, "scheduler_tasks", status="waiting") == 1
    assert value(s, "scheduler_tasks", status="queued") == 0
    assert value(s, "scheduler_waiting_tasks") == 1
    # Utilization per pool: four 4-vCPU/8-GiB VMs on 4 x (16 vCPU, 64 GiB); the GPU job on 2 x 32 vCPU.
    assert value(s, "scheduler_pool_utilization", pool="default", resource="cpu") == pytest.approx(0.25)
    assert value(s, "scheduler_pool_utilization", pool="default", resource="memory") == pytest.approx(0.125)
    assert value(s, "scheduler_pool_utilization", pool="default", resource="disk") == pytest.approx(0.1)
    assert value(s, "scheduler_pool_utilization", pool="default", resource="vms") == pytest.approx(0.1)
    assert value(s, "scheduler_pool_utilization", pool="gpu", resource="cpu") == pytest.approx(0.25)
    assert value(s, "scheduler_pool_allocated", pool="gpu", resource="memory") == 65536
    assert value(s, "scheduler_pool_capacity", pool="default", resource="cpu") == 64
    assert value(s, "scheduler_pool_nodes", pool="default") == 4
    assert value(s, "scheduler_pool_nodes", pool="gpu") == 2
    # Webhook deliveries by outcome, and the events not yet dispatched (6 scheduled, 2 failed, 1 released).
    assert value(s, "scheduler_webhook_deliveries", outcome="delivered") == 2
    assert value(s, "scheduler_webhook_deliveries", outcome="pending") == 1
    assert value(s, "scheduler_webhook_deliveries", outcome="dead") == 1
    assert value(s, "scheduler_outbox_pending") == 9
    # Queue depth, by a passive declare on the real broker.
    assert value(s, "scheduler_queue_messages", queue="requests") == 3
    assert value(s, "scheduler_queue_messages", queue="dead") == 0
    assert value(s, "scheduler_queue_consumers", queue="requests") == 0
    assert value(s, "scheduler_metrics_source_up", source="database") == 1
    assert value(s, "scheduler_metrics_source_up", source="broker") == 1


def test_leader_fleet_and_database_agree_on_utilization(lite: Deployment) -> None:
    standard_workload(lite.store)
    fleet = lite.store.load_fleet()
    state = WorkerState(leader=True, epoch=EPOCH, strategy="best_fit", broker_connected=True, fleet=fleet,
                        last_commit_at=time.time())  # fmt: skip
    from_db, from_fleet = CollectorRegistry(), CollectorRegistry()
    _, collector = install_metrics(from_db, store=lite.store, settings=None)
    assert collector.database is not None
    collector.database.refresh_now()
    install_metrics(from_fleet, store=lite.store, settings=None, state=lambda: state)
    a, b = scrape(from_db), scrape(from_fleet)
    utilization = {k: v for k, v in a.items() if k[0].startswith("scheduler_pool_")}
    assert utilization and utilization == {k: v for k, v in b.items() if k[0].startswith("scheduler_pool_")}
    assert value(b, "scheduler_leader") == 1 and value(a, "scheduler_leader") == 0
    assert value(b, "scheduler_broker_connected") == 1
    assert value(b, "scheduler_info", identity="", strategy="best_fit") == 1
    assert value(b, "scheduler_last_commit_timestamp_seconds") == pytest.approx(state.last_commit_at)
    state.strategy_switches = 2  # as the worker counts reloads of the config file
    switched = scrape(from_fleet)
    assert value(switched, "scheduler_strategy_switches_total", result="applied") == 2
    assert value(switched, "scheduler_strategy_switches_total", result="rejected") == 0
    assert value(switched, "scheduler_config_file_valid") == 1
    assert value(switched, "scheduler_config_restart_required") == 0
    state.config_file_valid, state.config_restart_required = False, True  # as the config watcher sets them
    refused = scrape(from_fleet)
    assert value(refused, "scheduler_config_file_valid") == 0
    assert value(refused, "scheduler_config_restart_required") == 1


def test_decision_and_publish_to_commit_latency_when_the_worker_provides_them(lite: Deployment) -> None:
    """The worker's plan may carry ``decision_seconds`` and ``published_at`` (see docs/observability.md)."""
    registry = CollectorRegistry()
    hooks = SchedulerMetrics(registry, clock=lambda: 1_000_010.0)
    lite.store.claim_fence(EPOCH, LEADER)
    plan, result = run_group(lite.store, [{"task_id": "a", "requested_cpu": 1, "requested_memory": 1}])
    plan.decision_seconds = [0.00004]  # type: ignore[attr-defined]
    plan.published_at = {"a": 1_000_000_000}  # type: ignore[attr-defined]  # ms: 10 s before the clock
    hooks.group_committed(plan, result, 0.01)
    s = scrape(registry)
    assert value(s, "scheduler_decision_seconds_count") == 1
    assert value(s, "scheduler_decision_seconds_bucket", le="5e-05") == 1
    assert value(s, "scheduler_publish_to_commit_seconds_count") == 1
    assert value(s, "scheduler_publish_to_commit_seconds_sum") == pytest.approx(10.0)


def test_duplicates_and_dead_letters_are_counted(lite: Deployment) -> None:
    registry = CollectorRegistry()
    hooks = SchedulerMetrics(registry)
    lite.store.claim_fence(EPOCH, LEADER)
    body = {"task_id": "dup", "requested_cpu": 1, "requested_memory": 1}
    run_group(lite.store, [body, body], hooks=hooks)  # a duplicate within the group
    run_group(lite.store, [body], hooks=hooks)  # a redelivery after the commit
    run_group(lite.store, [b"\xff not json"], hooks=hooks)  # dead-lettered as invalid
    s = scrape(registry)
    assert value(s, "scheduler_duplicates_total") == 2
    assert value(s, "scheduler_dead_letters_total", reason="invalid") == 1
    assert value(s, "scheduler_task_outcomes_total", status="scheduled", reason="") == 1


def test_hooks_never_raise() -> None:
    hooks = SchedulerMetrics(CollectorRegistry())
    hooks.group_committed(object(), object(), 0.1)  # type: ignore[arg-type]
    hooks.leadership_changed(False, 2)
    assert hooks.leader is False and hooks.epoch == 2


def test_lease_counters_come_from_the_elector_when_it_keeps_them(lite: Deployment) -> None:
    class Elector:  # the two attributes the collector reads; nothing else of an elector is needed
        renewals = 41
        renewal_failures = 2

    registry = CollectorRegistry()
    install_metrics(registry, store=lite.store, settings=None, leadership=Elector())
    s = scrape(registry)
    assert value(s, "scheduler_lease_renewals_total") == 41
    assert value(s, "scheduler_lease_renewal_failures_total") == 2
    without = scrape(_registry_with(StateCollector(store=None, leadership=object())))
    assert not [k for k in without if k[0].startswith("scheduler_lease_")]


def _registry_with(collector: StateCollector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def test_unreachable_sources_never_slow_or_fail_a_scrape(lite: Deployment) -> None:
    settings = settings_for(lite, amqp={"url": "amqp://guest:guest@127.0.0.1:1/%2F"})
    registry = CollectorRegistry()
    _, collector = install_metrics(registry, store=lite.store, settings=settings)
    started = time.perf_counter()
    first = scrape(registry)  # the broker read runs in the background, never on the scrape
    assert time.perf_counter() - started < 1.0
    assert ("scheduler_queue_messages", (("queue", "requests"),)) not in first
    assert collector.broker is not None and collector.database is not None
    collector.broker.refresh_now()
    collector.database.refresh_now()
    s = scrape(registry)
    assert value(s, "scheduler_metrics_source_up", source="broker") == 0
    assert value(s, "scheduler_metrics_source_up", source="database") == 1


def test_database_figures_are_cached_between_scrapes(lite: Deployment) -> None:
    registry = CollectorRegistry()
    _, collector = install_metrics(registry, store=lite.store, settings=None)
    assert collector.database is not None
    collector.database.refresh_now()
    assert value(scrape(registry), "scheduler_tasks", status="queued") == 0
    standard_workload(lite.store)
    assert value(scrape(registry), "scheduler_tasks", status="scheduled") == 0  # still the cached figures
    collector.database.refresh_now()
    assert value(scrape(registry), "scheduler_tasks", status="scheduled") == 5
