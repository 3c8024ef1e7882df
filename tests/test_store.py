"""The store's inventory and task operations, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, insert, select

from scheduler.fleet import FleetView
from scheduler.models import Node, Reason, SchedulingRequest, TaskStatus
from scheduler.store import (
    DatabaseUnavailable,
    Failure,
    NodesFileError,
    Placement,
    Release,
    Store,
    UnknownNode,
    Waiting,
    load_nodes_file,
)
from scheduler.store.schema import allocations, nodes, tasks
from tests.store_checks import active_allocations, duplicate_active_allocations, overcommitted_nodes

EXAMPLE_FLEET = Path(__file__).resolve().parents[1] / "examples" / "fleet.yaml"


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.from_url(db_url)
    s.upgrade()
    yield s
    s.close()


def node(name: str, pool: str = "default", **kw: object) -> Node:
    fields: dict[str, object] = {
        "name": name,
        "ip": f"10.0.0.{zlib.crc32(name.encode()) % 250 + 1}",
        "pool": pool,
        "cpu": 16,
        "memory": 65536,
        "disk": 500,
        "max_vms": 10,
    }
    fields.update(kw)
    return Node.model_validate(fields)


def req(task_id: str, cpu: int = 2, memory: int = 4096, **kw: object) -> SchedulingRequest:
    return SchedulingRequest.model_validate(
        {"task_id": task_id, "requested_cpu": cpu, "requested_memory": memory, **kw}
    )


def count(store: Store, table: object) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


# ------------------------------------------------------------------ inventory


def test_import_counts_upsert_and_revision(store: Store) -> None:
    assert store.inventory_revision() == 0
    first = store.import_nodes([node("a"), node("b"), node("c")])
    assert (first.created, first.updated, first.unchanged, first.revision) == (3, 0, 0, 1)

    again = store.import_nodes([node("a"), node("b"), node("c")])
    assert (again.created, again.updated, again.unchanged) == (0, 0, 3)
    assert again.revision == 1, "an import that changes nothing must not bump the revision"

    changed = store.import_nodes([node("a", cpu=32), node("d")])
    assert (changed.created, changed.updated, changed.unchanged, changed.revision) == (1, 1, 0, 2)
    by_name = {n.name: n for n in store.list_nodes()}
    assert sorted(by_name) == ["a", "b", "c", "d"]
    assert by_name["a"].cpu == 32


def test_import_round_trips_every_field(store: Store) -> None:
    original = node(
        "gpu-1",
        pool="ai",
        dedicated=True,
        tags=["gpu", "cuda-12"],
        zone="az2",
        cpu=96,
        memory=786432,
        disk=8000,
        max_vms=8,
        ip="fd00::17",
    )
    store.import_nodes([original])
    (loaded,) = store.list_nodes()
    assert loaded.model_dump(mode="json") == original.model_dump(mode="json")
    assert store.list_nodes(pool="default") == []


def test_reimport_keeps_cordon_unless_the_file_says(store: Store) -> None:
    store.import_nodes([node("a"), node("b")])
    assert store.set_cordoned("a", True) is True
    store.import_nodes([node("a", cpu=20), node("b")])  # file silent on `cordoned`
    assert {n.name: n.cordoned for n in store.list_nodes()} == {"a": True, "b": False}
    store.import_nodes([node("a", cordoned=False)])  # file explicit
    assert {n.name: n.cordoned for n in store.list_nodes()}["a"] is False


def test_cordon_uncordon_and_unknown_node(store: Store) -> None:
    store.import_nodes([node("a")])
    rev = store.inventory_revision()
    assert store.set_cordoned("a", True) is True
    assert store.inventory_revision() == rev + 1
    assert store.set_cordoned("a", True) is False  # already: no change, no bump
    assert store.inventory_revision() == rev + 1
    assert store.set_cordoned("a", False) is True
    assert store.inventory_revision() == rev + 2
    with pytest.raises(UnknownNode, match="'nope'"):
        store.set_cordoned("nope", True)


def test_duplicate_names_in_one_import_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="duplicate node names: a"):
        store.import_nodes([node("a"), node("a", cpu=8)])
    assert store.list_nodes() == []


# ------------------------------------------------------------------ fleet files


def test_example_fleet_loads(store: Store) -> None:
    fleet = load_nodes_file(EXAMPLE_FLEET)
    assert len(fleet) == 12
    assert {n.pool for n in fleet} == {"default", "ai", "storage"}
    assert any(n.dedicated for n in fleet) and any("gpu" in n.tags for n in fleet)
    assert store.import_nodes(fleet).created == 12


def test_json_file_and_bare_list(tmp_path: Path) -> None:
    rows = [{"name": "a", "ip": "10.0.0.1", "cpu": 4, "memory": 1024}]
    (tmp_path / "f.json").write_text(json.dumps({"nodes": rows}))
    (tmp_path / "bare.yaml").write_text("- {name: a, ip: 10.0.0.1, cpu: 4, memory: 1024}\n")
    assert [n.name for n in load_nodes_file(tmp_path / "f.json")] == ["a"]
    assert [n.name for n in load_nodes_file(tmp_path / "bare.yaml")] == ["a"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "nodes:\n  - {name: ok, ip: 10.0.0.1, cpu: 4, memory: 1024}\n"
            "  - {name: bm-2, ip: 10.0.0.2, cpu: 0, memory: 1}\n",
            r"nodes\[1\] \(bm-2\): cpu: ",
        ),
        ("nodes:\n  - {name: bm-1, ip: not-an-ip, cpu: 4, memory: 1024}\n", r"nodes\[0\] \(bm-1\): ip: "),
        (
            "nodes:\n  - {name: bm-1, ip: 10.0.0.1, cpu: 4, memory: 1024, colour: red}\n",
            r"nodes\[0\] \(bm-1\): colour: ",
        ),
        ("nodes:\n  - {name: bm-1, ip: 10.0.0.1, cpu: '4', memory: 1024}\n", r"nodes\[0\] \(bm-1\): cpu: "),
        ("nodes:\n  - {ip: 10.0.0.1, cpu: 4, memory: 1024}\n", r"nodes\[0\]: name: "),
        (
            "nodes:\n  - {name: a, ip: 10.0.0.1, cpu: 4, memory: 1}\n"
            "  - {name: a, ip: 10.0.0.2, cpu: 4, memory: 1}\n",
            r"nodes\[1\] \(a\): duplicate name, first defined at nodes\[0\]",
        ),
        ("nodes: [1]\n", r"nodes\[0\]: expected a mapping"),
        ("nodes: []\n", r"empty"),
        ("nodez: []\n", r"unknown top-level key"),
        ("nodes: [\n", r"not valid YAML"),
    ],
)
def test_bad_files_name_the_node_and_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    with pytest.raises(NodesFileError, match=expected):
        load_nodes_file(path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("fleet.yaml", r"fleet.yaml: not valid YAML: line 1, column \d+: .*nesting depth"),
     ("fleet.json", r"fleet.json: not valid JSON: nested too deeply")],
)  # fmt: skip
def test_a_deeply_nested_file_is_refused_by_name(tmp_path: Path, name: str, expected: str) -> None:
    """Python's parsers recursed until RecursionError: a traceback instead of an error naming the file."""
    path = tmp_path / name
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(NodesFileError, match=expected):
        load_nodes_file(path)


