"""Shared pieces of the HTTP, metrics and dashboard tests: a small fleet and a real workload.

The workload goes through the worker's own flow (:class:`~scheduler.worker.flow.Flow`
over the in-process :class:`~scheduler.worker.memory_source.MemorySource`: plan on
a fleet loaded from the store, commit under the fence, settle), so the API, the
metrics and the dashboard are checked against data written exactly as the
worker writes it, not against hand-made rows.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.config import Settings
from scheduler.models import Node
from scheduler.store import CommitResult, Store
from scheduler.strategies import Placer
from scheduler.worker.batch import BatchPlan
from scheduler.worker.flow import Flow
from scheduler.worker.leadership_term import LeadershipTerms, Term
from scheduler.worker.memory_source import MemorySource
from scheduler.worker.state import WorkerState
from tests.harness import Deployment
from tests.store_checks import overcommitted_nodes

LEADER = "leader-0"
EPOCH = 3
ALLOW = ["https://hooks.example.com/*"]


LOOPBACK_URL = "http://127.0.0.1"
"""Where test clients address a token-less app: it answers only requests addressed to localhost."""


def fleet_nodes() -> list[Node]:
    """Two pools: four general nodes and two GPU nodes, sized so a handful of VMs shows."""
    general = [
        Node.model_validate({
            "name": f"bm-{i:02d}", "ip": f"10.0.0.{i}", "pool": "default", "cpu": 16, "memory": 65536,
            "disk": 500, "max_vms": 10, "zone": "az1",
        })
        for i in range(1, 5)
    ]  # fmt: skip
    gpu = [
        Node.model_validate({
            "name": f"gpu-{i:02d}", "ip": f"10.0.1.{i}", "pool": "gpu", "cpu": 32, "memory": 131072,
            "disk": 1000, "max_vms": 4, "tags": ["gpu"],
        })
        for i in range(1, 3)
    ]  # fmt: skip
    return general + gpu


def settings_for(deployment: Deployment | None = None, **overrides: Any) -> Settings:
    """Settings pointing at the test's database and broker names (init values beat env and config.yaml)."""
    values: dict[str, Any] = {"identity": "replica-test", "webhooks": {"allow": ALLOW}}
    if deployment is not None:
        values["database"] = {"url": deployment.db_url}
        values["amqp"] = {
            "url": deployment.amqp_url,
            "exchange": deployment.exchange,
            "queue": deployment.queue,
        }
    values.update(overrides)
    return Settings(**values)


class CommittedGroups:
    """Hooks that keep each committed group (plan and result) and pass every call on to ``hooks``."""

    def __init__(self, hooks: Any = None) -> None:
        self.hooks = hooks
        self.groups: list[tuple[BatchPlan, CommitResult]] = []

    def group_committed(self, plan: BatchPlan, result: CommitResult, seconds: float) -> None:
        self.groups.append((plan, result))
        if self.hooks is not None:
            self.hooks.group_committed(plan, result, seconds)

    def leadership_changed(self, leader: bool, epoch: int) -> None:
        if self.hooks is not None:
            self.hooks.leadership_changed(leader, epoch)

    def __getattr__(self, name: str) -> Any:  # the optional hooks (dead_lettered, ...)
        return getattr(self.__dict__["hooks"], name)


def flow_for(
    store: Store, settings: Settings, *, hooks: Any = None, placer: Placer | None = None
) -> tuple[Flow, MemorySource]:
    """The worker's flow on the store's fleet, leading at :data:`EPOCH`, settling through a memory source.

    The caller closes the flow (its committer thread) when done.
    """
    state = WorkerState(strategy=(placer or Placer("least_loaded")).default)
    terms = LeadershipTerms(store, settings, random.Random(7))
    flow = Flow(settings, store, placer or Placer("least_loaded"), state, terms, hooks=hooks)
    source = MemorySource()
    flow.begin(Term(EPOCH, store.load_fleet(), store.inventory_revision()), source)
    return flow, source


def run_group(
    store: Store,
    bodies: list[dict[str, Any]] | list[bytes],
    *,
    hooks: Any = None,
    placer: Placer | None = None,
) -> tuple[BatchPlan, CommitResult]:
    """Decide ``bodies`` (dicts as JSON, or raw bytes) as one worker group on the store's fleet, commit
    it, and report it to ``hooks``."""
    settings = settings_for(retry={"max_attempts": 3, "initial_backoff": 1, "max_backoff": 8}, random_seed=7)
    committed = CommittedGroups(hooks)
    flow, source = flow_for(store, settings, hooks=committed, placer=placer)
    try:
        for body in bodies:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            flow.receive(source.deliver(raw, at=time.monotonic()))
        stop = flow.flush()
        if stop is None:
            stop = flow.drain()
    finally:
        flow.close()
    assert stop is None, stop
    assert len(committed.groups) == 1 and source.unsettled == [], (committed.groups, source)
    return committed.groups[0]


@dataclass
class Workload:
    """What :func:`standard_workload` did, for the assertions."""

    placed: dict[str, str]  # task id -> node
    failed: dict[str, str]  # task id -> reason code
    waiting: list[str]
    released: list[str]
    plans: list[tuple[BatchPlan, CommitResult]]


def standard_workload(store: Store, hooks: Any = None) -> Workload:
    """Six placements, a release, two failures (unknown pool, invalid), a wait: all real decisions."""
    store.claim_fence(EPOCH, LEADER)
    first = run_group(store, [
        {"task_id": f"vm-{i}", "requested_cpu": 4, "requested_memory": 8192, "requested_disk": 50}
        for i in range(1, 6)
    ] + [
        {"task_id": "gpu-job", "requested_cpu": 16, "requested_memory": 65536, "requested_pool": "gpu",
         "required_tags": ["gpu"]},
        {"task_id": "lost-pool", "requested_cpu": 1, "requested_memory": 512, "requested_pool": "nowhere"},
        {"task_id": "too-big", "requested_cpu": 64, "requested_memory": 1024},
        {"task_id": "bad-shape", "requested_cpu": "four", "requested_memory": 1024},
    ], hooks=hooks)  # fmt: skip
    second = run_group(store, [{"release": "vm-5"}], hooks=hooks)
    placed = {d.task_id: d.node for d in first[0].decisions if d.node is not None and d.task_id != "vm-5"}
    return Workload(
        placed={k: v for k, v in placed.items() if v is not None},
        failed={"lost-pool": "unknown_pool", "bad-shape": "invalid_request"},
        waiting=["too-big"],
        released=["vm-5"],
        plans=[first, second],
    )


def make_deployment(db_url: str, amqp_url: str, names: dict[str, str], workdir: Path) -> Iterator[Deployment]:
    """For a fixture: the two-pool fleet in a migrated database, the topology declared, all removed after."""
    dep = Deployment(db_url, amqp_url, names["exchange"], names["queue"], workdir)
    dep.store.import_nodes(fleet_nodes())
    dep.declare()
    try:
        yield dep
    finally:
        dep.close()


def test_standard_workload_lands_as_described(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    store.upgrade()
    store.import_nodes(fleet_nodes())
    work = standard_workload(store)
    states = {t.task_id: t for t in store.list_tasks()}
    assert {k for k, t in states.items() if t.status.value == "scheduled"} == set(work.placed)
    assert {
        k: t.reason.value if t.reason else None for k, t in states.items() if t.status.value == "failed"
    } == (work.failed)
    assert [k for k, t in states.items() if t.status.value == "waiting"] == work.waiting
    assert states["vm-5"].status.value == "released"
    assert overcommitted_nodes(store) == {}
    store.close()
