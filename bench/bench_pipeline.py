"""Pipeline benchmark: raw broker round trip vs end to end, latency, submit rate, worker memory.

Prints, for SQLite and PostgreSQL at 1,000 nodes:

* raw broker round trip: persistent publish with confirms, consume, ack, no work;
* end to end: submit -> decision committed -> acked, with a real worker process;
* publish-to-commit latency p50/p99 at 1,000 requests/s offered;

and once: ``scheduler submit --file`` of 10,000 requests, and the worker's
RSS with 10,000 nodes. Goals are printed next to the figures; nothing here
asserts: this is a measurement, run it before and after touching a hot path.

Usage: ``.venv/bin/python bench/bench_pipeline.py [--quick]``.
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
from pathlib import Path

import numpy as np
import pika
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler.broker import Topology  # noqa: E402
from scheduler.models import TaskStatus  # noqa: E402
from scheduler.producer.publisher import Outgoing, Publisher  # noqa: E402
from scheduler.store.schema import tasks  # noqa: E402
from tests.harness import Deployment, delete_topology, make_nodes, make_requests, wait_until  # noqa: E402

AMQP = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PG = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User plus system CPU seconds so far of each of ``pids`` (Linux ``/proc``; a gone one is left out)."""
    used: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def pids_of(pattern: str) -> list[int]:
    """Local processes whose command line matches ``pattern`` (``pgrep -f``); none when there is no pgrep."""
    try:
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    except OSError:
        return []
    return [int(p) for p in out.stdout.split()]


class CpuShares:
    """CPU seconds of the parties of a burst (worker, broker, PostgreSQL, this process), by difference.

    Why: the ratio goal compares two runs that share two cores with the
    broker and the publisher; these figures show how much of the machine a
    burst used, and who used it, so a ratio below the goal can be read as a
    bound of the machine or as time the worker wasted.
    """

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.start = self._now()
        self.own = time.process_time()
        self.wall = time.perf_counter()
        self.cores = len(os.sched_getaffinity(0))
        self.used: dict[str, float] = {}
        self.elapsed = 0.0

    def _now(self) -> dict[str, dict[int, float]]:
        """Per party, CPU seconds per process, the processes looked up again each time.

        Looked up at the end too, and compared process by process: PostgreSQL
        forks a backend per connection, and one opened during the burst would be
        missed, one closed during it would subtract what it had used before.
        """
        return {
            "worker": cpu_seconds([self.worker]),
            "broker": cpu_seconds(pids_of("beam.smp")),
            "postgresql": cpu_seconds(pids_of("postgres")),
        }

    def measure(self) -> None:
        """Read every party's CPU seconds and the wall time since the start (once, at the burst's end)."""
        end = self._now()
        self.used = {
            name: sum(secs - self.start[name].get(pid, 0.0) for pid, secs in per_pid.items())
            for name, per_pid in end.items()
        }
        self.used["publisher (this process)"] = time.process_time() - self.own
        self.elapsed = time.perf_counter() - self.wall

    def line(self, messages: int) -> str:
        total = sum(self.used.values())
        parts = ", ".join(f"{name} {secs:.2f}" for name, secs in self.used.items() if secs > 0.005)
        return (
            f"  CPU s for {messages:,} end to end: {parts}; total {total:.2f} of "
            f"{self.elapsed * self.cores:.2f} core-s in {self.elapsed:.2f} s (until the end was seen); "
            f"worker {self.used['worker'] / messages * 1e6:.0f} us per request"
        )

    def budget(self, messages: int, raw_rate: float, ratio: float) -> str:
        """What the ratio goal leaves the worker, given what the others used in this burst.

        At ``ratio`` times the raw rate the burst has ``messages / (ratio * raw)``
        seconds, that many core-seconds per core; the broker, the database and
        the publisher need theirs whatever the worker does (their CPU per
        message does not depend on how fast the worker is), so the rest is
        the most the worker could use, assuming every core busy all the time.
        """
        window = messages / (ratio * raw_rate)
        others = sum(secs for name, secs in self.used.items() if name != "worker")
        left = window * self.cores - others
        per = max(left, 0.0) / messages * 1e6
        worker = self.used["worker"] / messages * 1e6
        return (
            f"  bound: at {ratio}x of the raw rate the burst must end in {window:.2f} s = "
            f"{window * self.cores:.2f} core-s on {self.cores} cores; broker, database and publisher used "
            f"{others:.2f}, leaving the worker at most {per:.0f} us per request (it used {worker:.0f})"
        )


