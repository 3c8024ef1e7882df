"""``scheduler worker``: wire the daemon's parts together and run it.

This is the one place that builds the real collaborators (engine and store,
elector, HTTP server) from the settings and hands them to
:class:`~scheduler.worker.daemon.Worker`; nothing below it reaches for a
global.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click
import structlog

from scheduler.cli.common import CliError, cli, settings_or_exit
from scheduler.cli.db import store_session
from scheduler.config import Settings

if TYPE_CHECKING:
    from scheduler.elector import LeaderElector
    from scheduler.store import Store


@cli.command("worker")
@click.option("--no-migrate", is_flag=True, help="do not run database migrations at start")
def worker_cmd(no_migrate: bool) -> None:
    """Run the daemon: campaign for leadership, consume, decide, commit, ack."""
    from scheduler.logging import configure_logging
    from scheduler.webhooks.signing import unsigned_refusal

    settings = settings_or_exit()
    refusal = unsigned_refusal(settings.webhooks)
    if refusal is not None:
        raise CliError(refusal, exit_code=2)
    configure_logging(settings.logging)
    migrate = settings.database.migrate_on_start and not no_migrate
    wait_for_database(settings, migrate=migrate)
    with store_session(settings, migrate=migrate, lock_wait=False) as store:
        code = run_worker(settings, store)
    sys.exit(code)


def wait_for_database(settings: Settings, *, migrate: bool) -> None:
    """Wait (up to ``worker.startup_timeout``) for the database to answer, then return.

    A database that is still starting (a pod scheduled before PostgreSQL is
    up) is waited for with capped backoff; one that never answers ends the
    command with one line naming the URL, password hidden. Problems that
    waiting cannot fix (a malformed URL, a schema too new) are left to
    :func:`store_session`, which reports them at once.
    """
    import random
    import time

    from sqlalchemy.exc import OperationalError

    from scheduler.store import DatabaseUnavailable, Store

    log = structlog.get_logger("scheduler.worker")
    deadline = time.monotonic() + settings.worker.startup_timeout
    delay = settings.worker.reconnect_initial_backoff
    while True:
        try:
            store = Store.from_url(settings.database.url)
        except ValueError:
            return
        try:
            store.fence_epoch() if not migrate else store.upgrade()
            return
        except (DatabaseUnavailable, OperationalError) as exc:
            from scheduler.store.errors import unavailable_message

            error = (
                str(exc) if isinstance(exc, DatabaseUnavailable) else unavailable_message(store.engine, exc)
            )
            if time.monotonic() + delay > deadline:
                raise CliError(
                    f"database unreachable for {settings.worker.startup_timeout:g}s at start-up: {error}"
                ) from None
            log.warning("database unreachable; waiting", error=error, retry_in=round(delay, 2))
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, settings.worker.reconnect_max_backoff)
        except Exception:
            return  # not a matter of waiting: store_session reports it
        finally:
            store.close()


def build_leadership(settings: Settings, store: Store) -> LeaderElector:
    """The elector for the configured backend; ``none`` reuses the fence's epoch."""
    from scheduler.elector import AlwaysLeader, LockError, build_elector, resolve_backend

    if resolve_backend(settings, os.environ) == "none":
        # A lone replica continues the epoch the database already has, so a
        # database once used with real election still accepts its commits.
        return AlwaysLeader(settings.identity, epoch=max(store.fence_epoch(), 1))
    try:
        return build_elector(settings, engine=store.engine, epoch_floor=store.fence_epoch)
    except LockError as exc:
        raise CliError(f"leader election: {exc}", exit_code=2) from None


def run_worker(settings: Settings, store: Store) -> int:
    """Build the worker with its metrics, HTTP face and elector, and run it until stopped."""
    from prometheus_client import CollectorRegistry

    from scheduler.gc_tuning import settle_long_running_process
    from scheduler.http import start_http
    from scheduler.metrics import install_metrics
    from scheduler.webhooks.dispatcher import WebhookDispatcher
    from scheduler.worker.daemon import StartupFailed, Worker

    log = structlog.get_logger("scheduler.worker")
    leadership = build_leadership(settings, store)
    registry = CollectorRegistry()
    holder: list[Worker] = []
    hooks, _ = install_metrics(
        registry,
        store=store,
        settings=settings,
        state=lambda: holder[0].state if holder else None,
        leadership=leadership,
    )
    worker = Worker(settings, store, leadership, hooks=hooks)
    holder.append(worker)
    worker.install_signal_handlers()
    try:
        server = start_http(settings, store, registry=registry, state=lambda: worker.state)
    except OSError as exc:
        ports = f"http.port {settings.http.port} / http.metrics_port {settings.http.metrics_port}"
        raise CliError(f"{ports}: {exc.strerror or exc}", exit_code=2) from None
    # Deliveries run on their own threads and only while this replica leads:
    # a slow receiver never slows scheduling, and the outbox survives failovers.
    # They yield to placements while groups are being committed (the activity counter).
    dispatcher = WebhookDispatcher(
        store, settings.webhooks, leadership.is_leader, activity=lambda: worker.state.committed
    )
    dispatcher.start()
    # What start-up made is never garbage: keep the collector from re-scanning it (gc_tuning).
    settle_long_running_process()
    log.info(
        "worker starting",
        identity=settings.identity,
        strategy=settings.strategy,
        election=leadership.backend,
        http=server.url if server else None,
    )
    try:
        return worker.run()
    except StartupFailed as exc:
        raise CliError(str(exc)) from None
    finally:
        dispatcher.stop()
        if server is not None:
            server.stop()
