"""Prometheus metrics: worker events counted as they happen, state read on scrape.

Two kinds of figures, two mechanisms:

* **Events** (decisions, commits, dead letters, leadership changes) are
  counted by :class:`SchedulerMetrics`, which implements the worker's
  :class:`~scheduler.worker.daemon.WorkerHooks`. The worker calls it once per
  committed group, so the cost is a handful of counter increments per group,
  not per message: labels are aggregated in a dict first and each labelled
  child is incremented once.
* **State** (queue depth, tasks per status, pool utilization, webhook
  deliveries, the fence) is read when Prometheus scrapes, by
  :class:`StateCollector`. Those reads hit the database or the broker, so they
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
``GroupPlan.decision_seconds`` and publish-to-commit latency reads
``GroupPlan.published_at`` when those attributes exist; lease renewals are read
from the elector's ``renewals`` / ``renewal_failures`` counters when it has them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pika
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, false, func, select

from scheduler.broker import Topology, connect
from scheduler.models import TaskStatus
from scheduler.store.engine import READ_ONLY_OPTION
from scheduler.store.records import Failure, Placement, Release, Waiting
from scheduler.store.schema import FENCE_ROW, allocations, deliveries, fence, nodes, outbox, tasks

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from scheduler.config import Settings
    from scheduler.fleet import CapacityDefaults, FleetView
    from scheduler.store import CommitResult, Store
    from scheduler.worker.daemon import WorkerState
    from scheduler.worker.group import GroupPlan

log = structlog.get_logger(__name__)

PREFIX = "scheduler"

# A decision takes microseconds (a vectorised filter and score over a pool);
# the buckets reach 100 ms so a pathological pool still lands in a bucket.
DECISION_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GROUP_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000)
# From the producer's publish to the commit: queueing, retries with backoff included.
PUBLISH_TO_COMMIT_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
)
RESOURCES = ("cpu", "memory", "disk", "vms")
DEAD_LETTER_REASONS = ("invalid", "unstorable", "redelivered", "move_refused")
DELIVERY_STATES = ("pending", "delivered", "dead")

T = TypeVar("T")


class SchedulerMetrics:
    """The worker's event metrics; pass it to ``Worker(hooks=...)``.

    Implements :class:`~scheduler.worker.daemon.WorkerHooks`. Both hook methods
    run on the worker's thread between groups, so they must be quick and must
    never raise: a metrics bug may cost a figure, never a commit.
    """

    def __init__(self, registry: CollectorRegistry, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.decisions = Counter(
            f"{PREFIX}_decisions_total",
            "Placement decisions, by strategy and result (placed, or the failure reason code).",
            ["strategy", "result"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            f"{PREFIX}_decision_seconds",
            "Time the placer took for one decision (filter and score), seconds.",
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        self.outcomes = Counter(
            f"{PREFIX}_task_outcomes_total",
            "Task status changes committed, by new status and failure reason ('' unless failed).",
            ["status", "reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicates_total",
            "Requests ignored because their task already had an outcome (redeliveries, resubmissions).",
            registry=registry,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters_total",
            "Messages sent to the dead-letter queue, by reason: invalid (no readable task id), "
            "unstorable (isolated by bisection, not even storable as a failure), redelivered "
            "(delivered more than worker.max_redeliveries times), move_refused (a move that does not fit "
            "or names a task that is not scheduled; nothing changed).",
            ["reason"],
            registry=registry,
        )
        self.poison = Counter(
            f"{PREFIX}_poison_messages_total",
            "Messages whose commit failed with the rest of their group and were isolated by bisection.",
            registry=registry,
        )
        self.retried_groups = Counter(
            f"{PREFIX}_retried_groups_total",
            "Groups requeued because the database was unreachable or failed.",
            registry=registry,
        )
        self.releases = Counter(
            f"{PREFIX}_releases_total",
            "Release messages by outcome: released (an allocation ended), cancelled (ended a task "
            "before it was placed), ignored (the task had already failed or been released).",
            ["outcome"],
            registry=registry,
        )
        self.consumer_gauge = Gauge(
            f"{PREFIX}_leader_consumer_active",
            "1 while this replica leads and its consumer is registered on the request queue.",
            registry=registry,
        )
        self.retries = Counter(
            f"{PREFIX}_retries_total",
            "Requests that fit nowhere yet, sent through the retry queue with backoff.",
            registry=registry,
        )
        self.group_size = Histogram(
            f"{PREFIX}_commit_group_size",
            "Items (placements, failures, waits, releases) committed in one transaction.",
            buckets=GROUP_SIZE_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            f"{PREFIX}_commit_seconds",
            "Time to plan, commit and acknowledge one group of messages, seconds.",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.publish_to_commit = Histogram(
            f"{PREFIX}_publish_to_commit_seconds",
            "From the producer's publish to the commit of the task's outcome, seconds "
            "(wall clocks of two hosts: skew shows up here).",
            buckets=PUBLISH_TO_COMMIT_BUCKETS,
            registry=registry,
        )
        self.leadership_changes = Counter(
            f"{PREFIX}_leadership_changes_total",
            "Times this replica started or stopped leading.",
            ["change"],
            registry=registry,
        )
        # The latest leadership report, for the collector when no WorkerState is wired.
        self.leader = False
        self.epoch = 0
        for change in ("acquired", "lost"):
            self.leadership_changes.labels(change=change)
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=reason)
        for outcome in ("released", "cancelled", "ignored"):
            self.releases.labels(outcome=outcome)

    # ------------------------------------------------------ optional worker hooks
    def dead_lettered(self, reason: str) -> None:
        self.dead_letters.labels(reason=reason).inc()

    def poisoned(self, count: int) -> None:
        self.poison.inc(count)

    def group_retried(self) -> None:
        self.retried_groups.inc()

    def release_recorded(self, outcome: str) -> None:
        self.releases.labels(outcome=outcome).inc()

    def consumer_active(self, active: bool) -> None:
        self.consumer_gauge.set(1 if active else 0)

    # ------------------------------------------------------------ WorkerHooks
    def group_committed(self, plan: GroupPlan, result: CommitResult, seconds: float) -> None:
        """Count one committed group: decisions, outcomes, size, latencies."""
        try:
            self._group_committed(plan, result, seconds)
        except Exception:  # a metrics bug must never break the worker loop
            log.exception("metrics hook failed", hook="group_committed")

    def leadership_changed(self, leader: bool, epoch: int) -> None:
        """Remember the role and epoch, and count the change."""
        try:
            self.leader, self.epoch = leader, epoch
            self.leadership_changes.labels(change="acquired" if leader else "lost").inc()
        except Exception:
            log.exception("metrics hook failed", hook="leadership_changed")

    def _group_committed(self, plan: GroupPlan, result: CommitResult, seconds: float) -> None:
        results: Tally[tuple[str, str]] = Tally(
            (d.strategy, d.reason.value if d.reason is not None else "placed") for d in plan.decisions
        )
        for (strategy, outcome), n in results.items():
            self.decisions.labels(strategy=strategy, result=outcome).inc(n)
        for took in _floats(getattr(plan, "decision_seconds", None)):
            self.decision_seconds.observe(took)

        applied = set(result.applied)
        ignored = set(result.ignored)
        outcomes: Tally[tuple[str, str]] = Tally()
        terminal: list[str] = []
        for item in plan.items:
            if item.task_id not in applied:
                continue
            if isinstance(item, Placement):
                outcomes[(TaskStatus.SCHEDULED.value, "")] += 1
                terminal.append(item.task_id)
            elif isinstance(item, Failure):
                outcomes[(TaskStatus.FAILED.value, item.reason.value)] += 1
                terminal.append(item.task_id)
            elif isinstance(item, Waiting):
                outcomes[(TaskStatus.WAITING.value, "")] += 1
            elif isinstance(item, Release) and item.task_id not in ignored:
                outcomes[(TaskStatus.RELEASED.value, "")] += 1
        for (status, reason), n in outcomes.items():
            self.outcomes.labels(status=status, reason=reason).inc(n)

        if plan.dead:
            self.dead_letters.labels(reason="invalid").inc(len(plan.dead))
        duplicates = len(plan.duplicates) + len(result.duplicates)
        if duplicates:
            self.duplicates.inc(duplicates)
        if plan.retries:
            self.retries.inc(
                len(plan.retries) - sum(r.request.task_id in result.duplicates for r in plan.retries)
            )
        self.group_size.observe(len(plan.items))
        self.commit_seconds.observe(seconds)

        # ``published_at``: task id -> the producer's publish time in Unix milliseconds (an integer
        # header, as AMQP field tables carry no floats).
        published = getattr(plan, "published_at", None)
        if isinstance(published, Mapping) and published:
            now = self._clock()
            for task_id in terminal:
                at = published.get(task_id)
                if isinstance(at, int | float) and not isinstance(at, bool):
                    self.publish_to_commit.observe(max(0.0, now - at / 1000))


def _floats(values: Any) -> Iterator[float]:
    if isinstance(values, list | tuple):
        for v in values:
            if isinstance(v, int | float):
                yield float(v)


# ---------------------------------------------------------------------- cache


@dataclass
class Cached(Generic[T]):
    """One value read from outside (database, broker), refreshed in the background when stale.

    :meth:`get` never waits for the source: it returns the value it has and,
    when that is older than ``max_age``, starts one background thread to read
    a fresh one (stale-while-revalidate). :meth:`prefetch` starts the first
    read early (at start-up), so the first scrape already finds figures.
    Reads are attempted at most once per ``max_age``, successful or not. A
    failed read keeps the last good value and is reported through :attr:`ok`,
    so a database hiccup shows up as ``scheduler_metrics_source_up 0``, never
    as a slow or failed scrape.
    """

    name: str
    fetch: Callable[[], T]
    max_age: float
    clock: Callable[[], float] = time.monotonic
    value: T | None = None
    fetched_at: float | None = None
    ok: bool = False
    error: str | None = None
    _tried_at: float | None = None
    _refreshing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, *, block_if_empty: bool = False) -> T | None:
        """The cached value; starts a background refresh when due.

        ``block_if_empty``: read synchronously when there is no value yet (for
        callers that must answer with data or an error, like the dashboard API).
        """
        if block_if_empty and self.value is None:
            return self.refresh_now()
        with self._lock:
            now = self.clock()
            due = self._tried_at is None or now - self._tried_at >= self.max_age
            if not due or self._refreshing:
                return self.value
            self._tried_at, self._refreshing = now, True
        threading.Thread(target=self._refresh, name=f"cached-{self.name}", daemon=True).start()
        return self.value

    def prefetch(self) -> None:
        """Start the first read in the background (no-op once anything was tried)."""
        if self._tried_at is None:
            self.get()

    def refresh_now(self) -> T | None:
        """Read synchronously, now (tests, and callers that need the current figure)."""
        with self._lock:
            self._tried_at, self._refreshing = self.clock(), True
        self._refresh()
        return self.value

    def age(self) -> float | None:
        """Seconds since the last successful read (None if there was none)."""
        return None if self.fetched_at is None else self.clock() - self.fetched_at

    def _refresh(self) -> None:
        try:
            value = self.fetch()
        except Exception as exc:
            with self._lock:
                self.ok, self.error, self._refreshing = False, _first_line(exc), False
            log.warning(
                "source unavailable; keeping the last figures", source=self.name, error=_first_line(exc)
            )
            return
        with self._lock:
            self.value, self.fetched_at, self.ok, self.error = value, self.clock(), True, None
            self._refreshing = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# ------------------------------------------------------------ database figures


@dataclass(frozen=True)
class PoolFigures:
    """One pool's capacity and what its active allocations use."""

    nodes: int = 0
    cordoned: int = 0
    capacity: Mapping[str, int] = field(default_factory=dict)
    allocated: Mapping[str, int] = field(default_factory=dict)

    def utilization(self, resource: str) -> float:
        cap = self.capacity.get(resource, 0)
        return 0.0 if cap <= 0 else self.allocated.get(resource, 0) / cap