def raw_round_trip(n: int) -> float:
    """Messages/s for publish (confirmed, persistent) + consume + ack with no work, concurrently."""
    suffix = uuid.uuid4().hex[:8]
    topo = Topology(f"bench.raw.{suffix}", f"bench.raw.{suffix}")
    publisher = Publisher(AMQP, topo)
    publisher.declare()
    done = threading.Event()
    consumed = 0

    def consume() -> None:
        nonlocal consumed
        conn = pika.BlockingConnection(pika.URLParameters(AMQP))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=256)
        pending: list[int] = []

        def on_message(_ch: object, method: pika.spec.Basic.Deliver, _p: object, _b: bytes) -> None:
            nonlocal consumed
            pending.append(method.delivery_tag)
            consumed += 1

        ch.basic_consume(topo.queue, on_message)
        while consumed < n:
            conn.process_data_events(time_limit=0.005)
            if pending:
                ch.basic_ack(pending[-1], multiple=True)
                pending.clear()
        conn.close()
        done.set()

    body = make_requests(1)[0].model_dump_json().encode()
    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    start = time.perf_counter()
    report = publisher.publish(Outgoing(f"raw-{i}", "request", body) for i in range(n))
    assert report.ok, report.failed
    done.wait(120)
    elapsed = time.perf_counter() - start
    delete_topology(AMQP, topo)
    return n / elapsed


def end_to_end(dep: Deployment, n: int, prefix: str) -> float:
    """Tasks/s from the first publish until every task is terminal (committed and acked)."""
    reqs = make_requests(n, prefix=prefix, seed=1)
    ids = [r.task_id for r in reqs]

    def finished() -> int:
        counts = dep.store.task_counts()
        return counts.get(TaskStatus.SCHEDULED, 0) + counts.get(TaskStatus.FAILED, 0)

    before = finished()
    start = time.time()
    dep.publish(Outgoing.request(r) for r in reqs)
    # Poll coarsely (a status count is a query that competes with the worker),
    # then take the end from the last commit's own timestamp.
    wait_until(lambda: finished() >= before + n, 300, "burst", interval=0.25)
    with dep.store.engine.connect() as conn:
        newest = select(func.max(tasks.c.updated_at)).where(tasks.c.task_id.like(f"{prefix}-%"))
        last = conn.execute(newest).scalar()
    end = (last if last.tzinfo else last.replace(tzinfo=UTC)).timestamp()
    elapsed = end - start
    assert len(dep.statuses(ids)) == n
    return n / elapsed


def latency_at_rate(dep: Deployment, rate: int, seconds: float, prefix: str) -> tuple[float, float]:
    """Publish ``rate`` requests/s, paced; returns publish-to-commit p50 and p99 in ms."""
    n = int(rate * seconds)
    reqs = make_requests(n, prefix=prefix, seed=2)
    sent: dict[str, float] = {}
    publisher = Publisher(dep.amqp_url, dep.topology, window=256)
    report = publisher.publish(
        (Outgoing.request(r) for r in reqs),
        rate=rate,
        on_sent=lambda msg: sent.__setitem__(msg.message_id, time.time()),
    )
    assert report.ok
    dep.wait_terminal([r.task_id for r in reqs], timeout=120)
    with dep.store.engine.connect() as conn:
        rows = conn.execute(
            select(tasks.c.task_id, tasks.c.updated_at).where(tasks.c.task_id.in_(list(sent)))
        ).all()
    lat = []
    for task_id, updated in rows:
        stamp = updated if updated.tzinfo else updated.replace(tzinfo=UTC)
        lat.append((stamp.timestamp() - sent[task_id]) * 1000)
    arr = np.asarray(lat)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def submit_file_rate(n: int) -> tuple[float, float]:
    """``scheduler submit --file`` of n requests: (messages/s of the whole command, seconds)."""
    suffix = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reqs.jsonl"
        path.write_text("".join(r.model_dump_json() + "\n" for r in make_requests(n, prefix=f"sub-{suffix}")))
        env = {
            **os.environ,
            "AMQP_URL": AMQP,
            "SCHEDULER_AMQP__EXCHANGE": f"bench.sub.{suffix}",
            "SCHEDULER_AMQP__QUEUE": f"bench.sub.{suffix}",
            "SCHEDULER_CONFIG": str(ROOT / "config.yaml"),
        }
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "scheduler", "submit", "--file", str(path)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        assert len(out.stdout.split()) == n
    delete_topology(AMQP, Topology(f"bench.sub.{suffix}", f"bench.sub.{suffix}"))
    return n / elapsed, elapsed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def deployment(db: str, workdir: Path, env: dict[str, str] | None = None) -> tuple[Deployment, str | None]:
    suffix = uuid.uuid4().hex[:8]
    schema = None
    if db == "postgresql":
        schema = f"bench_{suffix}"
        admin = create_engine(PG.replace("postgresql://", "postgresql+psycopg://", 1))
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
        from urllib.parse import quote

        url = f"{PG}?options={quote(f'-csearch_path={schema}')}"
    else:
        url = f"sqlite:///{workdir / 'bench.db'}"
    dep = Deployment(url, AMQP, f"bench.x.{suffix}", f"bench.q.{suffix}", workdir, extra_env=env or {})
    return dep, schema


