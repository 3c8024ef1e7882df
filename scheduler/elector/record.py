"""The leader election record, the lock contract, and what a reader sees.

The record mirrors client-go's ``resourcelock.LeaderElectionRecord`` and the
``spec`` of a ``coordination.k8s.io/v1`` Lease, so the Kubernetes and the
database locks store exactly the same facts and the elector cannot tell them
apart.

A lock is deliberately dumb: it reads, creates and conditionally replaces one
record. Every decision (who may take the lease, when it expired, what the
epoch is) lives in :class:`scheduler.elector.elector.Elector`, as in client-go,
so both backends share one audited algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

StartedLeading = Callable[[int], None]
"""Called with the new term's epoch when this replica becomes leader."""
StoppedLeading = Callable[[], None]
"""Called when this replica stops leading (``is_leader()`` is already False)."""
NewLeader = Callable[[str], None]
"""Called with the holder identity whenever the observed holder changes (``""``: released)."""


@dataclass(frozen=True, slots=True)
class LeaderElectionRecord:
    """What the lease says: who holds it, for how long, since when, and how many hand-overs.

    ``holder_identity`` is ``""`` when nobody holds the lease (after a graceful
    release). ``leader_transitions`` increments on every change of holder and is
    the fencing epoch. The timestamps are informational: candidates never use
    another node's wall clock to decide expiry (see the elector).
    """

    holder_identity: str
    lease_duration_seconds: float
    acquire_time: datetime | None
    renew_time: datetime | None
    leader_transitions: int


class LockError(Exception):
    """The lock's backend failed or could not be reached; the attempt counts as failed."""


class LockConflict(LockError):
    """Optimistic concurrency lost: the version was stale, or the record already exists."""


@runtime_checkable
class Lock(Protocol):
    """One leader election record with optimistic concurrency (client-go's ``resourcelock.Interface``).

    ``version`` is opaque (the Lease ``resourceVersion``, or the ``leases.version``
    column). Every method takes ``timeout`` (seconds) so that a hung backend
    cannot hold the elector past its renew deadline.
    """

    backend: str

    def get(self, *, timeout: float) -> tuple[LeaderElectionRecord, str] | None:
        """The record and its version, or None when no record exists yet."""
        ...

    def create(self, record: LeaderElectionRecord, *, timeout: float) -> str:
        """Create the record; returns its version. Raises :class:`LockConflict` if it exists."""
        ...

    def update(self, record: LeaderElectionRecord, version: str, *, timeout: float) -> str:
        """Replace the record if it is still at ``version``; returns the new version.

        Raises :class:`LockConflict` when the stored version differs or the record is gone.
        """
        ...

    def describe(self) -> str:
        """A short human name for logs, e.g. ``kubernetes lease default/virtflow-scheduler``."""
        ...

    def close(self) -> None:
        """Release clients or engines the lock created itself (never ones passed in)."""
        ...


@runtime_checkable
class LeaderElector(Protocol):
    """What the worker uses, whatever the backend (the elector, or always-leader for ``none``)."""

    backend: str

    @property
    def identity(self) -> str:
        """This replica's identity (``POD_NAME``, else ``<hostname>-<pid>``)."""
        ...

    @property
    def epoch(self) -> int | None:
        """The fencing epoch of this replica's current or most recent term; None if it never led."""
        ...

    @property
    def leader(self) -> str | None:
        """The holder last observed in the lease (None if unknown or released)."""
        ...

    def start(self) -> None:
        """Start campaigning in the background; returns at once."""
        ...

    def stop(self, *, release: bool | None = None, timeout: float | None = None) -> None:
        """Stop campaigning (idempotent); release the lease unless ``release`` is False."""
        ...

    def is_leader(self) -> bool:
        """True only while this replica leads and its last renewal is within the renew deadline."""
        ...

    def wait_for_leadership(self, timeout: float | None = None) -> bool:
        """Block until this replica leads or ``timeout`` passes; returns ``is_leader()``."""
        ...

    def set_eligible(self, eligible: bool, why: str = "") -> None:
        """Campaign (True) or stand aside and hand the lease over (False) while the work cannot be done."""
        ...

    def watch_liveness(self, check: Callable[[], str | None]) -> None:
        """Stand aside whenever ``check()`` gives a reason (the owner's loop stalled); None: alive."""
        ...


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """The lease as one reader sees it, for ``scheduler leader``.

    ``expired`` is an estimate on the reader's wall clock (``renew_time`` +
    ``lease_duration`` < now): only candidates, with their own monotonic
    observation, decide expiry for real.
    """

    backend: str
    lock: str
    holder: str | None
    epoch: int | None
    acquire_time: datetime | None
    renew_time: datetime | None
    lease_duration: float | None
    expired: bool | None

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly fields (timestamps as ISO 8601 UTC)."""
        return {
            "holder": self.holder,
            "epoch": self.epoch,
            "acquire_time": _iso(self.acquire_time),
            "renew_time": _iso(self.renew_time),
            "lease_duration": self.lease_duration,
            "expired": self.expired,
            "backend": self.backend,
            "lock": self.lock,
        }


def utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime; naive values (SQLite returns those) are taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    value = utc(value)
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def leader_info(backend: str, lock: str, found: LeaderElectionRecord | None, *, now: datetime) -> LeaderInfo:
    """Turn a read record into :class:`LeaderInfo`, estimating expiry at ``now``."""
    if found is None:
        return LeaderInfo(backend, lock, None, None, None, None, None, None)
    renew = utc(found.renew_time)
    expired: bool
    if not found.holder_identity:
        expired = True
    elif renew is None:
        expired = False
    else:
        expired = (now - renew).total_seconds() > found.lease_duration_seconds
    return LeaderInfo(
        backend=backend,
        lock=lock,
        holder=found.holder_identity or None,
        epoch=found.leader_transitions,
        acquire_time=utc(found.acquire_time),
        renew_time=renew,
        lease_duration=found.lease_duration_seconds,
        expired=expired,
    )