@dataclass(frozen=True)
class DatabaseFigures:
    """Everything the collector reads from the database in one read transaction."""

    tasks: Mapping[str, int]
    pools: Mapping[str, PoolFigures]
    deliveries: Mapping[str, int]
    outbox_pending: int
    fence_epoch: int
    fence_holder: str | None


def read_database_figures(store: Store, defaults: CapacityDefaults | None = None) -> DatabaseFigures:
    """Aggregates only (GROUP BY in SQL): the answer's size depends on pools and node shapes, not nodes.

    Why not :meth:`Store.list_nodes` and :meth:`Store.node_usage`: they build a
    Python object per node, which on 10,000 nodes costs more than the whole
    scrape budget; here the database groups and Python sees one row per pool
    and node shape. Capacities are effective capacities (``defaults``: the
    configured ratios and reserves): the floor of the resource model is per
    node, so nodes are grouped by everything it depends on, counted, and the
    exact formula is applied once per group.
    """
    shape = (
        nodes.c.pool, nodes.c.cpu, nodes.c.memory, nodes.c.disk, nodes.c.reserved_cpu,
        nodes.c.reserved_memory, nodes.c.reserved_disk, nodes.c.cpu_allocation_ratio,
        nodes.c.memory_allocation_ratio, nodes.c.disk_allocation_ratio,
    )  # fmt: skip
    pool_caps = select(
        *shape,
        func.count(),
        func.sum(nodes.c.max_vms),
        func.sum(case((nodes.c.cordoned, 1), else_=0)),
    ).group_by(*shape)
    pool_used = (
        select(
            nodes.c.pool,
            func.sum(allocations.c.cpu),
            func.sum(allocations.c.memory),
            func.sum(allocations.c.disk),
            func.count(),
        )
        .select_from(allocations.join(nodes, nodes.c.name == allocations.c.node))
        .where(allocations.c.released_at.is_(None))
        .group_by(nodes.c.pool)
    )
    with store.engine.connect() as conn:
        conn.execution_options(**{READ_ONLY_OPTION: True})
        with conn.begin():
            task_rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)).all()
            caps = conn.execute(pool_caps).all()
            used = {row[0]: row for row in conn.execute(pool_used)}
            delivery_rows = conn.execute(
                select(deliveries.c.status, func.count()).group_by(deliveries.c.status)
            ).all()
            pending = conn.execute(
                select(func.count()).select_from(outbox).where(outbox.c.dispatched == false())
            ).scalar_one()
            fence_row = conn.execute(
                select(fence.c.epoch, fence.c.holder).where(fence.c.name == FENCE_ROW)
            ).first()
    from scheduler.fleet import CapacityDefaults

    d = defaults or CapacityDefaults()
    sums: dict[str, list[int]] = {}
    for pool, cpu, memory, disk, r_cpu, r_mem, r_disk, x_cpu, x_mem, x_disk, count, max_vms, cordoned in caps:
        acc = sums.setdefault(pool, [0, 0, 0, 0, 0, 0])
        acc[0] += int(count)
        acc[1] += int(cordoned or 0)
        acc[2] += int(count) * _effective(cpu, r_cpu, d.reserved_cpu, x_cpu, d.cpu_ratio)
        acc[3] += int(count) * _effective(memory, r_mem, d.reserved_memory, x_mem, d.memory_ratio)
        acc[4] += int(count) * _effective(disk, r_disk, d.reserved_disk, x_disk, d.disk_ratio)
        acc[5] += int(max_vms or 0)
    pools: dict[str, PoolFigures] = {}
    for pool, (count, cordoned, cpu, memory, disk, max_vms) in sums.items():
        u = used.get(pool)
        pools[pool] = PoolFigures(
            nodes=count,
            cordoned=cordoned,
            capacity={"cpu": cpu, "memory": memory, "disk": disk, "vms": max_vms},
            allocated={
                "cpu": int(u[1] or 0),
                "memory": int(u[2] or 0),
                "disk": int(u[3] or 0),
                "vms": int(u[4]),
            }
            if u is not None
            else {r: 0 for r in RESOURCES},
        )
    return DatabaseFigures(
        tasks={str(s): int(n) for s, n in task_rows},
        pools=pools,
        deliveries={str(s): int(n) for s, n in delivery_rows},
        outbox_pending=int(pending or 0),
        fence_epoch=int(fence_row.epoch) if fence_row is not None else 0,
        fence_holder=fence_row.holder if fence_row is not None else None,
    )


