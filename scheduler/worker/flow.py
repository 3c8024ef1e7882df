"""The request flow of one leadership term: buffer -> plan -> commit -> settle (ack, retry, dead-letter).

Why a module, and why a plain object: this is the heart of the worker (the
order "commit, then publish what must go out, then ack" is docs/contracts.md
invariant 3), and it must be testable without a broker. So it knows the
broker only as a :class:`MessageSource`, five verbs on the term's consuming
channel (ack, nack-requeue, requeue a batch, publish a dead letter or a retry
with confirms, service the connection while waiting); the AMQP one is
:class:`~scheduler.worker.amqp_source.AmqpSource`, the in-process one
:class:`~scheduler.worker.memory_source.MemorySource`.

The steps, each a method:

* :meth:`Flow.receive` buffers a delivered message; :meth:`Flow.due` says
  when the buffer is a full batch or old enough (``worker.commit_batch``,
  ``worker.commit_interval_ms``).
* :meth:`Flow.flush` plans the buffered batch in memory
  (:func:`~scheduler.worker.batch.decide_batch`), dead-letters what can never
  be processed, and hands the plan to the
  :class:`~scheduler.worker.committer.Committer` thread; at most
  :data:`MAX_IN_FLIGHT` batches commit while the next is planned.
* :meth:`Flow.reap` / :meth:`Flow.drain` settle finished commits in order:
  committed (retries, dead letters of poisoned items, acks), fenced (stop
  leading), database down (requeue, stop leading until it answers).

Every step that can end the term returns a :class:`StopLeading` (else None):
the flow has then already let go of its fleet and commits, and the caller
closes the consuming channel, which hands every unacked message back to the
queue. Nothing calls back into the loop; nothing recurses.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from scheduler.config import Settings
from scheduler.fleet import FleetView
from scheduler.models import BadMessage, Heartbeat, MoveRequest, SchedulingRequest, TaskStatus, parse_message
from scheduler.safetext import first_line
from scheduler.store import Move, Release, Store
from scheduler.store.placed import placed_requests
from scheduler.strategies import Placer
from scheduler.webhooks.policy import callback_checker
from scheduler.worker.batch import Incoming, RetryLater, RetryPolicy, decide_batch
from scheduler.worker.committer import Committer, InFlight
from scheduler.worker.decision_log import log_committed
from scheduler.worker.hooks import WorkerHooks, call_hook
from scheduler.worker.leadership_term import DB_ERRORS, LeadershipTerms, Term
from scheduler.worker.pipeline import CommitPipeline, Committed, DatabaseDown, Fenced
from scheduler.worker.redelivery import RedeliveryCounter
from scheduler.worker.state import WorkerState

log = structlog.get_logger(__name__)

IN_FLIGHT_POLL = 0.002
"""Seconds between looks at a commit in flight (it cannot wake the broker poll)."""

PUMP_INTERVAL = 0.05
"""While waiting for a commit, how often the broker connection is serviced (AMQP heartbeats)."""

MAX_IN_FLIGHT = 1
"""Batches committing while the next is planned; one is enough to hide the database round trip."""


class MessageSource(Protocol):
    """What the flow needs of the broker during one leadership term."""

    def ack(self, tag: int, *, multiple: bool = False) -> None:
        """Acknowledge ``tag`` (and every earlier unsettled delivery when ``multiple``)."""

    def nack_requeue(self, tag: int) -> None:
        """Give one delivery back to the queue."""

    def requeue(self, batch: Sequence[Incoming]) -> None:
        """Give an uncommitted batch back to the queue (nothing if the channel is closed already)."""

    def dead_letter(self, msg: Incoming, reason: str, *, kind: str) -> None:
        """Publish ``msg`` to ``<queue>.dead``, confirmed before anything of its batch is acked."""

    def retry(self, retry: RetryLater) -> None:
        """Publish a waiting request to ``<queue>.retry``, confirmed before its batch is acked."""

    def service(self) -> None:
        """Let the connection breathe while a commit runs (its heartbeats must go out)."""


@dataclass(frozen=True)
class StopLeading:
    """The term must end now: close the consuming channel and become a standby."""

    why: str
    database_down: bool = False
    """Wait for the database (a jittered backoff) before taking leadership up again."""


class Flow:
    """Buffers, plans, commits and settles the request batches of one leadership term at a time."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        placer: Placer,
        state: WorkerState,
        terms: LeadershipTerms,
        *,
        hooks: WorkerHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.placer = placer
        self.state = state
        self.terms = terms
        self.hooks = hooks
        self.clock = clock
        self.retry = RetryPolicy(
            settings.retry.max_attempts, settings.retry.initial_backoff, settings.retry.max_backoff
        )
        self.callback_refusal = callback_checker(list(settings.webhooks.allow))
        self.rng = random.Random(settings.random_seed)
        self.redeliveries = RedeliveryCounter(broker_counts=settings.amqp.queue_type == "quorum")
        self.pipeline = CommitPipeline(store)
        self.committer = Committer(self.pipeline)
        self.interval = settings.worker.commit_interval_ms / 1000
        self.fleet: FleetView | None = None
        self.epoch = 0
        self.inventory_rev: int | None = None
        self.source: MessageSource | None = None
        self._buffer: list[Incoming] = []
        self._inflight: collections.deque[InFlight] = collections.deque()

    # ------------------------------------------------------------ the term
    @property
    def leading(self) -> bool:
        """A term is on: the fleet is loaded and messages may be settled."""
        return self.fleet is not None

    def begin(self, term: Term, source: MessageSource) -> None:
        """Start a term on the fleet loaded for it, settling messages through ``source``."""
        self.fleet, self.epoch, self.inventory_rev = term.fleet, term.epoch, term.inventory_rev
        self.source = source
        self._buffer = []

    def end(self) -> None:
        """Let the commits in flight finish, forget the buffer and the fleet (nothing is acked).

        The caller closes the consuming channel next, which hands every
        unacked message back to the queue.
        """
        for job in self._inflight:
            job.done.wait()
        self._inflight.clear()
        self.state.commit_started = None
        self._buffer = []
        self.fleet = None
        self.source = None

    def discard_buffer(self) -> None:
        """Forget buffered messages (their channel is closing: the queue gets them back)."""
        self._buffer = []

    def close(self) -> None:
        """Stop the committer thread (the process is exiting)."""
        self.committer.close()

    def _stop(self, why: str, *, database_down: bool = False) -> StopLeading:
        self.end()
        return StopLeading(why, database_down)

    # ----------------------------------------------------------- receiving
    def receive(self, msg: Incoming) -> None:
        """Buffer a delivered request (called for each delivery, on the worker's thread)."""
        self._buffer.append(msg)

    def heartbeat(self, body: bytes) -> None:
        """Mark a node alive from its heartbeat message (auto-acked; a bad one is ignored)."""
        fleet = self.fleet
        if fleet is None:
            return
        try:
            beat = Heartbeat.model_validate_json(body)
        except ValueError:
            log.warning("ignoring malformed heartbeat", size=len(body))
            return
        with self.state.fleet_lock:
            known = fleet.heartbeat(beat.node, self.clock())
        if not known:
            log.debug("heartbeat from unknown node", node=beat.node)

    def due(self) -> bool:
        """The buffer is a full batch, or its oldest message has waited ``commit_interval_ms``."""
        return bool(self._buffer) and (
            len(self._buffer) >= self.settings.worker.commit_batch
            or self.clock() - self._buffer[0].received >= self.interval
        )

    def wait_budget(self) -> float:
        """How long to wait for broker events before the loop must act again.

        Never zero unless a full batch is waiting: spinning would hold the
        GIL and starve the committer thread it is waiting for.
        """
        if len(self._buffer) >= self.settings.worker.commit_batch:
            return 0
        budget = self.interval
        if self._buffer:
            budget = max(0.0, self.interval - (self.clock() - self._buffer[0].received))
        if self._inflight:
            budget = min(budget, IN_FLIGHT_POLL)
        return budget

    # ------------------------------------------------------------ planning
    def flush(self) -> StopLeading | None:
        """Plan the buffered batch and hand it to the committer; it is settled in :meth:`_complete`.

        At most one batch is committing while the next one is planned: the
        database round trip overlaps deciding and consuming. A batch that
        released capacity is committed before the next batch is planned, so
        no decision ever relies on a release that might still fail.
        """
        fleet, source, batch = self.fleet, self.source, self._buffer
        if not batch or fleet is None or source is None:
            return None
        while self._inflight and self._inflight[-1].releases:
            stop = self._complete()
            if stop is not None:
                return stop
        if self.fleet is not fleet:
            return None  # reloaded while waiting: the buffer is planned on the new fleet next time
        self._buffer = []
        started = time.perf_counter()
        batch, worn = self.redeliveries.split_worn_out(batch, self.settings.worker.max_redeliveries)
        handed = batch + [m for m, _ in worn]
        to_move = self._move_subjects(batch)
        if isinstance(to_move, StopLeading):
            return self._stopping(to_move, handed)
        if to_move is None or self.fleet is not fleet:
            self._hand_back(source, handed)  # no answer from the database, or the fleet was reloaded
            return None
        with self.state.fleet_lock:  # the HTTP thread may be walking the fleet
            plan = decide_batch(
                batch,
                fleet,
                self.placer,
                now=self.clock(),
                retry=self.retry,
                callback_refusal=self.callback_refusal,
                rng=self.rng,
                to_move=to_move,
            )
        while len(self._inflight) >= MAX_IN_FLIGHT:
            stop = self._complete()
            if stop is not None:
                return self._stopping(stop, handed)  # the channel closes: the batch goes back with it
            if self.fleet is not fleet:
                self._hand_back(source, handed)  # planned on a fleet that no longer stands
                return None
        for msg, why in worn:
            self._dead_letter(source, msg, why, kind="redelivered")
        for dead in plan.dead:
            self._dead_letter(source, dead.message, dead.reason, kind="invalid")
        for refused in plan.refused:
            self._dead_letter(source, refused.message, refused.reason, kind="move_refused")
        for tid in plan.moves_done_before:
            log.info("move redelivered after it was applied; acked", task_id=tid)
        releases = any(isinstance(item, Release | Move) for item in plan.items)
        job = InFlight(plan, handed, self.epoch, started, releases=releases)
        self._inflight.append(job)
        self.state.commit_started = self.clock()
        self.committer.submit(job)
        return None

    def _dead_letter(self, source: MessageSource, msg: Incoming, reason: str, *, kind: str) -> None:
        source.dead_letter(msg, reason, kind=kind)
        if kind != "invalid":  # invalid ones are counted with their batch (BatchPlan.dead)
            self._hook("dead_lettered", kind)

    def _hand_back(self, source: MessageSource, messages: list[Incoming]) -> None:
        """Requeue ``messages`` for a reason that is not theirs (the database did not answer, the
        fleet was reloaded): their next redelivery is forgiven, so it does not wear them out."""
        self.redeliveries.forgive(messages)
        source.requeue(messages)

    def _stopping(self, stop: StopLeading, messages: list[Incoming]) -> StopLeading:
        """``stop``, with ``messages`` forgiven their redelivery when the database is down (the
        closing channel hands them back; the outage is not theirs)."""
        if stop.database_down:
            self.redeliveries.forgive(messages)
        return stop

    def _move_subjects(
        self, batch: list[Incoming]
    ) -> dict[str, SchedulingRequest | str] | StopLeading | None:
        """For the move messages of ``batch``: each task's stored request, or why it cannot move.

        Read from the database after every batch in flight is committed, so
        a move sees every placement and release decided before it, and every
        inventory change committed before it (cordon, capacity). None when
        the database could not answer (the batch is handed back).
        """
        ids = []
        for msg in batch:
            # ``\u`` too: a key written with JSON escapes (``"\u006dove"``) is a move all the same.
            if b'"move"' in msg.body or b"\\u" in msg.body:
                try:
                    parsed = parse_message(msg.body)
                except BadMessage:
                    continue
                if isinstance(parsed, MoveRequest):
                    ids.append(parsed.move)
        if not ids:
            return {}
        stop = self.drain()
        if stop is not None:
            return stop
        # The inventory too, not only the allocations: a move is judged on the nodes as committed
        # now. Left to the periodic check, ``nodes cordon N`` then ``move T N`` moved T onto the
        # cordoned N (and a node shrunk by ``nodes update`` could be overfilled) until the check ran.
        # A reload replaces the fleet: the caller then hands the batch back to be planned on it.
        stop = self.refresh_inventory()
        if stop is not None:
            return stop
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

    # ------------------------------------------------------------ settling
    def reap(self) -> StopLeading | None:
        """Settle every batch whose commit is done, in order, without waiting."""
        while self._inflight and self._inflight[0].done.is_set():
            stop = self._complete()
            if stop is not None:
                return stop
        return None

    def drain(self) -> StopLeading | None:
        """Settle every batch in flight, waiting (before the fleet is replaced or the channel closed)."""
        while self._inflight:
            stop = self._complete()
            if stop is not None:
                return stop
        return None

    def _await(self, job: InFlight, source: MessageSource) -> None:
        """Wait for a commit, servicing the broker connection meanwhile so its heartbeats go out."""
        while not job.done.wait(PUMP_INTERVAL):
            source.service()

    def _complete(self) -> StopLeading | None:
        """Wait for the oldest batch's commit and act on its outcome, once.

        Committed: publish retries and dead letters, then ack. Fenced: stop
        leading. Database down: requeue the batch and stop leading until the
        database answers (a failed COMMIT may have landed, so the fleet is
        reloaded with the next term).
        """
        job = self._inflight[0]
        fleet, source = self.fleet, self.source
        if fleet is None or source is None:
            raise RuntimeError("a commit in flight outside a leadership term")
        self._await(job, source)
        self._inflight.popleft()
        if not self._inflight:
            self.state.commit_started = None
        plan, batch, outcome = job.plan, job.batch, job.outcome
        if isinstance(outcome, Fenced):
            with self.state.fleet_lock:
                plan.undo(fleet)
            log.error("commit refused by the fence: another replica leads", error=str(outcome.error))
            return self._stop("fenced out")
        if not isinstance(outcome, Committed):
            error = outcome.error if isinstance(outcome, DatabaseDown) else "no outcome"
            with self.state.fleet_lock:
                plan.undo(fleet)
            # The database failed, not these messages (nor those buffered behind them, which the
            # channel's closing hands back): their redeliveries must not wear them out. Unless the
            # failure may be the batch's own doing (suspect): then its redeliveries count.
            suspect = isinstance(outcome, DatabaseDown) and outcome.suspect
            self.redeliveries.forgive([*([] if suspect else batch), *self._buffer])
            source.requeue(batch)
            self.state.group_retries += 1
            self.state.last_retry_error = error
            self._hook("group_retried")
            log.error("database error; group requeued", error=error, messages=len(batch))
            return self._stop(f"database unavailable: {error}", database_down=True)
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
        if stale_moves:
            # Dead-lettered with the reason, like a move refused before the commit: acked with a log
            # line only, the move vanished for whoever published it (no event, no dead letter).
            stale = set(stale_moves)
            for item, msg in zip(plan.items, plan.sources, strict=True):
                if isinstance(item, Move) and item.task_id in stale:
                    log.warning(
                        "move ignored: the task is not scheduled on its source any more", task_id=item.task_id
                    )
                    why = (
                        f"move refused: task {item.task_id} is not scheduled on {item.source} any more"
                        " (changed in the database before the move committed)"
                    )
                    self._dead_letter(source, msg, why, kind="move_refused")
        duplicates = set(result.duplicates) | set(result.conflicts) | poisoned_ids
        for poison in outcome.poisoned:
            item = plan.items[poison.index]
            if poison.stored_as_failure:
                log.warning(
                    "message could not be stored; task failed", task_id=item.task_id, error=poison.error
                )
            else:
                self._dead_letter(
                    source,
                    plan.sources[poison.index],
                    f"could not be stored: {poison.error}",
                    kind="unstorable",
                )
        if outcome.poisoned:
            self._hook("poisoned", len(outcome.poisoned))
        for retry in plan.retries:
            if retry.request.task_id not in duplicates:
                source.retry(retry)
        deferred = {msg.delivery_tag for msg in plan.deferred}
        self.redeliveries.forgive(plan.deferred)  # handed back for the next batch: not their fault
        for tag in sorted(deferred):
            source.nack_requeue(tag)
        ack_tag = max((m.delivery_tag for m in batch if m.delivery_tag not in deferred), default=None)
        if ack_tag is not None:
            source.ack(ack_tag, multiple=True)
        seconds = time.perf_counter() - job.started
        self.state.committed += len(plan.items)
        self.state.groups += 1
        self.state.last_commit_at = time.time()
        log_committed(plan, result, self._hook, seconds)
        if self.hooks is not None:
            self.hooks.group_committed(plan, result, seconds)
        if outcome.poisoned:
            # The fleet held reservations and releases of items that did not commit as planned.
            return self._reload_fleet("a message could not be stored")
        return None

    # ------------------------------------------------------ the fleet itself
    def _reload_fleet(self, why: str) -> StopLeading | None:
        """Rebuild the fleet from the database; when it cannot answer, stop leading until it does."""
        try:
            fleet = self.terms.load_fleet()
        except DB_ERRORS as exc:
            log.error("database unavailable; standing down until it returns", error=first_line(exc))
            return self._stop("database unavailable")
        self.fleet = fleet
        self.state.fleet = fleet
        log.info("fleet reloaded", reason=why, nodes=fleet.size)
        return None

    def refresh_inventory(self) -> StopLeading | None:
        """Pick up node changes made through the CLI or API (the inventory revision moved).

        The fleet object is replaced, so every batch in flight is settled
        first: none may keep undo steps on the old one. The revision is
        read before that: when it has not moved (nearly always), the batches
        in flight are not waited for, so the periodic check does not stall
        the pipeline (a wait here was a step in the latency's tail). A
        change made after the read is seen at the next check, as before.
        """
        if self.fleet is None:
            return None
        try:
            rev = self.store.inventory_revision()
        except DB_ERRORS as exc:
            log.warning("inventory check failed", error=first_line(exc))
            return None
        if rev == self.inventory_rev:
            return None
        stop = self.drain()
        if stop is not None or self.fleet is None:
            return stop
        try:
            rev = self.store.inventory_revision()
            nodes = self.store.list_nodes()
        except DB_ERRORS as exc:
            log.warning("inventory check failed", error=first_line(exc))
            return None
        self.fleet = self.fleet.with_inventory(nodes)
        self.state.fleet = self.fleet
        self.inventory_rev = rev
        log.info("inventory reloaded", revision=rev, nodes=self.fleet.size)
        return None

    def _hook(self, name: str, *args: Any) -> None:
        call_hook(self.hooks, name, *args)


__all__ = ["IN_FLIGHT_POLL", "MAX_IN_FLIGHT", "PUMP_INTERVAL", "Flow", "MessageSource", "StopLeading"]
