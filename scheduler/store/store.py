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
  with respect to any other leader's batch (docs/contracts.md invariant 4);
* inventory changes serialise on the ``inventory`` revision row, so two
  concurrent imports never race on the same node and their counts are exact;
* the partial unique index on active ``allocations.task_id`` is the last line
  of defence for invariant 2: a bug that tried to allocate a task twice would
  fail the whole batch rather than double-book.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import starmap
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, String, any_, bindparam, func, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert

from scheduler.fleet import Allocation, CapacityDefaults, FleetView
from scheduler.gc_tuning import cycle_collection_paused
from scheduler.models import Node, Reason, Reserve, SchedulingRequest, TaskStatus
from scheduler.store import migrate
from scheduler.store.batch_plan import (
    ALLOCATION_COLUMNS,
    OUTBOX_COLUMNS,
    TASK_COLUMNS,
    TASK_UPDATE_COLUMNS,
    TaskState,
    compact_json,
    make_allocation,
    plan_batch,
    releasable,
)
from scheduler.store.bulk import writer_for
from scheduler.store.engine import READ_ONLY_OPTION, make_engine
from scheduler.store.errors import FencedOut, UnknownNode, connect
from scheduler.store.records import CommitItem, CommitResult, ImportCounts, NodeUsage, TaskRecord
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

# Ids per IN (...) list: far below SQLite's 32,766 and PostgreSQL's 65,535
# bind-parameter limits, large enough that a 1,000-item batch is one query.
_IN_CHUNK = 2000
_FLEET_PARTITION = 20_000

_NODE_COLUMNS = (
    nodes.c.name, nodes.c.ip, nodes.c.pool, nodes.c.dedicated, nodes.c.cpu, nodes.c.memory,
    nodes.c.disk, nodes.c.max_vms, nodes.c.tags, nodes.c.zone, nodes.c.cordoned,
    nodes.c.resources, nodes.c.reserved_cpu, nodes.c.reserved_memory, nodes.c.reserved_disk,
    nodes.c.cpu_allocation_ratio, nodes.c.memory_allocation_ratio, nodes.c.disk_allocation_ratio,
)  # fmt: skip
_NODE_FIELDS = (
    "ip", "pool", "dedicated", "cpu", "memory", "disk", "max_vms", "tags", "zone", "cordoned",
    "resources", "reserved_cpu", "reserved_memory", "reserved_disk",
    "cpu_allocation_ratio", "memory_allocation_ratio", "disk_allocation_ratio",
)  # fmt: skip
_ALLOCATION_SELECT = (
    allocations.c.task_id, allocations.c.node, allocations.c.cpu, allocations.c.memory, allocations.c.disk,
    allocations.c.anti_affinity_group, allocations.c.resources, allocations.c.spread_group,
    allocations.c.anti_affinity_mode,
)  # fmt: skip
"""An active allocation's columns in :func:`~scheduler.store.batch_plan.make_allocation` order."""


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive (they were stored as UTC); PostgreSQL in the session zone."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _chunks(seq: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


