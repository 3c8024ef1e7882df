"""Engine construction for SQLite and PostgreSQL from one ``DATABASE_URL``.

Why the SQLite set-up is not SQLAlchemy's default: pysqlite opens transactions
lazily and as ``DEFERRED``, so two processes can both read a row and then both
try to write it; and its default journal blocks readers during writes. We
switch to WAL (readers never block the writer), turn foreign keys on, wait for
the lock instead of failing at once (busy timeout), and start every
transaction with ``BEGIN IMMEDIATE`` so a writer takes the write lock before
it reads what it is about to change. That gives SQLite the same
read-then-conditional-write safety that ``SELECT ... FOR UPDATE`` gives on
PostgreSQL, which the fence and the database lease rely on.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import QueuePool

from scheduler.config import redact_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 4_000
"""PostgreSQL ends a session that sits idle inside a transaction this long.

Why: a process frozen mid-transaction (SIGSTOP, a paused VM) keeps its TCP
connection, so its row locks (the fence row, the lease row) would stay held
and a new leader could never commit. No transaction of this service waits
between its statements: the server only sees one idle that long when its
client has stopped, and ending that session releases the locks.
"""
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "application_name": "virtflow-scheduler",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
"""libpq connection parameters; a ``DATABASE_URL`` query parameter of the same name wins.

Why the TCP ones: a database host that vanishes from the network (a
partition, a crashed VM, a failover that moved the address) sends nothing
back, not even a reset. The kernel's defaults then keep a connection that
waits for an answer for about 15 minutes (retransmissions of unacknowledged
data) and an idle one for over 2 hours (keepalive): a commit, a ``scheduler
tasks`` or the worker's next query waited that long. Here unacknowledged
data fails the connection after 30 s (``tcp_user_timeout``) and a silent
peer after 25 s (keepalive probes after 10 s idle, every 5 s, 3 missed), so
the worker's outage handling and the CLI's one-line errors take over.
"""
READ_ONLY_OPTION = "scheduler_read_only"
"""Execution option: on SQLite, begin with a deferred ``BEGIN`` instead of ``BEGIN IMMEDIATE``."""


class DatabaseUnavailable(Exception):
    """The database cannot be reached; the message names the URL, password hidden."""


def normalise_url(url: str) -> URL:
    """``postgresql://`` -> psycopg 3; ``postgres://`` accepted as Heroku-style alias."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise ValueError(f"unsupported database {backend!r}: use sqlite:// or postgresql://")
    return parsed


def make_engine(url: str, *, pool_size: int = 5, echo: bool = False) -> Engine:
    """An engine configured for this service's access pattern on either backend."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, echo=echo)
    engine = create_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={k: v for k, v in PG_CONNECT_ARGS.items() if k not in parsed.query},
    )

    @event.listens_for(engine, "connect")
    def _on_pg_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_TIMEOUT_MS}")
        dbapi_conn.commit()

    return engine


def _sqlite_engine(url: URL, *, echo: bool) -> Engine:
    memory = url.database in (None, "", ":memory:")
    kwargs: dict[str, Any] = {"echo": echo}
    if not memory:
        # Pooled, not one connection per transaction: closing the last
        # connection to a WAL database checkpoints it, which made every commit
        # pay for a checkpoint. Connections are checked for liveness and
        # never shared between threads at once (check_same_thread is off
        # because the pool, not the thread, owns them).
        kwargs.update(poolclass=QueuePool, pool_size=5, max_overflow=10, pool_pre_ping=False)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}, **kwargs
    )
    # A plain file path (not ``:memory:``, not a ``file:`` URI): its identity is checked at every BEGIN.
    watched = (
        SqliteFile(os.path.abspath(url.database or "")) if not memory and not url.query.get("uri") else None
    )

    @event.listens_for(engine, "do_connect")
    def _before_connect(_dialect: Any, record: Any, *_: Any) -> None:
        # sqlite3 creates a missing file: a connection opened while the file is away would
        # make an empty database at the path, and stay on it once the real file is back.
        if watched is not None:
            watched.check()
            record.info[_BEFORE_OPEN] = watched.look_before_opening()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN IMMEDIATE works.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            _enable_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
        if watched is not None:
            watched.remember(record.info.pop(_BEFORE_OPEN, None))

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if watched is not None:
            watched.check()
        # A reader may ask for a plain (deferred) transaction: a WAL snapshot
        # that never takes the write lock, so long reads (loading the fleet,
        # listing tasks) do not stall the committer.
        if conn.get_execution_options().get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(engine, "commit")
    def _on_commit(_conn: Any) -> None:
        # Checked again right before COMMIT: a file deleted after BEGIN (a batch's
        # transaction lasts milliseconds) must not take a commit that is then acked.
        # Raising here leaves the transaction to the pool's rollback on return.
        if watched is not None:
            watched.check()

    return engine


_BEFORE_OPEN = "sqlite_file_before_open"
"""Connection record info: the file at the path right before the connection opened it."""


class SqliteFile:
    """The database file an engine opened, and a check that it is still the file at that path.

    Why: deleting (or replacing) an SQLite file under a running process goes
    unnoticed by SQLite. Its open connections go on reading and writing the
    unlinked file, and every commit "succeeds" into a file nobody will open
    again: a worker would ack placements that vanish at its next start,
    and report ready meanwhile. So every transaction first compares the file
    at the path with the one first opened (device and inode, one ``stat``:
    about a microsecond) and refuses to begin when it is gone or another;
    the same check is made before each COMMIT (a file deleted during a
    transaction) and before opening a connection (sqlite3 would create an
    empty file at the path, and the connection stay on it):
    the worker stands down as for any database outage, ``/readyz`` says why,
    and nothing more is acked. Moving the same file back makes it usable
    again; a new file needs a restart (the connections hold the old one).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity: tuple[int, int] | None = None

    def look_before_opening(self) -> tuple[int, int] | None:
        """Until the identity is known, the file at the path right before a connection opens it.

        Why before: setting a connection up may wait seconds (the switch to WAL waits
        for other processes), and a file put in the path's place meanwhile must not be
        taken for the one the connection holds. Noted before, a replacement then makes
        the path differ, and the connection is refused rather than used unseen.
        """
        if self.identity is not None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # a new database: the connection creates it
        return (st.st_dev, st.st_ino)

    def remember(self, before_open: tuple[int, int] | None) -> None:
        """Note the file's identity once the first connection has opened (or created) it.

        ``before_open`` is what :meth:`look_before_opening` saw for this connection.
        """
        if self.identity is None:
            if before_open is not None:
                self.identity = before_open
                return
            st = os.stat(self.path)
            self.identity = (st.st_dev, st.st_ino)

    def check(self) -> None:
        """Raise :class:`DatabaseUnavailable` when the path no longer holds the file first opened."""
        if self.identity is None:
            return
        try:
            st = os.stat(self.path)
        except OSError:
            raise DatabaseUnavailable(
                f"the SQLite database file {self.path} was deleted or moved while in use; "
                "not using the copy still open (put the file back, or restart on a new one)"
            ) from None
        if (st.st_dev, st.st_ino) != self.identity:
            raise DatabaseUnavailable(
                f"the SQLite database file {self.path} was replaced by another file while in use; "
                "not using the copy still open (restart to use the new file)"
            )


def _enable_wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock.

    Two processes opening a brand-new database at once both try to switch it
    to WAL; SQLite answers the loser "database is locked" at once, without
    waiting on the busy timeout. Once the file is in WAL mode (persistent)
    the pragma is a no-op and this returns on the first try.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def describe_url(url: str) -> str:
    """The URL with the password hidden, for messages."""
    return redact_url(url)