def _effective(capacity: Any, reserved: Any, default_reserve: int, ratio: Any, default_ratio: float) -> int:
    from scheduler.fleet import effective_amount

    kept = default_reserve if reserved is None else int(reserved)
    return effective_amount(int(capacity), kept, default_ratio if ratio is None else float(ratio))


def fleet_pool_figures(fleet: FleetView) -> dict[str, PoolFigures]:
    """The same figures from the leader's in-memory fleet: live, and no database round trip."""
    out: dict[str, PoolFigures] = {}
    for pool, (s, e) in fleet.pools.items():
        cap = {
            "cpu": int(fleet.cap_cpu[s:e].sum()),
            "memory": int(fleet.cap_mem[s:e].sum()),
            "disk": int(fleet.cap_disk[s:e].sum()),
            "vms": int(fleet.max_vms[s:e].sum()),
        }
        used = {
            "cpu": cap["cpu"] - int(fleet.free_cpu[s:e].sum()),
            "memory": cap["memory"] - int(fleet.free_mem[s:e].sum()),
            "disk": cap["disk"] - int(fleet.free_disk[s:e].sum()),
            "vms": int(fleet.vms[s:e].sum()),
        }
        out[pool] = PoolFigures(
            nodes=e - s, cordoned=int(fleet.cordoned[s:e].sum()), capacity=cap, allocated=used
        )
    return out