ACTIVE_USAGE = (
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
"""Per node with active allocations: (node, cpu, memory, disk, vms) in use."""

ACTIVE_DEVICES = select(allocations.c.node, allocations.c.resources).where(
    allocations.c.released_at.is_(None), allocations.c.resources.is_not(None)
)
"""Active allocations holding devices: (node, JSON {device: count}); summed in Python, the same on
both backends (few rows: only VMs that asked for devices)."""


def device_usage(rows: Iterable[Any]) -> dict[str, dict[str, int]]:
    """Per node, devices in use, from :data:`ACTIVE_DEVICES` rows."""
    out: dict[str, dict[str, int]] = {}
    for node, text in rows:
        held = out.setdefault(node, {})
        for kind, count in json.loads(text).items():
            held[kind] = held.get(kind, 0) + int(count)
    return out


class Store:
    """Transactions over the scheduler's tables; build one per process from an :class:`Engine`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._dialect = engine.dialect.name
        self._writer = writer_for(engine)  # raises ValueError for a backend other than sqlite/postgresql
        # The commit path's statements, built once: a statement made per commit cost SQLAlchemy a cache
        # key and, on SQLite, a literal per id of the ``IN`` list (a fifth of a small group's commit).
        self._states_stmt = (
            select(
                tasks.c.task_id, tasks.c.status, tasks.c.request, tasks.c.node, nodes.c.ip, tasks.c.reason,
                tasks.c.message, tasks.c.attempts, tasks.c.strategy, tasks.c.priority, tasks.c.created_at,
            )
            .select_from(tasks.outerjoin(nodes, nodes.c.name == tasks.c.node))
            .where(self._among_ids(tasks.c.task_id))
        )  # fmt: skip
        self._active_stmt = select(*_ALLOCATION_SELECT).where(
            allocations.c.released_at.is_(None), self._among_ids(allocations.c.task_id)
        )
        self._end_stmt = (
            update(allocations)
            .where(self._among_ids(allocations.c.task_id), allocations.c.released_at.is_(None))
            .values(released_at=bindparam("ended_at"))
        )
        self._fence_stmt = select(fence.c.epoch).where(fence.c.name == FENCE_ROW).with_for_update()

    @classmethod
    def from_url(cls, url: str, **engine_kwargs: Any) -> Store:
        """A store on a new engine (``sqlite:///path``, ``postgresql://user:pw@host/db``)."""
        return cls(make_engine(url, **engine_kwargs))

    def close(self) -> None:
        """Close the engine's pooled connections (the engine stays usable: it reconnects on demand)."""
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
    def _read(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A read transaction: deferred on SQLite (never takes the write lock; one WAL snapshot).

        ``snapshot=True`` makes PostgreSQL read every statement from one
        snapshot too (REPEATABLE READ) instead of one per statement.
        """
        with connect(self.engine) as conn:
            conn.execution_options(**{READ_ONLY_OPTION: True})
            if snapshot and self._dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _among_ids(self, column: ColumnElement[str]) -> ColumnElement[bool]:
        """``column`` among the ``ids`` parameter of the execution (any number of them, one statement).

        On PostgreSQL ``column = ANY(:ids)``, one array parameter instead of
        hundreds: about five times faster to send and plan for a 1,000-id batch.
        """
        if self._dialect == "postgresql":
            return column == any_(bindparam("ids", type_=pg_dialect.ARRAY(String)))
        return column.in_(bindparam("ids", expanding=True))

    def _insert(self) -> Any:
        return pg_dialect.insert if self._dialect == "postgresql" else sqlite_dialect.insert

    def _upsert(self, table: Any, key: str, update_columns: Iterable[str]) -> Insert:
        stmt = self._insert()(table)
        return stmt.on_conflict_do_update(  # type: ignore[no-any-return]
            index_elements=[key], set_={c: stmt.excluded[c] for c in update_columns}
        )

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
                rows = select(*_NODE_COLUMNS).where(self._among_ids(nodes.c.name))
                for found in conn.execute(rows, {"ids": list(chunk)}):
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
        with self._read() as conn:
            return self._usage(conn)

    @staticmethod
    def _usage(conn: Connection) -> dict[str, NodeUsage]:
        devices = device_usage(conn.execute(ACTIVE_DEVICES).all())
        return {
            name: NodeUsage(int(c), int(m), int(d), int(v), devices.get(name, {}))
            for name, c, m, d, v in conn.execute(ACTIVE_USAGE)
        }

    def load_fleet(
        self,
        *,
        suspicious_after: float = 10.0,
        offline_after: float = 20.0,
        defaults: CapacityDefaults | None = None,
    ) -> FleetView:
        """The fleet view of every node with every active allocation, read in one snapshot.

        One snapshot matters: an allocation on a node the view does not know
        would be left out of it, and its capacity offered twice.

        Built for a 10,000-node, 200,000-allocation fleet in well under two
        seconds: nodes are made with ``model_construct`` (they were validated
        on the way in), and allocations stream from the driver's own cursor
        (server-side on PostgreSQL) in partitions of plain tuples, skipping
        SQLAlchemy's per-row ``Row`` objects, straight into the view. The
        cyclic garbage collector is paused meanwhile: the 200,000 objects made
        here hold no cycles, and letting it rescan the growing heap every few
        hundred allocations costs about a fifth of the load.
        """
        with self._read(snapshot=True) as conn, cycle_collection_paused():
            node_list = [_node_from_row(row) for row in conn.execute(select(*_NODE_COLUMNS))]
            return FleetView.build(
                node_list,
                self._stream_active(conn),
                suspicious_after=suspicious_after,
                offline_after=offline_after,
                defaults=defaults,
            )

    def _stream_active(self, conn: Connection) -> Iterator[Allocation]:
        """Every active allocation, fetched ``_FLEET_PARTITION`` rows at a time."""
        stmt = select(*_ALLOCATION_SELECT).where(allocations.c.released_at.is_(None))
        sql = str(stmt.compile(dialect=conn.dialect))
        driver = conn.connection.driver_connection
        assert driver is not None
        # A named psycopg cursor lives on the server and is read in pages;
        # sqlite3 steps its statement lazily anyway.
        cursor = driver.cursor("fleet_allocations") if self._dialect == "postgresql" else driver.cursor()
        dbapi_error = conn.dialect.loaded_dbapi.Error
        try:
            cursor.execute(sql)
            while part := cursor.fetchmany(_FLEET_PARTITION):
                yield from starmap(make_allocation, part)
        except dbapi_error as exc:  # the driver's own error: re-raise it as SQLAlchemy's
            raise DBAPIError.instance(sql, None, exc, dbapi_error, dialect=conn.dialect) from exc
        finally:
            cursor.close()

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
        stmt = self._fence_stmt
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
        """Record a batch of decisions atomically, fenced by ``epoch``: the worker's hot path.

        In one transaction: lock the fence row and refuse the whole batch
        (:class:`FencedOut`, nothing written) if a newer epoch is stored;
        read the current state of every task in the batch; apply the items
        in order (see :mod:`scheduler.store.batch_plan` for the rules: duplicates
        and ignored releases change nothing and are reported); then write
        the task rows, the new allocations, the ended allocations and one
        outbox event per terminal status change, each table in one bulk
        operation. A placement on a node missing from the inventory breaks a
        foreign key: the database refuses the whole batch
        (``sqlalchemy.exc.IntegrityError``) and nothing of it is written.
        """
        now = _now()
        writer = self._writer
        ids = list(dict.fromkeys(item.task_id for item in items))
        with self._write() as conn:
            stored = self._lock_fence(conn)
            if stored > epoch:
                raise FencedOut(stored, epoch)
            if not items:
                return CommitResult()
            states = self._read_states(conn, ids)
            to_release = releasable(items, states)
            active = self._active_allocations(conn, to_release) if to_release else {}
            stamp = writer.timestamp(now)
            plan = plan_batch(items, states, active, epoch=epoch, now=now, stamp=stamp)
            writer.upsert(conn, tasks, TASK_COLUMNS, plan.task_rows, "task_id", TASK_UPDATE_COLUMNS)
            writer.insert_new(conn, tasks, TASK_COLUMNS, plan.new_task_rows, "task_id", TASK_UPDATE_COLUMNS)
            # Ended allocations first: a move ends one and starts another for the same task, and at
            # most one allocation per task may be active at any moment (a unique index says so).
            for chunk in _chunks(plan.release_in_db):
                conn.execute(self._end_stmt, {"ids": list(chunk), "ended_at": now})
            writer.insert(conn, allocations, ALLOCATION_COLUMNS, plan.allocation_rows)
            writer.insert(conn, outbox, OUTBOX_COLUMNS, plan.outbox_rows)
        return plan.result

    def _read_states(self, conn: Connection, ids: Sequence[str]) -> dict[str, TaskState]:
        states: dict[str, TaskState] = {}
        stamp = self._writer.timestamp
        for chunk in _chunks(ids):
            for row in conn.execute(self._states_stmt, {"ids": list(chunk)}):
                states[row.task_id] = TaskState(
                    status=TaskStatus(row.status),
                    request_text=row.request,
                    node=row.node,
                    node_ip=row.ip,
                    reason=row.reason,
                    message=row.message,
                    attempts=row.attempts,
                    strategy=row.strategy,
                    priority=row.priority,
                    created=stamp(_utc(row.created_at)),
                )
        return states

    def _active_allocations(self, conn: Connection, ids: Sequence[str]) -> dict[str, Allocation]:
        out: dict[str, Allocation] = {}
        for chunk in _chunks(ids):
            for row in conn.execute(self._active_stmt, {"ids": list(chunk)}):
                out[row[0]] = make_allocation(*row)
        return out

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
            stmt = self._insert()(tasks).values(**row).on_conflict_do_nothing().returning(tasks.c.task_id)
            return conn.execute(stmt).first() is not None

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
                    select(tasks.c.task_id, tasks.c.status).where(self._among_ids(tasks.c.task_id)),
                    {"ids": list(chunk)},
                ):
                    out[tid] = TaskStatus(status)
        return out

    def task_counts(self) -> dict[TaskStatus, int]:
        """How many tasks are in each status."""
        with self._read() as conn:
            rows = conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)).all()
        return {TaskStatus(s): int(n) for s, n in rows}


# ------------------------------------------------------------------ row helpers


def _node_row(node: Node) -> dict[str, Any]:
    kept = node.reserved
    return {
        "name": node.name,
        "ip": str(node.ip),
        "pool": node.pool,
        "dedicated": node.dedicated,
        "cpu": node.cpu,
        "memory": node.memory,
        "disk": node.disk,
        "max_vms": node.max_vms,
        "tags": compact_json(list(node.tags)),
        "zone": node.zone,
        "cordoned": node.cordoned,
        "resources": compact_json(node.resources),
        "reserved_cpu": kept.cpu if kept is not None else None,
        "reserved_memory": kept.memory if kept is not None else None,
        "reserved_disk": kept.disk if kept is not None else None,
        "cpu_allocation_ratio": node.cpu_allocation_ratio,
        "memory_allocation_ratio": node.memory_allocation_ratio,
        "disk_allocation_ratio": node.disk_allocation_ratio,
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
        resources=json.loads(row.resources) if row.resources != "{}" else {},
        reserved=_reserve_from_row(row),
        cpu_allocation_ratio=row.cpu_allocation_ratio,
        memory_allocation_ratio=row.memory_allocation_ratio,
        disk_allocation_ratio=row.disk_allocation_ratio,
    )


def _reserve_from_row(row: Any) -> Reserve | None:
    if row.reserved_cpu is None and row.reserved_memory is None and row.reserved_disk is None:
        return None
    return Reserve.model_construct(cpu=row.reserved_cpu, memory=row.reserved_memory, disk=row.reserved_disk)


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
