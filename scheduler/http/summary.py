"""The dashboard's data: one :class:`~scheduler.http.schemas.Summary`, built at most once a second.

Why one endpoint and a cache: the dashboard polls every 2 s, possibly from
several browsers at once; each poll would otherwise cost a handful of
queries, one of them over every node. Building the summary once per
``max_age`` and sharing it keeps the database load independent of the
number of people watching.

Where the figures come from: the leader answers node and pool utilization
from its in-memory fleet (live, and free); a standby reads them from the
database, which every replica can reach. Recent placements and failures, task
counts and webhook outcomes always come from the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from scheduler.cache import Cached
from scheduler.models import TaskStatus
from scheduler.pool_figures import PoolFigures, fleet_pool_figures
from scheduler.store.engine import DatabaseUnavailable
from scheduler.store.views import node_columns, read_database_figures

from .schemas import (
    LeaderSummary,
    NodeColumns,
    PoolSummary,
    RecentTask,
    ReplicaSummary,
    Resources,
    Summary,
    Utilization,
)

if TYPE_CHECKING:
    from scheduler.config import Settings
    from scheduler.fleet import FleetView
    from scheduler.store import Store, TaskRecord
    from scheduler.worker.state import WorkerState

RECENT = 15


class SummaryBuilder:
    """Builds and caches the dashboard summary; safe to call from many request threads.

    Stale-while-revalidate, as the metrics: a request gets the last summary
    at once and, when it is older than ``max_age``, one background rebuild
    starts. On 10,000 nodes a rebuild reads every node and takes a few hundred
    milliseconds on a standby; the dashboard's poll never waits for it. Only
    the very first request (nothing cached yet) builds synchronously, and
    answers 503 if the database cannot be read.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        state: Callable[[], WorkerState] | None,
        *,
        max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        self.state = state
        self._cache: Cached[Summary] = Cached("dashboard summary", self.build, max_age, clock=clock)

    def get(self) -> Summary:
        """The latest summary; raises :class:`DatabaseUnavailable` when none could ever be built."""
        summary = self._cache.get(block_if_empty=True)
        if summary is None:
            raise DatabaseUnavailable(self._cache.error or "the summary could not be built")
        return summary

    def build(self) -> Summary:
        state = self.state() if self.state is not None else None
        figures = read_database_figures(self.store, self.settings.capacity_defaults())
        # The leader's live fleet, read under its lock (the worker's thread changes it).
        live = state.read_fleet(lambda f: (fleet_pool_figures(f), _fleet_columns(f))) if state else None
        if live is not None:
            pools, columns = live
        else:
            pools = dict(figures.pools)
            columns = self._database_columns()
        role = role_of(state)
        leading = state is not None and state.leader
        # Every replica follows the config file, so a standby's strategy is the one the leader uses too.
        strategy = state.strategy if state is not None and state.strategy else self.settings.strategy
        counts = {s.value: figures.tasks.get(s.value, 0) for s in TaskStatus}
        return Summary(
            generated_at=datetime.now(UTC),
            leader=LeaderSummary(
                identity=figures.fence_holder,
                epoch=figures.fence_epoch,
                strategy=strategy,
                strategy_source="leader" if leading else "configured",
            ),
            replica=ReplicaSummary(
                identity=self.settings.identity,
                role=role,
                epoch=state.epoch if state is not None else 0,
                broker_connected=state.broker_connected if state is not None else None,
                committed=state.committed if state is not None else 0,
                groups=state.groups if state is not None else 0,
                last_commit_at=datetime.fromtimestamp(state.last_commit_at, UTC)
                if state is not None and state.last_commit_at is not None
                else None,
            ),
            tasks=counts,
            webhooks={k: figures.deliveries.get(k, 0) for k in ("pending", "delivered", "dead")}
            | {"outbox_pending": figures.outbox_pending},
            pools=[_pool_summary(name, fig) for name, fig in sorted(pools.items())],
            nodes=columns,
            recent_placements=[_recent(t) for t in self.store.list_tasks(TaskStatus.SCHEDULED, limit=RECENT)],
            recent_failures=[_recent(t) for t in self.store.list_tasks(TaskStatus.FAILED, limit=RECENT)],
            waiting=[_recent(t) for t in self.store.list_tasks(TaskStatus.WAITING, limit=RECENT)],
        )

    def _database_columns(self) -> NodeColumns:
        """Nodes and their usage from the database, as plain columns (no model per node)."""
        return NodeColumns(**node_columns(self.store, self.settings.capacity_defaults()))


