"""The webhook dispatcher: outbox events -> signed HTTP deliveries, on the leader, off the hot path.

The worker records each terminal status change and its webhook event in one
transaction (the outbox, docs/contracts.md invariant 5); this class turns events into
requests. Why it is built the way it is:

* **Own threads.** One dispatcher thread does the bookkeeping (SQL), a pool
  of ``webhooks.concurrency`` threads does the HTTP. The worker's thread
  never waits on a receiver, so a slow or dead receiver cannot slow
  scheduling; the only shared resource is the database, and every
  dispatcher transaction is a few short statements.
* **One deadline per attempt.** Resolving, connecting, sending and reading
  together end within ``webhooks.timeout`` (:func:`~scheduler.webhooks.
  transport.deadline`): a receiver trickling its answer cannot hold a sender
  (:mod:`scheduler.webhooks.attempt`, which also classifies the outcome).
* **Fair between destinations.** At most ``webhooks.per_destination``
  attempts run at once to one ``scheme://host:port``, and a freed sender
  goes to the destinations in turn (:mod:`scheduler.webhooks.destinations`), so one
  slow or hanging receiver holds at most that many senders and the others
  keep flowing. Name lookups run on a pool of their own for the configured
  URLs and another for callbacks, so callback names that never resolve
  cannot hold up the operator's URLs. Claims are sized per destination too (about half a second
  of work at its own pace): a slow destination's backlog stays in the
  database (the claim query skips it) instead of filling the claim slots.
* **Strict JSON only.** The stored payload is parsed strictly before every
  attempt (no ``NaN``/``Infinity``, no lone surrogate); one that is not
  strict JSON is never sent: its delivery is dead with the reason.
* **State in the database, not in memory.** Each cycle (a) expands new
  outbox events into one delivery row per target and marks them dispatched,
  (b) claims due deliveries by writing a lease into ``next_attempt_at``, and
  (c) records the outcome of finished attempts, all in one transaction.
  A new leader, or the same one after a restart, continues from the rows:
  a delivery whose sender died becomes due again when its lease runs out.
  Delivery is therefore at least once; receivers de-duplicate on
  ``webhook-id`` (the event id).
* **Order per task and URL.** A task's later event (``task.released``) is
  not sent to a URL while an earlier one (``task.scheduled``) is still
  pending there; it is deferred until that one is delivered or dead. Other
  tasks and other URLs are not held up by a failing one.
* **Only on the leader.** Nothing is expanded or claimed unless
  ``is_leader()`` says so, and each attempt checks again just before it is
  sent; a claim taken by a replica that lost the lease is handed back.
* **Callbacks are untrusted.** A request's ``callback_url`` is re-checked
  against ``webhooks.allow`` and the metadata/link-local rules before every
  attempt, and connected through the address guard of
  :mod:`scheduler.webhooks.transport`; a refusal makes the delivery dead
  with the reason, and no request is sent.

* **Placements first.** Given the worker's activity (a counter that moves
  with every committed group), the dispatcher yields while placements are
  flowing: its threads (bookkeeping and senders together) spend at most
  ``busy_share`` of one core (5%) of CPU time, measured with
  ``time.thread_time``, claiming only what that budget pays for and
  skipping its cycles while the budget is spent. A burst of placements
  therefore runs at its own pace and the deliveries follow at full speed
  once it ends; a burst longer than ``max_yield`` seconds (10) shares the
  machine again, so a sustained load never starves deliveries for long.
  Why pace instead of a process of its own: on a machine whose cores the
  broker, the database and the worker already fill, another process takes
  the same CPU; only not spending it during the burst helps. Nothing is
  held in memory meanwhile: the events wait in the outbox as before
  (:mod:`scheduler.webhooks.pacing`).

Cost, since the dispatcher shares the worker's interpreter: new events are
expanded by ``INSERT ... SELECT`` inside the database (no Python work per
event unless it names a callback); the dispatcher claims about half a
second of work ahead of its senders and wakes when they run low, so a cycle
writes and claims hundreds of deliveries at a time to a fast receiver
instead of one statement per delivery; keep-alive connections make each
attempt one round trip. Waiting on a slow receiver costs no CPU at all.

This module keeps the loop that ties the parts together: expand, plan
(order per task and URL), claim, hand to the senders, record the outcomes.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

import httpx
import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from scheduler.config import WebhooksConfig
from scheduler.safetext import first_line
from scheduler.store.deliveries import (
    PENDING,
    DeliveryStore,
    Due,
    NewDelivery,
    OutboxBatch,
    OutboxEvent,
    PendingRef,
    Result,
)
from scheduler.store.engine import DatabaseUnavailable
from scheduler.webhooks.attempt import Attempt, Classifier, post
from scheduler.webhooks.destinations import Destinations
from scheduler.webhooks.pacing import BUSY_SHARE, MAX_YIELD, Pacer
from scheduler.webhooks.policy import (
    callback_refusal,
    display_url,
    exact_hosts,
    parse_patterns,
    scrub,
    scrub_text,
)
from scheduler.webhooks.signing import signing_keys, unsigned_refusal
from scheduler.webhooks.transport import make_client

log = structlog.get_logger(__name__)

DB_ERRORS = (SQLAlchemyError, DatabaseUnavailable)


class HasEngine(Protocol):
    """Anything holding an engine, such as :class:`scheduler.store.Store`."""

    @property
    def engine(self) -> Engine: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class DispatcherStats:
    """Counters since start, for metrics and tests (a snapshot: :meth:`WebhookDispatcher.stats`)."""

    cycles: int = 0
    events_expanded: int = 0
    deliveries_created: int = 0
    attempts: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    refused: int = 0
    invalid: int = 0
    handed_back: int = 0
    in_flight: int = 0
    db_errors: int = 0
    yielded: int = 0
    """Cycles skipped because placements were flowing and the dispatcher's CPU budget was spent."""
    leader: bool = False


