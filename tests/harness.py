"""Running real worker processes against the real broker and database, for end-to-end tests.

A :class:`Deployment` is one isolated installation: its own exchange and
queue names on RabbitMQ and its own database (SQLite file or PostgreSQL
schema). Workers are real ``python -m scheduler worker`` processes, so
SIGKILL and SIGTERM mean what they mean in production.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika

from scheduler.broker import Topology
from scheduler.models import Node, SchedulingRequest, TaskStatus
from scheduler.producer.publisher import Outgoing, Publisher
from scheduler.store import Store
from tests.store_checks import duplicate_active_allocations, overcommitted_nodes

TERMINAL = {TaskStatus.SCHEDULED, TaskStatus.FAILED, TaskStatus.RELEASED}


def still_running_after(target: Callable[[], object], guard: float = 60.0) -> threading.Thread | None:
    """Run ``target`` in a daemon thread; the thread if it is still running after ``guard`` seconds.

    A guard against hanging the suite, not a measure: the callers expect
    ``target`` to end long before, and fail when it has not.
    """
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(guard)
    return thread if thread.is_alive() else None


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def make_nodes(
    n: int, *, pool: str = "default", cpu: int = 64, memory: int = 262144, seed: int = 0
) -> list[Node]:
    rng = random.Random(seed)
    return [
        Node.model_validate(
            {
                "name": f"bm-{i:04d}",
                "ip": f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}",
                "pool": pool,
                "cpu": cpu,
                "memory": memory,
                "disk": 2000,
                "max_vms": 40,
                "zone": f"az{rng.randint(1, 3)}",
            }
        )
        for i in range(n)
    ]


def make_requests(n: int, *, prefix: str = "t", seed: int = 0, **fields: Any) -> list[SchedulingRequest]:
    rng = random.Random(seed)
    return [
        SchedulingRequest.model_validate(
            {
                "task_id": f"{prefix}-{i}",
                "requested_cpu": rng.choice([1, 2, 4, 8]),
                "requested_memory": rng.choice([1024, 2048, 4096, 8192, 16384]),
                **fields,
            }
        )
        for i in range(n)
    ]


@dataclass
class Deployment:
    """One isolated installation of the service for a test."""

    db_url: str
    amqp_url: str
    exchange: str
    queue: str
    workdir: Path
    election: str = "none"
    http: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        self.store = Store.from_url(self.db_url)
        self.store.upgrade()

    @property
    def topology(self) -> Topology:
        return Topology(self.exchange, self.queue)

    def env(self, identity: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "AMQP_", "DATABASE_"))}
        env.update(
            {
                "DATABASE_URL": self.db_url,
                "AMQP_URL": self.amqp_url,
                "SCHEDULER_AMQP__EXCHANGE": self.exchange,
                "SCHEDULER_AMQP__QUEUE": self.queue,
                "ELECTION_BACKEND": self.election,
                "POD_NAME": identity,
                "SCHEDULER_CONFIG": str(self.workdir / "config.yaml"),
                "SCHEDULER_HTTP__ENABLED": "true" if self.http else "false",
                "HTTP_PORT": "0",
                "SCHEDULER_HTTP__METRICS_PORT": "0",
                "SCHEDULER_HTTP__METRICS_HOST": "127.0.0.1",
                "SCHEDULER_HTTP__HOST": "127.0.0.1",
                "SCHEDULER_RETRY__INITIAL_BACKOFF": "0.05",
                "SCHEDULER_RETRY__MAX_BACKOFF": "0.2",
                "SCHEDULER_RETRY__MAX_ATTEMPTS": "3",
                "SCHEDULER_WORKER__INVENTORY_POLL_INTERVAL": "0.5",
                "LOG_LEVEL": "info",
                **self.extra_env,
            }
        )
        return env

    def write_config(self, text: str = "strategy: least_loaded\n") -> Path:
        path = self.workdir / "config.yaml"
        path.write_text(text)
        return path

    def start_worker(self, identity: str = "worker-0") -> subprocess.Popen[bytes]:
        if not (self.workdir / "config.yaml").exists():
            self.write_config()
        log = open(self.workdir / f"{identity}.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "worker"],
            env=self.env(identity),
            stdout=log,
            stderr=log,
            cwd=self.workdir,
        )
        self.procs.append(proc)
        return proc

    def wait_leading(self, identity: str, timeout: float = 20) -> int:
        """Wait until ``identity`` holds the fence (it claims it right before consuming)."""

        def holder() -> int | None:
            epoch, who = self.store.fence_holder()
            return epoch if who == identity else None

        epoch: int = wait_until(holder, timeout, f"{identity} to lead")
        return epoch

    def http_url(self, identity: str, timeout: float = 20, *, listener: str = "http") -> str:
        """The URL the worker's API (or, with ``listener="metrics"``, metrics) server listens on.

        Each binds port 0 and logs the real one.
        """

        def found() -> str | None:
            for line in decode_lines(self.log_of(identity)):
                if line.get("event") == f"{listener} serving":
                    return str(line["url"]).replace("0.0.0.0", "127.0.0.1")
            return None

        url: str = wait_until(found, timeout, f"{identity}'s {listener} server")
        return url

    def log_of(self, identity: str) -> str:
        path = self.workdir / f"{identity}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def publish(self, messages: Iterable[Outgoing]) -> list[str]:
        report = Publisher(self.amqp_url, self.topology).publish(list(messages))
        assert report.ok, report.failed
        return report.confirmed

    def declare(self) -> None:
        Publisher(self.amqp_url, self.topology).declare()

    def publish_raw(self, bodies: Iterable[bytes]) -> None:
        """Publish arbitrary bytes as requests (for malformed-input tests), with confirms."""
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            ch = conn.channel()
            self.topology.declare(ch)
            ch.confirm_delivery()
            for body in bodies:
                ch.basic_publish(
                    self.exchange,
                    "request",
                    body,
                    mandatory=True,
                    properties=pika.BasicProperties(delivery_mode=2),
                )
        finally:
            conn.close()

    def drain(self, queue: str) -> list[tuple[dict[str, Any], bytes]]:
        """Take every message out of ``queue`` (headers, body)."""
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        out: list[tuple[dict[str, Any], bytes]] = []
        try:
            ch = conn.channel()
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                out.append((dict(props.headers or {}), body))
        finally:
            conn.close()
        return out

    def queue_depth(self, queue: str) -> int:
        conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()

    def statuses(self, task_ids: Iterable[str]) -> dict[str, TaskStatus]:
        return self.store.task_states(list(task_ids))

    def wait_terminal(self, task_ids: list[str], timeout: float = 60) -> dict[str, TaskStatus]:
        def done() -> dict[str, TaskStatus] | None:
            states = self.statuses(task_ids)
            return (
                states
                if len(states) == len(set(task_ids)) and all(s in TERMINAL for s in states.values())
                else None
            )

        result: dict[str, TaskStatus] = wait_until(
            done, timeout, f"{len(task_ids)} tasks to be terminal", interval=0.1
        )
        return result

    def outbox_counts(self) -> dict[str, int]:
        """Outbox events per task id (invariant 5: exactly one per terminal status change)."""
        from sqlalchemy import func, select

        from scheduler.store.schema import outbox

        with self.store.engine.connect() as conn:
            rows = conn.execute(select(outbox.c.task_id, func.count()).group_by(outbox.c.task_id)).all()
        return {r[0]: int(r[1]) for r in rows}

    def check_invariants(self) -> None:
        assert overcommitted_nodes(self.store) == {}
        assert duplicate_active_allocations(self.store) == {}

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def delete_broker_objects(self) -> None:
        delete_topology(self.amqp_url, self.topology)

    def close(self) -> None:
        self.stop_all()
        with contextlib.suppress(pika.exceptions.AMQPError):
            self.delete_broker_objects()
        self.store.close()


def start_publishing(
    args: list[str], amqp_url: str, topo: Topology, config: Path | str
) -> subprocess.Popen[str]:
    """``scheduler ARGS`` (a command that publishes) in a process of its own, to ``topo`` at ``amqp_url``."""
    env = {
        **os.environ,
        "SCHEDULER_CONFIG": str(config),
        "AMQP_URL": amqp_url,
        "SCHEDULER_AMQP__EXCHANGE": topo.exchange,
        "SCHEDULER_AMQP__QUEUE": topo.queue,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "scheduler", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def delete_topology(amqp_url: str, topo: Topology) -> None:
    """Delete a test's exchange and its four queues (each test declares its own; none may outlive it)."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        for q in (topo.queue, topo.retry_queue, topo.dead_queue, topo.heartbeat_queue):
            ch.queue_delete(q)
        ch.exchange_delete(topo.exchange)
    finally:
        conn.close()


def decode_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
