"""The ``database`` lock: a Lease's twin as one row of the ``leases`` table.

Optimistic concurrency works as on the Kubernetes API: ``version`` plays the
part of ``resourceVersion``. An update is ``UPDATE ... WHERE name = :n AND
version = :v`` and bumps the version; zero rows touched means somebody wrote
in between, which is a :class:`LockConflict`. Creation is a plain INSERT whose
primary-key violation is the conflict. No row is ever locked for longer than
one statement, so a crashed replica cannot block the others.

Every operation runs in its own short transaction with a time limit no later
than the elector's deadline: ``statement_timeout``/``lock_timeout`` on
PostgreSQL, the busy timeout on SQLite (whose engine starts every
transaction with ``BEGIN IMMEDIATE``, see ``scheduler.store.engine``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from scheduler.elector.record import LeaderElectionRecord, LockConflict, LockError, utc
from scheduler.store.schema import leases

# The busy timeout scheduler.store.engine sets on every SQLite connection;
# restored after each lease operation on pooled (in-memory) engines.
_SQLITE_DEFAULT_BUSY_MS = 30_000


class DatabaseLeaseLock:
    """One named row of ``leases``; the engine is passed in and is not disposed here."""

    backend = "database"

    def __init__(self, engine: Engine, name: str, *, owns_engine: bool = False) -> None:
        self._engine = engine
        self._name = name
        self._owns_engine = owns_engine

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
            with self._transaction(timeout) as conn:
                row = conn.execute(select(leases).where(leases.c.name == self._name)).one_or_none()
        except SQLAlchemyError as exc:
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
            with self._transaction(timeout) as conn:
                conn.execute(insert(leases).values(name=self._name, version=1, **_columns(record)))
        except IntegrityError as exc:
            raise LockConflict(f"lease {self._name} already exists") from exc
        except SQLAlchemyError as exc:
            raise LockError(self._explain("create", exc)) from exc
        return "1"

    def update(self, record: LeaderElectionRecord, version: str, *, timeout: float) -> str:
        try:
            expected = int(version)
        except ValueError:
            raise LockConflict(f"lease {self._name}: {version!r} is not a version of this lock") from None
        statement = (
            update(leases)
            .where(leases.c.name == self._name, leases.c.version == expected)
            .values(version=leases.c.version + 1, **_columns(record))
        )
        try:
            with self._transaction(timeout) as conn:
                touched = conn.execute(statement).rowcount
        except SQLAlchemyError as exc:
            raise LockError(self._explain("update", exc)) from exc
        if touched != 1:
            raise LockConflict(f"lease {self._name} is no longer at version {version}")
        return str(expected + 1)

    @contextmanager
    def _transaction(self, timeout: float) -> Iterator[Connection]:
        """One transaction that gives up after ``timeout`` seconds of waiting."""
        millis = max(1, int(timeout * 1000))
        with self._engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:
                # Before BEGIN IMMEDIATE, which is where SQLite waits for the write lock.
                conn.connection.driver_connection.execute(f"PRAGMA busy_timeout={millis}")  # type: ignore[union-attr]
            try:
                with conn.begin():
                    if not sqlite:
                        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {millis}")
                        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {millis}")
                    yield conn
            finally:
                if sqlite and not conn.closed and not conn.invalidated:
                    conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                        f"PRAGMA busy_timeout={_SQLITE_DEFAULT_BUSY_MS}"
                    )

    def _explain(self, action: str, exc: SQLAlchemyError) -> str:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        first = detail[0] if detail else type(exc).__name__
        return f"cannot {action} lease {self._name} in the leases table: {first}"


def _columns(record: LeaderElectionRecord) -> dict[str, object]:
    return {
        "holder": record.holder_identity or None,
        "acquire_time": utc(record.acquire_time),
        "renew_time": utc(record.renew_time),
        "lease_duration": float(record.lease_duration_seconds),
        "transitions": record.leader_transitions,
    }
