"""The elector's loop, its interface, the factory and ``scheduler leader``.

The shared harness (:class:`Cluster`) lives here; the per-backend files
``test_elector_kubernetes.py`` and ``test_elector_database.py`` run the same
scenarios against the fake API server and against SQLite and PostgreSQL.

Timings are shrunk (lease 1.0 s, renew deadline 0.6 s, retry 0.15 s) and
every wait is a bounded poll on a condition.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from scheduler.cli.common import CliError, cli
from scheduler.cli.leader import leader_cmd  # noqa: F401  (registers the command)
from scheduler.config import Settings
from scheduler.elector import (
    AlwaysLeader,
    DatabaseLeaseLock,
    Elector,
    KubernetesLeaseLock,
    LeaderElectionRecord,
    Lock,
    LockConflict,
    build_elector,
    build_lock,
    read_leader,
    resolve_backend,
)
from scheduler.elector.elector import JITTER_FACTOR
from scheduler.elector.kubernetes_lock import resolve_namespace
from scheduler.elector.record import leader_info
from scheduler.store.engine import make_engine
from scheduler.store.schema import metadata
from tests.harness import wait_until as harness_wait_until
from tests.lease_api_server import (  # noqa: F401  (fixtures are used by name)
    LeaseApiServer,
    kubeconfig_fixture,
    lease_api_fixture,
)

LEASE = 1.0
RENEW = 0.6
RETRY = 0.15
TIMINGS = {"lease_duration": LEASE, "renew_deadline": RENEW, "retry_period": RETRY}
SLACK = 0.2
"""Scheduling noise allowed on top of a bound (threads, GIL, HTTP round trips)."""


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.005) -> Any:
    """The harness's poll-until, polling finely: election timings here are a few hundred ms."""
    return harness_wait_until(condition, timeout, what, interval=interval)


# -- the harness --------------------------------------------------------------------------------


@dataclass
class Term:
    identity: str
    epoch: int
    started: float
    ended: float | None = None


