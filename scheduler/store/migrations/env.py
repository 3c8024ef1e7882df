"""Alembic environment for the scheduler schema.

Why the connection comes from ``config.attributes``: the service migrates
through :func:`scheduler.store.migrate.upgrade`, which hands Alembic the
connection it already opened with :func:`scheduler.store.engine.make_engine`.
That connection carries everything the URL and the engine set up (the
PostgreSQL ``search_path`` given in ``options=-csearch_path=...``, SQLite's
WAL, foreign keys and ``BEGIN IMMEDIATE``), so the tables and the
``alembic_version`` table land in exactly the schema the service will use.
Alembic never builds a second, differently configured engine of its own.

When Alembic is run by hand (``alembic -c scheduler/store/alembic.ini ...``)
there is no such connection: the URL then comes from the service's own
configuration (``DATABASE_URL`` / ``config.yaml``), again through
``make_engine``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from scheduler.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode copies tables.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from scheduler.config import load_settings
    from scheduler.store.engine import make_engine

    engine = make_engine(load_settings().database.url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
