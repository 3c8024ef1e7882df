"""Leader election on the ``leases`` row, on real SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from scheduler.elector import DatabaseLeaseLock
from scheduler.elector.record import LockError
from scheduler.store.engine import make_engine
from tests.test_elector import (
    Cluster,
    check_graceful_handover,
    check_outage_steps_down,
    check_takeover_after_kill,
    contention_rounds,
    create_tables,
)

NAME = "virtflow-scheduler"


@pytest.fixture
def schema(db_url: str) -> Iterator[str]:
    create_tables(db_url).dispose()
    yield db_url


@pytest.fixture
def cluster(schema: str) -> Iterator[Cluster]:
    engines: list[Engine] = []

    def new_lock() -> DatabaseLeaseLock:
        engine = make_engine(schema, pool_size=1)  # one engine per candidate, like separate processes
        engines.append(engine)
        return DatabaseLeaseLock(engine, NAME)

    candidates = Cluster(new_lock)
    yield candidates
    candidates.close()
    for engine in engines:
        engine.dispose()


def test_exactly_one_leader_over_rounds_of_contention(cluster: Cluster, schema: str) -> None:
    contention_rounds(cluster, graceful=8, kills=2)
    cluster.assert_one_leader_at_a_time()
    assert cluster.samples > 1000 and len(cluster.terms) >= 11
    engine = make_engine(schema)
    try:
        found = DatabaseLeaseLock(engine, NAME).get(timeout=5)
    finally:
        engine.dispose()
    assert found is not None and found[0].leader_transitions == max(t.epoch for t in cluster.terms)


def test_takeover_after_the_leader_is_killed(cluster: Cluster) -> None:
    check_takeover_after_kill(cluster)


def test_release_on_stop_hands_over_within_a_retry_period(cluster: Cluster) -> None:
    check_graceful_handover(cluster)


def test_database_outage_makes_the_leader_step_down(cluster: Cluster, schema: str) -> None:
    """The database stops answering lease writes: another session holds an exclusive lock
    (SQLite: BEGIN EXCLUSIVE on the file; PostgreSQL: LOCK TABLE leases), so every lease
    statement waits until its time limit, as with a hung or partitioned server."""
    held = threading.Event()
    release = threading.Event()
    url = make_url(schema)

    def hold_lock() -> None:
        if url.get_backend_name() == "sqlite":
            conn = sqlite3.connect(url.database or "", isolation_level=None, timeout=30)
            conn.execute("BEGIN EXCLUSIVE")
            held.set()
            release.wait(30)
            conn.execute("ROLLBACK")
            conn.close()
            return
        engine = make_engine(schema)
        with engine.connect() as conn, conn.begin():
            conn.execute(text("LOCK TABLE leases IN ACCESS EXCLUSIVE MODE"))
            held.set()
            release.wait(30)
        engine.dispose()

    holder = threading.Thread(target=hold_lock, daemon=True)

    def down() -> None:
        holder.start()
        assert held.wait(10)

    def up() -> None:
        release.set()
        holder.join(10)

    check_outage_steps_down(cluster, down, up)


def test_a_recreated_lease_starts_above_the_epoch_floor(db_url: str) -> None:
    """A replica that never saw a deleted lease must not restart epochs below the fence."""
    from scheduler.elector import DatabaseLeaseLock, Elector
    from scheduler.store import Store

    store = Store.from_url(db_url)
    store.upgrade()
    store.claim_fence(41, "old-leader")
    elector = Elector(
        DatabaseLeaseLock(store.engine, "floor-test"),
        "newcomer",
        lease_duration=1.0,
        renew_deadline=0.6,
        retry_period=0.15,
        epoch_floor=store.fence_epoch,
    )
    elector.start()
    try:
        assert elector.wait_for_leadership(5)
        assert elector.epoch == 42
        store.claim_fence(elector.epoch, "newcomer")  # accepted: not below the fence
    finally:
        elector.stop()
        store.close()


def test_a_lease_counter_below_the_fence_is_taken_over_above_it(db_url: str) -> None:
    """A lease whose ``transitions`` were lowered by hand (a reset row, a re-applied Lease manifest)
    is taken over above the fence, not at counter + 1, which the fence would refuse for the whole term.

    The floor fails twice first (database down): those attempts must not take the lease at a
    guessed epoch; the elector waits for a floor it can read.
    """
    from datetime import UTC, datetime

    from scheduler.elector import DatabaseLeaseLock, Elector, LeaderElectionRecord
    from scheduler.store import Store

    store = Store.from_url(db_url)
    store.upgrade()
    store.claim_fence(41, "old-leader")
    lock = DatabaseLeaseLock(store.engine, "reset-test")
    now = datetime.now(UTC)
    lock.create(LeaderElectionRecord("", 1.0, now, now, 3), timeout=5)  # released, counter reset to 3
    floor_reads: list[int] = []

    def flaky_floor() -> int:
        floor_reads.append(1)
        if len(floor_reads) <= 2:
            raise LockError("database down")
        return store.fence_epoch()

    elector = Elector(
        lock, "standby", lease_duration=1.0, renew_deadline=0.6, retry_period=0.15, epoch_floor=flaky_floor
    )
    elector.start()
    try:
        assert elector.wait_for_leadership(10)
        assert elector.epoch == 42
        assert len(floor_reads) == 3
        store.claim_fence(elector.epoch, "standby")  # accepted: above the fence
    finally:
        elector.stop()
        store.close()


def test_a_sqlite_file_moved_away_is_a_lock_error_not_a_crash(tmp_path: Path) -> None:
    """The engine refuses a file that left its path (DatabaseUnavailable); the lock says so as a LockError.

    The elector treats anything else as a bug of its own and logs a traceback at
    every retry while the file is away.
    """
    path = tmp_path / "lease.db"
    url = f"sqlite:///{path}"
    create_tables(url).dispose()
    engine = make_engine(url, pool_size=1)
    lock = DatabaseLeaseLock(engine, NAME)
    try:
        assert lock.get(timeout=5) is None
        aside = path.rename(tmp_path / "aside.db")
        with pytest.raises(LockError, match="was deleted or moved while in use"):
            lock.get(timeout=5)
        aside.rename(path)
        assert lock.get(timeout=5) is None
    finally:
        engine.dispose()
