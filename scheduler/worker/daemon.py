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

The commit itself is :class:`~scheduler.worker.pipeline.CommitPipeline`,
which answers with an explicit outcome: committed (one bad message in the
group is isolated by bisection and becomes a failed task or a dead letter,
the rest commits), fenced (stop leading), or database down. A database that
is down undoes the group's in-memory reservations, requeues its messages and
stops consuming until the database answers again; the fleet is then
reloaded, because a failed COMMIT may still have been applied.

The parts, each in its own module: the leadership term
(:mod:`~scheduler.worker.leadership_term`: claim the fence, load the fleet),
the consuming channel (:mod:`~scheduler.worker.consumer`), the config
watcher (:mod:`~scheduler.worker.config_watcher`), the planning
(:mod:`~scheduler.worker.group`), the commit (:mod:`~scheduler.worker.pipeline`
on the :mod:`~scheduler.worker.committer` thread), what the worker publishes
(:mod:`~scheduler.worker.outbound`) and what other threads may read
(:mod:`~scheduler.worker.state`). This module runs the loop that ties them.

The broker connection is retried for ever with capped, jittered backoff that
resets after a healthy session; only at start-up is the wait bounded
(``worker.startup_timeout``), ending in :class:`StartupFailed`.
"""

from __future__ import annotations

import collections
import contextlib
import random
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pika
import structlog
from pika.adapters.blocking_connection import BlockingChannel

from scheduler.broker import Topology, connect
from scheduler.config import Settings
from scheduler.elector import LeaderElector
from scheduler.fleet import FleetView
from scheduler.models import BadMessage, Heartbeat, MoveRequest, SchedulingRequest, TaskStatus, parse_message
from scheduler.safetext import first_line, printable
from scheduler.store import Move, Release, Store
from scheduler.store.placed import placed_requests
from scheduler.strategies import Placer
from scheduler.webhooks.policy import callback_checker
from scheduler.worker.committer import Committer, InFlight
from scheduler.worker.config_watcher import ConfigWatcher
from scheduler.worker.consumer import AMQP_ERRORS, Consumer
from scheduler.worker.decision_log import log_committed
from scheduler.worker.group import Incoming, RetryPolicy, plan_group
from scheduler.worker.hooks import WorkerHooks, call_hook
from scheduler.worker.leadership_term import DB_ERRORS, LeadershipTerms, NotLeading
from scheduler.worker.outbound import Outbound
from scheduler.worker.pipeline import CommitPipeline, Committed, DatabaseDown, Fenced
from scheduler.worker.redelivery import RedeliveryCounter
from scheduler.worker.state import WorkerState

log = structlog.get_logger(__name__)

class StartupFailed(Exception):
    """The broker was not reached within ``worker.startup_timeout``; the message says why, in one line."""


IN_FLIGHT_POLL = 0.002
"""Seconds between looks at a commit in flight (it cannot wake the broker poll)."""

PUMP_INTERVAL = 0.05
"""While waiting for a commit, how often the broker connection is serviced (AMQP heartbeats)."""

MAX_IN_FLIGHT = 1
"""Groups committing while the next is planned; one is enough to hide the database round trip."""


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
        self.callback_refusal = callback_checker(list(settings.webhooks.allow))
        self.rng = random.Random(settings.random_seed)
        self.jitter = random.Random()
        self.state = WorkerState(
            strategy=self.placer.default,
            max_group_retries=settings.worker.max_group_retries,
            commit_stuck_after=settings.worker.commit_stuck_after,
        )
        self.stopping = threading.Event()
        self.pipeline = CommitPipeline(store)
        self.redeliveries = RedeliveryCounter(broker_counts=settings.amqp.queue_type == "quorum")
        self._conn: pika.BlockingConnection | None = None
        self._resume_at = 0.0
        self.terms = LeadershipTerms(store, settings, self.jitter)
        self._connected_at: float | None = None
        self._ever_connected = False
        self._stop_signal: str | None = None
        self._fleet: FleetView | None = None
        self._epoch = 0
        self._inventory_rev: int | None = None
        self._buffer: list[Incoming] = []
        self._inflight: collections.deque[InFlight] = collections.deque()
        self._committer = Committer(self.pipeline)
        self.consumer = Consumer(self.topology, settings.amqp.prefetch)
        self.config_watcher = ConfigWatcher(self.placer, self.state)
        self._next_inventory_check = 0.0
        self._next_config_check = 0.0

    @property
    def _consume_channel(self) -> BlockingChannel | None:
        return self.consumer.channel

    # ------------------------------------------------------------------ run
    def install_signal_handlers(self) -> None:
        def _graceful(signum: int, _frame: FrameType | None) -> None:
            # Nothing here may take a lock: the handler runs on the main thread between two
            # bytecodes, possibly while that thread holds the log writer's lock (a deadlock).
            self._stop_signal = signal.Signals(signum).name
            self.stopping.set()

        signal.signal(signal.SIGTERM, _graceful)
        signal.signal(signal.SIGINT, _graceful)

    def run(self) -> int:
        """Serve until stopped; returns the process exit code.

        Raises :class:`StartupFailed` when the broker never answered within
        ``worker.startup_timeout``; after a first good connection, every
        outage is waited out, however long.
        """
        if self.settings.heartbeat_lowered():
            log.warning(
                "amqp.heartbeat lowered to a third of the lease so a frozen leader cannot hold the queue",
                configured=self.settings.amqp.heartbeat,
                used=self.settings.broker_heartbeat(),
                lease_duration=self.settings.election.lease_duration,
            )
        self.leadership.start()
        cfg = self.settings.worker
        backoff = cfg.reconnect_initial_backoff
        began = self.clock()
        try:
            while not self.stopping.is_set():
                try:
                    self._session()
                    backoff = cfg.reconnect_initial_backoff
                except AMQP_ERRORS as exc:
                    self._drop_leadership("broker connection lost")
                    self.state.broker_connected = False
                    self.state.not_consuming_why = "broker connection lost"
                    connected_at, self._connected_at = self._connected_at, None
                    if connected_at is not None and self.clock() - connected_at >= cfg.healthy_session:
                        backoff = cfg.reconnect_initial_backoff  # a healthy session: start small again
                    error = printable(str(exc) or type(exc).__name__, 300)
                    if not self._ever_connected and self.clock() - began >= cfg.startup_timeout:
                        raise StartupFailed(
                            f"broker unreachable for {cfg.startup_timeout:g}s at start-up: {error}"
                        ) from None
                    delay = backoff * self.jitter.uniform(0.5, 1.0)
                    log.warning("broker connection lost; reconnecting", error=error, retry_in=round(delay, 2))
                    self.stopping.wait(delay)
                    backoff = min(backoff * 2, cfg.reconnect_max_backoff)
        finally:
            log.info("stopping", signal=self._stop_signal)
            self._committer.close()
            self.leadership.stop()
            log.info("worker stopped", committed=self.state.committed)
        return 0

    def _session(self) -> None:
        """One broker connection's lifetime."""
        conn = connect(
            str(self.settings.amqp.url),
            heartbeat=self.settings.broker_heartbeat(),
            name=f"virtflow-scheduler worker {self.settings.identity}",
        )
        self._conn = conn
        try:
            control = conn.channel()
            self.topology.declare(control)
            publisher = conn.channel()
            publisher.confirm_delivery()
            self.state.broker_connected = True
            self._connected_at = self.clock()
            self._ever_connected = True
            log.info("broker connected", exchange=self.topology.exchange, queue=self.topology.queue)
            while not self.stopping.is_set():
                self._tick(conn, publisher)
            log.info("stop requested; finishing the group in flight", signal=self._stop_signal)
            # Graceful stop: commit what we hold, then let go of the queue.
            if self._consume_channel is not None:
                self.consumer.cancel()
                conn.process_data_events(time_limit=0)
                self._flush(publisher)
                self._drain(publisher)
                self._close_consume_channel()
        finally:
            self.state.broker_connected = False
            self._conn = None
            if conn.is_open:
                with contextlib.suppress(*AMQP_ERRORS):
                    conn.close()

    def _tick(self, conn: pika.BlockingConnection, publisher: BlockingChannel) -> None:
        leader = self.leadership.is_leader()
        self.state.lease_held = leader
        if leader and self._consume_channel is None:
            if self.clock() >= self._resume_at:
                self._become_leader(conn)
        elif not leader and (self._consume_channel is not None or self._fleet is not None):
            self._drop_leadership("lost the lease")
        elif leader and (self.leadership.epoch or 0) != self._epoch:
            self._drop_leadership("lease changed hands and came back")
        now = self.clock()
        if now >= self._next_config_check:
            # Standbys follow the config too, so a new leader starts with the new strategy.
            self._next_config_check = now + self.settings.worker.config_watch_interval
            self.config_watcher.check()
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
        term = self.terms.begin(self.leadership.epoch or 0)
        if isinstance(term, NotLeading):
            self.state.not_consuming_why = term.why
            self._resume_at = self.clock() + term.retry_in
            return
        fleet, epoch = term.fleet, term.epoch
        self._fleet, self._epoch, self._inventory_rev = fleet, epoch, term.inventory_rev
        self.consumer.open(conn, self._on_request, self._on_heartbeat)
        self.state.leader, self.state.epoch, self.state.fleet = True, epoch, fleet
        self.state.consuming, self.state.not_consuming_why = True, ""
        self._hook("consumer_active", True)
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
        self.state.commit_started = None
        self._close_consume_channel()
        self._fleet = None
        self.state.leader, self.state.fleet = False, None
        self.state.consuming, self.state.not_consuming_why = False, why
        self._hook("consumer_active", False)
        log.warning("stopped leading", reason=why, epoch=self._epoch)
        if self.hooks:
            self.hooks.leadership_changed(False, self._epoch)

    def _close_consume_channel(self) -> None:
        """Closing the channel hands every unacked message back to the queue at once."""
        self._buffer.clear()
        self.consumer.close()

    # ------------------------------------------------------------ consuming
    def _on_request(self, ch: BlockingChannel, method: Any, props: pika.BasicProperties, body: bytes) -> None:
        headers = props.headers if isinstance(props.headers, dict) else {}
        self._buffer.append(
            Incoming(method.delivery_tag, body, dict(headers), method.redelivered, self.clock())
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
        with self.state.fleet_lock:
            known = self._fleet.heartbeat(beat.node, self.clock())
        if not known:
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
        group, worn = self.redeliveries.split_worn_out(group, self.settings.worker.max_redeliveries)
        to_move = self._move_subjects(group, publisher)
        if to_move is None:
            self._requeue(channel, group + [m for m, _ in worn])
            return
        if self._fleet is not fleet or self._consume_channel is not channel:
            return  # lost while the groups in flight were completed
        with self.state.fleet_lock:  # the HTTP thread may be walking the fleet
            plan = plan_group(
                group,
                fleet,
                self.placer,
                now=self.clock(),
                retry=self.retry,
                callback_refusal=self.callback_refusal,
                rng=self.rng,
                to_move=to_move,
            )
        while len(self._inflight) >= MAX_IN_FLIGHT:
            ok = self._complete(publisher)
            if not ok or self._fleet is not fleet or self._consume_channel is not channel:
                # This plan was made on a fleet that no longer stands: hand the group back.
                self._requeue(channel, group + [m for m, _ in worn])
                return
        for msg, why in worn:
            self._dead_letter(publisher, msg, why, kind="redelivered")
        for dead in plan.dead:
            self._dead_letter(publisher, dead.message, dead.reason, kind="invalid")
        for refused in plan.refused:
            self._dead_letter(publisher, refused.message, refused.reason, kind="move_refused")
        releases = any(isinstance(item, Release | Move) for item in plan.items)
        job = InFlight(plan, group + [m for m, _ in worn], self._epoch, started, releases=releases)
        self._inflight.append(job)
        self.state.commit_started = self.clock()
        self._committer.submit(job)

    def _dead_letter(self, publisher: BlockingChannel, msg: Incoming, reason: str, *, kind: str) -> None:
        Outbound(publisher, self.topology, self.settings.amqp.dead_letter_max_body).dead_letter(
            msg, reason, kind=kind
        )
        if kind != "invalid":  # invalid ones are counted with their group (GroupPlan.dead)
            self._hook("dead_lettered", kind)

    def _move_subjects(
        self, group: list[Incoming], publisher: BlockingChannel
    ) -> dict[str, SchedulingRequest | str] | None:
        """For the move messages of ``group``: each task's stored request, or why it cannot move.

        Read from the database after every group in flight is committed, so
        a move sees every placement and release decided before it. None when
        the database could not answer (the group is handed back).
        """
        ids = []
        for msg in group:
            if b'"move"' in msg.body:
                try:
                    parsed = parse_message(msg.body)
                except BadMessage:
                    continue
                if isinstance(parsed, MoveRequest):
                    ids.append(parsed.move)
        if not ids:
            return {}
        self._drain(publisher)
        try:
            found: dict[str, SchedulingRequest | str] = dict(placed_requests(self.store, ids))
            states = self.store.task_states([t for t in ids if t not in found])
        except Exception as exc:
            log.error("database error while reading the tasks to move", error=first_line(exc))
            return None
        for tid in ids:
            if tid not in found:
                state = states.get(tid)
                if state is TaskStatus.SCHEDULED:
                    found[tid] = f"task {tid}'s stored request cannot be read"
                else:
                    found[tid] = f"task {tid} is not scheduled ({state.value if state else 'unknown task'})"
        return found

    def _requeue(self, channel: BlockingChannel, group: list[Incoming]) -> None:
        self.consumer.requeue(channel, group)

    def _reap(self, publisher: BlockingChannel) -> None:
        """Finish every group whose commit is done, in order, without waiting."""
        while self._inflight and self._inflight[0].done.is_set():
            self._complete(publisher)

    def _drain(self, publisher: BlockingChannel | None) -> None:
        """Wait for every group in flight (before the fleet is replaced or the channel closed)."""
        while self._inflight:
            self._complete(publisher)

    def _await(self, job: InFlight) -> None:
        """Wait for a commit, servicing the broker connection meanwhile so its heartbeats go out."""
        while not job.done.wait(PUMP_INTERVAL):
            conn = self._conn
            if conn is not None and conn.is_open:
                conn.process_data_events(time_limit=0)

    def _complete(self, publisher: BlockingChannel | None) -> bool:
        """Wait for the oldest group's commit and act on its outcome; False when consuming stopped.

        Every outcome is handled here, once, without calling back into the
        loop: committed (ack, retries, dead letters), fenced (stop leading),
        database down (requeue, stop consuming until it answers).
        """
        job = self._inflight[0]
        self._await(job)
        self._inflight.popleft()
        if not self._inflight:
            self.state.commit_started = None
        fleet, channel, plan, group = self._fleet, self._consume_channel, job.plan, job.group
        if fleet is None or channel is None or publisher is None:
            return False  # channel already closed: its messages went back to the queue
        outcome = job.outcome
        if isinstance(outcome, Fenced):
            with self.state.fleet_lock:
                plan.undo(fleet)
            log.error("commit refused by the fence: another replica leads", error=str(outcome.error))
            self._drop_leadership("fenced out")
            return False
        if not isinstance(outcome, Committed):
            error = outcome.error if isinstance(outcome, DatabaseDown) else "no outcome"
            with self.state.fleet_lock:
                plan.undo(fleet)
            self._requeue(channel, group)
            self.state.group_retries += 1
            self.state.last_retry_error = error
            self._hook("group_retried")
            log.error("database error; group requeued", error=error, messages=len(group))
            # Stop consuming: the fleet is reloaded when leadership is taken up again, once
            # the database answers (a failed COMMIT may have landed).
            self._resume_at = self.clock() + self.terms.db_delay()
            self._drop_leadership(f"database unavailable: {error}")
            return False
        self.state.group_retries = 0
        result = outcome.result
        poisoned_ids = {plan.items[p.index].task_id for p in outcome.poisoned}
        stale_moves = [t for t in result.ignored if t in plan.moved]
        with self.state.fleet_lock:
            plan.forget(fleet, [t for t in result.duplicates if t in plan.placed])
            plan.unmove(fleet, stale_moves)
        for tid in result.moved:
            done = plan.moved[tid][0]
            log.info("moved", task_id=tid, source=done.source, target=done.target)
        for tid in stale_moves:
            log.warning("move ignored: the task is not scheduled on its source any more", task_id=tid)
        duplicates = set(result.duplicates) | set(result.conflicts) | poisoned_ids
        for poison in outcome.poisoned:
            source = plan.sources[poison.index]
            item = plan.items[poison.index]
            if poison.stored_as_failure:
                log.warning(
                    "message could not be stored; task failed", task_id=item.task_id, error=poison.error
                )
            else:
                self._dead_letter(
                    publisher, source, f"could not be stored: {poison.error}", kind="unstorable"
                )
        if outcome.poisoned:
            self._hook("poisoned", len(outcome.poisoned))
        outbound = Outbound(publisher, self.topology, self.settings.amqp.dead_letter_max_body)
        for retry in plan.retries:
            if retry.request.task_id not in duplicates:
                outbound.retry(retry)
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
        log_committed(plan, result, self._hook, seconds)
        if self.hooks:
            self.hooks.group_committed(plan, result, seconds)
        if outcome.poisoned:
            # The fleet held reservations and releases of items that did not commit as planned.
            self._reload_fleet("a message could not be stored")
        return True

    def _hook(self, name: str, *args: Any) -> None:
        call_hook(self.hooks, name, *args)

    def _reload_fleet(self, why: str) -> None:
        """Rebuild the fleet from the database; on failure stop consuming until it answers."""
        try:
            self._fleet = self.terms.load_fleet()
            self.state.fleet = self._fleet
            log.info("fleet reloaded", reason=why, nodes=self._fleet.size)
        except DB_ERRORS as exc:
            log.error("database unavailable; standing down until it returns", error=first_line(exc))
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
            log.warning("inventory check failed", error=first_line(exc))
            return
        self._fleet = self._fleet.with_inventory(nodes)
        self.state.fleet = self._fleet
        self._inventory_rev = rev
        log.info("inventory reloaded", revision=rev, nodes=self._fleet.size)


__all__ = ["StartupFailed", "Worker", "WorkerHooks", "WorkerState"]

