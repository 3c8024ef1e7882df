"""Webhook benchmark: delivery rate to a fast receiver, and what a slow receiver costs scheduling.

Prints, for SQLite and PostgreSQL:

* deliveries/s: a backlog of outbox events (written by ``Store.commit``
  with real placements) drained by one :class:`WebhookDispatcher` to a
  receiver that answers 204 at once, with the default concurrency (16);
* scheduling throughput (end to end, publish -> committed -> acked, real
  worker process, real RabbitMQ, 1,000 nodes) with no webhook receiver and
  with a receiver that takes one second per request.

The receivers run in their own processes so they do not share the
dispatcher's interpreter lock. The worker processes are launched by this
script (``--worker-child``) with the dispatcher started next to the worker,
the way ``scheduler worker`` is to wire it; the plain ``scheduler worker``
is measured too, as the baseline without any dispatcher. Nothing here
asserts: it is a measurement; goals are printed next to the figures.

Usage: ``.venv/bin/python bench/bench_webhooks.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler.config import LoggingConfig, WebhooksConfig  # noqa: E402
from scheduler.logging import configure_logging  # noqa: E402
from scheduler.models import SchedulingRequest, TaskStatus  # noqa: E402
from scheduler.producer.publisher import Outgoing  # noqa: E402
from scheduler.store import Placement, Store  # noqa: E402
from scheduler.webhooks import WebhookDispatcher  # noqa: E402
from scheduler.webhooks.deliveries import DeliveryStore  # noqa: E402

PG = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
AMQP = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


# ------------------------------------------------------------------ child processes


def serve_receiver(delay: float) -> None:
    """Child: a receiver answering 204 after ``delay`` seconds; prints its port, then serves forever."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if delay:
                time.sleep(delay)
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    print(server.server_port, flush=True)
    server.serve_forever()


def worker_child() -> None:
    """Child: ``scheduler worker`` with the webhook dispatcher started next to it (the intended wiring)."""
    from scheduler.cli.common import open_store, settings_or_exit
    from scheduler.cli.worker import build_leadership
    from scheduler.worker.daemon import Worker

    settings = settings_or_exit()
    configure_logging(settings.logging)
    store = open_store(settings, migrate=True)
    leadership = build_leadership(settings, store)
    worker = Worker(settings, store, leadership)
    dispatcher = WebhookDispatcher(store, settings.webhooks, leadership.is_leader)
    worker.install_signal_handlers()
    dispatcher.start()
    try:
        code = worker.run()
    finally:
        dispatcher.stop()
    sys.exit(code)


class ReceiverProcess:
    """A receiver child process and its URL."""

    def __init__(self, delay: float):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-receiver", str(delay)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}/hook"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# ------------------------------------------------------------------ databases


def database(db: str, workdir: Path) -> tuple[str, str | None]:
    """A fresh database URL (SQLite file or PostgreSQL schema) and the schema to drop afterwards."""
    if db == "sqlite":
        return f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.db'}", None
    from urllib.parse import quote

    from sqlalchemy import create_engine, text

    schema = f"bench_wh_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    return f"{PG}?options={quote(f'-csearch_path={schema}')}", schema


