"""Shared fixtures: real PostgreSQL, SQLite and RabbitMQ, isolated per test run.

Services are found from the environment (``TEST_POSTGRES_URL``,
``TEST_AMQP_URL``), else the local defaults (127.0.0.1, trust auth,
guest/guest). Where neither answers and a Docker engine exists, they are
started once per session with testcontainers. Nothing is mocked.

Isolation: every PostgreSQL-backed test gets its own schema (set through the
connection's ``search_path``), every AMQP test its own exchange and queue
names, so that concurrent runs and repeated runs never see each other's data.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from sqlalchemy import create_engine, text

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
RUN_ID = uuid.uuid4().hex[:8]


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or default_port), timeout=2):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_base_url() -> Iterator[str]:
    """A PostgreSQL URL for a database this run may create schemas in."""
    url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_PG)
    if _reachable(url, 5432):
        yield url
        return
    if not _docker_available():
        pytest.skip(f"PostgreSQL not reachable at {url} and no Docker engine to start one")
    from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]

    with PostgresContainer("postgres:16-alpine", driver=None) as pg:
        yield pg.get_connection_url()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ URL; tests isolate themselves with unique exchange and queue names."""
    url = os.environ.get("TEST_AMQP_URL", DEFAULT_AMQP)
    if _reachable(url, 5672):
        yield url
        return
    if not _docker_available():
        pytest.skip(f"RabbitMQ not reachable at {url} and no Docker engine to start one")
    from testcontainers.rabbitmq import RabbitMqContainer  # type: ignore[import-untyped]

    with RabbitMqContainer("rabbitmq:3.13-alpine") as mq:
        params = mq.get_connection_params()
        yield f"amqp://guest:guest@{params.host}:{params.port}/%2F"


def pg_schema_url(base_url: str, schema: str) -> str:
    """``base_url`` with every connection's search_path set to ``schema``."""
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_url(postgres_base_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL schema for one test, dropped afterwards."""
    schema = f"t_{RUN_ID}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_base_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield pg_schema_url(postgres_base_url, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file for one test."""
    return f"sqlite:///{tmp_path / 'scheduler.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL, each on an empty database."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def amqp_names() -> dict[str, str]:
    """Exchange and queue names unique to one test."""
    suffix = f"{RUN_ID}.{uuid.uuid4().hex[:8]}"
    return {"exchange": f"test.scheduler.{suffix}", "queue": f"test.requests.{suffix}"}


@pytest.fixture
def deployment(db_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """The two-pool fleet of ``tests/test_http_support.py`` on SQLite, then on PostgreSQL, with this
    test's broker names (modules that need an empty deployment define their own ``deployment``)."""
    from tests.test_http_support import make_deployment

    yield from make_deployment(db_url, amqp_url, amqp_names, tmp_path)


@pytest.fixture
def lite(sqlite_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """As ``deployment`` on SQLite only, for behaviour that does not depend on the database backend."""
    from tests.test_http_support import make_deployment

    yield from make_deployment(sqlite_url, amqp_url, amqp_names, tmp_path)


SERVICE_FIXTURES = frozenset({"postgres_base_url", "amqp_url", "sqlite_url", "pg_url", "db_url"})
"""A test that asks for any of these (directly or through another fixture) needs a real database or broker."""

PROCESS_MODULES = frozenset(
    {"test_lease_api_server", "test_elector", "test_elector_kubernetes", "test_dashboard", "test_deploy"}
)
"""Modules whose tests start servers, browsers or tools of their own: not pure either."""
PROCESS_TESTS = frozenset({"test_report_renders_its_plots_in_headless_chromium"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs a real service or process ``services``, so ``make test-fast``
    (``-m "not services and not slow and not deploy"``) runs the pure tests alone."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rpartition(".")[2] if item.module is not None else ""
        if names & SERVICE_FIXTURES or module in PROCESS_MODULES or item.name in PROCESS_TESTS:
            item.add_marker(pytest.mark.services)