@dataclass
class Cluster:
    """Candidates on one lock, each with its own lock object (as separate processes would have),
    a sampler that checks ``is_leader()`` across them every millisecond, and a log of terms."""

    make_lock: Callable[[], Lock]
    electors: dict[str, Elector] = field(default_factory=dict)
    terms: list[Term] = field(default_factory=list)
    samples: int = 0
    violations: list[list[str]] = field(default_factory=list)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _sampler: threading.Thread | None = None
    _counter: int = 0

    def add(self, identity: str | None = None, **kwargs: Any) -> Elector:
        self._counter += 1
        name = identity or f"replica-{self._counter}"

        def started(epoch: int) -> None:
            with self._guard:
                self.terms.append(Term(name, epoch, time.monotonic()))

        def stopped() -> None:
            with self._guard:
                for term in self.terms:
                    if term.identity == name and term.ended is None:
                        term.ended = time.monotonic()

        elector = Elector(
            self.make_lock(),
            name,
            on_started_leading=started,
            on_stopped_leading=stopped,
            owns_lock=True,
            **{**TIMINGS, **kwargs},
        )
        with self._guard:
            self.electors[name] = elector
        elector.start()
        return elector

    def leaders(self) -> list[Elector]:
        with self._guard:
            electors = list(self.electors.values())
        return [e for e in electors if e.is_leader()]

    def wait_for_leader(self, timeout: float, exclude: tuple[Elector, ...] = ()) -> Elector:
        def one() -> Elector | None:
            found = [e for e in self.leaders() if e not in exclude]
            return found[0] if found else None

        leader: Elector = wait_until(one, timeout, "a leader")
        return leader

    def kill(self, elector: Elector) -> None:
        """What a crash looks like to the others: renewals stop, nothing is released."""
        elector.stop(release=False)
        with self._guard:
            self.electors = {k: v for k, v in self.electors.items() if v is not elector}

    def retire(self, elector: Elector) -> None:
        elector.stop()
        with self._guard:
            self.electors = {k: v for k, v in self.electors.items() if v is not elector}

    def start_sampling(self) -> None:
        def sample() -> None:
            while not self._stop.is_set():
                with self._guard:
                    electors = list(self.electors.values())
                leading = [e.identity for e in electors if e.is_leader()]
                self.samples += 1
                if len(leading) > 1:
                    self.violations.append(leading)
                time.sleep(0.001)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def close(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(5)
        with self._guard:
            electors = list(self.electors.values())
        for elector in electors:
            elector.stop()

    def assert_one_leader_at_a_time(self) -> None:
        assert not self.violations, f"two leaders at once: {self.violations[:5]}"
        with self._guard:
            terms = sorted(self.terms, key=lambda t: t.started)
        for before, after in itertools.pairwise(terms):
            assert before.ended is not None and before.ended <= after.started, (before, after)
            assert after.epoch > before.epoch, f"epoch did not increase: {before} -> {after}"


def contention_rounds(cluster: Cluster, *, graceful: int, kills: int) -> list[float]:
    """Three candidates started together, then rounds of hand-overs: ``graceful`` releases
    and ``kills``; a fresh candidate replaces each leader that leaves. Returns the takeover
    times after kills."""
    cluster.start_sampling()
    for _ in range(3):
        cluster.add()
    takeovers = []
    for round_no in range(graceful + kills):
        leader = cluster.wait_for_leader(LEASE + 3 * RETRY + SLACK)
        time.sleep(2 * RETRY)  # let everyone settle into watching the leader
        if round_no < kills:
            began = time.monotonic()
            cluster.kill(leader)
            cluster.wait_for_leader(LEASE + RETRY + SLACK + 0.5, exclude=(leader,))
            takeovers.append(time.monotonic() - began)
        else:
            cluster.retire(leader)
            cluster.wait_for_leader(RETRY + SLACK, exclude=(leader,))
        cluster.add()
    time.sleep(3 * RETRY)
    return takeovers


def check_takeover_after_kill(cluster: Cluster) -> None:
    """A killed leader is replaced after its lease expires: not before, and within L + r."""
    cluster.start_sampling()
    for _ in range(3):
        cluster.add()
    leader = cluster.wait_for_leader(LEASE + 3 * RETRY + SLACK)
    time.sleep(3 * RETRY)
    epoch = leader.epoch
    assert epoch is not None
    began = time.monotonic()
    cluster.kill(leader)
    successor = cluster.wait_for_leader(LEASE + RETRY + SLACK + 1.0, exclude=(leader,))
    took = time.monotonic() - began
    assert LEASE - RETRY - 0.05 <= took <= LEASE + RETRY + SLACK, f"takeover after {took:.3f} s"
    assert successor.epoch is not None and successor.epoch == epoch + 1
    cluster.assert_one_leader_at_a_time()


def check_graceful_handover(cluster: Cluster) -> None:
    """A released lease is taken within about one retry period, with the next epoch."""
    for _ in range(3):
        cluster.add()
    leader = cluster.wait_for_leader(LEASE + 3 * RETRY + SLACK)
    time.sleep(3 * RETRY)
    epoch = leader.epoch
    assert epoch is not None
    began = time.monotonic()
    cluster.retire(leader)
    assert not leader.is_leader()
    successor = cluster.wait_for_leader(RETRY + SLACK, exclude=(leader,))
    took = time.monotonic() - began
    assert took <= RETRY + 0.1, f"hand-over took {took:.3f} s"
    assert successor.epoch == epoch + 1
    cluster.assert_one_leader_at_a_time()


def check_outage_steps_down(
    cluster: Cluster, break_backend: Callable[[], None], heal: Callable[[], None]
) -> None:
    """With the backend gone, the leader is no longer leader within renew_deadline; after
    healing, leadership resumes with a higher epoch."""
    stops: list[float] = []
    leader = cluster.add("solo")
    leader_events = cluster.terms
    wait_until(leader.is_leader, LEASE + SLACK, "the first leader")
    standby = cluster.add("standby")
    time.sleep(3 * RETRY)
    epoch = leader.epoch
    assert epoch is not None and not standby.is_leader()
    began = time.monotonic()
    break_backend()
    try:
        wait_until(lambda: not leader.is_leader(), RENEW + 0.05, "the leader to step down")
        stepped = time.monotonic() - began
        wait_until(lambda: leader_events[-1].ended is not None, RENEW + SLACK, "on_stopped_leading")
        stops.append(time.monotonic() - began)
        assert stepped >= RENEW - RETRY - 0.05, f"stepped down too early ({stepped:.3f} s)"
        assert not standby.is_leader()
    finally:
        heal()
    successor = cluster.wait_for_leader(LEASE + 3 * RETRY + SLACK)
    assert successor.epoch is not None and successor.epoch > epoch
    cluster.assert_one_leader_at_a_time()


# -- fixtures -----------------------------------------------------------------------------------


def create_tables(url: str) -> Engine:
    """The schema, until the elector tests run the migrations themselves."""
    engine = make_engine(url)
    metadata.create_all(engine)
    return engine


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = create_tables(sqlite_url)
    yield engine
    engine.dispose()


def settings(**overrides: Any) -> Settings:
    election = {"lease_name": "virtflow-scheduler", **TIMINGS, **overrides.pop("election", {})}
    return Settings(identity=overrides.pop("identity", "me"), election=election, **overrides)


class GatedLock:
    """A real lock whose update() blocks while the gate is closed, ignoring its timeout:
    a request stuck in the kernel, as far as the elector can tell."""

    def __init__(self, inner: Lock) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.open = threading.Event()
        self.open.set()
        self.blocked = threading.Event()

    def get(self, *, timeout: float) -> tuple[LeaderElectionRecord, str] | None:
        return self.inner.get(timeout=timeout)

    def create(self, record: LeaderElectionRecord, *, timeout: float) -> str:
        return self.inner.create(record, timeout=timeout)

    def update(self, record: LeaderElectionRecord, version: str, *, timeout: float) -> str:
        if not self.open.is_set():
            self.blocked.set()
            self.open.wait(10)
        return self.inner.update(record, version, timeout=timeout)

    def describe(self) -> str:
        return "gated " + self.inner.describe()

    def close(self) -> None:
        self.inner.close()


# -- the elector itself --------------------------------------------------------------------------


def test_timings_are_validated(sqlite_engine: Engine) -> None:
    lock = DatabaseLeaseLock(sqlite_engine, "lease")
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        Elector(lock, "a", lease_duration=1, renew_deadline=1, retry_period=0.1)
    with pytest.raises(ValueError, match="identity"):
        Elector(lock, "", **TIMINGS)


def test_callbacks_epoch_and_idempotent_stop(sqlite_engine: Engine) -> None:
    calls: list[tuple[str, Any, bool]] = []
    holder: list[Elector] = []

    def record(name: str) -> Callable[..., None]:
        return lambda *args: calls.append((name, args, holder[0].is_leader()))

    elector = Elector(
        DatabaseLeaseLock(sqlite_engine, "lease"),
        "alpha",
        on_started_leading=record("started"),
        on_stopped_leading=record("stopped"),
        on_new_leader=record("new_leader"),
        **TIMINGS,
    )
    holder.append(elector)
    assert elector.epoch is None and not elector.is_leader()
    elector.start()
    assert elector.wait_for_leadership(LEASE + SLACK)
    assert elector.epoch == 0 and elector.leader == "alpha"
    elector.stop()
    elector.stop()  # idempotent
    assert not elector.is_leader()
    assert [c[0] for c in calls] == ["new_leader", "started", "stopped"]
    assert calls[1] == ("started", (0,), True)
    assert calls[2] == ("stopped", (), False), "is_leader() must be False when on_stopped_leading runs"
    found = DatabaseLeaseLock(sqlite_engine, "lease").get(timeout=1)
    assert found is not None and found[0].holder_identity == "" and found[0].leader_transitions == 0
    with pytest.raises(RuntimeError):
        elector.start()


def _holder(lock: DatabaseLeaseLock) -> str | None:
    """The lease's holder as stored (``""`` once released), None while there is no lease."""
    found = lock.get(timeout=1)
    return None if found is None else found[0].holder_identity


def test_a_leader_standing_aside_releases_the_lease_and_stops_campaigning(sqlite_engine: Engine) -> None:
    """``set_eligible(False)``: the worker lost its broker connection and cannot consume.

    Before, the elector knew nothing of it and kept renewing: a healthy standby
    waited behind the lease for the whole broker outage. Now ``is_leader()`` is
    False at once and the lease is released (holder ``""``), not left to expire.
    """
    lock = DatabaseLeaseLock(sqlite_engine, "lease")
    a = Elector(DatabaseLeaseLock(sqlite_engine, "lease"), "a", **TIMINGS)
    b = Elector(DatabaseLeaseLock(sqlite_engine, "lease"), "b", **TIMINGS)
    a.start()
    try:
        assert a.wait_for_leadership(LEASE + SLACK)
        a.set_eligible(False, "broker connection lost")
        assert not a.is_leader()

        wait_until(lambda: _holder(lock) == "", LEASE * 5, "the lease released")
        b.start()
        assert b.wait_for_leadership(LEASE * 5)
        assert not a.is_leader()
        b.stop()  # releases: a campaigns again only once eligible
        a.set_eligible(True)
        assert a.wait_for_leadership(LEASE * 5)
        assert a.epoch is not None and b.epoch is not None and a.epoch > b.epoch
    finally:
        a.stop()
        b.stop()


def test_a_leader_whose_loop_stalls_hands_the_lease_over(sqlite_engine: Engine) -> None:
    """``watch_liveness``: the owner's loop is stuck (a blocking call on its main thread).

    The elector renews on its own thread, so before it kept the lease renewed
    on time for an owner doing no work, and a healthy standby waited behind it
    for as long as the loop stayed stuck. The owner cannot say so itself (its
    loop is the stuck part): the elector asks before every renewal.
    """
    stalled: list[str] = []
    lock = DatabaseLeaseLock(sqlite_engine, "lease")
    a = Elector(DatabaseLeaseLock(sqlite_engine, "lease"), "a", **TIMINGS)
    b = Elector(DatabaseLeaseLock(sqlite_engine, "lease"), "b", **TIMINGS)
    a.watch_liveness(lambda: stalled[0] if stalled else None)
    a.start()
    try:
        assert a.wait_for_leadership(LEASE + SLACK)
        stalled.append("the worker's loop has not run for 20 s")

        wait_until(lambda: _holder(lock) == "", LEASE * 5, "the lease released")
        assert not a.is_leader()
        b.start()
        assert b.wait_for_leadership(LEASE * 5)
        b.stop()  # releases: a campaigns again once its loop runs
        stalled.clear()
        assert a.wait_for_leadership(LEASE * 5)
        assert a.epoch is not None and b.epoch is not None and a.epoch > b.epoch
    finally:
        a.stop()
        b.stop()


def test_a_liveness_check_that_raises_counts_as_alive(sqlite_engine: Engine) -> None:
    def broken() -> str | None:
        raise RuntimeError("check bug")

    elector = Elector(DatabaseLeaseLock(sqlite_engine, "lease"), "a", **TIMINGS)
    elector.watch_liveness(broken)
    elector.start()
    try:
        assert elector.wait_for_leadership(LEASE + SLACK)
        renewals = elector.renewals
        wait_until(lambda: elector.renewals >= renewals + 2, LEASE * 5, "two more renewals")
        assert elector.is_leader()
    finally:
        elector.stop()


def test_a_failing_callback_does_not_stop_the_elector(sqlite_engine: Engine) -> None:
    def boom(_: int) -> None:
        raise RuntimeError("callback bug")

    elector = Elector(DatabaseLeaseLock(sqlite_engine, "lease"), "a", on_started_leading=boom, **TIMINGS)
    elector.start()
    try:
        assert elector.wait_for_leadership(LEASE + SLACK)
        time.sleep(2 * RENEW)
        assert elector.is_leader()
    finally:
        elector.stop()


def test_is_leader_turns_false_at_the_deadline_while_the_loop_is_stuck(sqlite_engine: Engine) -> None:
    gated = GatedLock(DatabaseLeaseLock(sqlite_engine, "lease"))
    stopped = threading.Event()
    epochs: list[int] = []
    elector = Elector(gated, "a", on_stopped_leading=stopped.set, on_started_leading=epochs.append, **TIMINGS)
    elector.start()
    try:
        assert elector.wait_for_leadership(LEASE + SLACK)
        gated.open.clear()
        wait_until(gated.blocked.is_set, RETRY + SLACK, "the renewal to block")
        began = time.monotonic()
        wait_until(lambda: not elector.is_leader(), RENEW + 0.05, "is_leader() to turn False")
        assert time.monotonic() - began <= RENEW
        assert not stopped.is_set()  # the thread is still stuck: only the clock said so
        gated.open.set()
        # The late renewal lands, but the term is over: a new term with the next epoch follows.
        wait_until(stopped.is_set, SLACK, "on_stopped_leading after the stuck call returns")
        wait_until(lambda: len(epochs) == 2, LEASE + SLACK, "a new term")
        assert epochs == [0, 1] and elector.is_leader()
    finally:
        gated.open.set()
        elector.stop()


def test_retry_waits_are_jittered_as_client_go(sqlite_engine: Engine) -> None:
    import random

    elector = Elector(DatabaseLeaseLock(sqlite_engine, "lease"), "a", rng=random.Random(7), **TIMINGS)
    waits = [elector._acquire_wait(0.0) for _ in range(200)]
    assert all(RETRY <= w <= RETRY * (1 + JITTER_FACTOR) for w in waits)
    assert max(waits) - min(waits) > RETRY / 2


def test_a_standby_wakes_when_the_observed_lease_expires(sqlite_engine: Engine) -> None:
    lock = DatabaseLeaseLock(sqlite_engine, "lease")
    now = datetime.now(UTC)
    lock.create(LeaderElectionRecord("other", LEASE, now, now, 3), timeout=1)
    clock = [100.0]
    elector = Elector(lock, "a", monotonic=lambda: clock[0], **TIMINGS)
    assert not elector._try_acquire_or_renew(clock[0], clock[0] + 1, leading=False)
    assert RETRY * 0.8 <= elector._acquire_wait(clock[0]) <= RETRY  # watching: at most one retry period
    clock[0] += LEASE - 0.05
    assert elector._acquire_wait(clock[0]) == pytest.approx(0.051)  # wakes right at expiry
    clock[0] += 0.06
    assert elector._try_acquire_or_renew(clock[0], clock[0] + 1, leading=False)
    found = lock.get(timeout=1)
    assert found is not None and found[0].holder_identity == "a" and found[0].leader_transitions == 4


def test_a_leader_never_trusts_the_holders_wall_clock(sqlite_engine: Engine) -> None:
    """A renew time far in the past (a skewed holder) does not make the lease look expired."""
    lock = DatabaseLeaseLock(sqlite_engine, "lease")
    ancient = datetime.now(UTC) - timedelta(days=365)
    lock.create(LeaderElectionRecord("other", LEASE, ancient, ancient, 0), timeout=1)
    elector = Elector(lock, "a", **TIMINGS)
    assert not elector._try_acquire_or_renew(time.monotonic(), time.monotonic() + 1, leading=False)


def test_always_leader() -> None:
    events: list[Any] = []
    elector = AlwaysLeader(
        "solo", on_started_leading=events.append, on_stopped_leading=lambda: events.append("stopped")
    )
    assert not elector.is_leader() and elector.epoch is None
    elector.start()
    assert elector.is_leader() and elector.epoch == 1 and elector.wait_for_leadership(0)
    elector.stop()
    elector.stop()
    assert not elector.is_leader()
    assert events == [1, "stopped"]


# -- locks: the database lock's own contract (both backends) ------------------------------------


def test_database_lock_conflicts(db_url: str) -> None:
    engine = create_tables(db_url)
    try:
        lock = DatabaseLeaseLock(engine, "lease")
        assert lock.get(timeout=1) is None
        now = datetime.now(UTC).replace(microsecond=123456)
        record = LeaderElectionRecord("a", 15.0, now, now, 0)
        assert lock.create(record, timeout=1) == "1"
        with pytest.raises(LockConflict):
            lock.create(record, timeout=1)
        found = lock.get(timeout=1)
        assert found == (record, "1")
        assert found[0].renew_time is not None and found[0].renew_time.tzinfo is not None
        assert lock.update(LeaderElectionRecord("b", 15.0, now, now, 1), "1", timeout=1) == "2"
        with pytest.raises(LockConflict):
            lock.update(record, "1", timeout=1)
        with pytest.raises(LockConflict):
            lock.update(record, "not-a-version", timeout=1)
        released = LeaderElectionRecord("", 1.0, now, now, 1)
        assert lock.update(released, "2", timeout=1) == "3"
        assert lock.get(timeout=1) == (released, "3")
        assert DatabaseLeaseLock(engine, "other").get(timeout=1) is None
    finally:
        engine.dispose()


# -- the factory ---------------------------------------------------------------------------------


def test_backend_resolution() -> None:
    auto = settings(election={"backend": "auto"})
    assert resolve_backend(auto, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "kubernetes"
    assert resolve_backend(auto, {}) == "database"
    assert resolve_backend(settings(election={"backend": "none"}), {"KUBERNETES_SERVICE_HOST": "x"}) == "none"


def test_namespace_resolution(tmp_path: Path) -> None:
    sa = tmp_path / "namespace"
    assert resolve_namespace("explicit", context_namespace="ctx", service_account_file=sa) == "explicit"
    assert resolve_namespace(None, context_namespace="ctx", service_account_file=sa) == "ctx"
    assert resolve_namespace(None, service_account_file=sa) == "default"
    sa.write_text("from-sa\n")
    assert resolve_namespace(None, context_namespace="ctx", service_account_file=sa) == "from-sa"


def test_factory_builds_each_backend(kubeconfig: Path, sqlite_engine: Engine, tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(kubeconfig)}
    missing = tmp_path / "no-sa"
    k8s_lock = build_lock(
        settings(election={"backend": "kubernetes"}), environ=env, service_account_file=missing
    )
    assert isinstance(k8s_lock, KubernetesLeaseLock)
    assert k8s_lock.namespace == "scheduler-test" and k8s_lock.name == "virtflow-scheduler"
    k8s_lock.close()
    pinned = build_lock(
        settings(election={"backend": "kubernetes", "namespace": "prod"}),
        environ=env,
        service_account_file=missing,
    )
    assert isinstance(pinned, KubernetesLeaseLock) and pinned.namespace == "prod"
    pinned.close()

    db = build_elector(settings(election={"backend": "auto"}), engine=sqlite_engine, environ={})
    assert isinstance(db, Elector) and db.backend == "database" and db.identity == "me"
    none = build_elector(settings(election={"backend": "none"}), environ={})
    assert isinstance(none, AlwaysLeader)


def test_read_leader_estimates_expiry(sqlite_engine: Engine) -> None:
    now = datetime.now(UTC)
    s = settings(election={"backend": "database"})
    assert read_leader(s, engine=sqlite_engine, environ={}).holder is None
    lock = DatabaseLeaseLock(sqlite_engine, "virtflow-scheduler")
    lock.create(LeaderElectionRecord("pod-a", 15.0, now - timedelta(seconds=60), now, 4), timeout=1)
    info = read_leader(s, engine=sqlite_engine, environ={}, now=now + timedelta(seconds=1))
    assert (info.holder, info.epoch, info.expired, info.backend) == ("pod-a", 4, False, "database")
    later = leader_info(
        "database", "x", LeaderElectionRecord("pod-a", 15.0, now, now, 4), now=now + timedelta(seconds=16)
    )
    assert later.expired is True


# -- scheduler leader ------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    for name in (
        "ELECTION_BACKEND",
        "DATABASE_URL",
        "KUBECONFIG",
        "KUBERNETES_SERVICE_HOST",
        "POD_NAMESPACE",
    ):
        monkeypatch.delenv(name, raising=False)
    return {"SCHEDULER_CONFIG": str(config)}


def test_leader_command_on_the_database(sqlite_url: str, cli_env: dict[str, str]) -> None:
    engine = create_tables(sqlite_url)
    env = {**cli_env, "DATABASE_URL": sqlite_url, "ELECTION_BACKEND": "database"}
    runner = CliRunner()
    try:
        empty = runner.invoke(cli, ["leader"], env=env)
        assert empty.exit_code == 0 and "no leader" in empty.output
        disabled = runner.invoke(cli, ["leader", "--json"], env={**env, "ELECTION_BACKEND": "none"})
        assert json.loads(disabled.output)["backend"] == "none"

        now = datetime.now(UTC)
        DatabaseLeaseLock(engine, "virtflow-scheduler").create(
            LeaderElectionRecord("pod-a", 15.0, now, now, 7), timeout=1
        )
        text = runner.invoke(cli, ["leader"], env=env)
        assert text.exit_code == 0, text.output
        assert "pod-a" in text.output and "epoch:         7" in text.output and "expired: no" in text.output
        as_json = runner.invoke(cli, ["leader", "--json"], env=env)
        document = json.loads(as_json.output)
        assert document["holder"] == "pod-a" and document["epoch"] == 7 and document["expired"] is False
        assert document["backend"] == "database" and document["renew_time"].endswith("Z")
    finally:
        engine.dispose()


def test_leader_command_on_kubernetes(kubeconfig: Path, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "KUBECONFIG": str(kubeconfig), "ELECTION_BACKEND": "kubernetes"}
    elector = build_elector(
        settings(identity="pod-k", election={"backend": "kubernetes"}),
        environ={"KUBECONFIG": str(kubeconfig)},
    )
    elector.start()
    try:
        assert elector.wait_for_leadership(LEASE + SLACK)
        document = json.loads(CliRunner().invoke(cli, ["leader", "--json"], env=env).output)
        assert document["holder"] == "pod-k" and document["epoch"] == 0
        assert document["lock"] == "kubernetes lease scheduler-test/virtflow-scheduler"
    finally:
        elector.stop()


def test_leader_command_without_a_service_is_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    closed = LeaseApiServer()
    kubeconfig = closed.write_kubeconfig(tmp_path / "kubeconfig")
    closed.stop()  # nothing listens on that port any more: connection refused
    env = {**cli_env, "KUBECONFIG": str(kubeconfig), "ELECTION_BACKEND": "kubernetes"}
    result = CliRunner().invoke(cli, ["leader"], env=env)
    assert isinstance(result.exception, CliError)
    assert "cannot read kubernetes lease" in str(result.exception) and "\n" not in str(result.exception)

    missing = {**cli_env, "DATABASE_URL": f"sqlite:///{tmp_path / 'nope.db'}", "ELECTION_BACKEND": "database"}
    result = CliRunner().invoke(cli, ["leader"], env=missing)
    assert isinstance(result.exception, CliError) and "does not exist" in str(result.exception)
    assert not (tmp_path / "nope.db").exists()

    refused = {
        **cli_env,
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "ELECTION_BACKEND": "database",
    }
    process = subprocess.run(
        [sys.executable, "-c", "from scheduler.cli import main; main()", "leader"],
        env={**refused, "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 1
    assert process.stderr.startswith("error: cannot read lease virtflow-scheduler")
    assert "Traceback" not in process.stderr and process.stderr.count("\n") == 1