def drop_schema(schema: str | None) -> None:
    if schema is None:
        return
    from sqlalchemy import create_engine, text

    admin = create_engine(PG.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


# ------------------------------------------------------------------ measurements


def delivery_rate(db: str, events: int, receiver: ReceiverProcess, workdir: Path) -> tuple[float, float]:
    """Drain a backlog of ``events`` outbox events; returns (deliveries/s, seconds)."""
    from tests.harness import make_nodes

    url, schema = database(db, workdir)
    store = Store.from_url(url)
    try:
        store.upgrade()
        store.import_nodes(make_nodes(8))
        for start in range(0, events, 1000):
            items = [
                Placement(SchedulingRequest(task_id=f"d{i}", requested_cpu=1, requested_memory=1), "bm-0000",
                          "10.0.0.0", "least_loaded", "placed", 1)
                for i in range(start, min(events, start + 1000))
            ]  # fmt: skip
            store.commit(items, epoch=1)
        config = WebhooksConfig.model_validate({"urls": [receiver.url], "secret": "bench-secret"})
        dispatcher = WebhookDispatcher(store, config, lambda: True)
        started = time.perf_counter()
        dispatcher.start()
        # The dispatcher's own counter, not a query: polling the table would compete with what is measured.
        while dispatcher.stats().delivered < events:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        dispatcher.stop()
        counts = DeliveryStore(store.engine).counts()
        assert counts == {"delivered": events}, counts
        return events / elapsed, elapsed
    finally:
        store.close()
        drop_schema(schema)


def scheduling_rate(db: str, burst: int, webhook_url: str | None, with_dispatcher: bool,
                    workdir: Path) -> tuple[float, dict[str, int]]:
    """Tasks/s end to end for a burst, and the delivery counts when the burst was done."""
    from tests.harness import Deployment, make_nodes, make_requests, wait_until

    url, schema = database(db, workdir)
    suffix = uuid.uuid4().hex[:8]
    extra = {"LOG_LEVEL": "warning"}
    if webhook_url:
        extra.update({"WEBHOOK_URL": webhook_url, "WEBHOOK_SECRET": "bench-secret"})
    dep = Deployment(url, AMQP, f"bench.wh.{suffix}", f"bench.wh.{suffix}", workdir, extra_env=extra)
    try:
        dep.store.import_nodes(make_nodes(1000))
        dep.write_config()
        if with_dispatcher:
            log = open(workdir / f"child-{suffix}.log", "ab")  # noqa: SIM115 - owned by the process
            proc = subprocess.Popen([sys.executable, __file__, "--worker-child"], env=dep.env("bench"),
                                    stdout=log, stderr=log, cwd=workdir)
            dep.procs.append(proc)
        else:
            dep.start_worker("bench")
        dep.wait_leading("bench", timeout=60)
        reqs = make_requests(burst, prefix=f"b{suffix}", seed=1)
        started = time.perf_counter()
        dep.publish(Outgoing.request(r) for r in reqs)

        def done() -> bool:
            counts = dep.store.task_counts()
            return counts.get(TaskStatus.SCHEDULED, 0) + counts.get(TaskStatus.FAILED, 0) >= burst

        wait_until(done, 300, "the burst", interval=0.02)
        elapsed = time.perf_counter() - started
        counts = DeliveryStore(dep.store.engine).counts()
        return burst / elapsed, counts
    finally:
        dep.close()
        drop_schema(schema)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--serve-receiver", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-scheduling", action="store_true", help="only the delivery rate")
    parser.add_argument("--rounds", type=int, default=0,
                        help="runs per figure, the best kept (default 2; --quick: 1)")
    args = parser.parse_args()
    if args.serve_receiver is not None:
        serve_receiver(args.serve_receiver)
        return
    if args.worker_child:
        worker_child()
        return
    configure_logging(LoggingConfig(level="warning"))
    events = 2000 if args.quick else 5000
    burst = 3000 if args.quick else 10000
    rounds = args.rounds or (1 if args.quick else 2)
    print(f"webhook benchmark: {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    fast = ReceiverProcess(0.0)
    slow = ReceiverProcess(1.0)
    try:
        print(f"\ndelivery rate: backlog of {events} events, 1 URL, concurrency 16, "
              "receiver answers 204 at once")
        print(f"{'backend':<11} {'deliveries/s':>13} {'seconds':>8}")
        for db in ("sqlite", "postgresql"):
            runs = []
            for _ in range(rounds):
                with tempfile.TemporaryDirectory() as tmp:
                    runs.append(delivery_rate(db, events, fast, Path(tmp)))
            rate, secs = max(runs)
            print(f"{db:<11} {rate:>13,.0f} {secs:>8.2f}")
        print("goal: >= 500 deliveries/s")
        if args.skip_scheduling:
            return
        print(f"\nscheduling throughput: burst of {burst} requests, 1,000 nodes, end to end (tasks/s, "
              f"best of {rounds})")
        print(f"{'backend':<11} {'no dispatcher':>14} {'no receiver':>12} {'1-s receiver':>13} "
              f"{'ratio 1-s/none':>15} {'fast receiver':>14}  deliveries when the burst was done (1-s)")
        variants = {"base": (None, False), "none": (None, True), "slow": (slow.url, True),
                    "fast": (fast.url, True)}
        for db in ("sqlite", "postgresql"):
            best: dict[str, float] = {}
            counts: dict[str, int] = {}
            for _ in range(rounds):  # interleaved, so a slow moment of the machine hits every variant alike
                for name, (webhook_url, with_dispatcher) in variants.items():
                    with tempfile.TemporaryDirectory() as tmp:
                        rate, seen = scheduling_rate(db, burst, webhook_url, with_dispatcher, Path(tmp))
                    best[name] = max(best.get(name, 0.0), rate)
                    if name == "slow":
                        counts = seen
            base, none, slow_rate, fast_rate = best["base"], best["none"], best["slow"], best["fast"]
            print(f"{db:<11} {base:>14,.0f} {none:>12,.0f} {slow_rate:>13,.0f} {slow_rate / none:>15.2f} "
                  f"{fast_rate:>14,.0f}  {json.dumps(counts, sort_keys=True)}")
        print("goal: a 1-s receiver lowers scheduling throughput by < 10% (ratio >= 0.90)")
    finally:
        fast.close()
        slow.close()
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