def drop_schema(schema: str | None) -> None:
    if schema is None:
        return
    admin = create_engine(PG.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller bursts")
    parser.add_argument("--burst", type=int, default=0)
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="worker setting for a tuning run, e.g. SCHEDULER_AMQP__PREFETCH=1024 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--skip-once", action="store_true", help="leave out submit --file and the RSS")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    burst = args.burst or (3000 if args.quick else 10000)
    print(
        f"pipeline benchmark: {burst} requests per burst, 1,000 nodes, {os.cpu_count()} cores, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"{'backend':<11} {'raw broker/s':>13} {'end-to-end/s':>13} {'ratio':>6} "
        f"{'p50 ms @1k/s':>13} {'p99 ms @1k/s':>13}  goals (ratio >= 0.6, p99 <= 30 ms)"
    )
    for db in ("sqlite", "postgresql"):
        with tempfile.TemporaryDirectory() as tmp:
            dep, schema = deployment(db, Path(tmp), env)
            try:
                dep.store.import_nodes(make_nodes(1000))
                worker = dep.start_worker("bench")
                dep.wait_leading("bench")
                raw = raw_round_trip(burst)
                shares = CpuShares(worker.pid)
                e2e = end_to_end(dep, burst, f"e2e-{db}")
                shares.measure()
                p50, p99 = latency_at_rate(dep, 1000, 5 if not args.quick else 3, f"lat-{db}")
                ratio_ok = "met" if e2e / raw >= 0.6 else "NOT met"
                p99_ok = "met" if p99 <= 30 else "NOT met"
                print(
                    f"{db:<11} {raw:>13,.0f} {e2e:>13,.0f} {e2e / raw:>6.2f} {p50:>13.1f} {p99:>13.1f}  "
                    f"ratio {ratio_ok}, p99 {p99_ok}"
                )
                print(shares.line(burst))
                print(shares.budget(burst, raw, 0.6))
            finally:
                dep.close()
                drop_schema(schema)
    print(
        "goals: end-to-end >= 0.6x the raw broker round trip of the same run, on both backends; "
        "publish-to-commit p99 <= 30 ms at 1,000/s offered"
    )
    if env:
        print(f"worker settings: {json.dumps(env)}")
    if args.skip_once:
        return
    rate, secs = submit_file_rate(10000)
    print(
        f"submit --file 10,000 requests: {rate:,.0f} messages/s "
        f"({secs:.2f} s, whole command incl. start-up); "
        "its goal, >= 0.8x a raw publish with confirms, is measured by bench/bench_cli.py"
    )
    with tempfile.TemporaryDirectory() as tmp:
        dep, schema = deployment("sqlite", Path(tmp))
        try:
            dep.store.import_nodes(make_nodes(10000))
            proc = dep.start_worker("rss")
            dep.wait_leading("rss", timeout=60)
            end_to_end(dep, 2000, "rss")
            print(
                f"worker RSS with 10,000 nodes after 2,000 placements: {rss_mb(proc.pid):.0f} MB; "
                "goal <= 150 MB"
            )
        finally:
            dep.close()
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
