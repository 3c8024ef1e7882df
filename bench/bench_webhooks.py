"""Webhook benchmark: delivery rate to a fast receiver, and what a slow receiver costs scheduling.

Prints, for SQLite and PostgreSQL:

* isolation: how long a fast receiver waits for its deliveries when a
  3-second receiver is configured next to it, and how long an attempt to a
  receiver trickling one byte every 3 s lasts with ``timeout: 5``;
* deliveries/s: a backlog of outbox events (written by ``Store.commit``
  with real placements) drained by one :class:`WebhookDispatcher` to a
  receiver that answers 204 at once, with the default concurrency (16);
* scheduling throughput (end to end, publish -> committed -> acked, real
  worker process, real RabbitMQ, 1,000 nodes) without the dispatcher, and
  with it: no receiver configured, a receiver that takes one second per
  request, a fast receiver; next to each, the share of the worker process's
  CPU time that the webhook threads used (read from ``/proc``). On a shared
  machine the wall-clock rates move by tens of percent between identical
  runs (hence interleaved rounds, best kept); the CPU share is the steady
  figure for what the dispatcher takes from scheduling.

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
import contextlib
import inspect
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
from scheduler.store.deliveries import DeliveryStore  # noqa: E402
from scheduler.webhooks import WebhookDispatcher, new_secret  # noqa: E402

PG = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
AMQP = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BENCH_SECRET = new_secret()


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
    """Child: exactly ``scheduler worker``, with the webhook dispatcher started around the worker's run.

    ``Worker.run`` is wrapped rather than the wiring copied, so the child and
    the plain ``scheduler worker`` baseline build the same worker (metrics,
    hooks, HTTP settings); the only difference is the dispatcher.
    """
    from scheduler.cli import main as cli_main
    from scheduler.worker import daemon

    plain_run = daemon.Worker.run

    def run_with_dispatcher(self: daemon.Worker) -> int:
        # As scheduler worker wires it; a checkout from before the activity pacing is measured too.
        paced = "activity" in inspect.signature(WebhookDispatcher).parameters
        extra: dict[str, Any] = {"activity": lambda: self.state.committed} if paced else {}
        dispatcher = WebhookDispatcher(self.store, self.settings.webhooks, self.leadership.is_leader, **extra)
        dispatcher.start()
        try:
            return plain_run(self)
        finally:
            report = os.environ.get("BENCH_CPU_FILE")
            if report:
                Path(report).write_text(json.dumps(thread_cpu()))
            dispatcher.stop()

    daemon.Worker.run = run_with_dispatcher  # type: ignore[method-assign]
    sys.argv = ["scheduler", "worker"]
    cli_main()


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process so far: all of it, and the webhook threads' (Linux ``/proc``).

    The objective figure behind "a slow receiver does not slow scheduling":
    wall-clock throughput on a shared machine moves by tens of percent from
    run to run, the CPU the dispatcher's threads took from the worker does not.
    """
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(path: str) -> float:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    webhook = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith("webhook-dispatcher") and thread.native_id is not None:
            with contextlib.suppress(OSError):  # the thread ended meanwhile
                webhook += cpu(f"/proc/self/task/{thread.native_id}/stat")
    return {"process": cpu("/proc/self/stat"), "webhooks": webhook}


