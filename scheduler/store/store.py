"""The durable state of the scheduler: nodes, tasks, allocations, the outbox and the fence.

Every public method is one transaction. Why Core and not the ORM: the hot
path (:meth:`Store.commit`) writes three rows per placement at 10,000+
placements a second, and :meth:`Store.load_fleet` reads 200,000 allocation
rows at start-up; both are bulk ``executemany`` / streamed ``SELECT``\\s of
plain tuples, which the ORM's unit of work would only slow down.

Concurrency model, the same on both backends:

* commits serialise on the fence row (``SELECT ... FOR UPDATE`` on
  PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises writers), so
  the fence check, the status reads and the writes of one batch are atomic
  with respect to any other leader's batch (DESIGN.md invariant 4);
* inventory changes serialise on the ``inventory`` revision row, so two
  concurrent imports never race on the same node and their counts are exact;
* the partial unique index on active ``allocations.task_id`` is the last line
  of defence for invariant 2: a bug that tried to allocate a task twice would
  fail the whole batch rather than double-book.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, bindparam, cast, func, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.sql.dml import Insert

from scheduler.fleet import Allocation, FleetView
from scheduler.models import Node, Reason, SchedulingRequest, TaskStatus
from scheduler.store import migrate
from scheduler.store.engine import READ_ONLY_OPTION, make_engine
from scheduler.store.errors import FencedOut, UnknownNode, connect
from scheduler.store.records import (
    CommitItem,
    CommitResult,
    Failure,
    ImportCounts,
    NodeUsage,
    Placement,
    Release,
    TaskRecord,
    Waiting,
)
from scheduler.store.schema import (
    FENCE_ROW,
    INVENTORY_REVISION,
    allocations,
    fence,
    nodes,
    outbox,
    revisions,
    tasks,
)

TERMINAL = frozenset({TaskStatus.SCHEDULED, TaskStatus.FAILED, TaskStatus.RELEASED})
_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)

# Ids per IN (...) list: far below SQLite's 32,766 and PostgreSQL's 65,535
# bind-parameter limits, large enough that a 1,000-item batch is one query.
_IN_CHUNK = 2000
_FLEET_PARTITION = 20_000

_NODE_COLUMNS = (
    nodes.c.name,
    nodes.c.ip,
    nodes.c.pool,
    nodes.c.dedicated,
    nodes.c.cpu,
    nodes.c.memory,
    nodes.c.disk,
    nodes.c.max_vms,
    nodes.c.tags,
    nodes.c.zone,
    nodes.c.cordoned,
)
_NODE_FIELDS = ("ip", "pool", "dedicated", "cpu", "memory", "disk", "max_vms", "tags", "zone", "cordoned")
_TASK_UPDATE_COLUMNS = (
    "request",
    "status",
    "node",
    "reason",
    "message",
    "attempts",
    "strategy",
    "priority",
    "epoch",
    "updated_at",
)
_EVENT_TYPES = {
    TaskStatus.SCHEDULED: "task.scheduled",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.RELEASED: "task.released",
}


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive (they were stored as UTC); PostgreSQL in the session zone."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _chunks(seq: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


@dataclass(slots=True)
class _TaskState:
    """A task's row as the commit batch evolves it, item by item."""

    status: TaskStatus | None
    request_text: str | None
    request: dict[str, Any] | None
    node: str | None = None
    node_ip: str | None = None
    reason: str | None = None
    message: str | None = None
    attempts: int = 0
    strategy: str | None = None
    priority: int = 0
    created_at: datetime | None = None
    dirty: bool = False


