"""The ``database`` lock: a Lease's twin as one row of the ``leases`` table.

Optimistic concurrency works as on the Kubernetes API: ``version`` plays the
part of ``resourceVersion``. An update is ``UPDATE ... WHERE name = :n AND
version = :v`` and bumps the version; zero rows touched means somebody wrote
in between, which is a :class:`LockConflict`. Creation is a plain INSERT whose
primary-key violation is the conflict. No row is ever locked for longer than
one statement, so a crashed replica cannot block the others.

The statements themselves are :class:`scheduler.store.leases.LeaseRows`.
Every operation runs in its own short transaction with a time limit no later
than the elector's deadline: ``statement_timeout``/``lock_timeout`` on
PostgreSQL, the busy timeout on SQLite (whose engine starts every
transaction with ``BEGIN IMMEDIATE``, see ``scheduler.store.engine``).
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from scheduler.elector.record import LeaderElectionRecord, LockConflict, LockError, utc
from scheduler.safetext import first_line
from scheduler.store.engine import DatabaseUnavailable
from scheduler.store.leases import LeaseRows

DB_ERRORS = (SQLAlchemyError, DatabaseUnavailable)
"""What the database can answer instead of a row; the engine refuses an SQLite file that left its path
with :class:`DatabaseUnavailable`, which the elector must see as the :class:`LockError` it is."""


class DatabaseLeaseLock:
    """One named row of ``leases``; the engine is passed in and is not disposed here."""

    backend = "database"

    def __init__(self, engine: Engine, name: str, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._name = name
        self._owns_engine = owns_engine
        self._rows = LeaseRows(engine, name)

    @property
    def name(self) -> str:
        return self._name

    def describe(self) -> str:
        return f"database lease {self._name} ({self._engine.url.render_as_string(hide_password=True)})"

    def close(self) -> None:
        if self._owns_engine:
            self._engine.dispose()

    def get(self, *, timeout: float) -> tuple[LeaderElectionRecord, str] | None:
        try:
            row = self._rows.read(timeout=timeout)
        except DB_ERRORS as exc:
            raise LockError(self._explain("read", exc)) from exc
        if row is None:
            return None
        record = LeaderElectionRecord(
            holder_identity=row.holder or "",
            lease_duration_seconds=float(row.lease_duration),
            acquire_time=utc(row.acquire_time),
            renew_time=utc(row.renew_time),
            leader_transitions=int(row.transitions),
        )
        return record, str(row.version)

    def create(self, record: LeaderElectionRecord, *, timeout: float) -> str:
        try:
            self._rows.insert(_columns(record), timeout=timeout)
        except IntegrityError as exc:
            raise LockConflict(f"lease {self._name} already exists") from exc
        except DB_ERRORS as exc:
            raise LockError(self._explain("create", exc)) from exc
        return "1"

    def update(self, record: LeaderElectionRecord, version: str, *, timeout: float) -> str:
        try:
            expected = int(version)
        except ValueError:
            raise LockConflict(f"lease {self._name}: {version!r} is not a version of this lock") from None
        try:
            touched = self._rows.update(_columns(record), expected, timeout=timeout)
        except DB_ERRORS as exc:
            raise LockError(self._explain("update", exc)) from exc
        if not touched:
            raise LockConflict(f"lease {self._name} is no longer at version {version}")
        return str(expected + 1)

    def _explain(self, action: str, exc: Exception) -> str:
        why = first_line(getattr(exc, "orig", None) or exc)
        return f"cannot {action} lease {self._name} in the leases table: {why}"


def _columns(record: LeaderElectionRecord) -> dict[str, object]:
    return {
        "holder": record.holder_identity or None,
        "acquire_time": utc(record.acquire_time),
        "renew_time": utc(record.renew_time),
        "lease_duration": float(record.lease_duration_seconds),
        "transitions": record.leader_transitions,
    }
