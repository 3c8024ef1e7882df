"""Migrations: from empty, again (idempotent), and exactly the schema of ``schema.py``, on both backends."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text

from scheduler.store import NotMigrated, Store, make_engine, migrate
from scheduler.store.schema import FENCE_ROW, INVENTORY_REVISION, fence, metadata, revisions
from tests.store_checks import active_allocations, overcommitted_nodes


@pytest.fixture
def engine(db_url: str) -> Any:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


def _diffs(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
        return list(compare_metadata(ctx, metadata))


def _where(index: Any) -> str | None:
    options = index.get("dialect_options", {})
    clause = options.get("postgresql_where", options.get("sqlite_where"))
    if clause is None:
        return None
    return _norm(str(clause))


def _norm(sql: str) -> str:
    return re.sub(r"[()\s]+", " ", sql).strip().lower()


def test_upgrade_from_empty_then_again_is_idempotent(engine: Engine) -> None:
    assert migrate.current_revision(engine) is None
    with pytest.raises(NotMigrated, match="scheduler db upgrade"):
        migrate.check(engine)

    head = migrate.head_revision()
    assert migrate.upgrade(engine) == head
    assert migrate.upgrade(engine) == head  # second run: nothing to do, no error
    migrate.check(engine)

    with engine.connect() as conn:
        # Seeds: the fencing row at epoch 0 and the inventory counter at 0, once each.
        assert conn.execute(select(fence.c.name, fence.c.epoch)).all() == [(FENCE_ROW, 0)]
        assert conn.execute(select(revisions.c.name, revisions.c.value)).all() == [(INVENTORY_REVISION, 0)]


def test_migrated_schema_matches_metadata(engine: Engine) -> None:
    migrate.upgrade(engine)
    assert _diffs(engine) == []
    # compare_metadata ignores partial-index predicates: check those ourselves.
    with engine.connect() as conn:
        reflected = {ix["name"]: ix for ix in inspect(conn).get_indexes("allocations")}
    for index in metadata.tables["allocations"].indexes:
        got = reflected[index.name]
        assert bool(got["unique"]) == bool(index.unique), index.name
        where = index.dialect_options[engine.dialect.name]["where"]
        assert _where(got) == (_norm(str(where)) if where is not None else None), index.name
    assert _where(reflected["uq_allocations_active_task"]) == "released_at is null"


def test_comparison_detects_drift(engine: Engine) -> None:
    """The check above can fail: drop an index and a column and it must notice."""
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_outbox_pending"))
    diffs = _diffs(engine)
    assert any(d[0] == "add_index" and d[1].name == "ix_outbox_pending" for d in diffs), diffs


def test_alembic_version_lands_in_the_urls_schema(pg_url: str) -> None:
    """PostgreSQL only (schemas): everything, alembic_version included, lands in the search_path schema."""
    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        tables = set(
            conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": schema},
            ).scalars()
        )
        in_public = conn.execute(
            text(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_name = 'alembic_version'"
            )
        ).scalar_one()
    assert schema.startswith("t_")
    assert {"alembic_version", "nodes", "tasks", "allocations", "outbox", "fence"} <= tables
    assert in_public == 0
    engine.dispose()


def test_downgrade_to_base_and_up_again(engine: Engine) -> None:
    migrate.upgrade(engine)
    cfg = migrate.alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    with engine.connect() as conn:
        assert "nodes" not in inspect(conn).get_table_names()
    migrate.upgrade(engine)
    assert _diffs(engine) == []


def test_env_py_without_a_passed_connection_uses_database_url(
    db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Alembic run by hand (no connection in config.attributes) reads DATABASE_URL, from any directory."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("SCHEDULER_CONFIG", str(tmp_path / "empty.yaml"))
    (tmp_path / "empty.yaml").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    command.upgrade(migrate.alembic_config(), "head")
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_concurrent_upgrades_both_succeed(db_url: str) -> None:
    """Two replicas starting at once both migrate; one does the work, the other finds it done."""
    engines = [make_engine(db_url), make_engine(db_url)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(eng: Engine) -> None:
        barrier.wait()
        try:
            migrate.upgrade(eng)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _diffs(engines[0]) == []
    for e in engines:
        e.dispose()


def test_store_upgrade_and_check(db_url: str) -> None:
    with Store.from_url(db_url) as store:
        with pytest.raises(NotMigrated):
            store.check_schema()
        store.upgrade()
        store.check_schema()


def test_upgrade_from_0001_keeps_nodes_tasks_and_allocations(engine: Engine) -> None:
    """A database written by the 0001 schema, with data, upgrades to head with nothing lost."""
    from datetime import UTC, datetime

    from scheduler.fleet import Allocation
    from scheduler.models import Node, SchedulingRequest
    from scheduler.store.records import Placement
    from scheduler.store.schema import allocations, nodes, tasks

    migrate.upgrade(engine, "0001")
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    node_rows = [
        {"name": f"bm-{i}", "ip": f"10.0.0.{i}", "pool": "default", "dedicated": i == 2, "cpu": 64,
         "memory": 262144, "disk": 2000, "max_vms": 40, "tags": '["gpu"]' if i == 1 else "[]",
         "zone": "az1" if i else None, "cordoned": i == 3, "created_at": now, "updated_at": now}
        for i in range(4)
    ]  # fmt: skip
    request = SchedulingRequest(
        task_id="t-old", requested_cpu=4, requested_memory=8192, anti_affinity_group="db"
    )
    task_rows = [
        {"task_id": tid, "request": request.model_copy(update={"task_id": tid}).model_dump_json(
            exclude=NEW_FIELDS),
         "status": status, "node": node, "attempts": 1, "priority": 0, "epoch": 3,
         "created_at": now, "updated_at": now}
        for tid, status, node in (("t-old", "scheduled", "bm-1"), ("t-gone", "released", "bm-0"),
                                  ("t-wait", "waiting", None))
    ]  # fmt: skip
    alloc_rows = [
        {"task_id": "t-old", "node": "bm-1", "cpu": 4, "memory": 8192, "disk": 0,
         "anti_affinity_group": "db", "epoch": 3, "created_at": now, "released_at": None},
        {"task_id": "t-gone", "node": "bm-0", "cpu": 2, "memory": 1024, "disk": 10,
         "anti_affinity_group": None, "epoch": 3, "created_at": now, "released_at": now},
    ]  # fmt: skip
    old_columns = {t: [c.name for c in table.c if c.name not in NEW_COLUMNS[t]] for t, table in (
        ("nodes", nodes), ("tasks", tasks), ("allocations", allocations))}  # fmt: skip
    with engine.begin() as conn:
        for table, rows in ((nodes, node_rows), (tasks, task_rows), (allocations, alloc_rows)):
            cols = [c for c in old_columns[table.name] if c in rows[0]]
            values = ", ".join(":" + c for c in cols)
            conn.execute(
                text(f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({values})"),
                [{c: row.get(c) for c in cols} for row in rows],
            )
        before = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in old_columns}

    assert migrate.upgrade(engine) == migrate.head_revision()
    assert _diffs(engine) == []
    with engine.connect() as conn:
        assert {
            t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in old_columns
        } == before

    store = Store(engine)
    listed = store.list_nodes()
    assert [n.name for n in listed] == ["bm-0", "bm-1", "bm-2", "bm-3"]
    old_fields = {k: v for k, v in listed[1].model_dump(mode="json").items()}
    assert old_fields["tags"] == ["gpu"] and old_fields["zone"] == "az1" and old_fields["resources"] == {}
    assert (old_fields["reserved"], old_fields["cpu_allocation_ratio"]) == (None, None)
    assert listed[2].dedicated and listed[3].cordoned
    assert active_allocations(store) == [Allocation("t-old", "bm-1", 4, 8192, 0, "db")]
    fleet = store.load_fleet()
    assert fleet.allocation("t-old") == Allocation("t-old", "bm-1", 4, 8192, 0, "db")
    assert fleet.hard_groups == {"db": {fleet.index["bm-1"]: 1}}  # an old group is a hard one
    assert store.get_task("t-old").status.value == "scheduled"  # type: ignore[union-attr]
    assert store.get_task("t-wait").status.value == "waiting"  # type: ignore[union-attr]

    # The upgraded database takes the new fields: devices on a node, and a placement holding some.
    store.import_nodes([Node.model_validate({**listed[0].model_dump(mode="json"), "resources": {"gpu": 8}})])
    gpu = SchedulingRequest(
        task_id="t-gpu", requested_cpu=1, requested_memory=1, requested_resources={"gpu": 2}
    )
    store.commit([Placement(gpu, "bm-0", "10.0.0.0", "least_loaded", "placed", 1)], epoch=3)
    assert store.node_usage()["bm-0"].devices == {"gpu": 2}
    assert overcommitted_nodes(store) == {}


NEW_FIELDS = {"requested_resources", "forbidden_tags", "anti_affinity_mode", "spread_group", "spread_mode"}
"""Request fields the 0001 era did not know: its stored requests lack them."""
NEW_COLUMNS = {
    "nodes": {"resources", "reserved_cpu", "reserved_memory", "reserved_disk",
              "cpu_allocation_ratio", "memory_allocation_ratio", "disk_allocation_ratio"},
    "tasks": set(),
    "allocations": {"resources", "spread_group", "anti_affinity_mode"},
}  # fmt: skip
