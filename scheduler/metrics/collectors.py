"""The figures read on scrape: role and epoch, queues, tasks, pools, webhooks, the elector.

:class:`StateCollector` reads them when Prometheus scrapes. Those reads hit
the database (:func:`scheduler.store.views.read_database_figures`) or the
broker (:func:`scheduler.broker.read_queue_figures`), so they are cached and
refreshed *in the background* once stale (:class:`~scheduler.cache.Cached`),
and the first read starts at installation: a scrape never waits for a
query, which is what keeps ``/metrics`` within its 50 ms budget on a
10,000-node fleet whatever the database is doing. The leader's pool figures
come from its live fleet instead, read under the fleet lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from scheduler.broker import QueueFigures, Topology, read_queue_figures
from scheduler.cache import Cached
from scheduler.metrics.events import DELIVERY_STATES, PREFIX, SchedulerMetrics
from scheduler.models import TaskStatus
from scheduler.pool_figures import RESOURCES, fleet_pool_figures
from scheduler.store.views import DatabaseFigures, read_database_figures

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from scheduler.config import Settings
    from scheduler.store import Store
    from scheduler.worker.state import WorkerState


class StateCollector(Collector):
    """Gauges read on scrape: role and epoch, queues, tasks, pools, webhooks, the elector.

    Built with whatever this process has: ``store`` for the database figures,
    ``settings`` for the broker figures (``None`` skips them), ``state`` for the
    worker's live view, ``leadership`` for lease renewal counters.
    """

    def __init__(
        self,
        *,
        store: Store | None,
        settings: Settings | None = None,
        state: Callable[[], WorkerState | None] | None = None,
        hooks: SchedulerMetrics | None = None,
        leadership: object | None = None,
        database_max_age: float = 2.0,
        broker_max_age: float = 5.0,
    ) -> None:
        self._state = state
        self._hooks = hooks
        self._leadership = leadership
        self._settings = settings
        self.database: Cached[DatabaseFigures] | None = None
        self.broker: Cached[QueueFigures] | None = None
        if store is not None:
            db_store = store
            defaults = settings.capacity_defaults() if settings is not None else None
            self.database = Cached(
                "database", lambda: read_database_figures(db_store, defaults), database_max_age
            )
        if settings is not None:
            url, topology = str(settings.amqp.url), Topology.from_config(settings.amqp)
            self.broker = Cached("broker", lambda: read_queue_figures(url, topology), broker_max_age)

    def prefetch(self) -> None:
        """Start the first database read now, in the background, so the first scrape has its figures.

        Not the broker's: at installation the worker has not declared its
        queues yet, and a passive declare of a missing queue makes pika log a
        warning; the first scrape starts that read instead.
        """
        if self.database is not None:
            self.database.prefetch()

    def describe(self) -> Iterable[Metric]:
        """The names this collector owns, so a clash with another collector is caught at registration."""
        return [*self._families().values(), self._switches(None), *self._lease_families()]

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        state = self._state() if self._state is not None else None
        leader = state.leader if state is not None else (self._hooks.leader if self._hooks else False)
        epoch = state.epoch if state is not None else (self._hooks.epoch if self._hooks else 0)
        families["leader"].add_metric([], 1.0 if leader else 0.0)
        families["epoch"].add_metric([], float(epoch))
        if state is not None:
            families["broker_connected"].add_metric([], 1.0 if state.broker_connected else 0.0)
            if state.last_commit_at is not None:
                families["last_commit"].add_metric([], state.last_commit_at)
        identity = self._settings.identity if self._settings is not None else ""
        strategy = (
            state.strategy
            if state is not None and state.strategy
            else (self._settings.strategy if self._settings is not None else "")
        )
        families["info"].add_metric([identity, strategy], 1.0)

        db = self.database.get() if self.database is not None else None
        if self.database is not None:
            families["source_up"].add_metric(["database"], 1.0 if self.database.ok else 0.0)
            age = self.database.age()
            if age is not None:
                families["source_age"].add_metric(["database"], age)
        if db is not None:
            for status in TaskStatus:
                families["tasks"].add_metric([status.value], float(db.tasks.get(status.value, 0)))
            families["waiting"].add_metric([], float(db.tasks.get(TaskStatus.WAITING.value, 0)))
            for outcome in DELIVERY_STATES:
                families["deliveries"].add_metric([outcome], float(db.deliveries.get(outcome, 0)))
            families["outbox"].add_metric([], float(db.outbox_pending))
            families["fence_epoch"].add_metric([], float(db.fence_epoch))

        live = state.read_fleet(fleet_pool_figures) if state is not None else None
        pools = live if live is not None else (db.pools if db is not None else None)
        for pool, fig in sorted((pools or {}).items()):
            families["pool_nodes"].add_metric([pool], float(fig.nodes))
            families["pool_cordoned"].add_metric([pool], float(fig.cordoned))
            for resource in RESOURCES:
                families["pool_capacity"].add_metric([pool, resource], float(fig.capacity.get(resource, 0)))
                families["pool_allocated"].add_metric([pool, resource], float(fig.allocated.get(resource, 0)))
                families["pool_utilization"].add_metric([pool, resource], fig.utilization(resource))

        if self.broker is not None:
            queues = self.broker.get()
            families["source_up"].add_metric(["broker"], 1.0 if self.broker.ok else 0.0)
            age = self.broker.age()
            if age is not None:
                families["source_age"].add_metric(["broker"], age)
            if queues is not None:
                for role, count in sorted(queues.messages.items()):
                    families["queue_messages"].add_metric([role], float(count))
                for role, count in sorted(queues.consumers.items()):
                    families["queue_consumers"].add_metric([role], float(count))

        return [*families.values(), self._switches(state), *self._config_file(state), *self._lease_families()]

    @staticmethod
    def _switches(state: WorkerState | None) -> CounterMetricFamily:
        """Strategy switches from the config file, as the worker counts them in :class:`WorkerState`."""
        family = CounterMetricFamily(
            f"{PREFIX}_strategy_switches",
            "Strategy changes read from the config file: applied, or rejected (invalid file or name).",
            labels=["result"],
        )
        if state is not None:
            family.add_metric(["applied"], float(state.strategy_switches))
            family.add_metric(["rejected"], float(state.strategy_switches_rejected))
        return family

    @staticmethod
    def _config_file(state: WorkerState | None) -> list[Metric]:
        """Whether the mounted config file is in effect: a refused file or keys waiting for a restart.

        Why gauges beside the counter: a counter says that a reload failed once,
        not that the file in the pod is still not what the worker runs with,
        which is what an alert wants to know.
        """
        if state is None:
            return []
        valid = GaugeMetricFamily(
            f"{PREFIX}_config_file_valid",
            "1 when the mounted config file, as last read, loaded; 0 when invalid, missing or unreadable.",
            value=1.0 if state.config_file_valid else 0.0,
        )
        restart = GaugeMetricFamily(
            f"{PREFIX}_config_restart_required",
            "1 when the config file changed keys other than strategy, which apply only after a restart.",
            value=1.0 if state.config_restart_required else 0.0,
        )
        return [valid, restart]

    def _lease_families(self) -> list[Metric]:
        """Renewal counters, when the elector keeps them (``renewals``, ``renewal_failures`` attributes)."""
        out: list[Metric] = []
        for attr, name, doc in (
            ("renewals", "lease_renewals", "Successful lease renewals by this replica's elector."),
            (
                "renewal_failures",
                "lease_renewal_failures",
                "Lease renewals that failed (this replica's elector).",
            ),
        ):
            value = _count(self._leadership, attr)
            if value is not None:
                out.append(CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value))
        return out

    def _families(self) -> dict[str, GaugeMetricFamily]:
        def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels or [])

        return {
            "leader": gauge("leader", "1 while this replica leads (commits placements), else 0."),
            "epoch": gauge("epoch", "Fencing epoch of this replica's current or most recent term."),
            "fence_epoch": gauge(
                "fence_epoch", "Newest epoch any leader claimed (the fence row in the database)."
            ),
            "broker_connected": gauge("broker_connected", "1 while the worker holds a broker connection."),
            "last_commit": gauge("last_commit_timestamp_seconds", "Unix time of this replica's last commit."),
            "info": gauge(
                "info", "This replica's identity and current default strategy.", ["identity", "strategy"]
            ),
            "source_up": gauge(
                "metrics_source_up", "1 if the last read of a metrics source worked.", ["source"]
            ),
            "source_age": gauge(
                "metrics_source_age_seconds", "Age of the cached figures of a source.", ["source"]
            ),
            "tasks": gauge("tasks", "Tasks in the database, by status.", ["status"]),
            "waiting": gauge("waiting_tasks", "Tasks waiting for room (retried with backoff)."),
            "deliveries": gauge(
                "webhook_deliveries", "Webhook deliveries by outcome (pending, delivered, dead).", ["outcome"]
            ),
            "outbox": gauge("outbox_pending", "Webhook events not yet handed to the dispatcher."),
            "pool_nodes": gauge("pool_nodes", "Nodes in the inventory, by pool.", ["pool"]),
            "pool_cordoned": gauge("pool_cordoned_nodes", "Cordoned nodes, by pool.", ["pool"]),
            "pool_capacity": gauge(
                "pool_capacity",
                "Allocatable capacity by pool and resource (vCPU, MiB, GiB, VMs).",
                ["pool", "resource"],
            ),
            "pool_allocated": gauge(
                "pool_allocated",
                "Capacity held by active allocations, by pool and resource.",
                ["pool", "resource"],
            ),
            "pool_utilization": gauge(
                "pool_utilization", "Allocated / capacity (0..1), by pool and resource.", ["pool", "resource"]
            ),
            "queue_messages": gauge("queue_messages", "Messages ready in each queue, by role.", ["queue"]),
            "queue_consumers": gauge(
                "queue_consumers", "Consumers attached to each queue, by role.", ["queue"]
            ),
        }


def _count(obj: object | None, name: str) -> float | None:
    value = getattr(obj, name, None) if obj is not None else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def install_metrics(
    registry: CollectorRegistry,
    *,
    store: Store | None,
    settings: Settings | None,
    state: Callable[[], WorkerState | None] | None = None,
    leadership: object | None = None,
) -> tuple[SchedulerMetrics, StateCollector]:
    """Register the event metrics and the scrape-time collector in ``registry``; the one-call wiring."""
    hooks = SchedulerMetrics(registry)
    collector = StateCollector(
        store=store, settings=settings, state=state, hooks=hooks, leadership=leadership
    )
    registry.register(collector)
    collector.prefetch()
    return hooks, collector


__all__ = ["StateCollector", "install_metrics"]
