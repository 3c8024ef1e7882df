"""Store benchmark: batch commit throughput and fleet load time, on SQLite and PostgreSQL.

Targets (issue 3): >= 10,000 placements/s committed (task + allocation +
outbox rows, fence checked) on both backends, and a 10,000-node fleet with
200,000 active allocations loaded into the fleet view in <= 2 s.

    .venv/bin/python bench/bench_store.py                   # both backends
    .venv/bin/python bench/bench_store.py --backend sqlite
    BENCH_POSTGRES_URL=postgresql://postgres@127.0.0.1/test .venv/bin/python bench/bench_store.py

SQLite runs on a file in a temporary directory; PostgreSQL in a fresh schema
of the given database (selected through ``search_path``), dropped at the end.
Only :meth:`Store.commit` / :meth:`Store.load_fleet` are timed, not building
the inputs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, insert, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.models import Node, SchedulingRequest
from scheduler.store import Placement, Store
from scheduler.store.schema import allocations, tasks

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


@contextmanager
def sqlite_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


@contextmanager
def postgres_url(base: str) -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def make_nodes(count: int, *, cpu: int = 4096, memory: int = 64 * 1024 * 1024) -> list[Node]:
    return [
        Node.model_validate(
            {
                "name": f"bm-{i:05d}",
                "ip": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                "pool": ("default", "ai", "storage")[i % 3],
                "cpu": cpu,
                "memory": memory,
                "disk": 100_000,
                "max_vms": 100_000,
                "tags": ["gpu"] if i % 7 == 0 else [],
            }
        )
        for i in range(count)
    ]


def bench_commit(url: str, batch: int, total: int) -> tuple[float, float, float, float]:
    """placements/s over ``total`` placements in batches of ``batch``; p50 batch ms; wall and client-CPU s."""
    store = Store.from_url(url)
    try:
        store.upgrade()
        fleet = make_nodes(500)
        store.import_nodes(fleet)
        store.claim_fence(1, "bench")
        prefix = uuid.uuid4().hex[:8]
        batches: list[list[Placement]] = []
        for b in range(0, total, batch):
            items = []
            for i in range(b, min(b + batch, total)):
                node = fleet[i % len(fleet)]
                req = SchedulingRequest(
                    task_id=f"{prefix}-{i}",
                    requested_cpu=2,
                    requested_memory=4096,
                    requested_disk=20,
                    requested_pool=node.pool,
                    anti_affinity_group=f"g{i % 50}",
                    callback_url="https://hooks.example.com/vm" if i % 10 == 0 else None,
                )
                items.append(
                    Placement(req, node.name, str(node.ip), "least_loaded", "placed on " + node.name, 1)
                )
            batches.append(items)
        times = []
        start, cpu = time.perf_counter(), time.process_time()
        for items in batches:
            t0 = time.perf_counter()
            result = store.commit(items, epoch=1)
            times.append(time.perf_counter() - t0)
            assert len(result.applied) == len(items), "bench batch not applied"
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        return total / elapsed, statistics.median(times) * 1000, elapsed, cpu
    finally:
        store.close()


def bench_load(
    url: str, node_count: int, alloc_count: int, repeat: int = 3
) -> tuple[float, float, float, int]:
    """Seconds to load the fleet view: first, best of ``repeat``, client CPU of the best; allocations seen."""
    store = Store.from_url(url)
    try:
        store.upgrade()
        fleet = make_nodes(node_count, cpu=4096)
        store.import_nodes(fleet)
        now = datetime.now(UTC)
        chunk = 20_000
        # Seeded with plain bulk inserts (not commit()): this measures reading.
        with store.engine.begin() as conn:
            for start in range(0, alloc_count, chunk):
                rows = range(start, min(start + chunk, alloc_count))
                conn.execute(
                    insert(tasks),
                    [
                        {
                            "task_id": f"t{i}",
                            "request": "{}",
                            "status": "scheduled",
                            "node": fleet[i % node_count].name,
                            "reason": None,
                            "message": "",
                            "attempts": 1,
                            "strategy": "least_loaded",
                            "priority": 0,
                            "epoch": 1,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for i in rows
                    ],
                )
                conn.execute(
                    insert(allocations),
                    [
                        {
                            "task_id": f"t{i}",
                            "node": fleet[i % node_count].name,
                            "cpu": 1,
                            "memory": 1024,
                            "disk": 1,
                            "anti_affinity_group": f"g{i % 1000}" if i % 4 == 0 else None,
                            "epoch": 1,
                            "created_at": now,
                            "released_at": None,
                        }
                        for i in rows
                    ],
                )
        times: list[tuple[float, float]] = []
        seen = 0
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            view = store.load_fleet()
            times.append((time.perf_counter() - t0, time.process_time() - c0))
            seen = len(view.allocations)
            assert view.size == node_count
        best = min(times)
        return times[0][0], best[0], best[1], seen
    finally:
        store.close()


def run(name: str, url_cm: Callable[[], AbstractContextManager[str]], args: argparse.Namespace) -> None:
    for batch in () if args.skip_commit else (256, 1000):
        with url_cm() as url:
            rate, p50, wall, cpu = bench_commit(url, batch, args.placements)
        print(
            f"{name:<10} commit batch={batch:<4} n={args.placements}  {rate:>7,.0f} placements/s"
            f"  (p50 batch {p50:5.1f} ms; client CPU {cpu:.2f} s of {wall:.2f} s)",
            flush=True,
        )
    if args.skip_load:
        return
    with url_cm() as url:
        first, best, cpu, seen = bench_load(url, args.nodes, args.allocations)
    print(
        f"{name:<10} load_fleet nodes={args.nodes} allocations={seen}  first {first:.2f} s, best {best:.2f} s"
        f"  (client CPU {cpu:.2f} s)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--placements", type=int, default=20_480)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--allocations", type=int, default=200_000)
    parser.add_argument("--skip-commit", action="store_true", help="only the fleet load")
    parser.add_argument("--skip-load", action="store_true", help="only the commit throughput")
    parser.add_argument("--postgres-url", default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_PG))
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load}", flush=True)
    if args.backend in ("sqlite", "both"):
        run("sqlite", sqlite_url, args)
    if args.backend in ("postgresql", "both"):
        run("postgresql", lambda: postgres_url(args.postgres_url), args)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end {load}", flush=True)


if __name__ == "__main__":
    main()