# -------------------------------------------------------------- broker figures


@dataclass(frozen=True)
class QueueFigures:
    """Ready messages and consumers per queue, by role (``requests``, ``retry``, ``dead``, ``heartbeats``)."""

    messages: Mapping[str, int]
    consumers: Mapping[str, int]


def read_queue_figures(url: str, topology: Topology) -> QueueFigures:
    """Passive ``queue.declare`` of each queue: counts without creating anything.

    A connection per read (heartbeats off, it lives a few milliseconds): a
    long-lived one would need its heartbeats serviced by a thread of its own,
    and the read happens at most once per cache period. A queue that does not
    exist (a passive declare answers 404 and closes the channel) is left out.
    """
    roles = {
        "requests": topology.queue,
        "retry": topology.retry_queue,
        "dead": topology.dead_queue,
        "heartbeats": topology.heartbeat_queue,
    }
    messages: dict[str, int] = {}
    consumers: dict[str, int] = {}
    conn = connect(url, heartbeat=0, name="virtflow-scheduler metrics")
    try:
        channel = conn.channel()
        for role, queue in roles.items():
            try:
                ok = channel.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                if role == "requests":  # nothing declared yet: the others are missing too
                    break
                channel = conn.channel()
                continue
            messages[role] = int(ok.method.message_count)
            consumers[role] = int(ok.method.consumer_count)
    finally:
        if conn.is_open:
            conn.close()
    return QueueFigures(messages, consumers)


# ------------------------------------------------------------------ collector


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

        fleet = state.fleet if state is not None else None
        pools = fleet_pool_figures(fleet) if fleet is not None else (db.pools if db is not None else None)
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

        return [*families.values(), self._switches(state), *self._lease_families()]

    @staticmethod
    def _switches(state: WorkerState | None) -> CounterMetricFamily:
        """Strategy switches from the config file, as the worker counts them in ``WorkerState.extra``."""
        family = CounterMetricFamily(
            f"{PREFIX}_strategy_switches",
            "Strategy changes read from the config file: applied, or rejected (invalid file or name).",
            labels=["result"],
        )
        if state is not None:
            for key, result in (("strategy_switches", "applied"), ("strategy_switches_rejected", "rejected")):
                value = state.extra.get(key, 0)
                family.add_metric([result], float(value) if isinstance(value, int | float) else 0.0)
        return family

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
