"""The SQL schema, as SQLAlchemy Core tables shared by the store, the elector and webhooks.

Alembic migrations in ``scheduler/store/migrations`` create exactly these
tables; ``tests/test_migrations.py`` compares the two so they cannot drift.

Invariants the schema itself enforces:

* a task has at most one active allocation (partial unique index on
  ``allocations.task_id`` where ``released_at IS NULL``): docs/contracts.md invariant 2;
* an outbox event id is unique, and one delivery per (event, target URL).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

nodes = Table(
    "nodes",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("ip", String(45), nullable=False),
    Column("pool", String(63), nullable=False, index=True),
    Column("dedicated", Boolean, nullable=False, default=False),
    Column("cpu", Integer, nullable=False),
    Column("memory", BigInteger, nullable=False),
    Column("disk", BigInteger, nullable=False, default=0),
    Column("max_vms", Integer, nullable=False),
    Column("tags", Text, nullable=False, default="[]"),  # JSON list of strings
    Column("zone", String(63), nullable=True),
    Column("cordoned", Boolean, nullable=False, default=False),
    Column("last_heartbeat_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The resource model (migration 0002). NULL reserves and ratios mean "the configured default".
    Column("resources", Text, nullable=False, default="{}", server_default="{}"),  # JSON {device: count}
    Column("reserved_cpu", Integer, nullable=True),
    Column("reserved_memory", BigInteger, nullable=True),
    Column("reserved_disk", BigInteger, nullable=True),
    Column("cpu_allocation_ratio", Float, nullable=True),
    Column("memory_allocation_ratio", Float, nullable=True),
    Column("disk_allocation_ratio", Float, nullable=True),
)

# Monotonic counters; ``inventory`` is bumped by every node import, cordon and
# uncordon so that a running worker notices inventory changes with one cheap read.
revisions = Table(
    "revisions",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", String(128), primary_key=True),
    Column("request", Text, nullable=False),  # the SchedulingRequest as JSON
    Column("status", String(16), nullable=False),
    Column("node", String(63), nullable=True),
    Column("reason", String(32), nullable=True),
    Column("message", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("strategy", String(64), nullable=True),
    Column("priority", Integer, nullable=False, default=0),
    Column("epoch", BigInteger, nullable=True),  # fencing epoch of the leader that wrote it
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_tasks_status_updated", "status", "updated_at"),
)

allocations = Table(
    "allocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(128), ForeignKey("tasks.task_id"), nullable=False),
    Column("node", String(63), ForeignKey("nodes.name"), nullable=False),
    Column("cpu", Integer, nullable=False),
    Column("memory", BigInteger, nullable=False),
    Column("disk", BigInteger, nullable=False),
    Column("anti_affinity_group", String(128), nullable=True),
    Column("epoch", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("released_at", DateTime(timezone=True), nullable=True),
    # The resource model (migration 0002): devices held (JSON {device: count}, NULL for none),
    # the spread group, and "soft" when the anti-affinity group was a preference (NULL: hard).
    Column("resources", Text, nullable=True),
    Column("spread_group", String(128), nullable=True),
    Column("anti_affinity_mode", String(8), nullable=True),
    Index(
        "uq_allocations_active_task",
        "task_id",
        unique=True,
        sqlite_where=text("released_at IS NULL"),
        postgresql_where=text("released_at IS NULL"),
    ),
    Index(
        "ix_allocations_active_node",
        "node",
        sqlite_where=text("released_at IS NULL"),
        postgresql_where=text("released_at IS NULL"),
    ),
)

# Transactional outbox: one row per terminal status change, written in the
# same transaction as the change (docs/contracts.md invariant 5).
outbox = Table(
    "outbox",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("type", String(32), nullable=False),
    Column("task_id", String(128), nullable=False, index=True),
    Column("payload", Text, nullable=False),  # the webhook body, exactly as sent
    Column("callback_url", Text, nullable=True),
    Column("dispatched", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_outbox_pending", "dispatched", "seq"),
)

# One row per (event, target URL): the delivery state machine of webhooks.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), ForeignKey("outbox.event_id"), nullable=False),
    Column("task_id", String(128), nullable=False),
    Column("url", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | dead
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("event_id", "url", name="uq_deliveries_event_url"),
    Index("ix_deliveries_due", "status", "next_attempt_at"),
)

# The database twin of a coordination.k8s.io/v1 Lease (the "database" election lock).
leases = Table(
    "leases",
    metadata,
    Column("name", String(253), primary_key=True),
    Column("holder", String(253), nullable=True),
    Column("acquire_time", DateTime(timezone=True), nullable=True),
    Column("renew_time", DateTime(timezone=True), nullable=True),
    Column("lease_duration", Float, nullable=False),
    Column("transitions", BigInteger, nullable=False, default=0),
    Column("version", BigInteger, nullable=False, default=1),  # resourceVersion twin
)

# The fencing row: the epoch of the newest leader. A commit whose caller holds
# an older epoch is refused inside its own transaction (docs/contracts.md invariant 4).
fence = Table(
    "fence",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("holder", String(253), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

FENCE_ROW = "placements"
INVENTORY_REVISION = "inventory"
