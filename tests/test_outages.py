"""Outages and frozen processes: real workers, real RabbitMQ and PostgreSQL, faults from tests/fault_proxy.py.

Every test checks the result from the database afterwards (every task
terminal, no node overcommitted, no task allocated twice, one outbox event
per task) and that the workers are still running; none asserts how long
anything took (deadlines come from the configured timings, with slack for
a shared machine).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select, update

from scheduler.models import TaskStatus
from scheduler.producer.publisher import Outgoing
from scheduler.store import Store
from scheduler.store.schema import allocations, leases, tasks
from tests.fault_proxy import FaultProxy
from tests.harness import Deployment, make_nodes, make_requests, wait_until
from tests.lease_api_server import (  # noqa: F401  (fixtures are used by name)
    kubeconfig_fixture,
    lease_api_fixture,
)
from tests.store_checks import active_allocations

SHRUNK = {
    "SCHEDULER_ELECTION__LEASE_DURATION": "1.5",
    "SCHEDULER_ELECTION__RENEW_DEADLINE": "1.0",
    "SCHEDULER_ELECTION__RETRY_PERIOD": "0.25",
}
QUICK_RECONNECT = {"SCHEDULER_WORKER__RECONNECT_MAX_BACKOFF": "2"}


def _target(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _settle(dep: Deployment, ids: list[str], timeout: float = 120) -> None:
    states = dep.wait_terminal(ids, timeout=timeout)
    assert all(s is TaskStatus.SCHEDULED for s in states.values()), "the fleet has room for every request"
    dep.check_invariants()
    assert len(active_allocations(dep.store)) == len(ids)
    events = dep.outbox_counts()
    assert len(events) == len(ids) and set(events.values()) == {1}


def _burst_through(dep: Deployment, proxy: FaultProxy, mode: str, seconds: float, *, seed: int) -> list[str]:
    """A burst that runs into the fault: half published before it starts, half while it lasts."""
    requests = make_requests(1600, seed=seed)
    ids = dep.publish(Outgoing.request(r) for r in requests[:800])
    wait_until(lambda: sum(dep.store.task_counts().values()) >= 100, 60, "progress before the fault")
    proxy.fault(mode)
    started = time.monotonic()
    try:
        ids += dep.publish(
            Outgoing.request(r) for r in requests[800:]
        )  # the harness reaches the broker directly
        time.sleep(
            max(0.0, seconds - (time.monotonic() - started))
        )  # the fault's length, not a wait for a result
    finally:
        proxy.heal()
    return ids


# ------------------------------------------------------------------ broker faults


@pytest.fixture
def broker_proxy(amqp_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(*_target(amqp_url, 5672)) as proxy:
        yield proxy


@pytest.fixture
def pair(
    pg_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path, broker_proxy: FaultProxy
) -> Iterator[Deployment]:
    """Two workers electing through PostgreSQL, both reaching RabbitMQ only through the proxy."""
    dep = Deployment(
        pg_url,
        amqp_url,
        amqp_names["exchange"],
        amqp_names["queue"],
        tmp_path,
        election="database",
        extra_env={**SHRUNK, **QUICK_RECONNECT, "AMQP_URL": broker_proxy.url_through(amqp_url)},
    )
    dep.declare()
    try:
        yield dep
    finally:
        dep.close()


BROKER_FAULTS = [
    pytest.param("refuse", 0.5, id="refuse-0.5s"),
    pytest.param("reset", 0.5, id="reset-0.5s"),
    pytest.param("refuse", 5, id="refuse-5s"),
    pytest.param("blackhole", 5, id="blackhole-5s"),
    pytest.param("stall", 5, id="stall-5s"),
    pytest.param("refuse", 30, id="refuse-30s", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("mode", "seconds"), BROKER_FAULTS)
def test_broker_fault_during_a_burst(
    pair: Deployment, broker_proxy: FaultProxy, mode: str, seconds: float
) -> None:
    dep = pair
    dep.store.import_nodes(make_nodes(100))
    procs = [dep.start_worker(name) for name in ("w0", "w1")]
    wait_until(lambda: dep.store.fence_holder()[1] in ("w0", "w1"), 30, "a leader")
    ids = _burst_through(dep, broker_proxy, mode, seconds, seed=11)
    _settle(dep, ids)
    assert all(p.poll() is None for p in procs), "a broker outage must not end any replica"


def test_a_leader_cut_off_from_the_broker_hands_over_to_a_standby(
    electing: Deployment, broker_proxy: FaultProxy, amqp_url: str
) -> None:
    """The leader loses RabbitMQ (through its own proxy) but not the lease backend; the standby
    reaches RabbitMQ directly.

    Before, the leader kept renewing the lease while it reconnected, so the standby
    waited for the whole outage and nothing was placed. The tasks are published
    and must all be placed *while the leader is still cut off*.
    """
    _standby_places_while_the_leader_is_cut_off(electing, broker_proxy, "AMQP_URL", amqp_url, "cut-off")


def _standby_places_while_the_leader_is_cut_off(
    dep: Deployment, proxy: FaultProxy, key: str, url: str, prefix: str
) -> None:
    """Leader ``cut`` reaches the service at ``url`` (env ``key``) through ``proxy``, the standby
    directly; with the proxy refusing, every task is placed by the standby while ``cut`` still runs."""
    dep.store.import_nodes(make_nodes(20))
    dep.extra_env[key] = proxy.url_through(url)
    cut = dep.start_worker("cut")
    dep.wait_leading("cut", 60)
    del dep.extra_env[key]
    standby = dep.start_worker("standby")
    wait_until(lambda: "broker connected" in dep.log_of("standby"), 60, "the standby to connect")
    with proxy.during("refuse"):
        ids = dep.publish(Outgoing.request(r) for r in make_requests(30, prefix=prefix, seed=9))
        dep.wait_terminal(ids, timeout=60)
        assert dep.store.fence_holder()[1] == "standby"
    assert cut.poll() is None and standby.poll() is None
    dep.check_invariants()


# ---------------------------------------------------------------- database faults


@pytest.fixture
def db_proxy(postgres_base_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(*_target(postgres_base_url, 5432)) as proxy:
        yield proxy


@pytest.fixture
def lone(
    pg_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path, db_proxy: FaultProxy
) -> Iterator[Deployment]:
    """One worker whose every database connection goes through the proxy."""
    dep = Deployment(
        pg_url,
        amqp_url,
        amqp_names["exchange"],
        amqp_names["queue"],
        tmp_path,
        extra_env={**QUICK_RECONNECT, "DATABASE_URL": db_proxy.url_through(pg_url)},
    )
    dep.declare()
    try:
        yield dep
    finally:
        dep.close()


def test_a_leader_cut_off_from_the_database_hands_over_to_a_standby(
    pg_url: str,
    amqp_url: str,
    amqp_names: dict[str, str],
    tmp_path: Path,
    db_proxy: FaultProxy,
    kubeconfig: Path,
) -> None:
    """Kubernetes lease (tests/lease_api_server.py): the lease does not need the database, so a
    leader whose database connections (through its own proxy) are refused kept renewing it
    while retrying its term, and the standby, which reaches the database, waited for the
    whole outage. The tasks must all be placed *while the leader is still cut off*."""
    dep = Deployment(
        pg_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path, election="kubernetes",
        extra_env={**SHRUNK, **QUICK_RECONNECT, "KUBECONFIG": str(kubeconfig)},
    )  # fmt: skip
    dep.declare()
    try:
        _standby_places_while_the_leader_is_cut_off(dep, db_proxy, "DATABASE_URL", pg_url, "db-cut")
    finally:
        dep.close()


DB_FAULTS = [
    pytest.param("refuse", 0.5, id="refuse-0.5s"),
    pytest.param("reset", 0.5, id="reset-0.5s"),
    pytest.param("refuse", 5, id="refuse-5s"),
    pytest.param("blackhole", 5, id="blackhole-5s"),
    pytest.param("stall", 5, id="stall-5s"),
    pytest.param("blackhole", 30, id="blackhole-30s", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("mode", "seconds"), DB_FAULTS)
def test_database_fault_during_a_burst(
    lone: Deployment, db_proxy: FaultProxy, mode: str, seconds: float
) -> None:
    dep = lone
    dep.store.import_nodes(make_nodes(100))
    proc = dep.start_worker("w0")
    dep.wait_leading("w0")
    ids = _burst_through(dep, db_proxy, mode, seconds, seed=12)
    _settle(dep, ids)
    assert proc.poll() is None, "a database outage must not end the worker"


# ---------------------------------------------------------------- start-up


def _run_worker(dep: Deployment, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    dep.write_config()
    full = {**dep.env("starter"), **env}
    return subprocess.run(
        [sys.executable, "-m", "scheduler", "worker"],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=dep.workdir,
    )


@pytest.fixture
def lite(sqlite_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(sqlite_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path)
    try:
        yield dep
    finally:
        dep.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_startup_without_a_broker_waits_then_ends_with_one_line(lite: Deployment) -> None:
    port = _closed_port()
    done = _run_worker(
        lite,
        {"AMQP_URL": f"amqp://user:s3cr3t-pw@127.0.0.1:{port}/%2F", "SCHEDULER_WORKER__STARTUP_TIMEOUT": "2"},
        timeout=60,
    )
    assert done.returncode != 0
    err = done.stderr.strip().splitlines()
    assert err and err[-1].startswith("error: broker unreachable for 2s at start-up"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "s3cr3t-pw" not in done.stderr + done.stdout
    # It waited and retried rather than giving up on the first refusal.
    assert sum("reconnecting" in line for line in (done.stdout + done.stderr).splitlines()) >= 2


def test_startup_against_a_broker_that_never_answers_ends_with_one_line(
    lite: Deployment, amqp_url: str
) -> None:
    """A port that accepts and never speaks AMQP (a hung broker, a proxy with nothing behind it).

    pika gives the attempt up after its stack timeout with an exception that is
    not an ``AMQPError``; it ended the worker with a traceback (and the API
    with it) instead of the start-up wait and its one-line error.
    """
    with FaultProxy(*_target(amqp_url, 5672)) as proxy:
        proxy.fault("blackhole")
        done = _run_worker(
            lite,
            {"AMQP_URL": proxy.url_through(amqp_url), "SCHEDULER_WORKER__STARTUP_TIMEOUT": "2"},
            timeout=90,
        )
    assert "Traceback" not in done.stderr + done.stdout
    err = done.stderr.strip().splitlines()
    assert err and err[-1].startswith("error: broker unreachable for 2s at start-up"), done.stderr
    assert "no AMQP handshake within 15s" in err[-1]


def test_startup_without_a_database_waits_then_ends_with_one_line(lite: Deployment) -> None:
    port = _closed_port()
    done = _run_worker(
        lite,
        {
            "DATABASE_URL": f"postgresql://user:s3cr3t-pw@127.0.0.1:{port}/db",
            "SCHEDULER_WORKER__STARTUP_TIMEOUT": "2",
        },
        timeout=60,
    )
    assert done.returncode != 0
    err = done.stderr.strip().splitlines()
    assert err and err[-1].startswith("error: database unreachable for 2s at start-up"), done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "s3cr3t-pw" not in done.stderr + done.stdout


def test_startup_waits_for_a_broker_that_comes_up(lite: Deployment, amqp_url: str) -> None:
    """The broker refuses at first (through the proxy), then answers: the worker starts and serves."""
    with FaultProxy(*_target(amqp_url, 5672)) as proxy:
        proxy.fault("refuse")
        lite.extra_env.update(
            {"AMQP_URL": proxy.url_through(amqp_url), "SCHEDULER_WORKER__STARTUP_TIMEOUT": "60"}
        )
        lite.store.import_nodes(make_nodes(3))
        lite.declare()
        proc = lite.start_worker("w0")
        wait_until(lambda: proxy.connections >= 2, 30, "connection attempts while refused")
        assert proc.poll() is None
        proxy.heal()
        ids = lite.publish(Outgoing.request(r) for r in make_requests(5))
        lite.wait_terminal(ids, timeout=60)
        lite.stop_all()


# ------------------------------------------------------------ lease edited by hand


def test_a_lease_counter_reset_by_hand_does_not_stall_the_queue(electing: Deployment) -> None:
    """The lease's transition counter lowered by hand (``kubectl edit``, a Lease manifest re-applied
    with ``leaseTransitions: 0``, the ``leases`` row reset) while the fence is higher.

    The leader sees another epoch and steps down; the next term used to be counter + 1, below the
    fence: the fence claim was refused at every retry while the elector kept renewing that lease,
    so the healthy standby never got a chance and the queue stalled for good.
    """
    dep = electing
    dep.store.import_nodes(make_nodes(20))
    procs = {name: dep.start_worker(name) for name in ("w0", "w1")}
    wait_until(lambda: dep.store.fence_holder()[1] in procs, 60, "a first leader")
    for _ in range(2):  # graceful hand-overs raise the fence above 1
        epoch, leader = dep.store.fence_holder()
        assert leader is not None
        procs[leader].terminate()
        procs[leader].wait(30)
        wait_until(lambda e=epoch: dep.store.fence_holder()[0] > e, 60, "the standby to lead")
        procs[leader] = dep.start_worker(leader)
    fenced, _ = dep.store.fence_holder()
    assert fenced >= 3
    with dep.store.engine.begin() as conn:
        conn.execute(update(leases).values(transitions=0, version=leases.c.version + 1))
    wait_until(lambda: dep.store.fence_holder()[0] > fenced, 30, "a new term above the fence")
    ids = dep.publish(Outgoing.request(r) for r in make_requests(30, prefix="after-reset", seed=7))
    dep.wait_terminal(ids, timeout=60)
    assert all(p.poll() is None for p in procs.values())
    dep.check_invariants()


# ---------------------------------------------------------------- frozen leader


def _commits_by_epoch(dep: Deployment, epoch: int) -> tuple[int, int]:
    with dep.store.engine.connect() as conn:
        t = conn.execute(select(func.count()).select_from(tasks).where(tasks.c.epoch == epoch)).scalar_one()
        a = conn.execute(
            select(func.count()).select_from(allocations).where(allocations.c.epoch == epoch)
        ).scalar_one()
    return int(t), int(a)


def frozen_leader_takeover(dep: Deployment, lease: float) -> float:
    """SIGSTOP the leader; seconds to the new leader's first commit. The woken one must commit nothing."""
    dep.store.import_nodes(make_nodes(50))
    procs = {name: dep.start_worker(name) for name in ("w0", "w1")}
    wait_until(lambda: dep.store.fence_holder()[1] in procs, 60, "a first leader")
    warm = dep.publish(Outgoing.request(r) for r in make_requests(20, prefix="warm"))
    dep.wait_terminal(warm, timeout=60)
    old_epoch, victim = dep.store.fence_holder()
    assert victim is not None
    os.kill(procs[victim].pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        ids = dep.publish(Outgoing.request(r) for r in make_requests(200, prefix="after", seed=5))
        before = _commits_by_epoch(dep, old_epoch)
        # The goal is lease + 5 s; the deadline leaves room for a loaded machine.
        first = wait_until(
            lambda: dep.store.task_states(ids) and time.monotonic(),
            lease + 5 + 20,
            "the new leader's first commit",
        )
        took = float(first - frozen_at)
        dep.wait_terminal(ids, timeout=60)
    finally:
        os.kill(procs[victim].pid, signal.SIGCONT)
    # The woken process finds itself deposed: it must commit nothing more (the fence).
    wait_until(lambda: "stopped leading" in dep.log_of(victim) or procs[victim].poll() is not None, 60,
               "the woken leader to notice")  # fmt: skip
    late = dep.publish(Outgoing.request(r) for r in make_requests(50, prefix="late", seed=6))
    dep.wait_terminal(late, timeout=60)
    assert _commits_by_epoch(dep, old_epoch) == before, "the deposed leader committed after waking"
    assert dep.store.fence_holder()[0] > old_epoch
    dep.check_invariants()
    return took


@pytest.fixture
def electing(pg_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(
        pg_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path, election="database",
        extra_env=dict(SHRUNK),
    )  # fmt: skip
    dep.declare()
    try:
        yield dep
    finally:
        dep.close()


def test_frozen_leader_is_replaced_and_commits_nothing_after_waking(electing: Deployment) -> None:
    took = frozen_leader_takeover(electing, lease=1.5)
    print(f"frozen leader (lease 1.5 s): first commit by the new leader {took:.1f}s after SIGSTOP")


@pytest.mark.slow
def test_frozen_leader_with_default_timings(electing: Deployment) -> None:
    for key in SHRUNK:
        electing.extra_env.pop(key)
    took = frozen_leader_takeover(electing, lease=15)
    print(f"frozen leader (lease 15 s): first commit by the new leader {took:.1f}s after SIGSTOP")


# ---------------------------------------------------------------- readiness and cancels


def test_readyz_is_false_with_the_reason_while_the_leader_cannot_consume(
    lone: Deployment, db_proxy: FaultProxy
) -> None:
    import httpx

    dep = lone
    url = _ready(dep)
    db_proxy.fault("refuse")
    try:
        dep.publish(Outgoing.request(r) for r in make_requests(3, prefix="during"))

        def reasons() -> list[str] | None:
            response = httpx.get(f"{url}/readyz", timeout=10)
            got: list[str] = response.json()["reasons"]
            return (
                got if response.status_code == 503 and any(r.startswith("consumer:") for r in got) else None
            )

        found = wait_until(reasons, 60, "readyz to report the consumer down")
        assert any("leader not consuming: database unavailable" in r for r in found), found
    finally:
        db_proxy.heal()
    wait_until(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 60, "ready again")
    dep.wait_terminal([f"during-{i}" for i in range(3)], timeout=60)


def _ready_on_its_sqlite_file(dep: Deployment) -> tuple[str, Path]:
    """Start a worker serving HTTP on ``dep``'s SQLite file; its API URL once ready, and the file's path."""
    return _ready(dep), Path(dep.db_url.removeprefix("sqlite:///"))


def _ready(dep: Deployment) -> str:
    """Start a worker ``w0`` serving HTTP on three nodes; its API URL once ``/readyz`` says ready."""
    import httpx

    dep.http = True
    dep.store.import_nodes(make_nodes(3))
    dep.start_worker("w0")
    dep.wait_leading("w0")
    url = dep.http_url("w0")
    wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 30, "the worker ready")
    return url


def test_a_sqlite_file_moved_away_under_the_worker_is_not_written_nor_acked(lite: Deployment) -> None:
    """SQLite would go on writing the file it has open wherever it went; the worker must notice.

    While the file is away the leader stands down (nothing it commits would
    be found at the path again, so nothing may be acked), ``/readyz`` says
    why, and the requests stay in the queue; once the file is back they are
    placed, each once.
    """
    import httpx

    dep = lite
    url, path = _ready_on_its_sqlite_file(dep)
    aside = path.with_name("aside.db")
    path.rename(aside)
    try:
        dep.publish(Outgoing.request(r) for r in make_requests(3, prefix="away"))

        def refused() -> list[str] | None:
            response = httpx.get(f"{url}/readyz", timeout=10)
            got: list[str] = response.json()["reasons"]
            return got if response.status_code == 503 and dep.queue_depth(dep.queue) == 3 else None

        reasons = wait_until(refused, 60, "readyz to say the file is gone, with the requests still queued")
        assert any("was deleted or moved while in use" in r for r in reasons), reasons
    finally:
        aside.rename(path)
    assert dep.wait_terminal([f"away-{i}" for i in range(3)], timeout=60) == dict.fromkeys(
        [f"away-{i}" for i in range(3)], TaskStatus.SCHEDULED
    )
    assert sorted(a.task_id for a in active_allocations(dep.store)) == [f"away-{i}" for i in range(3)]
    wait_until(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 60, "ready again")


def test_a_sqlite_file_replaced_under_the_worker_is_refused_until_a_restart(lite: Deployment) -> None:
    """A copy put in the file's place (a restore, ``cp`` then ``mv``): new connections would read the copy,
    the open ones go on writing the old file, so placements would be acked into a file nobody reads.

    The worker refuses both until it is restarted on the new file, which then places what waited.
    """
    import sqlite3

    import httpx

    dep = lite
    url, path = _ready_on_its_sqlite_file(dep)
    copy = path.with_name("restored.db")
    with contextlib.closing(sqlite3.connect(path)) as src, contextlib.closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    os.replace(copy, path)
    dep.publish(Outgoing.request(r) for r in make_requests(3, prefix="restored"))

    def refused() -> list[str] | None:
        response = httpx.get(f"{url}/readyz", timeout=10)
        got: list[str] = response.json()["reasons"]
        return got if response.status_code == 503 and dep.queue_depth(dep.queue) == 3 else None

    reasons = wait_until(refused, 60, "readyz to say the file was replaced, with the requests still queued")
    assert any("was replaced by another file while in use" in r for r in reasons), reasons
    dep.stop_all()
    dep.store.close()  # the test's own store opened the old file too: it refuses the new one as well
    dep.store = Store.from_url(dep.db_url)
    dep.start_worker("w1")
    ids = [f"restored-{i}" for i in range(3)]
    assert dep.wait_terminal(ids, timeout=60) == dict.fromkeys(ids, TaskStatus.SCHEDULED)
    assert sorted(a.task_id for a in active_allocations(dep.store)) == ids


def test_a_release_before_its_request_cancels_it_for_good(lite: Deployment) -> None:
    dep = lite
    dep.store.import_nodes(make_nodes(3))
    dep.start_worker("w0")
    dep.wait_leading("w0")
    dep.publish([Outgoing.release("early")])
    wait_until(lambda: dep.statuses(["early"]).get("early") is TaskStatus.RELEASED, 30, "the cancel")
    late = make_requests(1, prefix="x")[0].model_copy(update={"task_id": "early"})
    dep.publish([Outgoing.request(late)])
    # Published after it on the same queue: once this one is decided, the late request was too.
    dep.publish(Outgoing.request(r) for r in make_requests(1, prefix="early-req"))
    dep.wait_terminal(["early-req-0"], timeout=30)
    record = dep.store.get_task("early")
    assert record is not None and record.status is TaskStatus.RELEASED and record.reason is not None
    assert record.reason.value == "cancelled"
    assert [a.task_id for a in active_allocations(dep.store)] == ["early-req-0"]
    assert "cancelled" in dep.log_of("w0")


def test_a_session_frozen_inside_a_transaction_does_not_hold_the_fence_for_ever(pg_url: str) -> None:
    """A leader frozen mid-commit keeps its connection and its row lock on the fence; PostgreSQL
    ends such a session (idle in transaction), so the next leader can claim the fence."""
    import threading

    from scheduler.store import Store
    from scheduler.store.schema import fence

    frozen, fresh = Store.from_url(pg_url), Store.from_url(pg_url)
    frozen.upgrade()
    frozen.claim_fence(1, "frozen")
    conn = frozen.engine.connect()
    try:
        conn.begin()
        conn.execute(select(fence.c.epoch).with_for_update()).all()  # then nothing: the client "freezes"
        claimed = threading.Event()

        def claim() -> None:
            fresh.claim_fence(2, "next")
            claimed.set()

        threading.Thread(target=claim, daemon=True).start()
        wait_until(claimed.is_set, 60, "the next leader to claim the fence")
        assert fresh.fence_holder() == (2, "next")
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        frozen.close()
        fresh.close()


# ------------------------------------------------------------ revoked credentials


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "--quiet", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def broker_user(amqp_url: str) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user of this test's own, on the local broker, managed with ``rabbitmqctl``."""
    parts = urlsplit(amqp_url)
    if parts.hostname not in ("127.0.0.1", "localhost") or os.geteuid() != 0:
        pytest.skip("revoking credentials needs rabbitmqctl on the local broker (as root)")
    try:
        _rabbitmqctl("status")
    except (OSError, subprocess.SubprocessError):
        pytest.skip("rabbitmqctl cannot reach the local broker")
    user, password = f"vf-revoke-{os.getpid()}-{time.monotonic_ns()}", "first-Secret-9f3a"
    _rabbitmqctl("add_user", user, password)
    try:
        _rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield user, password
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            _rabbitmqctl("delete_user", user)


def test_credentials_revoked_for_seconds_then_restored(
    sqlite_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path, broker_user: tuple[str, str]
) -> None:
    """The worker's password stops working and its connection is closed; it keeps retrying (not
    dying), and once the password works again it finishes every task. The password never
    appears in its log."""
    user, password = broker_user
    parts = urlsplit(amqp_url)
    worker_url = parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port or 5672}").geturl()
    dep = Deployment(
        sqlite_url,
        amqp_url,
        amqp_names["exchange"],
        amqp_names["queue"],
        tmp_path,
        extra_env={**QUICK_RECONNECT, "AMQP_URL": worker_url},
    )
    dep.declare()
    try:
        dep.store.import_nodes(make_nodes(100))
        proc = dep.start_worker("w0")
        dep.wait_leading("w0")
        requests = make_requests(800, seed=13)
        ids = dep.publish(Outgoing.request(r) for r in requests[:400])
        wait_until(lambda: sum(dep.store.task_counts().values()) >= 50, 60, "progress before the revocation")
        _rabbitmqctl("change_password", user, "revoked-Secret-0000")
        _rabbitmqctl("close_all_user_connections", user, "credentials revoked by the test")
        ids += dep.publish(Outgoing.request(r) for r in requests[400:])
        wait_until(
            lambda: (
                dep.log_of("w0").count("ACCESS_REFUSED - Login was refused") >= 3
                and "reconnecting" in dep.log_of("w0")
            ),
            60,
            "the worker to be refused by the broker, and keep trying",
        )
        assert proc.poll() is None, "refused credentials must not end the worker"
        _rabbitmqctl("change_password", user, password)
        _settle(dep, ids)
        assert proc.poll() is None
        assert password not in dep.log_of("w0")
    finally:
        dep.close()


