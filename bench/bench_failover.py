"""Failover benchmark: leader SIGKILL / graceful stop / freeze -> the new leader's first commit.

Two real workers on PostgreSQL with the database lease, a steady stream of
requests (200/s), the leader stopped; the figure is the time from the stop to
the first task committed under the new leader's epoch (``tasks.epoch``),
with the default timings (15 / 10 / 2 s) and the shrunk ones the tests use
(1.5 / 1.0 / 0.25 s). SIGSTOP freezes the leader (it is woken at the end):
the goal is a first commit within lease_duration + 5 s, which needs the
broker to drop the frozen consumer, hence the AMQP heartbeat of at most a
third of the lease. Then the cost of lease renewals on the leader's
throughput: the same burst with election ``none`` and with the database lease
at each timing.

Usage: ``.venv/bin/python bench/bench_failover.py [--skip-default]``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import AMQP, PG, end_to_end  # noqa: E402
from scheduler.producer.publisher import Outgoing, Publisher  # noqa: E402
from scheduler.store.schema import tasks  # noqa: E402
from tests.harness import Deployment, make_nodes, make_requests, wait_until  # noqa: E402

TIMINGS = {
    "default 15/10/2": {},
    "shrunk 1.5/1.0/0.25": {
        "SCHEDULER_ELECTION__LEASE_DURATION": "1.5",
        "SCHEDULER_ELECTION__RENEW_DEADLINE": "1.0",
        "SCHEDULER_ELECTION__RETRY_PERIOD": "0.25",
    },
}


def pg_deployment(workdir: Path, election: str, env: dict[str, str]) -> tuple[Deployment, str]:
    schema = f"bench_fo_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = f"{PG}?options={quote(f'-csearch_path={schema}')}"
    suffix = uuid.uuid4().hex[:8]
    dep = Deployment(
        url, AMQP, f"bench.fo.{suffix}", f"bench.fo.{suffix}", workdir, election=election, extra_env=dict(env)
    )
    return dep, schema


def drop(schema: str) -> None:
    admin = create_engine(PG.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def failover_seconds(env: dict[str, str], how: signal.Signals) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        dep, schema = pg_deployment(Path(tmp), "database", env)
        stop = threading.Event()
        try:
            dep.store.import_nodes(make_nodes(1000))
            procs = {n: dep.start_worker(n) for n in ("a", "b")}
            leader = wait_until(lambda: dep.store.fence_holder()[1], 60, "a leader")
            old_epoch = dep.store.fence_holder()[0]

            def stream() -> None:
                reqs = iter(make_requests(100_000, prefix="fo"))
                publisher = Publisher(dep.amqp_url, dep.topology, window=64)

                def gen():  # type: ignore[no-untyped-def]
                    for r in reqs:
                        if stop.is_set():
                            return
                        yield Outgoing.request(r)

                publisher.publish(gen(), rate=200)

            threading.Thread(target=stream, daemon=True).start()
            wait_until(lambda: sum(dep.store.task_counts().values()) > 100, 30, "traffic")
            stopped_at = datetime.now(UTC)
            victim = procs[leader]
            victim.send_signal(how)

            def first_new_commit() -> datetime | None:
                with dep.store.engine.connect() as conn:
                    value = conn.execute(
                        select(func.min(tasks.c.updated_at)).where(tasks.c.epoch > old_epoch)
                    ).scalar()
                return value  # type: ignore[no-any-return]

            first = wait_until(first_new_commit, 120, "the new leader's first commit", interval=0.05)
            stamp = first if first.tzinfo else first.replace(tzinfo=UTC)
            return (stamp - stopped_at).total_seconds()
        finally:
            if how is signal.SIGSTOP:
                victim.send_signal(signal.SIGCONT)
            stop.set()
            dep.close()
            drop(schema)


def throughput(election: str, env: dict[str, str], burst: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        dep, schema = pg_deployment(Path(tmp), election, env)
        try:
            dep.store.import_nodes(make_nodes(1000))
            dep.start_worker("t")
            wait_until(lambda: dep.store.fence_holder()[1] == "t", 60, "leading")
            end_to_end(dep, 500, "warm")
            return end_to_end(dep, burst, "tp")
        finally:
            dep.close()
            drop(schema)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-default", action="store_true", help="only the shrunk timings (quick)")
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--skip-throughput", action="store_true", help="only the failover figures")
    args = parser.parse_args()
    print(
        "failover benchmark, PostgreSQL, 2 workers, 1,000 nodes, 200 requests/s; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"{'timings':<22} {'SIGKILL -> first commit':>24} {'SIGTERM -> first commit':>24}"
        f" {'SIGSTOP -> first commit':>24} {'SIGSTOP goal':>13}"
    )
    for name, env in TIMINGS.items():
        if args.skip_default and not env:
            continue
        kill = failover_seconds(env, signal.SIGKILL)
        term = failover_seconds(env, signal.SIGTERM)
        frozen = failover_seconds(env, signal.SIGSTOP)
        lease = float(env.get("SCHEDULER_ELECTION__LEASE_DURATION", 15))
        print(
            f"{name:<22} {kill:>22.2f} s {term:>22.2f} s {frozen:>22.2f} s {'<= ' + f'{lease + 5:g} s':>13}"
        )
    print(
        "bounds: SIGKILL <= lease_duration + retry_period (+ reload); "
        "SIGTERM ~ one retry period (lease released); SIGSTOP <= lease_duration + 5 s"
    )
    if args.skip_throughput:
        return
    base = throughput("none", {}, args.burst)
    print(f"throughput, election none: {base:,.0f} tasks/s")
    for name, env in TIMINGS.items():
        tp = throughput("database", env, args.burst)
        print(
            f"throughput, database lease {name}: {tp:,.0f} tasks/s "
            f"({(base - tp) / base:+.1%} cost); goal < 2%"
        )


if __name__ == "__main__":
    main()
