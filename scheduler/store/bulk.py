"""Bulk row writers for the commit hot path, one per backend.

Why not ``conn.execute(insert(table), list_of_dicts)``: measured on the
2-core target machine, SQLAlchemy's per-row parameter processing plus
psycopg's executemany (one pipelined statement per row) top out near 3,000
placements/s, a third of the goal. What is fast on each backend:

* SQLite: ``cursor.executemany`` over one prepared statement with plain
  tuples is a C loop; the only per-row Python work left is building the
  tuple. The statement is SQLAlchemy's own SQLite ``insert()`` /
  ``on_conflict_do_update()``, compiled once; timestamps are passed
  pre-formatted in the exact text form SQLAlchemy's SQLite ``DateTime``
  stores and parses, so these rows read back through Core like any other.
* PostgreSQL: binary ``COPY ... FROM STDIN``, where psycopg's C extension
  encodes each row (about 1-2 µs) and the server ingests the stream in one
  round trip. ``COPY`` cannot upsert, so upserts copy into a per-session
  temporary staging table and finish with one SQLAlchemy-compiled
  ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``.

Both writers take rows as tuples in the order of ``columns``; statements are
built once per (table, columns) and cached on the writer. Table names are
never schema-qualified, so PostgreSQL's ``search_path`` (set in the URL)
decides the schema, as everywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Float,
    Integer,
    Table,
    select,
)
from sqlalchemy import column as sa_column
from sqlalchemy import table as sa_table
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError, IntegrityError

Rows = Sequence[tuple[Any, ...]]


class BulkWriter:
    """Backend-specific ``insert`` / ``upsert`` of many tuples, and how a timestamp is passed."""

    def __init__(self, dialect: Dialect):
        self._dialect = dialect
        self._quote = dialect.identifier_preparer.quote
        self._sql: dict[tuple[Any, ...], Any] = {}

    def timestamp(self, value: datetime) -> Any:
        """``value`` (aware, UTC) as this writer's rows carry it."""
        return value

    def insert(self, conn: Connection, table: Table, columns: Sequence[str], rows: Rows) -> None:
        raise NotImplementedError

    def upsert(
        self,
        conn: Connection,
        table: Table,
        columns: Sequence[str],
        rows: Rows,
        key: str,
        update_columns: Sequence[str],
    ) -> None:
        raise NotImplementedError

    def insert_new(
        self,
        conn: Connection,
        table: Table,
        columns: Sequence[str],
        rows: Rows,
        key: str,
        update_columns: Sequence[str],
    ) -> None:
        """Write rows whose keys were absent when the transaction read them: an upsert in effect.

        The keys were absent, but another transaction (the HTTP API
        recording a ``queued`` task) may have inserted one since, so the
        result must be that of :meth:`upsert`; a backend may take a faster
        path when nothing got in the way.
        """
        self.upsert(conn, table, columns, rows, key, update_columns)

    def _cols(self, columns: Sequence[str]) -> str:
        return ", ".join(self._quote(c) for c in columns)


class SqliteBulkWriter(BulkWriter):
    """``executemany`` of tuples on one prepared ``INSERT`` (``ON CONFLICT DO UPDATE`` for upserts)."""

    def timestamp(self, value: datetime) -> str:
        # The storage format of sqlalchemy.dialects.sqlite.DATETIME (naive, UTC by our convention).
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    def insert(self, conn: Connection, table: Table, columns: Sequence[str], rows: Rows) -> None:
        if rows:
            conn.exec_driver_sql(self._statement(table, columns, None, ()), list(rows))

    def upsert(
        self,
        conn: Connection,
        table: Table,
        columns: Sequence[str],
        rows: Rows,
        key: str,
        update_columns: Sequence[str],
    ) -> None:
        if rows:
            conn.exec_driver_sql(self._statement(table, columns, key, update_columns), list(rows))

    def _statement(self, table: Table, columns: Sequence[str], key: str | None, update: Sequence[str]) -> str:
        """SQLAlchemy's own SQLite ``INSERT [... ON CONFLICT DO UPDATE]``, compiled once to qmark SQL."""
        cache_key = (table.name, tuple(columns), key, tuple(update))
        sql = self._sql.get(cache_key)
        if sql is None:
            stmt = sqlite_dialect.insert(table)
            if key is not None:
                stmt = stmt.on_conflict_do_update(
                    index_elements=[key], set_={c: stmt.excluded[c] for c in update}
                )
            compiled = stmt.compile(dialect=self._dialect, column_keys=list(columns))
            # The tuples are in ``columns`` order: the statement's parameters must be too.
            if list(compiled.positiontup or ()) != list(columns):
                raise AssertionError(f"unexpected parameter order {compiled.positiontup} for {columns}")
            sql = self._sql[cache_key] = str(compiled)
        return str(sql)


