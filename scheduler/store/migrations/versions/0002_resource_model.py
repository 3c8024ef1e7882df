"""Resource model: countable devices, reserves and allocation ratios per node; devices, spread group
and anti-affinity mode per allocation.

Only columns are added, every one nullable or with a server default, so an
existing database keeps every node, task and allocation as it was: old nodes
get no devices and the configured default ratios and reserves (NULL), old
allocations hold no devices, no spread group and a hard anti-affinity group
(NULL), which is what they were placed with. ``batch_alter_table`` makes the
same migration work on SQLite (which rebuilds the table when it must) and
PostgreSQL (plain ``ALTER TABLE``); ``tests/test_migrations.py`` upgrades a
database holding data from 0001 on both.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NODE_COLUMNS = (
    "resources", "reserved_cpu", "reserved_memory", "reserved_disk",
    "cpu_allocation_ratio", "memory_allocation_ratio", "disk_allocation_ratio",
)  # fmt: skip
ALLOCATION_COLUMNS = ("resources", "spread_group", "anti_affinity_mode")


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("resources", sa.Text(), nullable=False, server_default="{}"))
        batch.add_column(sa.Column("reserved_cpu", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("reserved_memory", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("reserved_disk", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("cpu_allocation_ratio", sa.Float(), nullable=True))
        batch.add_column(sa.Column("memory_allocation_ratio", sa.Float(), nullable=True))
        batch.add_column(sa.Column("disk_allocation_ratio", sa.Float(), nullable=True))
    with op.batch_alter_table("allocations") as batch:
        batch.add_column(sa.Column("resources", sa.Text(), nullable=True))
        batch.add_column(sa.Column("spread_group", sa.String(128), nullable=True))
        batch.add_column(sa.Column("anti_affinity_mode", sa.String(8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("allocations") as batch:
        for name in reversed(ALLOCATION_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("nodes") as batch:
        for name in reversed(NODE_COLUMNS):
            batch.drop_column(name)
