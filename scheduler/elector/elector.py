"""The leader election loop: client-go's ``tools/leaderelection``, in a background thread.

Why a thread: the worker's main thread owns its pika connection, which is not
thread-safe, so the elector never touches the worker's I/O. It only flips its
own state and invokes the callbacks, which must therefore be quick (set an
event, schedule work on the owner's loop); a slow callback delays renewals.

The algorithm is ``tryAcquireOrRenew`` from client-go, with these properties:

* Expiry is judged on the local monotonic clock only: a candidate records
  *when it first saw* the current record (``observed time``) and treats the
  lease as valid until ``observed time + leaseDurationSeconds``. The holder's
  timestamps in the record are never compared with our clock, so wall-clock
  skew between nodes cannot cause two leaders.
* ``leader_transitions`` increments on every change of holder (and on every new
  term of the same identity, see below); it is the fencing epoch that the
  worker writes to the fence and stamps on its commits.
* The leader renews every ``retry_period`` and considers itself leader only
  until ``start of its last successful renewal + renew_deadline``;
  :meth:`Elector.is_leader` computes that from the monotonic clock, so it turns
  False on time even when this thread is stuck in a hung request. Because
  ``renew_deadline < lease_duration`` and standbys start counting no earlier
  than the renewal landed, the old leader has stopped before anyone may take
  over; the gap (``lease_duration - renew_deadline``) absorbs clock-rate
  differences and request latency.
* Every request carries a timeout no later than the renew deadline.
* On a graceful stop the leader first steps down (``is_leader()`` False,
  ``on_stopped_leading``), then releases the lease (holder ``""``, duration 1 s,
  as client-go's ``ReleaseOnCancel``) so a standby takes over within one retry
  period instead of waiting for expiry.

Where this differs from client-go, and why:

* A term, once lost (renew deadline passed, or the lease shows another holder
  or another epoch), is over: the elector calls ``on_stopped_leading``, becomes
  a candidate again, and a later win is a new term with ``epoch + 1`` even if
  the lease still names this identity. The worker has dropped its state by
  then, and the new epoch fences off any commit still in flight from the old
  term. (client-go exits the process instead.)
* A leader that sees another holder steps down at once instead of waiting for
  its renew deadline.
* The renew deadline counts from the start of the last successful renewal,
  not from the start of the renewal round, so the bound holds for any timings
  that pass validation.
* A standby watching a valid lease polls at most every ``retry_period``
  (jittered downwards) and wakes exactly when the lease expires on its clock,
  so a dead leader is replaced within ``lease_duration + retry_period`` of its
  last renewal. Retries after contention or errors use client-go's jitter
  (``retry_period * (1 + 1.2 * rand)``).
* If the lease is deleted, it is recreated with the last observed epoch + 1
  (client-go restarts at 0), so epochs never go backwards for a replica that
  saw the old lease; and a standby that saw another holder's lease does not
  recreate it before that lease has expired on its clock (client-go creates
  at once, so for up to one retry period two replicas believe they lead). A
  replica that never saw the old lease (started after the deletion) cannot
  know; there the fencing epoch is what protects the data.
* :meth:`Elector.set_eligible` lets the owner stand aside while it cannot do
  the work (the worker: no broker connection): ``is_leader()`` is False at
  once, the term ends and the lease is released, and no attempt to acquire is
  made until eligible again. client-go has no such switch (its callers exit).
* With an ``epoch_floor`` (the worker passes the fence's epoch), every new
  term, created or taken over, starts above the floor: a lease counter lowered
  by hand would otherwise give a term the fence refuses from start to end
  while its leader keeps the lease. A floor that cannot be read fails the attempt.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from scheduler.elector.record import (
    LeaderElectionRecord,
    Lock,
    LockConflict,
    LockError,
    NewLeader,
    StartedLeading,
    StoppedLeading,
)

JITTER_FACTOR = 1.2
"""client-go's ``JitterFactor``: retries wait ``retry_period * (1 + rand * 1.2)``."""

WATCH_JITTER = 0.2
"""Standbys watching a valid lease poll every ``retry_period * (1 - rand * 0.2)``."""

