"""The store's exceptions, and the one place a failed connect becomes :class:`DatabaseUnavailable`.

Callers (CLI, worker, HTTP API) distinguish these by type: a fenced-out
commit means "stop leading", an unreachable database means "retry later", a
bad nodes file means "tell the operator which node and which field".
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import OperationalError

from scheduler.safetext import first_line
from scheduler.store.engine import DatabaseUnavailable, describe_url


class FencedOut(Exception):
    """A newer leader holds the fence: this caller's epoch is stale and nothing was written."""

    def __init__(self, stored: int, epoch: int):
        super().__init__(f"fenced out: stored epoch {stored} is newer than this writer's epoch {epoch}")
        self.stored = stored
        self.epoch = epoch


class NotMigrated(Exception):
    """The database schema is missing or older than this code expects."""


class UnknownNode(LookupError):
    """A node name that is not in the inventory."""

    def __init__(self, name: str):
        super().__init__(f"unknown node {name!r}")
        self.name = name


class NodesFileError(ValueError):
    """A fleet file that cannot be imported; the message names the node (index, name) and field."""


def unavailable_message(engine: Engine, exc: BaseException) -> str:
    """``cannot reach database URL: <first line of the driver's reason>``, password hidden."""
    # Named as the operator wrote it (postgresql://), not as the driver sees it (postgresql+psycopg://).
    url = engine.url.set(drivername=engine.url.get_backend_name()).render_as_string(hide_password=False)
    orig = getattr(exc, "orig", None) or exc
    reason = first_line(orig, 1000)
    password = engine.url.password
    if password:
        reason = reason.replace(str(password), "***")
    return f"cannot reach database {describe_url(url)}: {reason}"


def connect(engine: Engine) -> Connection:
    """``engine.connect()``, with a connect failure turned into :class:`DatabaseUnavailable`.

    Only the connect is wrapped: an ``OperationalError`` inside a transaction
    (a lock timeout, a serialization failure) is a different problem and
    keeps its own type.
    """
    try:
        return engine.connect()
    except OperationalError as exc:
        raise DatabaseUnavailable(unavailable_message(engine, exc)) from None