def serve_trickle(every: float) -> None:
    """Child: a receiver answering a status line, then one header byte every ``every`` seconds, forever."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(sock.getsockname()[1], flush=True)

    def trickle(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while True:
                time.sleep(every)
                conn.sendall(b"a")

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=trickle, args=(conn,), daemon=True).start()


class ReceiverProcess:
    """A receiver child process and its URL."""

    def __init__(self, delay: float, trickle: bool = False):
        flag = "--serve-trickle" if trickle else "--serve-receiver"
        self.proc = subprocess.Popen([sys.executable, __file__, flag, str(delay)],
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
        config = WebhooksConfig.model_validate({"urls": [receiver.url], "secrets": [BENCH_SECRET]})
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


def _backlog(store: Store, prefix: str, events: int) -> None:
    from tests.harness import make_nodes

    store.upgrade()
    store.import_nodes(make_nodes(8))
    items = [
        Placement(SchedulingRequest(task_id=f"{prefix}{i}", requested_cpu=1, requested_memory=1),
                  "bm-0000", "10.0.0.0", "least_loaded", "placed", 1)
        for i in range(events)
    ]  # fmt: skip
    store.commit(items, epoch=1)


def fairness(events: int, slow: ReceiverProcess, fast: ReceiverProcess, workdir: Path) -> tuple[float, int]:
    """SQLite: seconds to deliver ``events`` to a fast receiver configured next to a slow one,
    and how many the slow one had by then."""
    url, _ = database("sqlite", workdir)
    store = Store.from_url(url)
    try:
        _backlog(store, "f", events)
        deliveries = DeliveryStore(store.engine)
        config = WebhooksConfig.model_validate({"urls": [slow.url, fast.url], "secrets": [BENCH_SECRET]})
        dispatcher = WebhookDispatcher(store, config, lambda: True)
        started = time.perf_counter()
        dispatcher.start()
        while True:
            done = deliveries.list_deliveries(status="delivered")
            if sum(r.url == fast.url for r in done) >= events:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        dispatcher.stop()
        return elapsed, sum(r.url == slow.url for r in done)
    finally:
        store.close()


def trickled_attempts(attempts: int, trickle: ReceiverProcess, workdir: Path) -> float:
    """SQLite: seconds until ``attempts`` single attempts to a trickling receiver (timeout 5 s) all ended."""
    url, _ = database("sqlite", workdir)
    store = Store.from_url(url)
    try:
        _backlog(store, "t", attempts)
        config = WebhooksConfig.model_validate(
            {"urls": [trickle.url], "secrets": [BENCH_SECRET], "timeout": 5, "max_attempts": 1}
        )
        dispatcher = WebhookDispatcher(store, config, lambda: True)
        started = time.perf_counter()
        dispatcher.start()
        while dispatcher.stats().dead < attempts:
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        dispatcher.stop()
        return elapsed
    finally:
        store.close()


def scheduling_rate(db: str, burst: int, webhook_url: str | None, with_dispatcher: bool,
                    workdir: Path) -> tuple[float, dict[str, int], dict[str, float]]:
    """Tasks/s end to end for a burst, the delivery counts when it was done, and the worker's CPU."""
    from tests.harness import Deployment, make_nodes, make_requests, wait_until

    url, schema = database(db, workdir)
    suffix = uuid.uuid4().hex[:8]
    cpu_file = workdir / f"cpu-{suffix}.json"
    extra = {"LOG_LEVEL": "warning", "BENCH_CPU_FILE": str(cpu_file)}
    if webhook_url:
        extra.update({"WEBHOOK_URL": webhook_url, "WEBHOOK_SECRET": BENCH_SECRET})
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
    finally:
        dep.close()
        drop_schema(schema)
    cpu = json.loads(cpu_file.read_text()) if cpu_file.exists() else {}
    return burst / elapsed, counts, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--serve-receiver", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-trickle", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip-scheduling", action="store_true", help="only the delivery rate")
    parser.add_argument("--only-scheduling", action="store_true", help="only the scheduling throughput")
    parser.add_argument("--burst", type=int, default=0, help="requests per scheduling burst")
    parser.add_argument("--rounds", type=int, default=0,
                        help="runs per figure, the best kept (default 2; --quick: 1)")
    args = parser.parse_args()
    if args.serve_trickle is not None:
        serve_trickle(args.serve_trickle)
        return
    if args.serve_receiver is not None:
        serve_receiver(args.serve_receiver)
        return
    if args.worker_child:
        worker_child()
        return
    configure_logging(LoggingConfig(level="warning"))
    burst = args.burst or (3000 if args.quick else 10000)
    rounds = args.rounds or (1 if args.quick else 2)
    print(f"webhook benchmark: {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    fast = ReceiverProcess(0.0)
    slow = ReceiverProcess(1.0)
    try:
        if not args.only_scheduling:
            delivery_and_isolation(args.quick, rounds, fast)
        if args.skip_scheduling:
            return
        scheduling(burst, rounds, fast, slow)
    finally:
        fast.close()
        slow.close()
    print(json.dumps({"done": True}))


def delivery_and_isolation(quick: bool, rounds: int, fast: ReceiverProcess) -> None:
    """Delivery rate of a backlog, and the isolation of a fast receiver from slow ones."""
    events = 2000 if quick else 5000
    print(f"\ndelivery rate: backlog of {events} events, 1 URL, concurrency 16 (8 per destination), "
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
    trickle = ReceiverProcess(3.0, trickle=True)
    slow3 = ReceiverProcess(3.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fast_seconds, slow_done = fairness(300, slow3, fast, Path(tmp))
        with tempfile.TemporaryDirectory() as tmp:
            longest = trickled_attempts(8, trickle, Path(tmp))
    finally:
        trickle.close()
        slow3.close()
    print("\nisolation (sqlite): 300 events to a fast receiver and to a 3-s receiver, concurrency 16, "
          "8 per destination")
    print(f"fast receiver drained in {fast_seconds:.2f} s (3-s receiver: {slow_done} delivered by then)")
    print("goal: the fast receiver is not held up by the slow one (well under one 3-s round)")
    print(f"trickling receiver (1 byte / 3 s), timeout 5 s: 8 attempts ended after {longest:.2f} s")
    print("goal: <= 5 s plus scheduling slack (one deadline for resolve, connect, send and read)")


def scheduling(burst: int, rounds: int, fast: ReceiverProcess, slow: ReceiverProcess) -> None:
    """End-to-end scheduling rate without a dispatcher and with one, for three kinds of receiver."""
    print(f"\nscheduling throughput: burst of {burst} requests, 1,000 nodes, end to end: tasks/s "
          f"(best of {rounds}) [webhook threads' share of the worker process's CPU]")
    print(f"{'backend':<11} {'no dispatcher':>14} {'no receiver':>18} {'1-s receiver':>18} "
          f"{'ratio 1-s/none':>15} {'fast receiver':>18} {'ratio fast/no disp.':>20}")
    variants = {"base": (None, False), "none": (None, True), "slow": (slow.url, True),
                "fast": (fast.url, True)}
    for db in ("sqlite", "postgresql"):
        best: dict[str, tuple[float, float]] = {}
        pending: dict[str, dict[str, int]] = {}
        for _ in range(rounds):  # interleaved, so a slow moment of the machine hits every variant alike
            for name, (webhook_url, with_dispatcher) in variants.items():
                with tempfile.TemporaryDirectory() as tmp:
                    rate, seen, cpu = scheduling_rate(db, burst, webhook_url, with_dispatcher, Path(tmp))
                share = cpu.get("webhooks", 0.0) / cpu["process"] if cpu.get("process") else 0.0
                if rate > best.get(name, (0.0, 0.0))[0]:
                    best[name] = (rate, share)
                pending[name] = seen

        cells = {name: f"{rate:,.0f} [{share:5.1%}]" for name, (rate, share) in best.items()}
        ratio = best["slow"][0] / best["none"][0]
        fast_ratio = best["fast"][0] / best["base"][0]
        print(f"{db:<11} {best['base'][0]:>14,.0f} {cells['none']:>18} {cells['slow']:>18} "
              f"{ratio:>15.2f} {cells['fast']:>18} {fast_ratio:>20.2f}")
        print(f"{'':<11} deliveries when the burst was done: 1-s receiver {json.dumps(pending['slow'])}, "
              f"fast receiver {json.dumps(pending['fast'])}")
    print("goal: a 1-s receiver lowers scheduling throughput by < 10% (ratio >= 0.90)")
    print("goal: delivery to a fast receiver lowers it by <= 10% (ratio fast / no dispatcher >= 0.90)")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