class PostgresBulkWriter(BulkWriter):
    """Binary ``COPY`` into the table, or into a temporary staging table and then an upsert."""

    def insert(self, conn: Connection, table: Table, columns: Sequence[str], rows: Rows) -> None:
        if rows:
            self._copy(conn, table, self._quote(table.name), columns, rows)

    def upsert(
        self,
        conn: Connection,
        table: Table,
        columns: Sequence[str],
        rows: Rows,
        key: str,
        update_columns: Sequence[str],
    ) -> None:
        if not rows:
            return
        q = self._quote
        stage = q(f"_stage_{table.name}")
        self._ensure_stage(conn, table, stage)
        self._copy(conn, table, stage, columns, rows)
        cache_key = ("upsert", table.name, tuple(columns), key, tuple(update_columns))
        sql = self._sql.get(cache_key)
        if sql is None:
            staged = sa_table(f"_stage_{table.name}", *(sa_column(c) for c in columns))
            stmt = pg_dialect.insert(table).from_select(list(columns), select(*staged.c))
            stmt = stmt.on_conflict_do_update(
                index_elements=[key], set_={c: stmt.excluded[c] for c in update_columns}
            )
            sql = self._sql[cache_key] = str(stmt.compile(dialect=self._dialect))
        conn.exec_driver_sql(str(sql))

    def insert_new(
        self,
        conn: Connection,
        table: Table,
        columns: Sequence[str],
        rows: Rows,
        key: str,
        update_columns: Sequence[str],
    ) -> None:
        """``COPY`` straight into the table inside a savepoint; on a unique violation (a row got in
        since the read), roll back to the savepoint and upsert through the staging table instead.

        The straight ``COPY`` saves the staging copy and the speculative
        insertion of ``ON CONFLICT``: about a fifth of a commit's server time.
        """
        if not rows:
            return
        from psycopg.errors import UniqueViolation

        try:
            with conn.begin_nested():
                self._copy(conn, table, self._quote(table.name), columns, rows)
        except IntegrityError as exc:
            if not isinstance(exc.orig, UniqueViolation):
                raise
            self.upsert(conn, table, columns, rows, key, update_columns)

    def _ensure_stage(self, conn: Connection, table: Table, stage: str) -> None:
        """Create the session's staging table unless it exists, and make sure it is empty.

        Both in one round trip. Asked every time rather than remembered per
        connection: behind a transaction-pooling proxy (PgBouncer) the next
        transaction may run on another server session, and a rolled-back
        transaction takes a table it created with it. ``ON COMMIT DELETE
        ROWS`` empties it at every commit; the ``DELETE`` (of nothing, as a
        rule) covers a second upsert of the same table in one transaction.
        """
        like = self._quote(table.name)
        conn.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {like}) ON COMMIT DELETE ROWS; "
            f"DELETE FROM {stage}"
        )

    def _copy(self, conn: Connection, table: Table, target: str, columns: Sequence[str], rows: Rows) -> None:
        """Binary ``COPY`` of ``rows`` into ``target`` on the transaction's own connection.

        ``COPY`` goes through the driver, not SQLAlchemy, so its errors are
        re-raised as SQLAlchemy's (``IntegrityError``, ``OperationalError``...)
        to keep one error vocabulary for callers; a dead connection is
        caught at the next checkout by the engine's pre-ping.
        """
        import psycopg

        types = [_pg_type(table.c[c].type) for c in columns]
        sql = f"COPY {target} ({self._cols(columns)}) FROM STDIN (FORMAT BINARY)"
        driver = conn.connection.driver_connection
        assert driver is not None
        try:
            with driver.cursor() as cur, cur.copy(sql) as copy:
                copy.set_types(types)
                write = copy.write_row
                for row in rows:
                    write(row)
        except psycopg.Error as exc:
            raise DBAPIError.instance(sql, None, exc, psycopg.Error, dialect=self._dialect) from exc


def _pg_type(sa_type: Any) -> str:
    """The PostgreSQL type whose binary format matches the column (int4 and int8 differ on the wire)."""
    if isinstance(sa_type, BigInteger):
        return "int8"
    if isinstance(sa_type, Integer):
        return "int4"
    if isinstance(sa_type, Boolean):
        return "bool"
    if isinstance(sa_type, DateTime):
        return "timestamptz" if sa_type.timezone else "timestamp"
    if isinstance(sa_type, Float):
        return "float8"
    return "text"  # String, Text: varchar and text share one binary format


def writer_for(engine: Engine) -> BulkWriter:
    """The bulk writer for ``engine``'s backend."""
    dialect = engine.dialect
    if dialect.name == "postgresql":
        return PostgresBulkWriter(dialect)
    if dialect.name == "sqlite":
        return SqliteBulkWriter(dialect)
    raise ValueError(f"unsupported database dialect {dialect.name!r}")
