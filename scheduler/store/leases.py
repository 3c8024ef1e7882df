"""The ``leases`` table: the rows the ``database`` leader-election lock reads and writes.

Why here: every SQL statement of the service lives in :mod:`scheduler.store`,
next to the schema. The lock's protocol (optimistic concurrency, what a
conflict means, the record format) stays in
:mod:`scheduler.elector.database_lock`; this module only runs the three
statements, each in its own short transaction with a time limit:
``statement_timeout``/``lock_timeout`` on PostgreSQL, the busy timeout on
SQLite (whose engine starts every transaction with ``BEGIN IMMEDIATE``, see
:mod:`scheduler.store.engine`). No row is ever locked for longer than one
statement, so a crashed replica cannot block the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from scheduler.store.schema import leases

# The busy timeout scheduler.store.engine sets on every SQLite connection;
# restored after each lease operation on pooled (in-memory) engines.
_SQLITE_DEFAULT_BUSY_MS = 30_000


class LeaseRows:
    """One named row of ``leases``. SQLAlchemy errors propagate (the lock turns them into its own)."""

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self._name = name

    def read(self, *, timeout: float) -> Any | None:
        """The row (``holder``, ``lease_duration``, ``acquire_time``, ``renew_time``,
        ``transitions``, ``version``), or None when there is none."""
        with self._transaction(timeout) as conn:
            return conn.execute(select(leases).where(leases.c.name == self._name)).one_or_none()

    def insert(self, columns: dict[str, object], *, timeout: float) -> None:
        """Create the row at version 1; an existing row raises ``IntegrityError``."""
        with self._transaction(timeout) as conn:
            conn.execute(insert(leases).values(name=self._name, version=1, **columns))

    def update(self, columns: dict[str, object], expected: int, *, timeout: float) -> bool:
        """Write ``columns`` and bump the version if the row is still at ``expected``; False if not."""
        statement = (
            update(leases)
            .where(leases.c.name == self._name, leases.c.version == expected)
            .values(version=leases.c.version + 1, **columns)
        )
        with self._transaction(timeout) as conn:
            return bool(conn.execute(statement).rowcount == 1)

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


__all__ = ["LeaseRows"]
