"""Chaos: three real workers on PostgreSQL, the leader SIGKILLed twice in a burst.

Shrunk lease timings (1.5 s / 1.0 s / 0.25 s) keep failovers quick; the
invariants are checked from the database afterwards, not from any process's
memory: every task terminal, no node overcommitted, no task allocated twice,
exactly one outbox event per terminal task.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.models import TaskStatus
from scheduler.producer.publisher import Outgoing
from tests.harness import Deployment, make_nodes, make_requests, wait_until
from tests.store_checks import active_allocations

SHRUNK = {
    "SCHEDULER_ELECTION__LEASE_DURATION": "1.5",
    "SCHEDULER_ELECTION__RENEW_DEADLINE": "1.0",
    "SCHEDULER_ELECTION__RETRY_PERIOD": "0.25",
}


@pytest.fixture
def cluster(pg_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(
        pg_url,
        amqp_url,
        amqp_names["exchange"],
        amqp_names["queue"],
        tmp_path,
        election="database",
        extra_env=dict(SHRUNK),
    )
    try:
        yield dep
    finally:
        dep.close()


def _leader(dep: Deployment) -> str | None:
    return dep.store.fence_holder()[1]


@pytest.mark.slow
def test_three_workers_leader_killed_twice_invariants_hold(cluster: Deployment) -> None:
    dep = cluster
    seed = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"chaos seed {seed}")
    dep.store.import_nodes(make_nodes(300))
    procs = {name: dep.start_worker(name) for name in ("w0", "w1", "w2")}
    first = wait_until(lambda: _leader(dep), 20, "a first leader")
    epochs = [dep.store.fence_holder()[0]]
    ids = dep.publish(Outgoing.request(r) for r in make_requests(3000, seed=seed))
    killed: list[str] = []
    for _round in range(2):
        done_before = sum(dep.store.task_counts().values())
        # A random moment: after a random number of further decisions.
        target = min(done_before + rng.randint(50, 600), 2900)
        wait_until(
            lambda t=target: sum(dep.store.task_counts().values()) >= t, 60, "progress before the kill"
        )
        victim = _leader(dep)
        assert victim in procs
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        killed.append(victim)
        wait_until(lambda v=victim: _leader(dep) not in (None, v), 15, f"a new leader after killing {victim}")
        epochs.append(dep.store.fence_holder()[0])
        procs[victim] = dep.start_worker(f"{victim}-again")
    states = dep.wait_terminal(ids, timeout=120)
    assert all(s is TaskStatus.SCHEDULED for s in states.values()), "the fleet has room for every request"
    dep.check_invariants()
    assert len(active_allocations(dep.store)) == len(ids)
    events = dep.outbox_counts()
    assert len(events) == len(ids) and set(events.values()) == {1}
    assert epochs == sorted(epochs) and len(set(epochs)) == 3, f"epochs must grow on each takeover: {epochs}"
    assert first in killed