@dataclass
class _Plan:
    claim: list[Due] = field(default_factory=list)
    defer: dict[int, datetime] = field(default_factory=dict)


class WebhookDispatcher:
    """Delivers outbox events to ``webhooks.urls`` and allowed callback URLs; see the module docstring.

    Build it with the store (or its engine), the webhooks configuration and
    the elector's ``is_leader``; :meth:`start` it next to the worker and
    :meth:`stop` it at shutdown. ``clock`` (aware UTC datetimes) and ``rng``
    (backoff jitter) are injectable for tests. ``claim_lease`` is how long a
    claimed delivery stays invisible to other dispatchers (default: six
    timeouts plus five seconds, longer than an attempt and its wait in the
    senders' queue).
    """

    def __init__(
        self,
        db: Engine | HasEngine,
        config: WebhooksConfig,
        is_leader: Callable[[], bool],
        *,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        poll_interval: float = 0.5,
        batch_size: int = 500,
        claim_lease: float | None = None,
        name: str = "webhook-dispatcher",
        activity: Callable[[], int] | None = None,
        busy_share: float = BUSY_SHARE,
        max_yield: float = MAX_YIELD,
    ) -> None:
        engine = db if isinstance(db, Engine) else db.engine
        refusal = unsigned_refusal(config)
        if refusal is not None:
            raise ValueError(refusal)
        self.config = config
        self._keys = signing_keys(config)
        self._patterns = parse_patterns(list(config.allow))
        self._destinations = Destinations(config.concurrency, min(config.per_destination, config.concurrency))
        self.store = DeliveryStore(engine)
        self._is_leader = is_leader
        self._clock = clock
        self._classifier = Classifier(config, rng or random.Random(), self._count)
        self._poll = poll_interval
        self._batch = batch_size
        # A claimed delivery waits in the senders' queue about QUEUE_SECONDS, then takes at most
        # one timeout (the attempt's deadline): the lease outlasts both by far.
        self._lease = timedelta(seconds=claim_lease if claim_lease is not None else 6 * config.timeout + 5)
        self._name = name
        self._urls = list(dict.fromkeys(str(u) for u in config.urls))
        self._configured = frozenset(self._urls)
        self._stats = DispatcherStats()
        self._stats_lock = threading.Lock()
        self._wake = threading.Event()
        self._events_hint = threading.Event()
        self._next_events_check = 0.0
        self._quiet: tuple[list[str], float] | None = None  # (skipped prefixes, until): see _nothing_new_due
        self._stopping = threading.Event()
        self._outcomes: queue.SimpleQueue[tuple[Due, Attempt]] = queue.SimpleQueue()
        self._unrecorded: list[Result] = []
        self._in_flight: dict[int, Due] = {}
        self._successors: dict[tuple[str, str], set[int]] = {}
        self._thread: threading.Thread | None = None
        self._senders: ThreadPoolExecutor | None = None
        self._clients: dict[bool, httpx.Client] = {}
        self._resolvers: dict[str, ThreadPoolExecutor] = {}
        self._pacer = Pacer(activity, busy_share, max_yield) if activity is not None else None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the dispatcher thread and its senders; returns at once."""
        if self._thread is not None:
            raise RuntimeError("webhook dispatcher already started")
        cfg = self.config
        self._stopping.clear()
        # One resolver pool per kind: a callback host whose name server never answers (a name a
        # submitter chose) holds callback lookups only, never those of the operator's own URLs.
        self._resolvers = {
            kind: ThreadPoolExecutor(4, thread_name_prefix=f"{self._name}-dns-{kind}")
            for kind in ("urls", "callbacks")
        }
        internal_ok = exact_hosts(self._patterns)
        self._clients = {
            False: make_client(timeout=cfg.timeout, concurrency=cfg.concurrency, guarded=False,
                               resolver=self._resolvers["urls"]),
            True: make_client(timeout=cfg.timeout, concurrency=cfg.concurrency, guarded=True,
                              internal_ok=internal_ok, resolver=self._resolvers["callbacks"]),
        }  # fmt: skip
        self._senders = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix=f"{self._name}-send")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        log.info(
            "webhook dispatcher started",
            urls=[display_url(u) for u in self._urls],
            callback_patterns=len(cfg.allow),
            concurrency=cfg.concurrency,
            per_destination=self._destinations.per_destination,
            max_attempts=cfg.max_attempts,
            timeout=cfg.timeout,
            signing_secrets=len(self._keys),
        )
        if not self._keys and (self._urls or cfg.allow):
            log.warning(
                "webhooks.allow_unsigned is true and no secret is set: deliveries are sent WITHOUT "
                "webhook-signature, and receivers cannot tell them from forgeries"
            )

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming, let attempts in flight finish and record them, close the clients (idempotent).

        Waits at most ``timeout`` seconds (default: one attempt's deadline
        plus a margin). Anything not recorded by then is not lost: its lease
        runs out and the next leader sends it again.
        """
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        thread.join(timeout if timeout is not None else self.config.timeout + 5)
        if thread.is_alive():
            log.warning(
                "webhook dispatcher did not stop in time; unrecorded attempts will be retried",
                in_flight=len(self._in_flight),
            )
        self._thread = None

    def wake(self) -> None:
        """Tell the dispatcher new outbox events were committed, so it need not wait for its next poll."""
        self._events_hint.set()
        self._wake.set()

    def stats(self) -> DispatcherStats:
        """A copy of the counters."""
        with self._stats_lock:
            return replace(self._stats, in_flight=len(self._in_flight))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        failures = 0
        pacer = self._pacer
        while not self._stopping.is_set():
            started = time.thread_time()
            try:
                hold = pacer.hold_back() if pacer is not None else 0.0
                if hold > 0:
                    # Placements are flowing and this second's budget is spent: do nothing now.
                    self._count(yielded=1)
                    self._wake.wait(hold)
                    self._wake.clear()
                    continue
                wait = self._cycle()
                failures = 0
            except DB_ERRORS as exc:
                failures += 1
                wait = min(0.25 * 2**failures, 10.0)
                self._count(db_errors=1)
                log.error(
                    "webhook dispatcher: database error; will retry",
                    error=scrub_text(first_line(exc)),
                    retry_in=wait,
                    unrecorded=len(self._unrecorded),
                )
            except Exception as exc:
                wait = 1.0
                # No traceback: frames and messages may hold receivers' URLs with their credentials.
                error = scrub_text(f"{type(exc).__name__}: {first_line(exc)}")
                log.error("webhook dispatcher: unexpected error; continuing", error=error)
            finally:
                if pacer is not None:
                    pacer.spent(time.thread_time() - started)
            if wait > 0:
                self._wake.wait(wait)
            self._wake.clear()
        self._drain()

    def _cycle(self) -> float:
        """One round of bookkeeping; returns how long to sleep (0: there is more to do now)."""
        now = self._now()
        for handed_back in self._destinations.trim():  # beyond their destination's cap: due again at once
            self._outcomes.put((handed_back, Attempt(sent=False)))
        self._collect(now)
        leader = self._is_leader()
        with self._stats_lock:
            self._stats.cycles += 1
            self._stats.leader = leader
        free = self._destinations.capacity() - len(self._in_flight)
        if self._pacer is not None:
            free = min(free, self._pacer.claims())
        batch: OutboxBatch | None = None
        plan = _Plan()
        check_events = self._events_hint.is_set() or time.monotonic() >= self._next_events_check
        if leader and (check_events or free > 0):
            with self.store.read() as conn:
                if check_events:
                    self._events_hint.clear()
                    self._next_events_check = time.monotonic() + self._poll
                    batch = self.store.undispatched(conn, self._batch)
                skip = self._destinations.saturated(self._in_flight.values())
                if free > 0 and not self._nothing_new_due(skip, batch):
                    due = self.store.due(
                        conn, now, 2 * free + 8, exclude=list(self._in_flight), skip_prefixes=skip,
                    )  # fmt: skip
                    # Only saturated destinations have due work: do not scan for it again at once.
                    self._quiet = (skip, time.monotonic() + self._poll) if skip and not due else None
                    if due:
                        pending = self.store.pending_of_tasks(conn, [d.task_id for d in due])
                        plan = self._plan(due, pending, now, free)
        if not leader:
            self._successors.clear()  # whoever leads now will find them due by their deferred time
        results = list(self._unrecorded)
        wake = self._successors_of(results, now)
        callbacks = self._callbacks(batch.callbacks) if batch else []
        claimed: set[int] = set()
        created = 0
        if results or batch or plan.claim or plan.defer or wake:
            with self.store.write() as conn:
                self.store.record(conn, results)
                self.store.defer(conn, wake)
                if batch is not None:
                    created = self.store.expand(conn, batch.last_seq, self._urls, callbacks, now)
                claimed = self.store.claim(conn, [d.id for d in plan.claim], now, now + self._lease)
                self.store.defer(conn, plan.defer)
            self._unrecorded.clear()
            for result in results:
                job = self._in_flight.pop(result.id, None)
                if job is not None:
                    self._successors.pop(job.key, None)
            if batch is not None:
                self._count(events_expanded=batch.count, deliveries_created=created)
        for due_one in plan.claim:
            if due_one.id in claimed:
                self._submit(due_one)
        if batch is not None and batch.count == self._batch:
            self._events_hint.set()  # more events are waiting to be expanded
            return 0.0
        free = self._destinations.capacity() - len(self._in_flight)
        if free > 0 and (batch or claimed or results or wake or plan.defer):
            return 0.0  # more may be due already
        if not leader or free <= 0:
            return self._poll  # senders running low, or leadership, wake us sooner
        with self.store.read() as conn:
            next_due = self.store.next_due(conn)
        if next_due is None:
            return self._poll
        return min(self._poll, max(0.01, (next_due - self._now()).total_seconds()))

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def _nothing_new_due(self, skip: list[str], batch: OutboxBatch | None) -> bool:
        """True when the last claim query found nothing outside the saturated destinations and
        nothing since can have changed that (no slot freed, no new target): skip the query.

        Why: with a slow receiver's backlog of thousands of due rows, the query
        walks all of them to find none it may take; during a burst of commits
        the dispatcher wakes for every group, and re-walking them each time
        took CPU from scheduling. A freed slot, a new kind of target or half a
        second ends the quiet.
        """
        quiet = self._quiet
        # A finished attempt frees its slot only once its outcome is written (it leaves _in_flight
        # then): until that, ``skip`` is unchanged and the query would find nothing new.
        if quiet is None or quiet[0] != skip or time.monotonic() >= quiet[1]:
            return False
        if batch is None:
            return True
        return not batch.callbacks and all(self._destinations.origin(u)[1] in skip for u in self._urls)

    # ------------------------------------------------------------------ planning
    def _callbacks(self, events: list[OutboxEvent]) -> list[NewDelivery]:
        """The callback deliveries of these events: created dead, with the reason, when refused."""
        rows: list[NewDelivery] = []
        for event in events:
            callback = event.callback_url
            if not callback or callback in self._configured:
                continue
            refusal = callback_refusal(callback, list(self.config.allow))
            if refusal is not None:
                self._count(refused=1)
                log.warning(
                    "webhook callback refused",
                    task_id=event.task_id,
                    event_id=event.event_id,
                    url=display_url(callback),
                    reason=refusal,
                )
            rows.append(NewDelivery(event.event_id, event.task_id, callback, refusal))
        return rows

    def _plan(self, due: list[Due], pending: list[PendingRef], now: datetime, free: int) -> _Plan:
        """Which due deliveries to send now, and which to defer behind an earlier event of their task.

        For each (task, URL) only the pending delivery of the earliest event
        may go. Outcomes gathered this cycle but not yet written count as
        written (a delivered blocker no longer blocks).
        """
        written = {r.id: r for r in self._unrecorded}
        head: dict[tuple[str, str], PendingRef] = {}
        for ref in pending:
            result = written.get(ref.id)
            if result is not None:
                if result.status != PENDING:
                    continue
                ref = replace(ref, next_attempt_at=result.next_attempt_at)
            key = (ref.task_id, ref.url)
            current = head.get(key)
            if current is None or ref.seq < current.seq:
                head[key] = ref
        plan = _Plan()
        busy = self._destinations.load(self._in_flight.values())
        for candidate in due:
            origin = self._destinations.origin(candidate.url)
            if busy.get(origin[0], 0) >= self._destinations.claim_cap(origin[0]):
                # Its destination is at its limit (a spelling of the URL the claim query did not
                # skip): not now, and out of the way of other destinations' deliveries.
                plan.defer[candidate.id] = now + timedelta(seconds=self._poll)
                continue
            first = head.get(candidate.key)
            if first is not None and first.id != candidate.id:
                # Not before the earlier event: wait for it (woken early when its outcome is written here).
                soon = now + timedelta(seconds=self._poll)
                plan.defer[candidate.id] = first.next_attempt_at if first.next_attempt_at > now else soon
                self._successors.setdefault(candidate.key, set()).add(candidate.id)
                continue
            if len(plan.claim) >= free:
                break
            plan.claim.append(candidate)
            busy[origin[0]] = busy.get(origin[0], 0) + 1
        return plan

    # ------------------------------------------------------------------ order per task and URL
    def _successors_of(self, results: list[Result], now: datetime) -> dict[int, datetime]:
        """Deliveries deferred behind ones whose outcome is being written: due now."""
        wake: dict[int, datetime] = {}
        for result in results:
            job = self._in_flight.get(result.id)
            if job is None:
                continue
            for waiting in self._successors.get(job.key, ()):
                wake[waiting] = now
        return wake

    # ------------------------------------------------------------------ sending
    def _submit(self, due: Due) -> None:
        """Queue a claimed delivery behind its destination; start it when a sender and its slot are free."""
        self._in_flight[due.id] = due
        origin = self._destinations.origin(due.url)[0]
        self._destinations.queue(due, origin)
        self._pump()

    def _pump(self) -> None:
        """Start the attempts whose turn it is (:meth:`Destinations.turns`) on free senders."""
        senders = self._senders
        if senders is None:
            return
        start = self._destinations.turns()
        for due, origin in start:
            try:
                senders.submit(self._send, due, origin)
            except RuntimeError:  # shut down under us at stop: hand it back, unsent
                self._done(due, origin, Attempt(sent=False))

    def _send(self, due: Due, origin: str) -> None:
        """One attempt, on a sender thread; the outcome goes back to the dispatcher thread by queue."""
        started = time.thread_time()
        try:
            self._send_one(due, origin)
        finally:
            if self._pacer is not None:
                self._pacer.spent(time.thread_time() - started, attempts=1)

    def _send_one(self, due: Due, origin: str) -> None:
        self._destinations.started(due, origin)
        try:
            attempt = self._attempt(due)
        except Exception as exc:  # a bug must not leave the delivery claimed until its lease runs out
            # No traceback: its frames and messages may hold the URL's credentials; this line does not.
            error = scrub(f"internal error: {type(exc).__name__}: {exc}", due.url)
            log.error("webhook attempt crashed", delivery_id=due.id, event_id=due.event_id, error=error)
            attempt = Attempt(error=error)
        self._done(due, origin, attempt)
        self._pump()

    def _done(self, due: Due, origin: str, attempt: Attempt) -> None:
        """Hand the outcome over; wake the bookkeeping when senders run dry or a batch of outcomes is ready.

        Not after every single request: at hundreds of deliveries a second,
        a cycle per outcome would spend the time on SQL round trips; waking
        when half the claimed work is done keeps the senders busy and writes
        the outcomes ``concurrency`` at a time.
        """
        self._outcomes.put((due, attempt))
        unfinished = self._destinations.finished(due, origin)
        senders = self.config.concurrency
        finished = self._outcomes.qsize()
        # Half of what is claimed, not half the capacity: claims are capped per destination, and
        # waiting for more outcomes than there are claims would let the senders run dry.
        if unfinished <= senders or finished >= max(senders, (unfinished + finished) // 2):
            self._wake.set()

    def _attempt(self, due: Due) -> Attempt:
        if self._stopping.is_set() or not self._is_leader():
            return Attempt(sent=False)
        callback = due.url not in self._configured
        if callback:
            refusal = callback_refusal(due.url, self._patterns)
            if refusal is not None:
                return Attempt(sent=False, refusal=refusal)
        return post(due, self._clients[callback], self._keys, self.config.timeout, self._now)

    # ------------------------------------------------------------------ outcomes
    def _collect(self, now: datetime) -> None:
        """Turn finished attempts into row updates (written by the next transaction)."""
        while True:
            try:
                due, attempt = self._outcomes.get_nowait()
            except queue.Empty:
                return
            try:
                if attempt.sent:
                    self._destinations.observe(due.url, attempt.seconds)
                result = self._classifier.result_of(due, attempt, now)
            except Exception as exc:  # never lose track of a claimed delivery: retry it later
                error = scrub(f"internal error: {type(exc).__name__}: {first_line(exc)}", due.url)
                log.error("webhook outcome could not be processed", delivery_id=due.id, error=error)
                retry_at = now + timedelta(seconds=self.config.initial_backoff)
                result = Result(due.id, PENDING, attempt.sent, retry_at, error=error)
            self._unrecorded.append(result)

    def _drain(self) -> None:
        """At stop: wait for attempts in flight (bounded), write every outcome, release the clients."""
        # Queued attempts hand themselves back at once when stopping; running ones end within a timeout.
        until = time.monotonic() + self.config.timeout + 1
        while self._in_flight and time.monotonic() < until:
            self._collect(self._now())
            if len(self._unrecorded) >= len(self._in_flight):
                break
            self._wake.wait(0.05)
            self._wake.clear()
        self._collect(self._now())
        if self._unrecorded:
            try:
                with self.store.write() as conn:
                    self.store.record(conn, self._unrecorded)
                self._unrecorded.clear()
            except DB_ERRORS as exc:
                log.error(
                    "webhook dispatcher: could not record the last outcomes; they will be retried",
                    error=first_line(exc),
                    unrecorded=len(self._unrecorded),
                )
        if self._senders is not None:
            self._senders.shutdown(wait=False, cancel_futures=True)
        for client in self._clients.values():
            client.close()
        for resolver in self._resolvers.values():
            resolver.shutdown(wait=False, cancel_futures=True)
        log.info("webhook dispatcher stopped", **{k: v for k, v in vars(self.stats()).items() if v})

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)


__all__ = ["DispatcherStats", "WebhookDispatcher"]
