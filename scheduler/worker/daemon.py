"""The worker daemon: leadership -> consume -> decide -> commit -> ack.

One thread owns the broker connection (pika is not thread-safe); the elector
runs in its own thread and is only *asked* whether we lead. The loop:

1. Connect (reconnecting with backoff), declare the topology, stay connected
   as a standby while another replica leads.
2. On gaining leadership: claim the fencing epoch, load the fleet from the
   database, start consuming requests and heartbeats.
3. Gather delivered messages into a group (up to ``worker.commit_batch`` or
   ``worker.commit_interval_ms``), plan it in memory
   (:mod:`scheduler.worker.group`), dead-letter what can never be processed,
   commit the rest in one transaction with the fence check, send waiting
   requests through the retry queue, and only then ack.
4. On losing leadership (or a commit refused by the fence): close the
   consuming channel at once so every unacked message goes back to the queue,
   drop the in-memory fleet, and become a standby again.
5. On SIGTERM/SIGINT: stop consuming, finish and commit the group in flight,
   ack, release the lease, close, exit 0.

A database error undoes the group's in-memory reservations, requeues its
messages and backs off; the fleet is then reloaded from the database because
a failed COMMIT may still have been applied.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import pika
import structlog
from pika.adapters.blocking_connection import BlockingChannel
from sqlalchemy.exc import SQLAlchemyError

from scheduler.broker import (
    HEADER_ATTEMPT,
    HEADER_DEATH_REASON,
    Topology,
    connect,
    message_properties,
)
from scheduler.config import Settings, config_path, load_settings
from scheduler.elector import LeaderElector
from scheduler.fleet import FleetView
from scheduler.models import Heartbeat
from scheduler.store import CommitResult, FencedOut, Release, Store
from scheduler.store.engine import DatabaseUnavailable
from scheduler.strategies import Placer, UnknownStrategy
from scheduler.worker.group import GroupPlan, Incoming, RetryPolicy, plan_group

log = structlog.get_logger(__name__)

AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)
DB_ERRORS = (SQLAlchemyError, DatabaseUnavailable)


class WorkerHooks(Protocol):
    """Observability callbacks (metrics); every method must be quick and never raise."""

    def group_committed(self, plan: GroupPlan, result: CommitResult, seconds: float) -> None: ...
    def leadership_changed(self, leader: bool, epoch: int) -> None: ...


@dataclass
class WorkerState:
    """What the HTTP face and tests may read about a running worker (snapshot, not live)."""

    leader: bool = False
    epoch: int = 0
    strategy: str = ""
    broker_connected: bool = False
    committed: int = 0
    groups: int = 0
    last_commit_at: float | None = None
    fleet: FleetView | None = None
    extra: dict[str, Any] = field(default_factory=dict)


IN_FLIGHT_POLL = 0.002
"""Seconds between looks at a commit in flight (it cannot wake the broker poll)."""

MAX_IN_FLIGHT = 1
"""Groups committing while the next is planned; one is enough to hide the database round trip."""


@dataclass
class _InFlight:
    """A planned group handed to the committer thread, and what became of it."""

    plan: GroupPlan
    group: list[Incoming]
    epoch: int
    started: float
    releases: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    result: CommitResult | None = None
    error: BaseException | None = None


class _Committer:
    """One thread that runs ``store.commit`` for one group at a time, in submission order.

    It touches nothing but the store and the job: pika and the fleet stay on
    the worker's thread.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._jobs: queue.SimpleQueue[_InFlight | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
        self._thread.start()

    def submit(self, job: _InFlight) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job.result = (
                    self._store.commit(job.plan.items, job.epoch) if job.plan.items else CommitResult()
                )
            except BaseException as exc:  # handed to the worker thread, which decides what it means
                job.error = exc
            finally:
                job.done.set()


