"""Building the lock and the elector from :class:`~scheduler.config.Settings`.

The environment is passed in (``environ``) rather than read here, so tests
and the CLI decide what "in a cluster" means; the worker passes
``os.environ``. The worker should pass its own engine for the ``database``
backend; without one, an engine is made from ``database.url`` and disposed
with the lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from scheduler.elector.database_lock import DatabaseLeaseLock
from scheduler.elector.elector import Elector
from scheduler.elector.kubernetes_lock import (
    SERVICE_ACCOUNT_NAMESPACE,
    KubernetesLeaseLock,
    in_cluster,
    load_api_client,
    resolve_namespace,
)
from scheduler.elector.none import AlwaysLeader
from scheduler.elector.record import (
    LeaderElector,
    LeaderInfo,
    Lock,
    LockError,
    NewLeader,
    StartedLeading,
    StoppedLeading,
    leader_info,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from scheduler.config import Settings

Backend = Literal["kubernetes", "database", "none"]

READ_TIMEOUT = 5.0
"""Seconds ``read_leader`` waits for the API server or the database."""


def resolve_backend(settings: Settings, environ: Mapping[str, str]) -> Backend:
    """``auto`` is ``kubernetes`` inside a cluster (``KUBERNETES_SERVICE_HOST`` set), else ``database``."""
    backend = settings.election.backend
    if backend == "auto":
        return "kubernetes" if in_cluster(environ) else "database"
    return backend


def build_lock(
    settings: Settings,
    *,
    engine: Engine | None = None,
    environ: Mapping[str, str] | None = None,
    service_account_file: Path = SERVICE_ACCOUNT_NAMESPACE,
) -> Lock:
    """The lock for the configured backend (``kubernetes`` or ``database``).

    Raises :class:`LockError` when the Kubernetes client cannot be configured,
    and ValueError for backend ``none``, which has no lock.
    """
    env = os.environ if environ is None else environ
    backend = resolve_backend(settings, env)
    name = settings.election.lease_name
    if backend == "kubernetes":
        api_client, context_namespace = load_api_client(env)
        namespace = resolve_namespace(
            settings.election.namespace,
            context_namespace=context_namespace,
            service_account_file=service_account_file,
        )
        return KubernetesLeaseLock(api_client, namespace, name, owns_client=True)
    if backend == "database":
        if engine is not None:
            return DatabaseLeaseLock(engine, name)
        from scheduler.store.engine import make_engine

        return DatabaseLeaseLock(make_engine(settings.database.url, pool_size=1), name, owns_engine=True)
    raise ValueError("backend none has no lock")


def build_elector(
    settings: Settings,
    *,
    engine: Engine | None = None,
    environ: Mapping[str, str] | None = None,
    on_started_leading: StartedLeading | None = None,
    on_stopped_leading: StoppedLeading | None = None,
    on_new_leader: NewLeader | None = None,
    release_on_stop: bool = True,
    service_account_file: Path = SERVICE_ACCOUNT_NAMESPACE,
    epoch_floor: Callable[[], int] | None = None,
) -> LeaderElector:
    """The elector for ``settings.election`` and ``settings.identity``; call ``start()`` on it."""
    env = os.environ if environ is None else environ
    if resolve_backend(settings, env) == "none":
        return AlwaysLeader(
            settings.identity,
            on_started_leading=on_started_leading,
            on_stopped_leading=on_stopped_leading,
            on_new_leader=on_new_leader,
        )
    election = settings.election
    lock = build_lock(settings, engine=engine, environ=env, service_account_file=service_account_file)
    return Elector(
        lock,
        settings.identity,
        lease_duration=election.lease_duration,
        renew_deadline=election.renew_deadline,
        retry_period=election.retry_period,
        on_started_leading=on_started_leading,
        on_stopped_leading=on_stopped_leading,
        on_new_leader=on_new_leader,
        release_on_stop=release_on_stop,
        owns_lock=True,
        epoch_floor=epoch_floor,
    )


def read_leader(
    settings: Settings,
    *,
    engine: Engine | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float = READ_TIMEOUT,
    now: datetime | None = None,
    service_account_file: Path = SERVICE_ACCOUNT_NAMESPACE,
) -> LeaderInfo:
    """Who holds the lease now, read once; raises :class:`LockError` if the backend is unreachable."""
    env = os.environ if environ is None else environ
    backend = resolve_backend(settings, env)
    if backend == "none":
        return LeaderInfo("none", "no election (backend none)", None, None, None, None, None, None)
    if backend == "database" and engine is None:
        _require_sqlite_file(settings.database.url)
    lock = build_lock(settings, engine=engine, environ=env, service_account_file=service_account_file)
    try:
        found = lock.get(timeout=timeout)
    finally:
        lock.close()
    return leader_info(backend, lock.describe(), found[0] if found else None, now=now or datetime.now(UTC))


def _require_sqlite_file(url: str) -> None:
    """A reader must not create an empty SQLite file where the database was expected."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    if not Path(parsed.database).exists():
        raise LockError(f"database file {parsed.database} does not exist (run `scheduler db upgrade`)")


__all__ = ["LockError", "build_elector", "build_lock", "read_leader", "resolve_backend"]
