"""Running the Alembic migrations from code: ``scheduler db upgrade`` and migrate-on-start.

Why not shell out to ``alembic``: the service must migrate from the installed
package, whatever the working directory, with the engine it already built
(PostgreSQL ``search_path`` from the URL, SQLite pragmas). So the Alembic
configuration is assembled here from files found next to this module, and the
open connection is passed to ``env.py`` through ``config.attributes``.

Concurrency: several replicas may start at once and all try to upgrade. On
SQLite the migration runs inside ``BEGIN IMMEDIATE`` (the engine's default),
which serialises them; on PostgreSQL a transaction-scoped advisory lock keyed
on the current schema does the same, so the second replica waits, then finds
the schema at head and does nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from scheduler.store.engine import READ_ONLY_OPTION
from scheduler.store.errors import NotMigrated, connect

_HERE = Path(__file__).resolve().parent
ALEMBIC_INI = _HERE / "alembic.ini"
SCRIPT_LOCATION = _HERE / "migrations"


def alembic_config() -> Config:
    """The Alembic configuration, located relative to this package (no cwd assumption)."""
    cfg = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.is_file() else Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    return cfg


def head_revision() -> str:
    """The newest revision this code ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise RuntimeError("no migrations found")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, None for an empty database."""
    with connect(engine) as conn, conn.execution_options(**{READ_ONLY_OPTION: True}).begin():
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str:
    """Bring the schema to ``revision`` (idempotent); returns the revision now current."""
    cfg = alembic_config()
    with connect(engine) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(
                text("SELECT pg_advisory_xact_lock(hashtext('virtflow-scheduler:' || current_schema()))")
            )
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        now = MigrationContext.configure(conn).get_current_revision()
    return now or ""


def check(engine: Engine) -> None:
    """Raise :class:`NotMigrated` unless the database is at the head revision.

    For commands that only read: they must not change a database behind the
    operator's back, and a missing table deserves a better message than SQL.
    """
    current = current_revision(engine)
    head = head_revision()
    if current is None:
        raise NotMigrated("database not initialised: run `scheduler db upgrade`")
    if current != head:
        raise NotMigrated(
            f"database schema is at revision {current}, this code needs {head}: run `scheduler db upgrade`"
        )
