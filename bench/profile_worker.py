"""Where the worker's time goes during a burst: py-spy samples a real worker, stacks are bucketed.

Starts a worker on a 1,000-node fleet (SQLite or PostgreSQL), attaches
``py-spy record`` to it while a burst of requests is published and processed
to the end, and prints, for every thread's samples, the share spent in each
concern: broker I/O, message parsing, planning, commit, logging, metrics,
webhooks, idle waits. A sample is given to the innermost frame that belongs
to one of the concerns (so the commit's SQLAlchemy time counts as commit,
and a log call made from the planner counts as logging). Also prints the
twenty hottest leaf functions.

Usage: ``.venv/bin/python bench/profile_worker.py [--db sqlite|postgresql] [--burst N]``
(py-spy needs ptrace rights over the worker: root, or a relaxed ``ptrace_scope``).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import cpu_seconds, deployment, drop_schema  # noqa: E402
from scheduler.models import TaskStatus  # noqa: E402
from scheduler.producer.publisher import Outgoing  # noqa: E402
from tests.harness import make_nodes, make_requests, wait_until  # noqa: E402

PY_SPY = str(Path(sys.executable).with_name("py-spy"))

# (concern, substrings of "function (file)" frames), innermost match wins; first listed wins on a tie.
CONCERNS: list[tuple[str, tuple[str, ...]]] = [
    ("logging", ("scheduler/logging.py", "structlog/", "/logging/__init__.py")),
    ("metrics", ("scheduler/metrics/", "prometheus_client/")),
    ("webhooks", ("scheduler/webhooks/", "scheduler/store/deliveries.py", "httpx/", "httpcore/")),
    ("parse (json + pydantic)", ("parse_message", "parse_careful", "json/decoder.py", "pydantic/")),
    ("plan (fleet + strategies)", ("scheduler/strategies/", "scheduler/fleet.py", "worker/batch.py")),
    ("commit (store + SQL)", ("scheduler/store/", "sqlalchemy/", "psycopg/", "sqlite3")),
    ("broker (pika)", ("pika/", "scheduler/broker.py")),
    ("election", ("scheduler/elector/",)),
    ("http server", ("uvicorn/", "starlette/", "fastapi/", "scheduler/http/")),
]


def classify(stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        for concern, needles in CONCERNS:
            if any(n in frame for n in needles):
                return concern
    return "other"


IDLE_LEAVES = ("wait (threading.py", "select (", "poll (", "sleep", "_wait_for_tstate_lock", "epoll")


def idle(stack: list[str]) -> bool:
    leaf = stack[-1] if stack else ""
    return any(w in leaf for w in IDLE_LEAVES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--burst", type=int, default=10000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples/s")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL (CPU, not waits)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dep, schema = deployment(args.db, Path(tmp))
        raw_path = Path(tmp) / "stacks.txt"
        try:
            dep.store.import_nodes(make_nodes(1000))
            proc = dep.start_worker("prof")
            dep.wait_leading("prof")
            spy = subprocess.Popen(
                [PY_SPY, "record", "--pid", str(proc.pid), "--format", "raw", "--rate", str(args.rate),
                 "--threads", "--output", str(raw_path), "--nonblocking", *(["--gil"] if args.gil else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches
            reqs = make_requests(args.burst, prefix="prof", seed=3)
            cpu_before = cpu_seconds([proc.pid])[proc.pid]
            start = time.perf_counter()
            dep.publish(Outgoing.request(r) for r in reqs)

            def finished() -> bool:
                counts = dep.store.task_counts()
                done: int = counts.get(TaskStatus.SCHEDULED, 0) + counts.get(TaskStatus.FAILED, 0)
                return done >= int(args.burst)

            wait_until(finished, 600, "burst", interval=0.25)
            elapsed = time.perf_counter() - start
            worker_cpu = cpu_seconds([proc.pid])[proc.pid] - cpu_before
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            _, err = spy.communicate(timeout=60)
        finally:
            dep.close()
            drop_schema(schema)
        if not raw_path.exists():
            raise SystemExit(f"py-spy wrote nothing: {err.decode()[-2000:]}")
        per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        leaves: collections.Counter[str] = collections.Counter()
        for line in raw_path.read_text().splitlines():
            stack_text, _, count_text = line.rpartition(" ")
            frames = stack_text.split(";")
            thread, stack = frames[0], frames[1:]
            n = int(count_text)
            if idle(stack):
                per_thread[thread]["(idle: waiting)"] += n
                continue
            per_thread[thread][classify(stack)] += n
            if stack:
                leaves[stack[-1]] += n
    print(f"{args.burst:,} requests on {args.db}, 1,000 nodes: {args.burst / elapsed:,.0f}/s end to end")
    print(
        f"worker process CPU during the burst: {worker_cpu:.2f} s = {1e6 * worker_cpu / args.burst:,.0f} µs "
        "per request (every thread; py-spy's own sampling included)"
    )
    for thread, counts in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(counts.values())
        busy = total - counts["(idle: waiting)"]
        print(f"\n{thread}: {total} samples, {busy} busy")
        for concern, n in counts.most_common():
            waiting = concern == "(idle: waiting)"
            share = 100 * n / max(total if waiting else busy, 1)
            print(f"  {concern:<28} {n:>7}  {share:5.1f}%{' of all' if waiting else ''}")
    every: collections.Counter[str] = sum(per_thread.values(), collections.Counter())
    overhead = every["logging"] + every["metrics"]
    work = every["plan (fleet + strategies)"] + every["commit (store + SQL)"]
    print(
        f"\nlogs + metrics: {overhead} samples = {100 * overhead / max(work, 1):.1f}% of plan + commit "
        f"({work} samples); goal <= 5%"
    )
    print("\nhottest leaf functions (busy samples, all threads):")
    for leaf, n in leaves.most_common(20):
        print(f"  {n:>7}  {leaf}")


if __name__ == "__main__":
    main()