log = structlog.get_logger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _Observation:
    """A record, its version, and when (local monotonic clock) this replica first saw it."""

    record: LeaderElectionRecord
    version: str
    at: float

    def expires_at(self) -> float:
        return self.at + self.record.lease_duration_seconds


class Elector:
    """Campaign for one lock and keep it; see the module docstring for the algorithm.

    Build it with :func:`scheduler.elector.factory.build_elector` from
    settings, or directly with any :class:`~scheduler.elector.record.Lock`
    (``owns_lock=True`` closes the lock when the elector stops). Callbacks run
    on the elector's thread and must return quickly.
    """

    def __init__(
        self,
        lock: Lock,
        identity: str,
        *,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
        on_started_leading: StartedLeading | None = None,
        on_stopped_leading: StoppedLeading | None = None,
        on_new_leader: NewLeader | None = None,
        release_on_stop: bool = True,
        owns_lock: bool = False,
        request_timeout: float | None = None,
        epoch_floor: Callable[[], int] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utcnow,
        rng: random.Random | None = None,
    ) -> None:
        if not identity:
            raise ValueError("identity must not be empty")
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "need 0 < retry_period < renew_deadline < lease_duration, got "
                f"{retry_period} / {renew_deadline} / {lease_duration}"
            )
        self.backend = lock.backend
        self._lock = lock
        self._identity = identity
        self._lease_duration = float(lease_duration)
        self._renew_deadline = float(renew_deadline)
        self._retry_period = float(retry_period)
        # Half the deadline leaves room for a second attempt when one request hangs.
        self._request_timeout = float(request_timeout) if request_timeout else self._renew_deadline / 2
        self._on_started_leading = on_started_leading
        self._on_stopped_leading = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._epoch_floor = epoch_floor
        # Counters for metrics (read without a lock: monotonic ints written by one thread).
        self.renewals = 0
        self.renewal_failures = 0
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()

        self._state = threading.Lock()
        self._stop_event = threading.Event()
        self._leading_event = threading.Event()
        self._eligible = threading.Event()
        self._eligible.set()
        self._ineligible_why = ""
        self._liveness: Callable[[], str | None] | None = None
        self._thread: threading.Thread | None = None
        self._release_on_stop = release_on_stop
        self._owns_lock = owns_lock
        # Guarded by _state: read by is_leader() from any thread.
        self._leading = False
        self._renewed_at = 0.0
        self._epoch: int | None = None
        # Only touched by the elector thread (reads elsewhere see an immutable snapshot).
        self._observed: _Observation | None = None
        self._reported_leader: str | None = None
        self._superseded: str | None = None  # why the current term ended early, if it did

    # -- public API ---------------------------------------------------------

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def epoch(self) -> int | None:
        """The fencing epoch of the current or most recent term (``leaseTransitions``)."""
        with self._state:
            return self._epoch

    @property
    def leader(self) -> str | None:
        """The holder in the last record this replica saw; None if none yet or released."""
        observed = self._observed
        return observed.record.holder_identity or None if observed else None

    def describe(self) -> str:
        return self._lock.describe()

    def start(self) -> None:
        """Start the election thread (a daemon: a hung request never blocks process exit)."""
        with self._state:
            if self._thread is not None:
                raise RuntimeError("elector already started")
            if self._stop_event.is_set():
                raise RuntimeError("elector was stopped; build a new one")
            self._thread = threading.Thread(target=self._run, name=f"elector-{self._identity}", daemon=True)
            self._thread.start()

    def stop(self, *, release: bool | None = None, timeout: float | None = None) -> None:
        """Stop campaigning; step down first, then release the lease (unless ``release=False``).

        Idempotent and safe from any thread, including from a callback (then it
        does not wait). ``release=False`` leaves the lease to expire, which is
        what a crash looks like to the other replicas. With a hung backend it
        can take up to 1.5 x ``renew_deadline`` (the request in flight, then the
        release's read and write, each bounded by the request timeout).
        """
        with self._state:
            if release is not None:
                self._release_on_stop = release
            thread = self._thread
        self._stop_event.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def is_leader(self) -> bool:
        """Leading, eligible, and the last successful renewal started less than renew_deadline ago."""
        with self._state:
            return (
                self._leading
                and self._eligible.is_set()
                and self._monotonic() < self._renewed_at + self._renew_deadline
            )

    def set_eligible(self, eligible: bool, why: str = "") -> None:
        """Campaign (True, the default) or stand aside (False) while this replica cannot do the work.

        The lease only says who may lead; a replica that holds it but has lost
        what leading needs (the worker: its broker connection) would keep
        renewing it for as long as the outage lasts, while a healthy standby
        waits behind a lease renewed on time: the queue stalls. Standing aside,
        ``is_leader()`` turns False at once, the elector ends the term within a
        ``retry_period`` and releases the lease so a standby takes it, and no
        attempt to acquire is made until eligible again. Safe from any thread.
        """
        with self._state:
            self._ineligible_why = "" if eligible else (why or "not eligible")
        if eligible:
            self._eligible.set()
        else:
            self._eligible.clear()

    def watch_liveness(self, check: Callable[[], str | None]) -> None:
        """Stand aside, as :meth:`set_eligible` (False) does, whenever ``check()`` says why (None: alive).

        Why: this thread renews the lease on its own, so an owner whose loop
        is stuck (a blocking call on its main thread, a deadlock) kept the
        lease renewed on time while doing no work, and a healthy standby
        waited behind it for as long as the loop stayed stuck. The owner
        cannot call :meth:`set_eligible` then (its loop is the stuck part);
        this check runs on the elector's thread before every renewal and
        every attempt to acquire (client-go's ``HealthzAdaptor`` watchdog
        plays this role there, through the kubelet's liveness probe). The
        check must be quick and must not block.
        """
        self._liveness = check

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        self._leading_event.wait(timeout)
        return self.is_leader()

    # -- the loop -----------------------------------------------------------

    def _run(self) -> None:
        log.info("campaigning", identity=self._identity, lock=self._lock.describe())
        try:
            while not self._stop_event.is_set():
                if not self._acquire():
                    break
                self._step_down(self._renew())
                if self._standing_aside() is not None and not self._stop_event.is_set():
                    self._release()  # standing aside: hand the lease over now, not at expiry
        except BaseException:  # a bug must not leave is_leader() True
            log.exception("leader election loop failed", identity=self._identity)
        finally:
            self._step_down("elector stopped")
            with self._state:
                release = self._release_on_stop
            if release:
                self._release()
            if self._owns_lock:
                self._lock.close()
            log.info("elector stopped", identity=self._identity)

    def _standing_aside(self) -> str | None:
        """Why this replica stands aside now (not eligible, or its owner's loop stalled), or None."""
        if not self._eligible.is_set():
            with self._state:
                return self._ineligible_why or "not eligible"
        check = self._liveness
        if check is None:
            return None
        try:
            return check()
        except Exception:  # a broken check must not stop the elector; it counts as alive
            log.exception("liveness check failed", identity=self._identity)
            return None

    def _acquire(self) -> bool:
        """Try until this replica holds the lease (True) or stop() is called (False)."""
        while not self._stop_event.is_set():
            if self._standing_aside() is not None:
                if self._stop_event.wait(self._retry_period):
                    return False
                continue
            start = self._monotonic()
            acquired = self._try_acquire_or_renew(start, start + self._request_timeout, leading=False)
            self._report_transition()
            if acquired:
                if self._stop_event.is_set():
                    return False  # the release in _run hands it straight back
                if self._standing_aside() is not None:
                    self._release()  # stood aside while the request was in flight
                    continue
                self._begin_term(start)
                return True
            if self._stop_event.wait(self._acquire_wait(self._monotonic())):
                return False
        return False

    def _renew(self) -> str:
        """Renew every retry_period until a renewal fails past the deadline; returns why it ended."""
        while True:
            with self._state:
                deadline = self._renewed_at + self._renew_deadline
            wait = min(self._retry_period, max(0.0, deadline - self._monotonic()))
            if self._stop_event.wait(wait):
                return "elector stopped"
            aside = self._standing_aside()
            if aside is not None:
                return f"standing aside: {aside}"
            start = self._monotonic()
            if start >= deadline:
                return "renew deadline passed"
            renewed = self._try_acquire_or_renew(
                start, min(start + self._request_timeout, deadline), leading=True
            )
            self._report_transition()
            if renewed:
                self.renewals += 1
            else:
                self.renewal_failures += 1
            if self._superseded:
                return self._superseded
            if renewed:
                if self._monotonic() >= deadline:
                    # is_leader() has already said False: end the term, start a new one.
                    return "renewal completed after the renew deadline"
                with self._state:
                    self._renewed_at = start
            elif self._monotonic() >= deadline:
                return "renew deadline passed"

    def _try_acquire_or_renew(self, start: float, call_deadline: float, *, leading: bool) -> bool:
        """client-go's tryAcquireOrRenew; every request must finish by ``call_deadline``."""
        now = self._wall_clock()
        desired = LeaderElectionRecord(
            holder_identity=self._identity,
            lease_duration_seconds=self._lease_duration,
            acquire_time=now,
            renew_time=now,
            leader_transitions=0,
        )
        observed = self._observed
        epoch = self.epoch

        # 1. Fast path: the leader updates optimistically with the version it wrote last.
        if leading and observed is not None and observed.expires_at() > start:
            record = replace(
                desired,
                acquire_time=observed.record.acquire_time,
                leader_transitions=observed.record.leader_transitions,
            )
            try:
                version = self._lock.update(record, observed.version, timeout=self._left(call_deadline))
            except Exception as exc:
                self._log_failure("optimistic renewal failed; re-reading the lease", exc, debug=True)
            else:
                self._observe(record, version, start)
                return True
            if self._monotonic() >= call_deadline:
                return False

        # 2. Read the record, or create it.
        try:
            found = self._lock.get(timeout=self._left(call_deadline))
        except Exception as exc:
            self._log_failure("could not read the lease", exc)
            return False
        if found is None:
            if leading:
                self._superseded = "the lease was deleted"
                return False
            if observed is not None:
                holder = observed.record.holder_identity
                if holder and holder != self._identity and observed.expires_at() > self._monotonic():
                    # The record vanished (deleted by hand) while another holder's lease is
                    # still valid on our clock: that leader has not stepped down yet.
                    return False
            creation_epoch = self._creation_epoch()
            if creation_epoch is None:
                return False
            record = replace(desired, leader_transitions=creation_epoch)
            try:
                version = self._lock.create(record, timeout=self._left(call_deadline))
            except Exception as exc:
                self._log_failure("could not create the lease", exc, debug=isinstance(exc, LockConflict))
                return False
            self._observe(record, version, start)
            return True

        current, version = found
        self._observe(current, version, self._monotonic())

        # 3. Someone else's valid lease: wait. Our term superseded: step down now.
        if leading and (current.holder_identity != self._identity or current.leader_transitions != epoch):
            log.warning(
                "lease taken over",
                identity=self._identity,
                epoch=epoch,
                holder=current.holder_identity or None,
                holder_epoch=current.leader_transitions,
            )
            self._superseded = "the lease shows another holder or epoch"
            return False
        holder = current.holder_identity
        observed = self._observed
        if holder and holder != self._identity and observed and observed.expires_at() > self._monotonic():
            return False

        # 4. Take (new term: epoch + 1) or renew (same term: keep acquire time and epoch).
        if leading:
            record = replace(
                desired, acquire_time=current.acquire_time, leader_transitions=current.leader_transitions
            )
        else:
            next_epoch = self._next_epoch(current.leader_transitions)
            if next_epoch is None:
                return False
            record = replace(desired, leader_transitions=next_epoch)
        if self._monotonic() >= call_deadline:
            return False
        try:
            new_version = self._lock.update(record, version, timeout=self._left(call_deadline))
        except Exception as exc:
            self._log_failure("could not update the lease", exc, debug=isinstance(exc, LockConflict))
            return False
        self._observe(record, new_version, start)
        return True

    def _release(self) -> None:
        """client-go's release(): hand the lease back if the record still names us."""
        try:
            found = self._lock.get(timeout=self._request_timeout)
            if found is None or found[0].holder_identity != self._identity:
                return
            current, version = found
            now = self._wall_clock()
            record = LeaderElectionRecord("", 1.0, now, now, current.leader_transitions)
            new_version = self._lock.update(record, version, timeout=self._request_timeout)
        except Exception as exc:
            self._log_failure("could not release the lease; standbys take over when it expires", exc)
            return
        self._observe(record, new_version, self._monotonic())
        log.info("lease released", identity=self._identity, epoch=current.leader_transitions)

    # -- helpers ------------------------------------------------------------

    def _begin_term(self, start: float) -> None:
        observed = self._observed
        assert observed is not None
        epoch = observed.record.leader_transitions
        with self._state:
            self._leading = True
            self._renewed_at = start
            self._epoch = epoch
        self._superseded = None
        self._leading_event.set()
        log.info("leadership acquired", identity=self._identity, epoch=epoch, lock=self._lock.describe())
        self._call("on_started_leading", self._on_started_leading, epoch)

    def _step_down(self, reason: str) -> None:
        with self._state:
            was_leading = self._leading
            self._leading = False
            epoch = self._epoch
        self._leading_event.clear()
        self._superseded = None
        if was_leading:
            log.warning("leadership lost", identity=self._identity, epoch=epoch, reason=reason)
            self._call("on_stopped_leading", self._on_stopped_leading)

    def _observe(self, record: LeaderElectionRecord, version: str, at: float) -> None:
        """Remember the record; the observed time moves only when the record changed."""
        previous = self._observed
        if (
            previous is None
            or previous.version != version
            or previous.record.holder_identity != record.holder_identity
            or previous.record.leader_transitions != record.leader_transitions
        ):
            self._observed = _Observation(record, version, at)

    def _report_transition(self) -> None:
        observed = self._observed
        if observed is None:
            return
        holder = observed.record.holder_identity
        if holder == self._reported_leader:
            return
        self._reported_leader = holder
        if holder:
            log.info(
                "new leader observed",
                identity=self._identity,
                leader=holder,
                epoch=observed.record.leader_transitions,
            )
        else:
            log.info("lease is free", identity=self._identity, epoch=observed.record.leader_transitions)
        self._call("on_new_leader", self._on_new_leader, holder)

    def _creation_epoch(self) -> int | None:
        observed = self._observed
        return self._above_floor(observed.record.leader_transitions + 1 if observed else 0)

    def _next_epoch(self, current: int) -> int | None:
        """The epoch of a term taken over from a lease at ``current``; None: do not take it now.

        Normally ``current + 1``. But the lease's counter is not only written by
        electors: a Lease edited by hand (``kubectl edit``, a manifest re-applied
        with ``leaseTransitions: 0``) or a ``leases`` row reset can carry an
        epoch below the fence. Taking over at ``current + 1`` then won a lease
        whose every commit the fence refuses; the worker retried the fence claim
        for ever with the same epoch while a healthy standby waited behind a
        lease renewed on time: the queue stalled for good.
        """
        return self._above_floor(current + 1)

    def _above_floor(self, epoch: int) -> int | None:
        """``epoch``, raised above the highest epoch the fence has seen; None if the floor is unreadable.

        Also covers a lease recreated by a replica that never saw the old one,
        which would restart at 0. A floor that cannot be read (the database is
        down) makes this attempt fail rather than guess: a term begun at a
        guessed epoch below the fence would be refused for its whole length,
        and a leader without its database could not claim the fence anyway.
        """
        if self._epoch_floor is None:
            return epoch
        try:
            return max(epoch, self._epoch_floor() + 1)
        except Exception as exc:
            self._log_failure("could not read the epoch floor; not taking the lease now", exc)
            return None

    def _acquire_wait(self, now: float) -> float:
        observed = self._observed
        if observed is not None:
            holder = observed.record.holder_identity
            remaining = observed.expires_at() - now
            if holder and holder != self._identity and remaining > 0:
                watch = self._retry_period * (1.0 - WATCH_JITTER * self._rng.random())
                return min(watch, remaining + 0.001)
        return self._retry_period * (1.0 + JITTER_FACTOR * self._rng.random())

    def _left(self, deadline: float) -> float:
        return max(0.001, deadline - self._monotonic())

    def _log_failure(self, message: str, exc: Exception, *, debug: bool = False) -> None:
        fields: dict[str, Any] = {"identity": self._identity, "lock": self._lock.describe()}
        if isinstance(exc, LockError):
            fields["error"] = str(exc)
            (log.debug if debug else log.warning)(message, **fields)
        else:
            log.exception(message, **fields)

    def _call(self, name: str, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("leader election callback failed", callback=name, identity=self._identity)