def role_of(state: WorkerState | None) -> Literal["leader", "standby", "api"]:
    """``api`` when no worker runs in this process, else the worker's role."""
    if state is None:
        return "api"
    return "leader" if state.leader else "standby"


def _fleet_columns(fleet: FleetView) -> NodeColumns:
    """The leader's live view: arrays in (pool, name) order, ratios computed vectorised."""

    def ratio(cap: Any, free: Any) -> list[float]:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(cap > 0, (cap - free) / np.maximum(cap, 1), 0.0)
        return [float(x) for x in np.round(r, 4)]

    return NodeColumns(
        name=list(fleet.names),
        pool=list(fleet.pools_of),
        ip=list(fleet.ips),
        cpu=ratio(fleet.cap_cpu, fleet.free_cpu),
        memory=ratio(fleet.cap_mem, fleet.free_mem),
        disk=ratio(fleet.cap_disk, fleet.free_disk),
        vms=[int(v) for v in fleet.vms],
        max_vms=[int(v) for v in fleet.max_vms],
        cordoned=[bool(c) for c in fleet.cordoned],
        zone=list(fleet.zones),
        devices=_fleet_devices(fleet),
        overcommitted=[bool(x) for x in fleet.overcommitted()],
    )


def _fleet_devices(fleet: FleetView) -> list[str]:
    """``"gpu 3/8 nvme 0/4"`` per node (empty for nodes without devices), from the device matrix."""
    if not fleet.dev_names:
        return [""] * fleet.size
    cap, free = fleet.cap_dev.tolist(), fleet.free_dev.tolist()
    out = []
    for i in range(fleet.size):
        parts = [
            f"{kind} {cap[j][i] - free[j][i]}/{cap[j][i]}"
            for j, kind in enumerate(fleet.dev_names)
            if cap[j][i] or free[j][i]
        ]
        out.append(" ".join(parts))
    return out


def _resources(values: dict[str, int] | Any) -> Resources:
    return Resources(
        cpu=int(values.get("cpu", 0)),
        memory=int(values.get("memory", 0)),
        disk=int(values.get("disk", 0)),
        vms=int(values.get("vms", 0)),
    )


def _pool_summary(name: str, fig: PoolFigures) -> PoolSummary:
    return PoolSummary(
        pool=name,
        nodes=fig.nodes,
        cordoned=fig.cordoned,
        capacity=_resources(fig.capacity),
        allocated=_resources(fig.allocated),
        utilization=Utilization(
            cpu=round(fig.utilization("cpu"), 4),
            memory=round(fig.utilization("memory"), 4),
            disk=round(fig.utilization("disk"), 4),
            vms=round(fig.utilization("vms"), 4),
        ),
    )


def _recent(task: TaskRecord) -> RecentTask:
    req = task.request or {}

    def as_int(key: str) -> int | None:
        value = req.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    pool = req.get("requested_pool")
    return RecentTask(
        task_id=task.task_id,
        status=task.status,
        node=task.node,
        node_ip=task.node_ip,
        reason=task.reason,
        message=task.message,
        strategy=task.strategy,
        attempts=task.attempts,
        requested_cpu=as_int("requested_cpu"),
        requested_memory=as_int("requested_memory"),
        pool=pool if isinstance(pool, str) else None,
        updated_at=task.updated_at,
    )