class Store:
    """Transactions over the scheduler's tables; build one per process from an :class:`Engine`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._dialect = engine.dialect.name
        self._pg_bulk_cache: dict[tuple[Any, ...], Any] = {}
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database dialect {self._dialect!r}")

    @classmethod
    def from_url(cls, url: str, **engine_kwargs: Any) -> Store:
        """A store on a new engine (``sqlite:///path``, ``postgresql://user:pw@host/db``)."""
        return cls(make_engine(url, **engine_kwargs))

    def close(self) -> None:
        """Release the engine's pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with connect(self.engine) as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with connect(self.engine) as conn:
            conn.execution_options(**{READ_ONLY_OPTION: True})
            with conn.begin():
                yield conn

    def _insert(self) -> Any:
        return pg_dialect.insert if self._dialect == "postgresql" else sqlite_dialect.insert

    def _upsert(self, table: Any, key: str, update_columns: Iterable[str]) -> Insert:
        stmt = self._insert()(table)
        return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
            index_elements=[key], set_={c: stmt.excluded[c] for c in update_columns}
        )

    def _bulk(
        self,
        conn: Connection,
        table: Table,
        rows: list[dict[str, Any]],
        *,
        upsert_key: str | None = None,
        update_columns: Sequence[str] = (),
    ) -> None:
        """Insert (or upsert on ``upsert_key``) ``rows``, all with the same keys, in one round trip.

        SQLite: ``cursor.executemany`` over one prepared statement is a C loop
        in-process; nothing is faster. PostgreSQL: psycopg's executemany is
        one statement per row (pipelined, still ~80 µs a row), and a
        multi-row VALUES list is worse (psycopg re-parses a 10,000-parameter
        query every time). So each column travels as one array parameter and
        the server expands them: ``INSERT ... SELECT * FROM unnest($1::t1[],
        $2::t2[], ...)``, one statement and one network round trip per batch.
        """
        if not rows:
            return
        columns = list(rows[0])
        if self._dialect != "postgresql":
            stmt: Insert = sqlite_dialect.insert(table)
            if upsert_key is not None:
                stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
                    index_elements=[upsert_key], set_={c: stmt.excluded[c] for c in update_columns}  # type: ignore[attr-defined]
                )
            conn.execute(stmt, rows)
            return
        key = (table.name, tuple(columns), upsert_key, tuple(update_columns))
        stmt = self._pg_bulk_cache.get(key)  # type: ignore[assignment]
        if stmt is None:
            arrays = func.unnest(
                *[cast(bindparam(f"a_{c}"), pg_dialect.ARRAY(table.c[c].type)) for c in columns]
            ).table_valued(*columns).render_derived()
            pg_stmt = pg_dialect.insert(table).from_select(columns, select(*[arrays.c[c] for c in columns]))
            if upsert_key is not None:
                pg_stmt = pg_stmt.on_conflict_do_update(
                    index_elements=[upsert_key], set_={c: pg_stmt.excluded[c] for c in update_columns}
                )
            stmt = self._pg_bulk_cache[key] = pg_stmt
        conn.execute(stmt, {f"a_{c}": [r[c] for r in rows] for c in columns})

    # ------------------------------------------------------------ schema
    def upgrade(self) -> str:
        """Run the migrations to head (idempotent); returns the revision."""
        return migrate.upgrade(self.engine)

    def check_schema(self) -> None:
        """Raise :class:`~scheduler.store.errors.NotMigrated` unless the schema is at head."""
        migrate.check(self.engine)

    # ------------------------------------------------------------ inventory
    def import_nodes(self, new_nodes: Sequence[Node]) -> ImportCounts:
        """Upsert ``new_nodes`` by name, all or nothing; bumps the inventory revision if anything changed.

        A node whose file entry does not mention ``cordoned`` keeps its
        current cordon state: re-importing the fleet file must not silently
        uncordon a node an operator took out of service.
        """
        names = [n.name for n in new_nodes]
        if len(set(names)) != len(names):
            dupes = sorted(name for name, n in Counter(names).items() if n > 1)
            raise ValueError(f"duplicate node names: {', '.join(dupes[:5])}")
        now = _now()
        with self._write() as conn:
            revision = self._lock_inventory(conn)
            existing: dict[str, Any] = {}
            for chunk in _chunks(names):
                for found in conn.execute(select(*_NODE_COLUMNS).where(nodes.c.name.in_(chunk))):
                    existing[found.name] = found
            changed: list[dict[str, Any]] = []
            created = updated = unchanged = 0
            for node in new_nodes:
                params = _node_row(node)
                old = existing.get(node.name)
                if old is not None and "cordoned" not in node.model_fields_set:
                    params["cordoned"] = bool(old.cordoned)
                if old is None:
                    created += 1
                elif any(_norm(getattr(old, f)) != _norm(params[f]) for f in _NODE_FIELDS):
                    updated += 1
                else:
                    unchanged += 1
                    continue
                params["created_at"] = now
                params["updated_at"] = now
                changed.append(params)
            if changed:
                conn.execute(self._upsert(nodes, "name", (*_NODE_FIELDS, "updated_at")), changed)
                revision = self._bump_revision(conn, revision)
        return ImportCounts(created, updated, unchanged, revision)

    def set_cordoned(self, name: str, cordoned: bool) -> bool:
        """Cordon or uncordon ``name``; True when that changed something (then the revision is bumped)."""
        with self._write() as conn:
            revision = self._lock_inventory(conn)
            current = conn.execute(select(nodes.c.cordoned).where(nodes.c.name == name)).scalar_one_or_none()
            if current is None:
                raise UnknownNode(name)
            if bool(current) == cordoned:
                return False
            conn.execute(
                update(nodes).where(nodes.c.name == name).values(cordoned=cordoned, updated_at=_now())
            )
            self._bump_revision(conn, revision)
            return True

    def inventory_revision(self) -> int:
        """The inventory counter: a worker reloads its fleet view when this moves."""
        with self._read() as conn:
            value = conn.execute(
                select(revisions.c.value).where(revisions.c.name == INVENTORY_REVISION)
            ).scalar_one_or_none()
        return int(value or 0)

    def _lock_inventory(self, conn: Connection) -> int:
        """Take the inventory lock (the revision row, created if missing); returns its value."""
        conn.execute(
            self._insert()(revisions).values(name=INVENTORY_REVISION, value=0).on_conflict_do_nothing()
        )
        value = conn.execute(
            select(revisions.c.value).where(revisions.c.name == INVENTORY_REVISION).with_for_update()
        ).scalar_one()
        return int(value)

    def _bump_revision(self, conn: Connection, current: int) -> int:
        conn.execute(
            update(revisions).where(revisions.c.name == INVENTORY_REVISION).values(value=current + 1)
        )
        return current + 1

    def list_nodes(self, pool: str | None = None) -> list[Node]:
        """Every node (of ``pool``), by name."""
        stmt = select(*_NODE_COLUMNS).order_by(nodes.c.name)
        if pool is not None:
            stmt = stmt.where(nodes.c.pool == pool)
        with self._read() as conn:
            return [_node_from_row(row) for row in conn.execute(stmt)]

    def node_usage(self) -> dict[str, NodeUsage]:
        """Per node, what its active allocations add up to (nodes without any are absent)."""
        stmt = (
            select(
                allocations.c.node,
                func.sum(allocations.c.cpu),
                func.sum(allocations.c.memory),
                func.sum(allocations.c.disk),
                func.count(),
            )
            .where(allocations.c.released_at.is_(None))
            .group_by(allocations.c.node)
        )
        with self._read() as conn:
            return {
                row[0]: NodeUsage(int(row[1]), int(row[2]), int(row[3]), int(row[4]))
                for row in conn.execute(stmt)
            }

    def load_fleet(self, *, suspicious_after: float = 10.0, offline_after: float = 20.0) -> FleetView:
        """The fleet view of every node with every active allocation, read in one snapshot.

        Nodes are built with ``model_construct``: they were validated on the
        way in, and re-validating 10,000 of them would cost more than the
        read. Allocations stream in partitions straight into the view.
        """
        with self._read() as conn:
            node_list = [_node_from_row(row) for row in conn.execute(select(*_NODE_COLUMNS))]
            result = conn.execution_options(yield_per=_FLEET_PARTITION).execute(
                select(
                    allocations.c.task_id,
                    allocations.c.node,
                    allocations.c.cpu,
                    allocations.c.memory,
                    allocations.c.disk,
                    allocations.c.anti_affinity_group,
                ).where(allocations.c.released_at.is_(None))
            )

            def stream() -> Iterator[Allocation]:
                for part in result.partitions():
                    for t, n, c, m, d, g in part:
                        yield Allocation(t, n, c, m, d, g)

            return FleetView.build(
                node_list, stream(), suspicious_after=suspicious_after, offline_after=offline_after
            )

    # ------------------------------------------------------------ fence
    def claim_fence(self, epoch: int, holder: str) -> None:
        """Raise the fence to ``epoch`` for ``holder``; :class:`FencedOut` if a newer epoch is stored.

        The elector calls this right after winning, before the first commit,
        so a deposed leader's late batch finds the fence already raised.
        """
        with self._write() as conn:
            stored = self._lock_fence(conn)
            if stored > epoch:
                raise FencedOut(stored, epoch)
            conn.execute(
                update(fence)
                .where(fence.c.name == FENCE_ROW)
                .values(epoch=epoch, holder=holder, updated_at=_now())
            )

    def fence_epoch(self) -> int:
        """The newest epoch any leader claimed (0 before the first)."""
        with self._read() as conn:
            value = conn.execute(select(fence.c.epoch).where(fence.c.name == FENCE_ROW)).scalar_one_or_none()
        return int(value or 0)

    def fence_holder(self) -> tuple[int, str | None]:
        """(epoch, holder) of the fence row."""
        with self._read() as conn:
            row = conn.execute(select(fence.c.epoch, fence.c.holder).where(fence.c.name == FENCE_ROW)).first()
        return (0, None) if row is None else (int(row.epoch), row.holder)

    def _lock_fence(self, conn: Connection) -> int:
        stmt = select(fence.c.epoch).where(fence.c.name == FENCE_ROW).with_for_update()
        value = conn.execute(stmt).scalar_one_or_none()
        if value is None:  # a database not set up by our migration: create the row
            conn.execute(
                self._insert()(fence)
                .values(name=FENCE_ROW, epoch=0, holder=None, updated_at=_now())
                .on_conflict_do_nothing()
            )
            value = conn.execute(stmt).scalar_one()
        return int(value)

    # ------------------------------------------------------------ commit
    def commit(self, items: Sequence[CommitItem], epoch: int) -> CommitResult:
        """Record a batch of decisions atomically, fenced by ``epoch``.

        In one transaction: lock the fence and refuse the whole batch
        (:class:`FencedOut`, nothing written) if a newer epoch is stored;
        read the current status of every task in the batch; apply the items
        in order (a decision for a task already terminal is a duplicate, a
        release of a task that is not ``scheduled`` is ignored); then write
        task upserts, allocation inserts and releases, and one outbox event
        per terminal status change, each as a single executemany.
        """
        now = _now()
        ids = list(dict.fromkeys(item.task_id for item in items))
        with self._write() as conn:
            stored = self._lock_fence(conn)
            if stored > epoch:
                raise FencedOut(stored, epoch)
            if not items:
                return CommitResult()
            states = self._read_states(conn, ids)
            release_ids = [
                item.task_id
                for item in items
                if isinstance(item, Release)
                and (s := states.get(item.task_id))
                and s.status is TaskStatus.SCHEDULED
            ]
            active = self._active_allocations(conn, release_ids) if release_ids else {}

            applied: dict[str, None] = {}
            duplicates: list[str] = []
            ignored: list[str] = []
            released: list[Allocation] = []
            new_allocs: dict[str, dict[str, Any]] = {}
            release_in_db: list[str] = []
            events: list[dict[str, Any]] = []
            stamp = now.isoformat().replace("+00:00", "Z")

            for item in items:
                tid = item.task_id
                state = states.get(tid)
                if isinstance(item, Release):
                    if state is None or state.status is not TaskStatus.SCHEDULED:
                        ignored.append(tid)
                        continue
                    pending = new_allocs.get(tid)
                    if pending is not None and pending["released_at"] is None:
                        pending["released_at"] = now
                        released.append(_alloc_from_row(pending))
                    elif tid in active:
                        release_in_db.append(tid)
                        released.append(active.pop(tid))
                    state.status = TaskStatus.RELEASED
                    state.reason = None
                    state.message = "released"
                elif state is not None and state.status in TERMINAL:
                    duplicates.append(tid)
                    continue
                elif isinstance(item, Placement):
                    state = self._state_for(states, tid, state, item.request)
                    state.status = TaskStatus.SCHEDULED
                    state.node = item.node
                    state.node_ip = item.node_ip
                    state.reason = None
                    state.message = item.message
                    state.attempts = item.attempts
                    state.strategy = item.strategy
                    req = item.request
                    new_allocs[tid] = {
                        "task_id": tid,
                        "node": item.node,
                        "cpu": req.requested_cpu,
                        "memory": req.requested_memory,
                        "disk": req.requested_disk,
                        "anti_affinity_group": req.anti_affinity_group,
                        "epoch": epoch,
                        "created_at": now,
                        "released_at": None,
                    }
                elif isinstance(item, Waiting):
                    state = self._state_for(states, tid, state, item.request)
                    state.status = TaskStatus.WAITING
                    state.node = None
                    state.node_ip = None
                    state.reason = None
                    state.message = item.message
                    state.attempts = item.attempts
                    state.strategy = item.strategy
                else:  # Failure
                    state = self._failure_state(states, tid, state, item)
                    state.status = TaskStatus.FAILED
                    state.node = None
                    state.node_ip = None
                    state.reason = item.reason.value
                    state.message = item.message
                    state.attempts = item.attempts
                    state.strategy = item.strategy
                state.dirty = True
                applied[tid] = None
                if state.status in TERMINAL:
                    events.append(_event_row(tid, state, stamp, now, item))

            task_rows = [
                {
                    "task_id": tid,
                    "request": s.request_text,
                    "status": s.status.value if s.status else TaskStatus.QUEUED.value,
                    "node": s.node,
                    "reason": s.reason,
                    "message": s.message,
                    "attempts": s.attempts,
                    "strategy": s.strategy,
                    "priority": s.priority,
                    "epoch": epoch,
                    "created_at": s.created_at or now,
                    "updated_at": now,
                }
                for tid, s in states.items()
                if s.dirty
            ]
            if task_rows:
                self._bulk(conn, tasks, task_rows, upsert_key="task_id", update_columns=_TASK_UPDATE_COLUMNS)
            if new_allocs:
                self._bulk(conn, allocations, list(new_allocs.values()))
            if release_in_db:
                for chunk in _chunks(release_in_db):
                    conn.execute(
                        update(allocations)
                        .where(and_(allocations.c.task_id.in_(chunk), allocations.c.released_at.is_(None)))
                        .values(released_at=now)
                    )
            if events:
                self._bulk(conn, outbox, events)
        return CommitResult(
            applied=tuple(applied),
            duplicates=tuple(duplicates),
            ignored=tuple(ignored),
            released=tuple(released),
            event_ids=tuple(e["event_id"] for e in events),
        )

    def _read_states(self, conn: Connection, ids: Sequence[str]) -> dict[str, _TaskState]:
        states: dict[str, _TaskState] = {}
        stmt = select(
            tasks.c.task_id,
            tasks.c.status,
            tasks.c.request,
            tasks.c.node,
            nodes.c.ip,
            tasks.c.reason,
            tasks.c.message,
            tasks.c.attempts,
            tasks.c.strategy,
            tasks.c.priority,
            tasks.c.created_at,
        ).select_from(tasks.outerjoin(nodes, nodes.c.name == tasks.c.node))
        for chunk in _chunks(ids):
            for row in conn.execute(stmt.where(tasks.c.task_id.in_(chunk))):
                states[row.task_id] = _TaskState(
                    status=TaskStatus(row.status),
                    request_text=row.request,
                    request=None,  # parsed lazily: only a release of this task needs it
                    node=row.node,
                    node_ip=row.ip,
                    reason=row.reason,
                    message=row.message,
                    attempts=row.attempts,
                    strategy=row.strategy,
                    priority=row.priority,
                    created_at=row.created_at,
                )
        return states

    def _active_allocations(self, conn: Connection, ids: Sequence[str]) -> dict[str, Allocation]:
        out: dict[str, Allocation] = {}
        stmt = select(
            allocations.c.task_id,
            allocations.c.node,
            allocations.c.cpu,
            allocations.c.memory,
            allocations.c.disk,
            allocations.c.anti_affinity_group,
        ).where(allocations.c.released_at.is_(None))
        for chunk in _chunks(ids):
            for t, n, c, m, d, g in conn.execute(stmt.where(allocations.c.task_id.in_(chunk))):
                out[t] = Allocation(t, n, c, m, d, g)
        return out

    @staticmethod
    def _state_for(
        states: dict[str, _TaskState], tid: str, state: _TaskState | None, request: SchedulingRequest
    ) -> _TaskState:
        body = request.model_dump(mode="json")
        text = _compact(body)
        if state is None:
            state = states[tid] = _TaskState(status=None, request_text=text, request=body)
        else:
            state.request_text = text
            state.request = body
        state.priority = request.priority
        return state

    @staticmethod
    def _failure_state(
        states: dict[str, _TaskState], tid: str, state: _TaskState | None, item: Failure
    ) -> _TaskState:
        body: dict[str, Any] | None = None
        text: str | None = None
        if item.request_json is not None:
            try:
                parsed = json.loads(item.request_json)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                body, text = parsed, item.request_json
            else:  # keep what arrived, as a JSON string, for the operator to see
                text = _compact(item.request_json)
        if state is None:
            state = states[tid] = _TaskState(status=None, request_text=text or "null", request=body)
        elif text is not None:
            state.request_text = text
            state.request = body
        if body is not None and isinstance(body.get("priority"), int):
            state.priority = body["priority"]
        return state

    # ------------------------------------------------------------ tasks
    def record_queued(self, request: SchedulingRequest) -> bool:
        """Record an accepted request as ``queued`` unless the task is already known; True if inserted."""
        now = _now()
        row = {
            "task_id": request.task_id,
            "request": request.model_dump_json(),
            "status": TaskStatus.QUEUED.value,
            "attempts": 0,
            "strategy": request.strategy,
            "priority": request.priority,
            "created_at": now,
            "updated_at": now,
        }
        with self._write() as conn:
            result = conn.execute(self._insert()(tasks).values(**row).on_conflict_do_nothing())
            return bool(result.rowcount == 1)

    def get_task(self, task_id: str) -> TaskRecord | None:
        """One task, or None when the id is unknown."""
        with self._read() as conn:
            row = conn.execute(_task_select().where(tasks.c.task_id == task_id)).first()
        return None if row is None else _task_from_row(row)

    def list_tasks(self, status: TaskStatus | None = None, limit: int | None = None) -> list[TaskRecord]:
        """Tasks, most recently updated first (``status`` filters, ``limit`` caps)."""
        stmt = _task_select().order_by(tasks.c.updated_at.desc(), tasks.c.task_id)
        if status is not None:
            stmt = stmt.where(tasks.c.status == TaskStatus(status).value)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            return [_task_from_row(row) for row in conn.execute(stmt)]

    def task_states(self, ids: Iterable[str]) -> dict[str, TaskStatus]:
        """Status of each known id among ``ids`` (unknown ids are absent)."""
        wanted = list(dict.fromkeys(ids))
        out: dict[str, TaskStatus] = {}
        with self._read() as conn:
            for chunk in _chunks(wanted):
                for tid, status in conn.execute(
                    select(tasks.c.task_id, tasks.c.status).where(tasks.c.task_id.in_(chunk))
                ):
                    out[tid] = TaskStatus(status)
        return out

    def task_counts(self) -> dict[TaskStatus, int]:
        """How many tasks are in each status."""
        with self._read() as conn:
            rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)).all()
        return {TaskStatus(s): int(n) for s, n in rows}

    # ------------------------------------------------------------ invariants
    def overcommitted_nodes(self) -> dict[str, list[str]]:
        """Nodes whose active allocations exceed a capacity, with what is over (DESIGN.md invariant 1).

        Empty when all is well, so ``assert not store.overcommitted_nodes()``
        reads naturally in tests and prints the culprits when it fails.
        """
        usage = self.node_usage()
        out: dict[str, list[str]] = {}
        with self._read() as conn:
            caps = conn.execute(
                select(nodes.c.name, nodes.c.cpu, nodes.c.memory, nodes.c.disk, nodes.c.max_vms)
            ).all()
        for name, cpu, memory, disk, max_vms in caps:
            used = usage.get(name)
            if used is None:
                continue
            over = [
                f"{label} {have}/{cap}"
                for label, have, cap in (
                    ("cpu", used.cpu, cpu),
                    ("memory", used.memory, memory),
                    ("disk", used.disk, disk),
                    ("vms", used.vms, max_vms),
                )
                if have > cap
            ]
            if over:
                out[name] = over
        return out

    def duplicate_active_allocations(self) -> dict[str, int]:
        """Task ids holding more than one active allocation, with the count (DESIGN.md invariant 2)."""
        stmt = (
            select(allocations.c.task_id, func.count())
            .where(allocations.c.released_at.is_(None))
            .group_by(allocations.c.task_id)
            .having(func.count() > 1)
        )
        with self._read() as conn:
            return {tid: int(n) for tid, n in conn.execute(stmt)}

    def active_allocations(self, node: str | None = None) -> list[Allocation]:
        """Active allocations (of ``node``), by task id."""
        stmt = (
            select(
                allocations.c.task_id,
                allocations.c.node,
                allocations.c.cpu,
                allocations.c.memory,
                allocations.c.disk,
                allocations.c.anti_affinity_group,
            )
            .where(allocations.c.released_at.is_(None))
            .order_by(allocations.c.task_id)
        )
        if node is not None:
            stmt = stmt.where(allocations.c.node == node)
        with self._read() as conn:
            return [Allocation(t, n, c, m, d, g) for t, n, c, m, d, g in conn.execute(stmt)]


# ------------------------------------------------------------------ row helpers


def _node_row(node: Node) -> dict[str, Any]:
    return {
        "name": node.name,
        "ip": str(node.ip),
        "pool": node.pool,
        "dedicated": node.dedicated,
        "cpu": node.cpu,
        "memory": node.memory,
        "disk": node.disk,
        "max_vms": node.max_vms,
        "tags": _compact(list(node.tags)),
        "zone": node.zone,
        "cordoned": node.cordoned,
    }


def _norm(value: Any) -> Any:
    return bool(value) if isinstance(value, bool) else value


def _node_from_row(row: Any) -> Node:
    return Node.model_construct(
        name=row.name,
        ip=ipaddress.ip_address(row.ip),
        pool=row.pool,
        dedicated=bool(row.dedicated),
        cpu=int(row.cpu),
        memory=int(row.memory),
        disk=int(row.disk),
        max_vms=int(row.max_vms),
        tags=json.loads(row.tags),
        zone=row.zone,
        cordoned=bool(row.cordoned),
    )


def _alloc_from_row(row: Mapping[str, Any]) -> Allocation:
    return Allocation(
        row["task_id"], row["node"], row["cpu"], row["memory"], row["disk"], row["anti_affinity_group"]
    )


def _event_row(tid: str, state: _TaskState, stamp: str, now: datetime, item: CommitItem) -> dict[str, Any]:
    """One outbox row: the webhook body of DESIGN.md, serialised once, exactly as it will be sent."""
    assert state.status is not None
    event_id = uuid.uuid4().hex
    event_type = _EVENT_TYPES[state.status]
    if state.request is None and state.request_text is not None:
        parsed = json.loads(state.request_text)
        state.request = parsed if isinstance(parsed, dict) else None
    request = state.request
    if isinstance(item, Failure):
        callback = item.callback_url
    elif isinstance(item, Placement):
        callback = item.request.callback_url
    else:
        cb = request.get("callback_url") if request else None
        callback = cb if isinstance(cb, str) else None
    body = {
        "id": event_id,
        "type": event_type,
        "created_at": stamp,
        "task": {
            "task_id": tid,
            "status": state.status.value,
            "node": {"name": state.node, "ip": state.node_ip} if state.node else None,
            "reason": state.reason,
            "message": state.message,
            "attempts": state.attempts,
            "request": request,
        },
    }
    return {
        "event_id": event_id,
        "type": event_type,
        "task_id": tid,
        "payload": _compact(body),
        "callback_url": callback,
        "dispatched": False,
        "created_at": now,
    }


def _task_select() -> Any:
    return select(
        tasks.c.task_id,
        tasks.c.status,
        tasks.c.node,
        nodes.c.ip,
        tasks.c.reason,
        tasks.c.message,
        tasks.c.attempts,
        tasks.c.strategy,
        tasks.c.request,
        tasks.c.created_at,
        tasks.c.updated_at,
    ).select_from(tasks.outerjoin(nodes, nodes.c.name == tasks.c.node))


def _task_from_row(row: Any) -> TaskRecord:
    try:
        request = json.loads(row.request)
    except ValueError:
        request = None
    return TaskRecord(
        task_id=row.task_id,
        status=TaskStatus(row.status),
        node=row.node,
        node_ip=row.ip,
        reason=Reason(row.reason) if row.reason else None,
        message=row.message,
        attempts=int(row.attempts),
        strategy=row.strategy,
        request=request if isinstance(request, dict) else None,
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
    )