class Worker:
    """The daemon; construct with its collaborators, then :meth:`run`."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        leadership: LeaderElector,
        *,
        placer: Placer | None = None,
        hooks: WorkerHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.leadership = leadership
        self.hooks = hooks
        self.clock = clock
        w = settings.strategy_weights
        self.placer = placer or Placer(
            settings.strategy,
            weights=(w.cpu, w.memory, w.disk),
            seed=settings.random_seed,
            dedicated_exclusive=settings.dedicated_nodes_exclusive,
            spread_max_skew=settings.spread_max_skew,
        )
        self.topology = Topology.from_config(settings.amqp)
        self.retry = RetryPolicy(
            settings.retry.max_attempts, settings.retry.initial_backoff, settings.retry.max_backoff
        )
        self.rng = random.Random(settings.random_seed)
        self.state = WorkerState(strategy=self.placer.default)
        self.stopping = threading.Event()
        self._fleet: FleetView | None = None
        self._epoch = 0
        self._inventory_rev: int | None = None
        self._buffer: list[Incoming] = []
        self._inflight: collections.deque[_InFlight] = collections.deque()
        self._committer = _Committer(store)
        self._consume_channel: BlockingChannel | None = None
        self._consumer_tags: list[str] = []
        self._next_inventory_check = 0.0
        self._next_config_check = 0.0
        self._config_digest_seen: str | None = self._config_digest()

    # ------------------------------------------------------------------ run
    def install_signal_handlers(self) -> None:
        def _graceful(signum: int, _frame: FrameType | None) -> None:
            log.info("stopping", signal=signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, _graceful)
        signal.signal(signal.SIGINT, _graceful)

    def run(self) -> int:
        """Serve until stopped; returns the process exit code."""
        self.leadership.start()
        backoff = 0.5
        try:
            while not self.stopping.is_set():
                try:
                    self._session()
                    backoff = 0.5
                except AMQP_ERRORS as exc:
                    self._drop_leadership("broker connection lost")
                    self.state.broker_connected = False
                    log.warning(
                        "broker connection lost; reconnecting",
                        error=str(exc) or type(exc).__name__,
                        retry_in=round(backoff, 2),
                    )
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, self.settings.worker.reconnect_max_backoff)
        finally:
            self._committer.close()
            self.leadership.stop()
            log.info("worker stopped", committed=self.state.committed)
        return 0

    def _session(self) -> None:
        """One broker connection's lifetime."""
        conn = connect(
            str(self.settings.amqp.url),
            heartbeat=self.settings.amqp.heartbeat,
            name=f"virtflow-scheduler worker {self.settings.identity}",
        )
        try:
            control = conn.channel()
            self.topology.declare(control)
            publisher = conn.channel()
            publisher.confirm_delivery()
            self.state.broker_connected = True
            log.info("broker connected", exchange=self.topology.exchange, queue=self.topology.queue)
            while not self.stopping.is_set():
                self._tick(conn, publisher)
            # Graceful stop: commit what we hold, then let go of the queue.
            if self._consume_channel is not None:
                self._cancel_consumers()
                conn.process_data_events(time_limit=0)
                self._flush(publisher)
                self._drain(publisher)
                self._close_consume_channel()
        finally:
            self.state.broker_connected = False
            if conn.is_open:
                with contextlib.suppress(*AMQP_ERRORS):
                    conn.close()

    def _tick(self, conn: pika.BlockingConnection, publisher: BlockingChannel) -> None:
        leader = self.leadership.is_leader()
        if leader and self._consume_channel is None:
            self._become_leader(conn)
        elif not leader and self._consume_channel is not None:
            self._drop_leadership("lost the lease")
        elif leader and (self.leadership.epoch or 0) != self._epoch:
            self._drop_leadership("lease changed hands and came back")
        now = self.clock()
        if now >= self._next_config_check:
            # Standbys follow the config too, so a new leader starts with the new strategy.
            self._next_config_check = now + self.settings.worker.config_watch_interval
            self._check_config()
        if self._consume_channel is None:
            conn.process_data_events(time_limit=min(0.2, self.settings.election.retry_period / 2))
            return
        interval = self.settings.worker.commit_interval_ms / 1000
        conn.process_data_events(time_limit=self._wait_budget(interval))
        self._reap(publisher)
        if self._buffer and (
            len(self._buffer) >= self.settings.worker.commit_batch
            or self.clock() - self._buffer[0].received >= interval
        ):
            self._flush(publisher)
        if now >= self._next_inventory_check and self._consume_channel is not None:
            self._next_inventory_check = now + self.settings.worker.inventory_poll_interval
            # The fleet object is replaced: no group may be in flight with undo steps on the old one.
            self._drain(publisher)
            self._check_inventory()

    def _wait_budget(self, interval: float) -> float:
        """How long to wait for broker events before the loop must act again.

        Never zero unless a full group is waiting: spinning would hold the
        GIL and starve the committer thread it is waiting for.
        """
        if len(self._buffer) >= self.settings.worker.commit_batch:
            return 0
        budget = interval
        if self._buffer:
            budget = max(0.0, interval - (self.clock() - self._buffer[0].received))
        if self._inflight:
            budget = min(budget, IN_FLIGHT_POLL)
        return budget

    # ----------------------------------------------------------- leadership
    def _become_leader(self, conn: pika.BlockingConnection) -> None:
        epoch = self.leadership.epoch or 0
        try:
            self.store.claim_fence(epoch, self.settings.identity)
            fleet = self.store.load_fleet(
                suspicious_after=self.settings.nodes.suspicious_after,
                offline_after=self.settings.nodes.offline_after,
                defaults=self.settings.capacity_defaults(),
            )
            rev = self.store.inventory_revision()
        except FencedOut as exc:
            log.warning("not leading: a newer leader holds the fence", error=str(exc))
            self.stopping.wait(self.settings.election.retry_period)
            return
        except DB_ERRORS as exc:
            log.error("database unavailable while taking leadership", error=_short(exc))
            self.stopping.wait(self.settings.election.retry_period)
            return
        self._fleet, self._epoch, self._inventory_rev = fleet, epoch, rev
        channel = conn.channel()
        channel.basic_qos(prefetch_count=self.settings.amqp.prefetch)
        self._consume_channel = channel
        self._consumer_tags = [
            channel.basic_consume(self.topology.queue, self._on_request),
            channel.basic_consume(self.topology.heartbeat_queue, self._on_heartbeat, auto_ack=True),
        ]
        self.state.leader, self.state.epoch, self.state.fleet = True, epoch, fleet
        log.info(
            "leading: consuming",
            epoch=epoch,
            nodes=fleet.size,
            allocations=len(fleet.allocations),
            strategy=self.placer.default,
        )
        if self.hooks:
            self.hooks.leadership_changed(True, epoch)

    def _drop_leadership(self, why: str) -> None:
        if self._consume_channel is None and self._fleet is None:
            return
        # Let commits in flight finish (or be refused by the fence) before the
        # channel closes; their messages are not acked and go back to the queue.
        for job in self._inflight:
            job.done.wait()
        self._inflight.clear()
        self._close_consume_channel()
        self._fleet = None
        self.state.leader, self.state.fleet = False, None
        log.warning("stopped leading", reason=why, epoch=self._epoch)
        if self.hooks:
            self.hooks.leadership_changed(False, self._epoch)

    def _cancel_consumers(self) -> None:
        ch = self._consume_channel
        if ch is None or not ch.is_open:
            return
        for tag in self._consumer_tags:
            with contextlib.suppress(*AMQP_ERRORS):
                ch.basic_cancel(tag)
        self._consumer_tags = []

    def _close_consume_channel(self) -> None:
        """Closing the channel hands every unacked message back to the queue at once."""
        ch, self._consume_channel = self._consume_channel, None
        self._buffer.clear()
        self._consumer_tags = []
        if ch is not None and ch.is_open:
            with contextlib.suppress(*AMQP_ERRORS):
                ch.close()

    # ------------------------------------------------------------ consuming
    def _on_request(self, ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        self._buffer.append(
            Incoming(method.delivery_tag, body, dict(props.headers or {}), method.redelivered, self.clock())
        )

    def _on_heartbeat(
        self, ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes
    ) -> None:
        if self._fleet is None:
            return
        try:
            beat = Heartbeat.model_validate_json(body)
        except ValueError:
            log.warning("ignoring malformed heartbeat", size=len(body))
            return
        if not self._fleet.heartbeat(beat.node, self.clock()):
            log.debug("heartbeat from unknown node", node=beat.node)

    def _flush(self, publisher: BlockingChannel) -> None:
        """Plan the buffered group and hand it to the committer; acks come in :meth:`_complete`.

        At most one group is committing while the next one is planned: the
        database round trip overlaps deciding and consuming. A group that
        released capacity is committed before the next group is planned, so
        no decision ever relies on a release that might still fail.
        """
        fleet, channel, group = self._fleet, self._consume_channel, self._buffer
        if not group or fleet is None or channel is None:
            return
        while self._inflight and self._inflight[-1].releases:
            if not self._complete(publisher):
                return
        if self._fleet is not fleet or self._consume_channel is not channel:
            return  # the fleet was reloaded or leadership lost while waiting
        self._buffer = []
        started = time.perf_counter()
        plan = plan_group(
            group,
            fleet,
            self.placer,
            now=self.clock(),
            retry=self.retry,
            callback_allow=list(self.settings.webhooks.allow),
            rng=self.rng,
        )
        while len(self._inflight) >= MAX_IN_FLIGHT:
            ok = self._complete(publisher)
            if not ok or self._fleet is not fleet or self._consume_channel is not channel:
                # This plan was made on a fleet that no longer stands: hand the group back.
                self._requeue(channel, group)
                return
        for dead in plan.dead:
            self._publish_confirmed(
                publisher,
                "",
                self.topology.dead_queue,
                dead.message.body,
                headers={**dead.message.headers, HEADER_DEATH_REASON: dead.reason[:1000]},
                message_id=None,
            )
            log.warning("dead-lettered", reason=dead.reason[:300])
        releases = any(isinstance(item, Release) for item in plan.items)
        job = _InFlight(plan, group, self._epoch, started, releases=releases)
        self._inflight.append(job)
        self._committer.submit(job)

    def _requeue(self, channel: BlockingChannel, group: list[Incoming]) -> None:
        """Hand an uncommitted group back to the queue, if its channel is still ours and open."""
        ours = self._consume_channel
        if ours is not None and ours is channel and ours.is_open:
            ours.basic_nack(delivery_tag=group[-1].delivery_tag, multiple=True, requeue=True)

    def _reap(self, publisher: BlockingChannel) -> None:
        """Finish every group whose commit is done, in order, without waiting."""
        while self._inflight and self._inflight[0].done.is_set():
            self._complete(publisher)

    def _drain(self, publisher: BlockingChannel | None) -> None:
        """Wait for every group in flight (before the fleet is replaced or the channel closed)."""
        while self._inflight:
            self._complete(publisher)

    def _complete(self, publisher: BlockingChannel | None) -> bool:
        """Wait for the oldest group's commit and act on it; False when leadership was lost."""
        job = self._inflight.popleft()
        job.done.wait()
        fleet, channel, plan, group = self._fleet, self._consume_channel, job.plan, job.group
        if fleet is None or channel is None or publisher is None:
            return False  # channel already closed: its messages went back to the queue
        if isinstance(job.error, FencedOut):
            plan.undo(fleet)
            log.error("commit refused by the fence: another replica leads", error=str(job.error))
            self._drop_leadership("fenced out")
            return False
        if job.error is not None:
            plan.undo(fleet)
            channel.basic_nack(delivery_tag=group[-1].delivery_tag, multiple=True, requeue=True)
            log.error("database error; group requeued", error=_short(job.error), messages=len(group))
            self._drain(publisher)
            self._reload_after_db_error()
            return self._fleet is not None
        result = job.result or CommitResult()
        plan.forget(fleet, [t for t in result.duplicates if t in plan.placed])
        duplicates = set(result.duplicates)
        for retry in plan.retries:
            if retry.request.task_id in duplicates:
                continue
            self._publish_confirmed(
                publisher,
                "",
                self.topology.retry_queue,
                retry.message.body,
                headers={**retry.message.headers, HEADER_ATTEMPT: retry.attempt},
                message_id=retry.request.task_id,
                expiration_ms=retry.delay_ms,
            )
        deferred = {msg.delivery_tag for msg in plan.deferred}
        for tag in sorted(deferred):
            channel.basic_nack(delivery_tag=tag, requeue=True)
        ack_tag = max((m.delivery_tag for m in group if m.delivery_tag not in deferred), default=None)
        if ack_tag is not None:
            channel.basic_ack(delivery_tag=ack_tag, multiple=True)
        seconds = time.perf_counter() - job.started
        self.state.committed += len(plan.items)
        self.state.groups += 1
        self.state.last_commit_at = time.time()
        for decision in plan.decisions:
            log.info(
                "decision",
                task_id=decision.task_id,
                node=decision.node,
                strategy=decision.strategy,
                reason=str(decision.reason) if decision.reason else None,
                rejections=decision.rejections,
            )
        if self.hooks:
            self.hooks.group_committed(plan, result, seconds)
        return True

    def _publish_confirmed(
        self,
        publisher: BlockingChannel,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: dict[str, Any],
        message_id: str | None,
        expiration_ms: int | None = None,
    ) -> None:
        props = message_properties(message_id or "", headers=headers, expiration_ms=expiration_ms)
        if message_id is None:
            props.message_id = None
        # Raises on nack or a lost connection, before anything of the group is acked.
        publisher.basic_publish(exchange, routing_key, body, properties=props, mandatory=True)

    def _reload_after_db_error(self) -> None:
        """Back off, then rebuild the fleet from the database (a failed COMMIT may have landed)."""
        self.stopping.wait(1.0)
        try:
            self._fleet = self.store.load_fleet(
                suspicious_after=self.settings.nodes.suspicious_after,
                offline_after=self.settings.nodes.offline_after,
                defaults=self.settings.capacity_defaults(),
            )
            self.state.fleet = self._fleet
        except DB_ERRORS as exc:
            log.error("database still unavailable; standing down until it returns", error=_short(exc))
            self._drop_leadership("database unavailable")

    # ----------------------------------------------------- periodic checks
    def _check_inventory(self) -> None:
        if self._fleet is None:
            return
        try:
            rev = self.store.inventory_revision()
            if rev == self._inventory_rev:
                return
            nodes = self.store.list_nodes()
        except DB_ERRORS as exc:
            log.warning("inventory check failed", error=_short(exc))
            return
        self._fleet = self._fleet.with_inventory(nodes)
        self.state.fleet = self._fleet
        self._inventory_rev = rev
        log.info("inventory reloaded", revision=rev, nodes=self._fleet.size)

    def _config_digest(self) -> str | None:
        """Hash of the config file's contents (a ConfigMap update swaps a symlink: mtimes mislead)."""
        path = config_path()
        if path is None:
            return None
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None

    def _check_config(self) -> None:
        """Apply a changed ``strategy`` from the mounted config file without a restart."""
        digest = self._config_digest()
        if digest is None or digest == self._config_digest_seen:
            return
        self._config_digest_seen = digest
        try:
            fresh = load_settings()
        except Exception as exc:  # ConfigError or an unreadable file: keep running as we are
            log.error(
                "config file changed but is invalid; keeping the current strategy",
                strategy=self.placer.default,
                error=str(exc),
            )
            self._count_switch(ok=False)
            return
        if os.environ.get("SCHEDULING_STRATEGY"):
            log.warning(
                "config file changed, but SCHEDULING_STRATEGY in the environment overrides its strategy",
                strategy=self.placer.default,
            )
            return
        if fresh.strategy == self.placer.default:
            return
        try:
            self.placer.switch(fresh.strategy)
        except UnknownStrategy as exc:
            log.error("unknown strategy in config; keeping the current one", error=str(exc))
            self._count_switch(ok=False)
            return
        log.info("strategy switched", strategy=fresh.strategy)
        self.state.strategy = fresh.strategy
        self._count_switch(ok=True)

    def _count_switch(self, *, ok: bool) -> None:
        key = "strategy_switches" if ok else "strategy_switches_rejected"
        self.state.extra[key] = int(self.state.extra.get(key, 0)) + 1


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


__all__ = ["Worker", "WorkerHooks", "WorkerState"]
