"""Outage benchmark: recovery after a broker or database outage, and raw fuzz survived.

One real worker on PostgreSQL (election ``none``, default timings), a steady
stream of requests (200/s) published straight to RabbitMQ; the worker's own
connection to RabbitMQ, or to PostgreSQL, goes through the fault proxy of
``tests/fault_proxy.py``, which refuses every connection (and resets the
open ones) for 5 s, then 30 s. The figure is the time from the end of the
outage to the first task committed that was published during it. Then a
raw fuzz run: hypothesis-made bodies published straight to the exchange;
the figure is how many the worker took (each a terminal task or a dead
letter) while staying alive.

Usage: ``.venv/bin/python bench/bench_outages.py [--fuzz 500] [--skip-30]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
import warnings
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import AMQP, PG  # noqa: E402
from scheduler.producer.publisher import Outgoing, Publisher  # noqa: E402
from scheduler.store.schema import tasks  # noqa: E402
from tests.fault_proxy import FaultProxy  # noqa: E402
from tests.harness import TERMINAL, Deployment, make_nodes, make_requests, wait_until  # noqa: E402
from tests.test_outages import _target, _via  # noqa: E402

GOAL_SECONDS = 6.0
"""Recovery goal: committing again within the longest reconnect wait (5 s by default) + 1 s."""


def deployment(workdir: Path, env: dict[str, str]) -> tuple[Deployment, str]:
    schema = f"bench_out_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = f"{PG}?options={quote(f'-csearch_path={schema}')}"
    suffix = uuid.uuid4().hex[:8]
    dep = Deployment(url, AMQP, f"bench.out.{suffix}", f"bench.out.{suffix}", workdir, extra_env=env)
    return dep, schema


def drop(schema: str) -> None:
    admin = create_engine(PG.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def recovery_seconds(kind: str, outage: float) -> float:
    """Seconds from the end of an outage of ``kind`` (broker, database) to the next commit."""
    target = _target(AMQP if kind == "broker" else PG, 5672 if kind == "broker" else 5432)
    with tempfile.TemporaryDirectory() as tmp, FaultProxy(*target) as proxy:
        dep, schema = deployment(Path(tmp), {})
        key = "AMQP_URL" if kind == "broker" else "DATABASE_URL"
        dep.extra_env[key] = _via(dep.amqp_url if kind == "broker" else dep.db_url, proxy)
        stop = threading.Event()
        try:
            dep.store.import_nodes(make_nodes(1000))
            dep.declare()
            dep.start_worker("w")
            dep.wait_leading("w", timeout=60)

            def stream() -> None:
                publisher = Publisher(dep.amqp_url, dep.topology, window=64)

                def gen():  # type: ignore[no-untyped-def]
                    for r in make_requests(100_000, prefix="out"):
                        if stop.is_set():
                            return
                        yield Outgoing.request(r)

                publisher.publish(gen(), rate=200)

            threading.Thread(target=stream, daemon=True).start()
            wait_until(lambda: sum(dep.store.task_counts().values()) > 100, 60, "traffic")
            proxy.fault("refuse")
            time.sleep(outage)
            healed = datetime.now(UTC)
            proxy.heal()

            def first_after() -> datetime | None:
                with dep.store.engine.connect() as conn:
                    value = conn.execute(
                        select(func.min(tasks.c.updated_at)).where(tasks.c.updated_at > healed)
                    ).scalar()
                return value  # type: ignore[no-any-return]

            first = wait_until(first_after, 180, "a commit after the outage", interval=0.05)
            stamp = first if first.tzinfo else first.replace(tzinfo=UTC)
            return (stamp - healed).total_seconds()
        finally:
            stop.set()
            dep.close()
            drop(schema)


def fuzz_survived(count: int) -> tuple[int, int, int, bool]:
    """(published, bodies accounted for, dead letters, worker alive) after ``count`` raw fuzz bodies.

    A body is accounted for when what it must become happened: its task id is
    terminal, or (no readable id) it is among the dead letters.
    """
    from hypothesis import strategies as st

    from tests.test_raw_fuzz import _body, _expected

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat: list[bytes] = []
        while len(flat) < count:
            flat += st.lists(_body(), min_size=1, max_size=50).example()
        flat = flat[:count]
    expected = [_expected(b) for b in flat]
    with tempfile.TemporaryDirectory() as tmp:
        dep, schema = deployment(Path(tmp), {})
        try:
            dep.store.import_nodes(make_nodes(1000))
            proc = dep.start_worker("f")
            dep.wait_leading("f", timeout=60)
            dep.publish_raw(flat)
            ids = sorted({t for t, _ in expected if t is not None})
            dead = sum(1 for _, d in expected if d)
            states = dep.wait_terminal(ids, timeout=300) if ids else {}
            wait_until(lambda: dep.queue_depth(dep.topology.dead_queue) >= dead, 120, "dead letters")
            letters = dep.queue_depth(dep.topology.dead_queue)
            accounted = sum(
                1
                for tid, d in expected
                if (tid is not None and states.get(tid) in TERMINAL) or (d and letters >= dead)
            )
            return len(flat), accounted, letters, proc.poll() is None
        finally:
            dep.close()
            drop(schema)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fuzz", type=int, default=500, help="raw fuzz bodies to publish")
    parser.add_argument("--skip-30", action="store_true", help="only the 5-s outages")
    parser.add_argument("--only-fuzz", action="store_true", help="only the raw fuzz run")
    args = parser.parse_args()
    now = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"outage benchmark, PostgreSQL, 1 worker, 1,000 nodes, 200 requests/s; {now}")
    print(f"{'outage':<26} {'end of outage -> first commit':>30} {'goal':>8}")
    for kind in () if args.only_fuzz else ("broker", "database"):
        for seconds in (5.0, 30.0):
            if args.skip_30 and seconds > 5:
                continue
            took = recovery_seconds(kind, seconds)
            print(
                f"{kind + f' refused {seconds:g} s':<26} {took:>28.2f} s {'<= ' + f'{GOAL_SECONDS:g} s':>8}"
            )
    published, accounted, dead, alive = fuzz_survived(args.fuzz)
    print(
        f"raw fuzz: {accounted}/{published} bodies survived (terminal task or dead letter; "
        f"{dead} dead letters), worker alive: {alive}; goal: {published}/{published}, alive"
    )


if __name__ == "__main__":
    main()
