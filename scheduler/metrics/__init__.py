"""Prometheus metrics: worker events counted as they happen, state read on scrape.

Two kinds of figures, two modules (this package re-exports both):

* **Events** (decisions, commits, dead letters, leadership changes) are
  counted by :class:`SchedulerMetrics` (:mod:`scheduler.metrics.events`), which implements the worker's
  :class:`~scheduler.worker.hooks.WorkerHooks`. The worker calls it once per
  committed group, so the cost is a handful of counter increments per group,
  not per message: labels are aggregated in a dict first and each labelled
  child is incremented once.
* **State** (queue depth, tasks per status, pool utilization, webhook
  deliveries, the fence) is read when Prometheus scrapes, by
  :class:`StateCollector` (:mod:`scheduler.metrics.collectors`). Those
  reads hit the database or the broker, so they
  are cached and refreshed *in the background* once stale
  (stale-while-revalidate), and the first read starts at installation: a
  scrape never waits for a query, which is what keeps ``/metrics`` within its
  50 ms budget on a 10,000-node fleet whatever the database is doing.

Every metric lives in the :class:`~prometheus_client.CollectorRegistry`
passed in. Nothing registers into prometheus-client's global default
registry: tests build as many independent registries as they like, and two
workers in one process (the end-to-end tests) never clash.

Figures that need something from the worker which it does not hand over yet
are documented in ``docs/observability.md``: per-decision latency reads
``BatchPlan.decision_seconds`` and publish-to-commit latency reads
``BatchPlan.published_at`` when those attributes exist; lease renewals are read
from the elector's ``renewals`` / ``renewal_failures`` counters when it has them.
"""

from scheduler.broker import QueueFigures, read_queue_figures
from scheduler.cache import Cached
from scheduler.metrics.collectors import StateCollector, install_metrics
from scheduler.metrics.events import SchedulerMetrics
from scheduler.pool_figures import PoolFigures, fleet_pool_figures
from scheduler.store.views import DatabaseFigures, read_database_figures

__all__ = [
    "Cached",
    "DatabaseFigures",
    "PoolFigures",
    "QueueFigures",
    "SchedulerMetrics",
    "StateCollector",
    "fleet_pool_figures",
    "install_metrics",
    "read_database_figures",
    "read_queue_figures",
]
