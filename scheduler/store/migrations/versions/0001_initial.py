"""Initial schema: nodes, revisions, tasks, allocations, outbox, deliveries, leases, fence.

Written by hand to mirror ``scheduler/store/schema.py`` exactly, names of
constraints and indexes included (``tests/test_migrations.py`` compares the
migrated database with the metadata on both backends). The rows the service
expects to exist are seeded here too: the fencing row at epoch 0 and the
inventory revision counter at 0, so the first commit and the first import
never race to create them (the store still creates them lazily if a database
was set up some other way).

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE = "released_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("ip", sa.String(45), nullable=False),
        sa.Column("pool", sa.String(63), nullable=False),
        sa.Column("dedicated", sa.Boolean(), nullable=False),
        sa.Column("cpu", sa.Integer(), nullable=False),
        sa.Column("memory", sa.BigInteger(), nullable=False),
        sa.Column("disk", sa.BigInteger(), nullable=False),
        sa.Column("max_vms", sa.Integer(), nullable=False),
        sa.Column("tags", sa.Text(), nullable=False),
        sa.Column("zone", sa.String(63), nullable=True),
        sa.Column("cordoned", sa.Boolean(), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_nodes"),
    )
    op.create_index("ix_nodes_pool", "nodes", ["pool"])

    op.create_table(
        "revisions",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_revisions"),
    )

    op.create_table(
        "tasks",
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("node", sa.String(63), nullable=True),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("strategy", sa.String(64), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name="pk_tasks"),
    )
    op.create_index("ix_tasks_status_updated", "tasks", ["status", "updated_at"])

    op.create_table(
        "allocations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("cpu", sa.Integer(), nullable=False),
        sa.Column("memory", sa.BigInteger(), nullable=False),
        sa.Column("disk", sa.BigInteger(), nullable=False),
        sa.Column("anti_affinity_group", sa.String(128), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.task_id"], name="fk_allocations_task_id_tasks"),
        sa.ForeignKeyConstraint(["node"], ["nodes.name"], name="fk_allocations_node_nodes"),
        sa.PrimaryKeyConstraint("id", name="pk_allocations"),
    )
    # docs/contracts.md invariant 2: at most one active allocation per task.
    op.create_index(
        "uq_allocations_active_task",
        "allocations",
        ["task_id"],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    op.create_index(
        "ix_allocations_active_node",
        "allocations",
        ["node"],
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )

    op.create_table(
        "outbox",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("dispatched", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_outbox"),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
    )
    op.create_index("ix_outbox_task_id", "outbox", ["task_id"])
    op.create_index("ix_outbox_pending", "outbox", ["dispatched", "seq"])

    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(128), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["outbox.event_id"], name="fk_deliveries_event_id_outbox"),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.UniqueConstraint("event_id", "url", name="uq_deliveries_event_url"),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["status", "next_attempt_at"])

    op.create_table(
        "leases",
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("holder", sa.String(253), nullable=True),
        sa.Column("acquire_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("renew_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_duration", sa.Float(), nullable=False),
        sa.Column("transitions", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )

    fence = op.create_table(
        "fence",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(253), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_fence"),
    )
    revisions = sa.table("revisions", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    # Literal names rather than imports from schema.py: a migration must keep
    # meaning what it meant when written, whatever the code says later.
    op.bulk_insert(
        fence, [{"name": "placements", "epoch": 0, "holder": None, "updated_at": datetime.now(UTC)}]
    )
    op.bulk_insert(revisions, [{"name": "inventory", "value": 0}])


def downgrade() -> None:
    for table in ("fence", "leases", "deliveries", "outbox", "allocations", "tasks", "revisions", "nodes"):
        op.drop_table(table)
