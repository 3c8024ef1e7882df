"""The webhook delivery state machine in SQL: outbox events -> delivery rows -> delivered | dead.

The store is the one home of SQL; the webhook dispatcher
(:mod:`scheduler.webhooks.dispatcher`) and ``scheduler webhooks`` call these
statements and hold no SQL of their own.

A delivery row is one event for one target URL (``deliveries``, unique on
``(event_id, url)``). States::

    pending --2xx--------------------------> delivered
    pending --failure, attempts < max------> pending (next_attempt_at = now + backoff)
    pending --failure, attempts = max------> dead
    pending --callback refused-------------> dead    (no request made)
    dead    --``scheduler webhooks retry``-> pending (attempts 0, due now)

Everything the dispatcher knows is in these rows, never only in memory, so
a restart or a failover resumes exactly where the last leader stopped.

Claiming is a lease written to the row: a dispatcher that takes a due
delivery moves its ``next_attempt_at`` to "now + claim lease" in the same
statement that checks it is still due (``UPDATE ... WHERE next_attempt_at
<= now RETURNING id``), so two dispatchers overlapping during a failover do
not both take it, and a dispatcher killed mid-request leaves a delivery
that becomes due again when the lease runs out: at least once, never lost.

Timestamps are written through SQLAlchemy's ``DateTime`` (UTC, aware) on
both backends, so comparisons with the outbox rows the bulk writer stores
are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, case, false, func, literal, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from scheduler.store.engine import READ_ONLY_OPTION
from scheduler.store.errors import connect
from scheduler.store.schema import deliveries, outbox

PENDING = "pending"
DELIVERED = "delivered"
DEAD = "dead"
STATUSES = (PENDING, DELIVERED, DEAD)
ERROR_MAX = 1000  # characters of last_error kept


def utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive (they were stored as UTC); PostgreSQL in the session zone."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An outbox row not yet turned into deliveries."""

    seq: int
    event_id: str
    task_id: str
    callback_url: str | None


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    """The oldest undispatched outbox events, up to a limit: how many, the last ``seq``, the callbacks."""

    count: int
    last_seq: int
    callbacks: list[OutboxEvent]


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A delivery row to create: ``refusal`` set means it is created dead, with that reason."""

    event_id: str
    task_id: str
    url: str
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class Due:
    """A pending delivery whose time has come, with what is needed to send it."""

    id: int
    event_id: str
    event_type: str
    task_id: str
    url: str
    attempts: int
    seq: int
    payload: str

    @property
    def key(self) -> tuple[str, str]:
        """Order is kept per (task, URL): a receiver sees one task's events in the order they happened."""
        return (self.task_id, self.url)