def test_broken_file_leaves_nothing_behind(store: Store, tmp_path: Path) -> None:
    store.import_nodes([node("keep")])
    rev = store.inventory_revision()
    path = tmp_path / "fleet.yaml"
    good = "\n".join(f"  - {{name: n{i}, ip: 10.0.1.{i}, cpu: 8, memory: 1024}}" for i in range(1, 30))
    path.write_text(f"nodes:\n{good}\n  - {{name: bad, ip: 10.0.1.99, cpu: -1, memory: 1024}}\n")
    with pytest.raises(NodesFileError, match=r"nodes\[29\] \(bad\): cpu"):
        store.import_nodes(load_nodes_file(path))
    assert [n.name for n in store.list_nodes()] == ["keep"]
    assert store.inventory_revision() == rev


def test_failed_import_transaction_rolls_back(pg_url: str) -> None:
    """All or nothing inside the database too: a row the database refuses undoes the whole batch.
    (PostgreSQL only: SQLite does not enforce VARCHAR lengths, the easy way to make a row it refuses.)"""
    store = Store.from_url(pg_url)
    store.upgrade()
    store.import_nodes([node("a")])
    bad = Node.model_construct(**{**node("zz").model_dump(), "pool": "p" * 200})  # longer than the column
    good = [node(f"n{i}") for i in range(5)]
    with pytest.raises(Exception, match="too long"):
        store.import_nodes([*good, bad])
    assert [n.name for n in store.list_nodes()] == ["a"]
    assert store.inventory_revision() == 1
    store.close()


