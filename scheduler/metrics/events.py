"""The events the worker records: counters and histograms it updates as things happen.

:class:`SchedulerMetrics` implements the worker's
:class:`~scheduler.worker.hooks.WorkerHooks`. The worker calls it once per
committed group, so the cost is a handful of counter increments per group,
not per message: labels are aggregated in a dict first and each labelled
child is incremented once. Nothing here reads the database or the broker.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from scheduler.metrics.batch_histogram import BatchHistogram
from scheduler.models import Reason, TaskStatus
from scheduler.store.records import Failure, Placement, Release, Waiting

if TYPE_CHECKING:
    from scheduler.store import CommitResult
    from scheduler.worker.batch import BatchPlan

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
DEAD_LETTER_REASONS = ("invalid", "unstorable", "redelivered", "move_refused")
DELIVERY_STATES = ("pending", "delivered", "dead")


class SchedulerMetrics:
    """The worker's event metrics; pass it to ``Worker(hooks=...)``.

    Implements :class:`~scheduler.worker.hooks.WorkerHooks`. Both hook methods
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
        self.decision_seconds = BatchHistogram(
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
        self.publish_to_commit = BatchHistogram(
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
    def group_committed(self, plan: BatchPlan, result: CommitResult, seconds: float) -> None:
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

    def _group_committed(self, plan: BatchPlan, result: CommitResult, seconds: float) -> None:
        for (strategy, outcome), n in plan.tally.items():
            self.decisions.labels(strategy=strategy, result=outcome).inc(n)
        self.decision_seconds.observe_many(plan.decision_seconds)

        # One pass over the batch's items, the commonest kind first and by exact type: this loop
        # runs once per request, and was the larger part of what metrics cost the planning thread.
        applied = set(result.applied)
        ignored = set(result.ignored)
        failed: Tally[Reason] = Tally()
        terminal: list[str] = []
        waiting = released = 0
        for item in plan.items:
            if type(item) is Placement:
                tid = item.request.task_id
                if tid in applied:
                    terminal.append(tid)
            elif type(item) is Failure:
                if item.task_id in applied:
                    failed[item.reason] += 1
                    terminal.append(item.task_id)
            elif type(item) is Waiting:
                waiting += item.request.task_id in applied
            elif type(item) is Release:
                released += item.task_id in applied and item.task_id not in ignored
        placed = len(terminal) - sum(failed.values())
        counts = [
            ((TaskStatus.SCHEDULED.value, ""), placed),
            ((TaskStatus.WAITING.value, ""), waiting),
            ((TaskStatus.RELEASED.value, ""), released),
            *(((TaskStatus.FAILED.value, reason.value), n) for reason, n in failed.items()),
        ]
        for (status, reason), n in counts:
            if n:
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
        # header, as AMQP field tables carry no floats; the batch keeps only real integers).
        published = getattr(plan, "published_at", None)
        if isinstance(published, Mapping) and published:
            stamps = [published[task_id] for task_id in terminal if task_id in published]
            if stamps:
                ages = self._clock() - np.array(stamps, dtype=np.float64) / 1000
                self.publish_to_commit.observe_many(np.maximum(ages, 0.0))


__all__ = ["PREFIX", "SchedulerMetrics"]