@dataclass(frozen=True, slots=True)
class PendingRef:
    """A pending delivery as the ordering check sees it."""

    id: int
    task_id: str
    url: str
    seq: int
    next_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class Result:
    """What became of one attempt, as it is written to the row.

    ``status`` is the new status; ``attempted`` is False when no request was
    made (a refusal, or a claim handed back), so ``attempts`` is unchanged.
    """

    id: int
    status: str
    attempted: bool
    next_attempt_at: datetime
    status_code: int | None = None
    error: str | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One delivery as stored (``url`` exactly as configured: show it only through a display function)."""

    id: int
    event_id: str
    event_type: str | None
    task_id: str
    url: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    last_status_code: int | None
    delivered_at: datetime | None
    created_at: datetime

    def to_json(self, display: Callable[[str], str]) -> dict[str, Any]:
        """The ``--json`` line; ``display`` hides the URL's credentials (the store does not know how)."""
        return {
            "id": self.id,
            "event_id": self.event_id,
            "type": self.event_type,
            "task_id": self.task_id,
            "url": display(self.url),
            "status": self.status,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "next_attempt_at": _iso(self.next_attempt_at),
            "delivered_at": _iso(self.delivered_at),
            "created_at": _iso(self.created_at),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else utc(value).isoformat().replace("+00:00", "Z")


class DeliveryStore:
    """Transactions over ``outbox`` and ``deliveries`` for the dispatcher and the CLI.

    Methods taking a ``conn`` run inside the caller's transaction (the
    dispatcher groups several into one, to take SQLite's write lock once per
    cycle); the others are one transaction each.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        postgres = engine.dialect.name == "postgresql"
        self._insert: Any = pg_dialect.insert if postgres else sqlite_dialect.insert

    # ------------------------------------------------------------ plumbing
    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only snapshot (on SQLite a deferred BEGIN that never takes the write lock)."""
        with connect(self.engine) as conn:
            conn.execution_options(**{READ_ONLY_OPTION: True})
            with conn.begin():
                yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` on SQLite, as for every writer of this service)."""
        with connect(self.engine) as conn, conn.begin():
            yield conn

    # ------------------------------------------------------------ dispatcher: reads
    def undispatched(self, conn: Connection, limit: int) -> OutboxBatch | None:
        """The oldest ``limit`` outbox events not yet expanded into deliveries (None if there are none).

        Only the events naming a callback URL come back as rows (those need
        a policy check in Python); the rest are expanded by
        :meth:`expand` in SQL without leaving the database.
        """
        oldest = (
            select(outbox.c.seq).where(outbox.c.dispatched == false()).order_by(outbox.c.seq).limit(limit)
        ).subquery()
        count, last = conn.execute(select(func.count(), func.max(oldest.c.seq))).one()
        if not count:
            return None
        callbacks = conn.execute(
            select(outbox.c.seq, outbox.c.event_id, outbox.c.task_id, outbox.c.callback_url)
            .where(outbox.c.dispatched == false(), outbox.c.seq <= last, outbox.c.callback_url.is_not(None))
            .order_by(outbox.c.seq)
        )  # fmt: skip
        events = [OutboxEvent(int(r.seq), r.event_id, r.task_id, r.callback_url) for r in callbacks]
        return OutboxBatch(int(count), int(last), events)

    def due(
        self,
        conn: Connection,
        now: datetime,
        limit: int,
        exclude: Sequence[int] = (),
        skip_prefixes: Sequence[str] = (),
    ) -> list[Due]:
        """Pending deliveries due at ``now``, the longest-waiting first.

        ``exclude``: ids in flight here; ``skip_prefixes``: ``scheme://netloc``
        texts of destinations at their concurrency limit, whose URLs (that
        text followed by ``/``, ``?`` or nothing) are left for later, so the
        ``limit`` rows are other destinations' work.
        """
        stmt = (
            select(
                deliveries.c.id, deliveries.c.event_id, outbox.c.type, deliveries.c.task_id, deliveries.c.url,
                deliveries.c.attempts, outbox.c.seq, outbox.c.payload,
            )
            .select_from(deliveries.join(outbox, outbox.c.event_id == deliveries.c.event_id))
            .where(deliveries.c.status == PENDING, deliveries.c.next_attempt_at <= now)
            # The due index's own order: the scan stops at ``limit`` instead of sorting every due row.
            .order_by(deliveries.c.next_attempt_at)
            .limit(limit)
        )  # fmt: skip
        if exclude:
            stmt = stmt.where(deliveries.c.id.not_in(list(exclude)))
        for prefix in skip_prefixes:
            stmt = stmt.where(
                deliveries.c.url != prefix,
                deliveries.c.url.not_like(_like_escape(prefix) + "/%", escape="\\"),
                deliveries.c.url.not_like(_like_escape(prefix) + "?%", escape="\\"),
            )
        return [
            Due(int(r.id), r.event_id, r.type, r.task_id, r.url, int(r.attempts), int(r.seq), r.payload)
            for r in conn.execute(stmt)
        ]

    def pending_of_tasks(self, conn: Connection, task_ids: Sequence[str]) -> list[PendingRef]:
        """Every pending delivery of these tasks.

        Why the status is filtered here and not in SQL: with ``status =
        'pending'`` in the query, SQLite's planner (which has no statistics)
        walks the status index over every pending delivery, thousands when
        a receiver is down; without it, the only way in is ``outbox.task_id``
        and then the (event, URL) key: a handful of rows per task.
        """
        out: list[PendingRef] = []
        ids = list(dict.fromkeys(task_ids))
        for start in range(0, len(ids), 1000):
            stmt = (
                select(deliveries.c.id, outbox.c.task_id, deliveries.c.url, outbox.c.seq,
                       deliveries.c.next_attempt_at, deliveries.c.status)
                .select_from(outbox.join(deliveries, deliveries.c.event_id == outbox.c.event_id))
                .where(outbox.c.task_id.in_(ids[start : start + 1000]))
            )  # fmt: skip
            for r in conn.execute(stmt):
                if r.status == PENDING:
                    out.append(PendingRef(int(r.id), r.task_id, r.url, int(r.seq), utc(r.next_attempt_at)))
        return out

    def next_due(self, conn: Connection) -> datetime | None:
        """When the earliest pending delivery is due (None when nothing is pending)."""
        value = conn.execute(
            select(func.min(deliveries.c.next_attempt_at)).where(deliveries.c.status == PENDING)
        ).scalar_one_or_none()
        return None if value is None else utc(value)

    # ------------------------------------------------------------ dispatcher: writes
    def expand(
        self,
        conn: Connection,
        last_seq: int,
        urls: Sequence[str],
        callbacks: Sequence[NewDelivery],
        now: datetime,
    ) -> int:
        """Create the deliveries of every undispatched event up to ``last_seq`` and mark them dispatched.

        One ``INSERT ... SELECT`` per configured URL, so an event costs the
        database a row and Python nothing (the dispatcher shares the worker's
        interpreter: per-event Python work would be taken from scheduling);
        ``callbacks`` are the callback deliveries the caller has checked.
        ``ON CONFLICT DO NOTHING`` on (event, URL): a second dispatcher
        expanding the same events during a failover adds nothing. Commits are
        serialised on the fence, so every ``seq`` below a visible one is
        visible too: nothing is skipped. Returns the deliveries created.
        """
        undispatched = (outbox.c.dispatched == false(), outbox.c.seq <= last_seq)
        stamp = literal(now, deliveries.c.created_at.type)
        created = 0
        columns = ["event_id", "task_id", "url", "status", "attempts", "next_attempt_at", "created_at"]
        for url in urls:
            rows = select(
                outbox.c.event_id, outbox.c.task_id, literal(url, deliveries.c.url.type), literal(PENDING),
                literal(0), stamp, stamp,
            ).where(*undispatched)  # fmt: skip
            stmt = self._insert(deliveries).from_select(columns, rows)
            stmt = stmt.on_conflict_do_nothing(index_elements=["event_id", "url"])
            created += max(conn.execute(stmt).rowcount or 0, 0)
        if callbacks:
            params = [
                {
                    "event_id": r.event_id, "task_id": r.task_id, "url": r.url,
                    "status": DEAD if r.refusal else PENDING, "attempts": 0, "next_attempt_at": now,
                    "last_error": _clip(f"refused: {r.refusal}") if r.refusal else None,
                    "created_at": now,
                }
                for r in callbacks
            ]  # fmt: skip
            stmt = self._insert(deliveries).on_conflict_do_nothing(index_elements=["event_id", "url"])
            conn.execute(stmt, params)
            created += len(params)  # for the counters; a failover duplicate is the rare exception
        conn.execute(update(outbox).where(*undispatched).values(dispatched=True))
        return int(created)

    def claim(self, conn: Connection, ids: Sequence[int], now: datetime, until: datetime) -> set[int]:
        """Take the deliveries among ``ids`` that are still pending and due; returns the ids taken.

        Why a ``CASE`` and not ``WHERE status = 'pending' AND next_attempt_at
        <= now``: with those conditions in the ``WHERE``, PostgreSQL's planner
        (on a young table, before autovacuum has gathered statistics) walks
        the status index over every pending row instead of fetching the few
        ids by primary key, and a claim took 100 ms. Here the only condition
        is the key; rows that are no longer claimable keep their time, and a
        row is ours when its time came back as ``until``. Concurrent claims
        on PostgreSQL lock the rows in key order and re-evaluate the ``CASE``
        on the row another claim left, so one delivery is never taken twice;
        SQLite's ``BEGIN IMMEDIATE`` serialises them anyway.
        """
        if not ids:
            return set()
        claimable = and_(deliveries.c.status == PENDING, deliveries.c.next_attempt_at <= now)
        stmt = (
            update(deliveries)
            .where(deliveries.c.id.in_(sorted(ids)))
            .values(next_attempt_at=case((claimable, until), else_=deliveries.c.next_attempt_at))
            .returning(deliveries.c.id, deliveries.c.next_attempt_at)
        )
        return {int(r[0]) for r in conn.execute(stmt) if utc(r[1]) == until}

    def defer(self, conn: Connection, until_by_id: dict[int, datetime]) -> None:
        """Move pending deliveries to later times (a task's later event waits for its earlier one)."""
        if not until_by_id:
            return
        stmt = (
            update(deliveries)
            .where(deliveries.c.id == bindparam("d_id"), deliveries.c.status == PENDING)
            .values(next_attempt_at=bindparam("d_until"))
        )
        conn.execute(stmt, [{"d_id": i, "d_until": t} for i, t in until_by_id.items()])

    def record(self, conn: Connection, results: Sequence[Result]) -> None:
        """Write the outcome of attempts; only rows still pending change."""
        if not results:
            return
        stmt = (
            update(deliveries)
            .where(deliveries.c.id == bindparam("r_id"), deliveries.c.status == PENDING)
            .values(
                status=bindparam("r_status"),
                attempts=deliveries.c.attempts + bindparam("r_inc"),
                next_attempt_at=bindparam("r_next"),
                last_status_code=bindparam("r_code"),
                last_error=bindparam("r_error"),
                delivered_at=bindparam("r_delivered"),
            )
        )
        conn.execute(stmt, [
            {
                "r_id": r.id, "r_status": r.status, "r_inc": 1 if r.attempted else 0,
                "r_next": r.next_attempt_at, "r_code": r.status_code,
                "r_error": _clip(r.error) if r.error else None, "r_delivered": r.delivered_at,
            }
            for r in results
        ])  # fmt: skip

    # ------------------------------------------------------------ operators
    def list_deliveries(self, *, status: str | None = None, limit: int | None = None) -> list[DeliveryRecord]:
        """Deliveries, newest first (``status`` filters, ``limit`` caps); URLs as stored."""
        stmt = _record_select().order_by(deliveries.c.id.desc())
        if status is not None:
            stmt = stmt.where(deliveries.c.status == status)
        if limit is not None:
            stmt = stmt.limit(limit)
        return self._records(stmt)

    def get(self, delivery_id: int) -> DeliveryRecord | None:
        """One delivery by id."""
        found = self._records(_record_select().where(deliveries.c.id == delivery_id))
        return found[0] if found else None

    def of_event(self, event_id: str) -> list[DeliveryRecord]:
        """The deliveries of one event (one per target URL), by id."""
        stmt = _record_select().where(deliveries.c.event_id == event_id).order_by(deliveries.c.id)
        return self._records(stmt)

    def counts(self) -> dict[str, int]:
        """How many deliveries are in each status."""
        with self.read() as conn:
            rows = conn.execute(select(deliveries.c.status, func.count()).group_by(deliveries.c.status)).all()
        return {str(s): int(n) for s, n in rows}

    def _records(self, stmt: Any) -> list[DeliveryRecord]:
        with self.read() as conn:
            return [
                DeliveryRecord(
                    id=int(r.id), event_id=r.event_id, event_type=r.type, task_id=r.task_id, url=r.url,
                    status=r.status, attempts=int(r.attempts), next_attempt_at=utc(r.next_attempt_at),
                    last_error=r.last_error, last_status_code=r.last_status_code,
                    delivered_at=utc(r.delivered_at) if r.delivered_at else None,
                    created_at=utc(r.created_at),
                )
                for r in conn.execute(stmt)
            ]  # fmt: skip

    def retry(self, *, ids: Sequence[int] | None = None, all_dead: bool = False, now: datetime) -> int:
        """Send again: dead deliveries become pending with attempts reset, due ``now``.

        ``ids`` selects deliveries (dead ones are revived; pending ones are
        only made due now, keeping their attempts); ``all_dead`` selects every
        dead delivery. Delivered ones are left alone. Returns how many rows
        changed.
        """
        changed = 0
        with self.write() as conn:
            revive = (
                update(deliveries)
                .where(deliveries.c.status == DEAD)
                .values(
                    status=PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    last_error=None,
                    last_status_code=None,
                )
            )
            if all_dead:
                changed += conn.execute(revive).rowcount or 0
            if ids:
                id_list = list(ids)
                changed += conn.execute(revive.where(deliveries.c.id.in_(id_list))).rowcount or 0
                changed += conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(id_list), deliveries.c.status == PENDING,
                           deliveries.c.next_attempt_at > now)
                    .values(next_attempt_at=now)
                ).rowcount or 0  # fmt: skip
        return int(changed)


def _record_select() -> Any:
    return select(
        deliveries.c.id,
        deliveries.c.event_id,
        outbox.c.type,
        deliveries.c.task_id,
        deliveries.c.url,
        deliveries.c.status,
        deliveries.c.attempts,
        deliveries.c.next_attempt_at,
        deliveries.c.last_error,
        deliveries.c.last_status_code,
        deliveries.c.delivered_at,
        deliveries.c.created_at,
    ).select_from(deliveries.outerjoin(outbox, outbox.c.event_id == deliveries.c.event_id))


def _like_escape(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (escape character: backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _clip(text: str) -> str:
    return text if len(text) <= ERROR_MAX else text[: ERROR_MAX - 1] + "…"
