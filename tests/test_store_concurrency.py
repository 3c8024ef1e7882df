"""Concurrent inventory imports: overlapping fleets imported at once end consistent, with exact counts."""

from __future__ import annotations

import threading
from typing import Any

from scheduler.models import Node
from scheduler.store import ImportCounts, Store


def fleet(writer: int, start: int, stop: int) -> list[Node]:
    return [
        Node.model_validate(
            {
                "name": f"bm-{i:03d}",
                "ip": f"10.0.{writer}.{i}",
                "cpu": 64 + writer,
                "memory": 262144,
                "pool": "default",
            }
        )
        for i in range(start, stop)
    ]


def test_concurrent_overlapping_imports(db_url: str) -> None:
    setup = Store.from_url(db_url)
    setup.upgrade()
    # Four writers, each 40 nodes, overlapping their neighbours by 20: 100 distinct nodes.
    fleets = [fleet(w, w * 20, w * 20 + 40) for w in range(4)]
    stores = [Store.from_url(db_url) for _ in fleets]
    barrier = threading.Barrier(len(stores))
    results: dict[int, ImportCounts] = {}
    errors: list[BaseException] = []

    def run(w: int) -> None:
        barrier.wait()
        try:
            for _ in range(3):  # repeat, so the imports really interleave
                results[w] = stores[w].import_nodes(fleets[w])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    try:
        assert errors == []
        nodes = {n.name: n for n in setup.list_nodes()}
        assert len(nodes) == 100
        # Every node holds exactly one writer's version, whole (no mix of two writers' fields).
        for name, n in nodes.items():
            writer = n.cpu - 64
            assert str(n.ip) == f"10.0.{writer}.{int(name[3:])}", name
            assert name in {x.name for x in fleets[writer]}, name
        # The last import of each writer saw a settled state: each counts its 40 nodes once.
        assert all(r.total == 40 for r in results.values())
        # Imports serialise on the revision row: the revision counts the imports that changed something.
        assert setup.inventory_revision() == max(r.revision for r in results.values())
        assert setup.inventory_revision() <= 12
    finally:
        setup.close()


def test_concurrent_import_and_cordon(db_url: str) -> None:
    """Cordon racing an import of the same node: both land, neither is lost."""
    base = Store.from_url(db_url)
    base.upgrade()
    base.import_nodes(fleet(0, 0, 50))
    a, b = Store.from_url(db_url), Store.from_url(db_url)
    barrier = threading.Barrier(2)
    errors: list[Any] = []

    def importer() -> None:
        barrier.wait()
        try:
            for _ in range(3):
                a.import_nodes(fleet(1, 0, 50))  # silent on `cordoned`: must keep the cordon
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def cordoner() -> None:
        barrier.wait()
        try:
            for i in range(0, 50, 5):
                b.set_cordoned(f"bm-{i:03d}", True)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=importer), threading.Thread(target=cordoner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        nodes = {n.name: n for n in base.list_nodes()}
        assert {name for name, n in nodes.items() if n.cordoned} == {f"bm-{i:03d}" for i in range(0, 50, 5)}
        assert all(n.cpu == 65 for n in nodes.values())
    finally:
        for s in (a, b, base):
            s.close()