# ------------------------------------------------------- a database that refuses writes
@pytest.fixture
def restricted_pg(postgres_base_url: str) -> Iterator[tuple[str, Any, str]]:
    """A schema and a PostgreSQL role of their own (the role owns the tables it creates), and an
    admin engine to revoke and grant the role's rights while a worker runs, and the role's
    ``tasks`` table (schema-qualified, quoted) and role name, ready for REVOKE/GRANT."""
    import uuid

    from sqlalchemy import create_engine, text

    from tests.conftest import pg_schema_url

    suffix = uuid.uuid4().hex[:10]
    schema, role = f"rv_{suffix}", f"rv_role_{suffix}"
    admin = create_engine(
        postgres_base_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{role}"'))
    parts = urlsplit(postgres_base_url)
    url = postgres_base_url.replace(f"//{parts.netloc}", f"//{role}@{parts.hostname}:{parts.port or 5432}", 1)
    try:
        yield pg_schema_url(url, schema), admin, f'"{schema}".tasks FROM "{role}"'

    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def test_requests_outlive_a_database_that_refuses_writes_for_many_group_retries(
    restricted_pg: tuple[str, Any, str], amqp_url: str, amqp_names: dict[str, str], tmp_path: Path
) -> None:
    """INSERT on ``tasks`` revoked from the worker's role mid-run: every group is refused and handed
    back. Those redeliveries counted against the messages, so after ``worker.max_redeliveries``
    refusals (3 here; 20 by default, a minute or two) every request was dead-lettered as "delivered
    N times" and never placed once the grant was back. Now they wait, /readyz says why, and all
    are placed when the database takes writes again."""
    import httpx
    from sqlalchemy import text

    url, admin, tasks_from_role = restricted_pg
    dep = Deployment(
        url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path, http=True,
        extra_env={"SCHEDULER_WORKER__MAX_REDELIVERIES": "3"},
    )  # fmt: skip
    try:
        dep.store.import_nodes(make_nodes(3))
        dep.start_worker()
        dep.wait_leading("worker-0")
        with admin.connect() as conn:
            conn.execute(text(f"REVOKE INSERT ON {tasks_from_role}"))
        ids = dep.publish(Outgoing.request(r) for r in make_requests(5, prefix="held"))
        log = lambda: dep.log_of("worker-0")  # noqa: E731
        dead = lambda: dep.queue_depth(dep.topology.dead_queue)  # noqa: E731
        wait_until(lambda: log().count("database error; group requeued") > 6 or dead(), 120, "refused groups")
        assert dead() == 0, "requests dead-lettered for the database's refusals"
        ready = httpx.get(dep.http_url("worker-0") + "/readyz", timeout=10)
        assert ready.status_code == 503 and "permission denied for table tasks" in ready.text
        with admin.connect() as conn:
            conn.execute(text(f"GRANT INSERT ON {tasks_from_role.replace(' FROM ', ' TO ')}"))
        states = dep.wait_terminal(ids, timeout=120)
        assert all(s is TaskStatus.SCHEDULED for s in states.values())
        assert dep.queue_depth(dep.topology.dead_queue) == 0
        dep.check_invariants()
        assert dep.procs[0].poll() is None
    finally:
        dep.close()
