"""``scheduler db upgrade``, and the store session every database-backed command uses.

Why one helper for all of them: the rules for talking to the database from a
command line are the same everywhere. The URL comes from the configuration
(``DATABASE_URL``); a database that cannot be reached is one line naming the
URL with its password hidden; commands that write migrate first, commands
that only read refuse an uninitialised database with the command to run
instead of failing on a missing table; any other database error is one line,
never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from scheduler.cli.common import CliError, cli, settings_or_exit
from scheduler.config import Settings, redact_url
from scheduler.safetext import printable

if TYPE_CHECKING:
    from scheduler.store import Store


@contextmanager
def store_session(
    settings: Settings | None = None, *, migrate: bool | None, lock_wait: bool = True
) -> Iterator[Store]:
    """A :class:`Store` on ``database.url`` for one command, closed afterwards.

    ``migrate=True`` runs the migrations first (write commands),
    ``migrate=False`` requires the schema at head (read commands), ``None``
    does neither (``db upgrade`` itself). ``lock_wait`` bounds, on
    PostgreSQL, how long a statement waits for a lock (:func:`_bound_lock_waits`);
    the worker, which has its own rules, passes False.
    """
    # Imported here: SQLAlchemy and Alembic cost a good part of a second, which
    # commands that never touch the database (submit, simulate) should not pay.
    from sqlalchemy.exc import SQLAlchemyError

    from scheduler.store import DatabaseUnavailable, NotMigrated, Store

    settings = settings or settings_or_exit()
    url = redact_url(settings.database.url)
    if migrate is False:
        _refuse_missing_sqlite_file(settings.database.url)
    try:
        store = Store.from_url(settings.database.url)
    except ValueError as exc:
        raise CliError(f"database.url: {exc}", exit_code=2) from None
    if lock_wait:
        _bound_lock_waits(store)
    try:
        if migrate is True:
            _refuse_newer_schema(store, url)
            store.upgrade()
        elif migrate is False:
            try:
                store.check_schema()
            except NotMigrated:
                _refuse_newer_schema(store, url)
                raise
        yield store
    except (DatabaseUnavailable, NotMigrated) as exc:
        raise CliError(str(exc)) from None
    except UnicodeEncodeError as exc:
        # Undecodable bytes in an argument (a name pasted from a Latin-1 terminal) arrive as lone
        # surrogates, which no database driver encodes: `status`, `nodes cordon`, `nodes drain`,
        # `webhooks retry` and `nodes list --pool` ended in the driver's traceback.
        # In DATABASE_URL itself, the text is the driver's connection string: its password is hidden.
        text = exc.object if isinstance(exc.object, str) else repr(exc.object)
        text = re.sub(r"password=\S*", "password=***", text)
        raise CliError(
            f"'{printable(text)}' is not valid UTF-8 (undecodable bytes in an argument or in DATABASE_URL?)"
        ) from None
    except SQLAlchemyError as exc:
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise CliError(f"database error on {url}: {lines[0] if lines else type(exc).__name__}") from None
    finally:
        store.close()


LOCK_TIMEOUT_MS = 30_000
"""How long a command's statement waits for a PostgreSQL lock: SQLite's busy timeout, the same 30 s."""


def _bound_lock_waits(store: Store) -> None:
    """On PostgreSQL, end a command's statement that waits for a lock longer than :data:`LOCK_TIMEOUT_MS`.

    Why: a session that holds a lock on the inventory and does not end (an
    operator's ``psql`` with an open ``BEGIN``, a migration, a stuck job)
    made ``nodes cordon``, ``nodes import`` or ``nodes drain`` wait for
    ever, where on SQLite the same command gives up after the busy timeout
    with ``database is locked``. It now ends with ``canceling statement due
    to lock timeout``.
    """
    if store.engine.dialect.name != "postgresql":
        return
    from sqlalchemy import event

    @event.listens_for(store.engine, "connect")
    def _set_lock_timeout(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        dbapi_conn.commit()


def _refuse_newer_schema(store: Store, where: str) -> None:
    """Refuse a schema at a revision this code does not ship: newer code migrated it.

    Why: after a rollback of the scheduler (docs/deploy.md) the database is
    ahead of the code. Alembic then raised ``Can't locate revision`` from
    ``db upgrade``, ``nodes import``, ``nodes cordon`` and the worker's
    start (a traceback), and the read commands said to run ``scheduler db
    upgrade``, which cannot help: only a version that knows the revision
    can read or change that schema.
    """
    from scheduler.store import migrate as migrations

    current = migrations.current_revision(store.engine)
    if current is None or current in known_revisions():
        return
    raise CliError(
        f"database {where} is at schema revision {current}, newer than this version of the scheduler knows "
        f"(its newest is {migrations.head_revision()}): run the version that migrated it "
        "(`scheduler db upgrade` cannot go back)"
    )


def known_revisions() -> set[str]:
    """Every migration revision this code ships."""
    from alembic.script import ScriptDirectory

    from scheduler.store import migrate as migrations

    return {s.revision for s in ScriptDirectory.from_config(migrations.alembic_config()).walk_revisions()}


def _refuse_missing_sqlite_file(url: str) -> None:
    """A read must not leave an empty SQLite file behind (connecting would create one)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and "uri" not in parsed.query
    ):
        path = Path(parsed.database)
        if not path.exists():
            raise CliError(f"database not initialised ({path} does not exist): run `scheduler db upgrade`")


@cli.group("db")
def db_group() -> None:
    """The database schema."""


@db_group.command("upgrade")
def upgrade_cmd() -> None:
    """Create or upgrade the schema to the newest revision (safe to run again)."""
    from scheduler.store import migrate as migrations

    settings = settings_or_exit()
    where = redact_url(settings.database.url)
    with store_session(settings, migrate=None) as store:
        _refuse_newer_schema(store, where)
        before = migrations.current_revision(store.engine)
        after = store.upgrade()
    if before == after:
        click.echo(f"database {where} already at revision {after} (head)")
    else:
        click.echo(f"database {where} upgraded from {before or 'empty'} to revision {after} (head)")