# ------------------------------------------------------------------ fleet view


def test_load_fleet_round_trips_in_memory_state(store: Store) -> None:
    inventory = [
        node(
            f"bm-{i}",
            pool="ai" if i % 3 == 0 else "default",
            tags=["gpu"] if i % 3 == 0 else [],
            dedicated=i == 4,
            cordoned=i == 5,
            cpu=16 + i,
        )
        for i in range(8)
    ]
    store.import_nodes(inventory)
    memory = FleetView.build(inventory)
    items: list[Placement] = []
    for k in range(20):
        r = req(
            f"t{k}",
            cpu=1 + k % 3,
            memory=512 * (1 + k % 4),
            requested_disk=k % 5,
            anti_affinity_group=f"g{k % 4}" if k % 2 else None,
        )
        i = k % len(inventory)
        memory.reserve(memory.index[inventory[i].name], r)
        items.append(Placement(r, inventory[i].name, str(inventory[i].ip), "least_loaded", "ok", 1))
    store.commit(items, epoch=1)
    store.commit([Release("t3"), Release("t8")], epoch=1)
    memory.release("t3")
    memory.release("t8")

    loaded = store.load_fleet(suspicious_after=3, offline_after=7)
    assert loaded.names == memory.names
    assert loaded.ips == memory.ips
    assert loaded.pools == memory.pools
    for attr in (
        "cap_cpu",
        "cap_mem",
        "cap_disk",
        "max_vms",
        "free_cpu",
        "free_mem",
        "free_disk",
        "vms",
        "dedicated",
        "cordoned",
    ):
        assert np.array_equal(getattr(loaded, attr), getattr(memory, attr)), attr
    assert set(loaded.tags) == set(memory.tags)
    assert all(np.array_equal(loaded.tags[t], memory.tags[t]) for t in memory.tags)
    assert {k: v[1] for k, v in loaded.allocations.items()} == {
        k: v[1] for k, v in memory.allocations.items()
    }
    assert loaded.groups == memory.groups
    assert (loaded.liveness.suspicious_after, loaded.liveness.offline_after) == (3, 7)


def test_node_usage_and_invariant_checks(store: Store) -> None:
    store.import_nodes([node("a", cpu=4), node("b")])
    store.commit(
        [
            Placement(req("t1", cpu=3), "a", "10.0.0.1", "best_fit", "", 1),
            Placement(req("t2", cpu=1, memory=100), "a", "10.0.0.1", "best_fit", "", 1),
        ],
        epoch=1,
    )
    usage = store.node_usage()
    assert usage["a"].to_json() == {"cpu": 4, "memory": 4196, "disk": 0, "vms": 2}
    assert "b" not in usage
    assert overcommitted_nodes(store) == {}
    assert duplicate_active_allocations(store) == {}
    assert [a.task_id for a in active_allocations(store, "a")] == ["t1", "t2"]

    # The checks must be able to fail: shrink the node under its allocations.
    store.import_nodes([node("a", cpu=2, max_vms=1)])
    assert overcommitted_nodes(store) == {"a": ["cpu 4/2", "vms 2/1"]}


def test_at_most_one_active_allocation_is_enforced_by_the_schema(store: Store) -> None:
    store.import_nodes([node("a")])
    store.commit([Placement(req("t1"), "a", "10.0.0.1", "s", "", 1)], epoch=1)
    now = datetime.now(UTC)
    row = {"task_id": "t1", "node": "a", "cpu": 1, "memory": 1, "disk": 0, "epoch": 1, "created_at": now}
    with pytest.raises(Exception, match=r"(?i)unique"), store.engine.begin() as conn:
        conn.execute(insert(allocations).values(**row))
    # A released allocation does not count: the same task may hold a new one after.
    with store.engine.begin() as conn:
        conn.execute(insert(allocations).values(**row, released_at=now))
    assert duplicate_active_allocations(store) == {}


# ------------------------------------------------------------------ tasks


def test_record_queued_then_lifecycle(store: Store) -> None:
    store.import_nodes([node("a", ip="10.9.9.9")])
    r = req("task-1", priority=5, callback_url="https://hooks.example.com/x")
    assert store.record_queued(r) is True
    assert store.record_queued(r) is False
    rec = store.get_task("task-1")
    assert rec is not None and rec.status is TaskStatus.QUEUED and rec.request == r.model_dump(mode="json")

    store.commit([Waiting(r, "0/1 nodes fit: 1 insufficient memory", 1, "least_loaded")], epoch=1)
    rec = store.get_task("task-1")
    assert rec is not None and rec.status is TaskStatus.WAITING and rec.attempts == 1

    store.commit([Placement(r, "a", "10.9.9.9", "least_loaded", "placed on a", 2)], epoch=1)
    rec = store.get_task("task-1")
    assert rec is not None
    assert (rec.status, rec.node, rec.node_ip, rec.attempts, rec.strategy) == (
        TaskStatus.SCHEDULED,
        "a",
        "10.9.9.9",
        2,
        "least_loaded",
    )
    assert rec.created_at <= rec.updated_at
    assert rec.created_at.tzinfo is not None
    assert abs(rec.updated_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert store.record_queued(r) is False  # the HTTP API cannot push it back to queued
    assert store.task_states(["task-1", "nope"]) == {"task-1": TaskStatus.SCHEDULED}

    line = rec.to_json()
    assert list(line) == [
        "task_id",
        "status",
        "node",
        "reason",
        "message",
        "attempts",
        "created_at",
        "updated_at",
    ]
    assert line["status"] == "scheduled" and line["node"] == "a" and line["reason"] is None
    assert json.loads(json.dumps(line)) == line


def test_list_tasks_filters_and_limits(store: Store) -> None:
    store.import_nodes([node("a")])
    store.commit([Placement(req(f"s{i}"), "a", "10.0.0.1", "s", "", 1) for i in range(3)], epoch=1)
    store.commit(
        [Failure(f"f{i}", None, Reason.UNKNOWN_POOL, "no pool x", None, 1, None) for i in range(2)], epoch=1
    )
    assert len(store.list_tasks()) == 5
    assert sorted(t.task_id for t in store.list_tasks(TaskStatus.FAILED)) == ["f0", "f1"]
    assert len(store.list_tasks(TaskStatus.SCHEDULED, limit=2)) == 2
    assert store.list_tasks(TaskStatus.RELEASED) == []
    assert store.task_counts() == {TaskStatus.SCHEDULED: 3, TaskStatus.FAILED: 2}
    assert store.get_task("nope") is None


def test_unreachable_database_is_a_clear_error() -> None:
    with (
        Store.from_url("postgresql://nobody:s3cret@127.0.0.1:1/x") as store,
        pytest.raises(DatabaseUnavailable) as info,
    ):
        store.list_nodes()
    message = str(info.value)
    assert "postgresql://nobody:***@127.0.0.1:1/x" in message
    assert "s3cret" not in message and "\n" not in message


def test_unopenable_sqlite_file_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/missing-dir/x.db"
    with (
        Store.from_url(url) as store,
        pytest.raises(DatabaseUnavailable, match="cannot reach database sqlite"),
    ):
        store.inventory_revision()


def test_tasks_table_has_what_commit_wrote(store: Store) -> None:
    """A direct look at the rows, so the API above is not just agreeing with itself."""
    store.import_nodes([node("a")])
    r = req("t1", priority=7, requested_pool="default")
    store.commit([Placement(r, "a", "10.0.0.1", "cpu", "msg", 3)], epoch=9)
    with store.engine.connect() as conn:
        row = conn.execute(select(tasks).where(tasks.c.task_id == "t1")).one()
        alloc = conn.execute(select(allocations)).one()
        node_row = conn.execute(select(nodes.c.name)).scalar_one()
    assert (row.status, row.node, row.attempts, row.strategy, row.priority, row.epoch) == (
        "scheduled",
        "a",
        3,
        "cpu",
        7,
        9,
    )
    assert json.loads(row.request) == r.model_dump(mode="json")
    assert (alloc.task_id, alloc.node, alloc.cpu, alloc.memory, alloc.epoch, alloc.released_at) == (
        "t1",
        "a",
        2,
        4096,
        9,
        None,
    )
    assert node_row == "a"
    assert count(store, tasks) == 1


def test_an_sqlite_file_deleted_while_open_is_refused_not_used(tmp_path: Path) -> None:
    """SQLite keeps using an unlinked file; the store refuses it, and takes the same file back."""
    path = tmp_path / "gone.db"
    store = Store.from_url(f"sqlite:///{path}")
    try:
        store.upgrade()
        assert store.fence_epoch() == 0
        aside = path.rename(tmp_path / "aside.db")
        with pytest.raises(DatabaseUnavailable, match="was deleted or moved while in use"):
            store.fence_epoch()
        with pytest.raises(DatabaseUnavailable):
            store.claim_fence(1, "w")
        aside.rename(path)  # the same file back: usable again, and nothing was written meanwhile
        assert store.fence_epoch() == 0
        path.unlink()
        with pytest.raises(DatabaseUnavailable, match="was deleted or moved while in use"):
            store.fence_epoch()
    finally:
        store.close()


def test_in_memory_and_uri_sqlite_databases_are_not_watched(tmp_path: Path) -> None:
    memory = Store.from_url("sqlite://")
    memory.upgrade()
    assert memory.fence_epoch() == 0
    memory.close()
    target = tmp_path / "by-uri.db"
    uri = Store.from_url(f"sqlite:///file:{target}?uri=true")
    uri.upgrade()
    assert uri.fence_epoch() == 0 and target.exists()
    uri.close()


def test_an_sqlite_file_deleted_during_a_transaction_is_not_committed_into(tmp_path: Path) -> None:
    """A file unlinked after BEGIN: the COMMIT would land in a file nobody opens again, so it is refused.

    A worker's batch transaction lasts milliseconds, the BEGIN check alone leaves
    that whole span open; the commit must be refused too (then the worker requeues
    instead of acking). A second name for the file lets the test see what landed.
    """
    from sqlalchemy import event

    path = tmp_path / "gone.db"
    kept = tmp_path / "kept.db"
    store = Store.from_url(f"sqlite:///{path}")
    try:
        store.upgrade()
        assert store.fence_epoch() == 0
        kept.hardlink_to(path)

        def unlink_mid_transaction(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            if statement.lstrip().upper().startswith("UPDATE FENCE") and path.exists():
                path.unlink()

        event.listen(store.engine, "before_cursor_execute", unlink_mid_transaction)
        with pytest.raises(DatabaseUnavailable, match="was deleted or moved while in use"):
            store.claim_fence(5, "w")
        event.remove(store.engine, "before_cursor_execute", unlink_mid_transaction)
        kept.rename(path)  # the same file back: the refused transaction left nothing in it
        assert store.fence_epoch() == 0
        store.claim_fence(5, "w")
        assert store.fence_epoch() == 5
    finally:
        store.close()


def test_connecting_while_the_sqlite_file_is_away_creates_nothing_in_its_place(tmp_path: Path) -> None:
    """New connections while the file is away must not create an empty database at the path.

    sqlite3 creates a missing file on connect; such a connection, kept in the pool,
    would still be on that empty (later replaced) file once the real one is moved back,
    and fail every transaction it is handed ("no such table") until a restart.
    """
    path = tmp_path / "away.db"
    store = Store.from_url(f"sqlite:///{path}")
    try:
        store.upgrade()
        assert store.fence_epoch() == 0
        aside = path.rename(tmp_path / "aside.db")
        connections = []
        for _ in range(4):  # more than the pool holds now: new connections are opened
            with pytest.raises(DatabaseUnavailable, match="was deleted or moved while in use"):
                connections.append(store.engine.connect())
                with connections[-1].begin():
                    pass
        for conn in connections:
            conn.close()
        assert not path.exists(), "an empty database was created where the file was"
        aside.rename(path)
        held = [store.engine.connect() for _ in range(6)]  # every pooled connection, and new ones
        try:
            for conn in held:
                with conn.begin():
                    assert conn.execute(select(func.count()).select_from(tasks)).scalar_one() == 0
        finally:
            for conn in held:
                conn.close()
    finally:
        store.close()


def test_a_file_replaced_while_the_first_connection_opens_is_refused(tmp_path: Path) -> None:
    """The identity is the file the first connection opened, not whatever the path holds once it is set up.

    A restore (``mv copy.db scheduler.db``) landing while a process opens its first
    connection (which may wait seconds for the WAL switch): the connection holds the
    old file; learning the new one as "the file" would let it commit into the old,
    unlinked one unseen.
    """
    import contextlib
    import sqlite3

    from sqlalchemy import event

    path = tmp_path / "db.db"
    first = Store.from_url(f"sqlite:///{path}")
    first.upgrade()
    first.close()
    copy = tmp_path / "copy.db"
    with contextlib.closing(sqlite3.connect(path)) as src, contextlib.closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    store = Store.from_url(f"sqlite:///{path}")
    try:

        def restore_now(*_: object) -> None:
            if copy.exists():
                copy.replace(path)

        # First among the connect listeners: between opening the file and the engine's own set-up.
        event.listen(store.engine, "connect", restore_now, insert=True)
        with pytest.raises(DatabaseUnavailable, match="was replaced by another file while in use"):
            store.claim_fence(5, "w")
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT epoch FROM fence").fetchall() in ([], [(0,)])


def test_postgresql_connections_give_up_on_a_vanished_peer(pg_url: str) -> None:
    """A database host gone from the network sends nothing back: with the kernel's defaults a
    query waited about 15 minutes, an idle connection over 2 hours. The worker's and the CLI's
    connections carry keepalives and a TCP user timeout; a URL parameter of the same name wins."""
    import socket

    from scheduler.store.engine import make_engine

    def options(url: str) -> tuple[int, int, int]:
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                assert raw is not None
                sock = socket.socket(fileno=os.dup(raw.fileno()))
                try:
                    return (
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                    )
                finally:
                    sock.close()
        finally:
            engine.dispose()

    keepalive, idle, user_timeout = options(pg_url)
    assert keepalive == 1 and idle == 10 and user_timeout == 30_000
    separator = "&" if "?" in pg_url else "?"
    assert options(f"{pg_url}{separator}keepalives_idle=42")[1] == 42
