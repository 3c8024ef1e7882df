"""The database-backed CLI: db upgrade, nodes import/list/cordon/uncordon, status, tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import scheduler.cli.db
import scheduler.cli.nodes
import scheduler.cli.tasks
from scheduler.cli.common import CliError, cli
from scheduler.models import Node, Reason, SchedulingRequest
from scheduler.store import Failure, Placement, Store, Waiting
from tests.harness import still_running_after

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_FLEET = ROOT / "examples" / "fleet.yaml"


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    return {"DATABASE_URL": db_url, "SCHEDULER_CONFIG": str(config), "COLUMNS": "120"}


Run = Callable[..., Result]


@pytest.fixture
def run(env: dict[str, str]) -> Iterator[Run]:
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, list(args), env=env, catch_exceptions=True)

    yield invoke


def error_of(result: Result) -> str:
    """The one-line message ``main()`` would print for this result."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, CliError), repr(result.exception)
    return str(result.exception)


def test_read_commands_on_an_empty_database_say_to_upgrade(run: Run) -> None:
    for args in (("nodes", "list"), ("tasks",), ("status", "x")):
        result = run(*args)
        message = error_of(result)
        assert "database not initialised" in message and "scheduler db upgrade" in message


@pytest.mark.parametrize("args", [("tasks", "--limit"), ("webhooks", "list", "--limit")])
@pytest.mark.parametrize("limit", [2**63, 10**30])
def test_a_limit_past_what_the_database_takes_is_a_usage_error_not_a_traceback(
    run: Run, args: tuple[str, ...], limit: int
) -> None:
    """SQLite's driver overflowed on a LIMIT past 2**63 (OverflowError, a traceback)."""
    assert run("db", "upgrade").exit_code == 0
    result = run(*args, str(limit))
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--limit'" in result.output
    assert run(*args, "1000").exit_code == 0


@pytest.mark.parametrize("ref", [str(2**63), "1" + "0" * 30, "\u00b2", "\u0661"])
def test_webhooks_retry_of_an_id_no_delivery_can_have_is_one_error_line(run: Run, ref: str) -> None:
    """A 64-bit overflow in the driver, or int("²") (a digit to str.isdigit), was a traceback."""
    assert run("db", "upgrade").exit_code == 0
    message = error_of(run("webhooks", "retry", ref))
    assert message.startswith("no delivery"), message


def test_db_upgrade_twice(run: Run, db_url: str) -> None:
    first = run("db", "upgrade")
    assert first.exit_code == 0, first.output
    assert "upgraded from empty to revision 0002" in first.output
    second = run("db", "upgrade")
    assert second.exit_code == 0 and "already at revision 0002" in second.output


def test_a_schema_newer_than_the_code_is_one_line_that_does_not_say_upgrade(run: Run, db_url: str) -> None:
    """After a rollback of the code the database is ahead of it: ``db upgrade``, ``nodes import`` and
    ``nodes cordon`` were Alembic's ``Can't locate revision`` traceback, and the read commands said to
    run ``scheduler db upgrade``, which cannot go back."""
    from sqlalchemy import text

    assert run("nodes", "import", str(EXAMPLE_FLEET)).exit_code == 0
    with Store.from_url(db_url) as store, store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    for args in (
        ("db", "upgrade"),
        ("nodes", "import", str(EXAMPLE_FLEET)),
        ("nodes", "cordon", "bm-001"),
        ("tasks",),
        ("nodes", "list"),
    ):
        message = error_of(run(*args))
        assert "schema revision 9999_from_the_future, newer than this version" in message, (args, message)
        assert "cannot go back" in message


@pytest.mark.parametrize(
    "args",
    [
        ("status",),
        ("nodes", "cordon"),
        ("nodes", "drain"),
        ("webhooks", "retry"),
        ("nodes", "list", "--pool"),
    ],
    ids=lambda a: "-".join(a),
)
def test_an_argument_that_is_not_utf8_is_one_line_not_the_drivers_traceback(
    env: dict[str, str], db_url: str, args: tuple[str, ...]
) -> None:
    """Undecodable bytes in argv arrive as lone surrogates; both drivers refused to encode them with a
    ``UnicodeEncodeError`` traceback (a name pasted from a Latin-1 terminal)."""
    with Store.from_url(db_url) as store:
        store.upgrade()
    out = subprocess.run(
        [sys.executable.encode(), b"-m", b"scheduler", *(a.encode() for a in args), b"bm-\xff01"],
        env={**os.environ, **env},
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(
        b"error: 'bm-\\udcff01' is not valid UTF-8 (undecodable bytes in an argument"
    )
    assert out.stderr.count(b"\n") == 1


@pytest.mark.parametrize("args", [("tasks",), ("db", "upgrade"), ("leader",)], ids=lambda a: "-".join(a))
def test_a_database_url_that_is_not_utf8_is_one_line_without_the_password(
    tmp_path: Path, postgres_base_url: str, args: tuple[str, ...]
) -> None:
    """A password with undecodable bytes: the driver's traceback (``leader``), or the driver's
    connection string, password included, in the error line."""
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_base_url)
    where = f"{parts.hostname}:{parts.port or 5432}"
    url = parts._replace(netloc=f"{parts.username or 'postgres'}:s3cret-\udcff@{where}").geturl()
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env = {k.encode(): v.encode() for k, v in environ.items()}
    env |= {
        b"DATABASE_URL": url.encode(errors="surrogateescape"),
        b"SCHEDULER_CONFIG": str(config).encode(),
        b"ELECTION_BACKEND": b"database",
    }
    out = subprocess.run(
        [sys.executable, "-m", "scheduler", *args], env=env, capture_output=True, check=False, timeout=60
    )
    assert out.returncode != 0 and out.stderr.startswith(b"error: "), out.stderr
    assert out.stderr.count(b"\n") == 1, out.stderr
    assert b"s3cret" not in out.stderr


def test_a_lock_held_by_another_session_ends_the_command_instead_of_waiting_for_ever(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open transaction holding the nodes table (an operator's ``psql`` left in ``BEGIN``) made
    ``nodes cordon`` wait for ever on PostgreSQL; SQLite gives up after its busy timeout."""

    import psycopg

    monkeypatch.setattr(scheduler.cli.db, "LOCK_TIMEOUT_MS", 300)
    with Store.from_url(pg_url) as store:
        store.upgrade()
        store.import_nodes([Node.model_validate({"name": "bm-1", "ip": "10.0.0.1", "cpu": 1, "memory": 1})])
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    env = {"DATABASE_URL": pg_url, "SCHEDULER_CONFIG": str(config)}
    results: list[Result] = []
    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE nodes IN ACCESS EXCLUSIVE MODE")  # a transaction left open
        waited_for_ever = still_running_after(  # it ends after 0.3 s
            lambda: results.append(CliRunner().invoke(cli, ["nodes", "cordon", "bm-1"], env=env))
        )
        holder.rollback()
    if waited_for_ever:
        waited_for_ever.join(60)
    assert not waited_for_ever, "the command was still waiting for the lock"
    message = error_of(results[0])
    assert "lock timeout" in message, message


def test_import_list_cordon_uncordon(run: Run, db_url: str) -> None:
    result = run("nodes", "import", str(EXAMPLE_FLEET))
    assert result.exit_code == 0, result.output
    assert "12 created, 0 updated, 0 unchanged" in result.output
    again = run("nodes", "import", str(EXAMPLE_FLEET))
    assert "0 created, 0 updated, 12 unchanged" in again.output

    with Store.from_url(db_url) as store:
        store.commit(
            [
                Placement(
                    SchedulingRequest(
                        task_id="vm-1",
                        requested_cpu=48,
                        requested_memory=131072,
                        requested_disk=100,
                        requested_pool="ai",
                    ),
                    "gpu-001",
                    "10.0.2.1",
                    "least_loaded",
                    "ok",
                    1,
                )
            ],
            epoch=1,
        )

    table = run("nodes", "list")
    assert table.exit_code == 0, table.output
    for name in ("bm-001", "gpu-004", "st-002"):
        assert name in table.output
    assert "pools" in table.output and "█" in table.output and "50%" in table.output

    lines = [json.loads(x) for x in run("nodes", "list", "--json", "--pool", "ai").output.splitlines()]
    assert [n["name"] for n in lines] == ["gpu-001", "gpu-002", "gpu-003", "gpu-004"]
    gpu1 = lines[0]
    assert gpu1["allocated"] == {"cpu": 48, "memory": 131072, "disk": 100, "vms": 1}
    assert {
        "name",
        "ip",
        "pool",
        "dedicated",
        "cpu",
        "memory",
        "disk",
        "max_vms",
        "tags",
        "zone",
        "cordoned",
    } <= set(gpu1)
    assert lines[1]["allocated"] == {"cpu": 0, "memory": 0, "disk": 0, "vms": 0}

    assert run("nodes", "cordon", "bm-003").output.strip() == "node bm-003 cordoned"
    assert "already cordoned" in run("nodes", "cordon", "bm-003").output
    listed = {n["name"]: n for n in map(json.loads, run("nodes", "list", "--json").output.splitlines())}
    assert listed["bm-003"]["cordoned"] is True and len(listed) == 12
    assert run("nodes", "uncordon", "bm-003").output.strip() == "node bm-003 uncordoned"
    unknown = run("nodes", "cordon", "bm-999")
    assert "unknown node 'bm-999'" in error_of(unknown)


def test_import_of_a_broken_file_names_node_and_field(run: Run, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "nodes:\n  - {name: ok-1, ip: 10.0.0.1, cpu: 8, memory: 1024}\n"
        "  - {name: bad-2, ip: 10.0.0.2, cpu: 8, memory: lots}\n"
    )
    result = run("nodes", "import", str(path))
    message = error_of(result)
    assert "nodes[1] (bad-2): memory:" in message and "nothing imported" in message
    assert run("db", "upgrade").exit_code == 0
    assert run("nodes", "list", "--json").output == ""
    missing = run("nodes", "import", str(tmp_path / "nope.yaml"))
    assert missing.exit_code != 0


def test_status_and_tasks(run: Run, db_url: str) -> None:
    assert run("db", "upgrade").exit_code == 0
    assert run("nodes", "import", str(EXAMPLE_FLEET)).exit_code == 0
    with Store.from_url(db_url) as store:
        store.commit(
            [
                Placement(
                    SchedulingRequest(task_id="vm-1", requested_cpu=4, requested_memory=8192),
                    "bm-001",
                    "10.0.1.1",
                    "least_loaded",
                    "placed on bm-001",
                    1,
                ),
                Failure("vm-2", None, Reason.UNKNOWN_POOL, "no pool 'zz'", None, 1, None),
                Waiting(
                    SchedulingRequest(task_id="vm-3", requested_cpu=4, requested_memory=8192),
                    "0/12 fit",
                    2,
                    "least_loaded",
                ),
            ],
            epoch=1,
        )

    status = run("status", "vm-1")
    assert status.exit_code == 0, status.output
    assert "scheduled" in status.output and "bm-001 (10.0.1.1)" in status.output
    detail = json.loads(run("status", "vm-2", "--json").output)
    assert detail["status"] == "failed" and detail["reason"] == "unknown_pool" and detail["node"] is None
    unknown = run("status", "nope")
    assert error_of(unknown) == "unknown task 'nope'"

    lines = [json.loads(x) for x in run("tasks", "--json").output.splitlines()]
    assert sorted(x["task_id"] for x in lines) == ["vm-1", "vm-2", "vm-3"]
    for line in lines:
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
    failed = [json.loads(x) for x in run("tasks", "--status", "failed", "--json").output.splitlines()]
    assert [x["task_id"] for x in failed] == ["vm-2"]
    assert len(run("tasks", "--json", "--limit", "2").output.splitlines()) == 2
    table = run("tasks")
    assert table.exit_code == 0 and "vm-3" in table.output and "waiting" in table.output
    assert run("tasks", "--status", "bogus").exit_code == 2


def test_unreachable_database_is_one_line_through_the_real_entry_point(tmp_path: Path) -> None:
    """Through ``main()`` as installed: one line on stderr naming the URL, password hidden, exit 1."""
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://nobody:hunter2@127.0.0.1:1/x",
        "SCHEDULER_CONFIG": str(config),
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from scheduler.cli import main; main()", "status", "x"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot reach database postgresql://nobody:***@127.0.0.1:1/x: ")
    assert "hunter2" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("db", "upgrade"),
        ("nodes", "import", str(EXAMPLE_FLEET)),
        ("nodes", "list"),
        ("tasks",),
        ("nodes", "cordon", "bm-001"),
    ],
)
def test_unreachable_database_every_command(tmp_path: Path, args: tuple[str, ...]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    env = {"DATABASE_URL": "postgresql://nobody:hunter2@127.0.0.1:1/x", "SCHEDULER_CONFIG": str(config)}
    result = CliRunner().invoke(cli, list(args), env=env)
    message = error_of(result)
    assert message.startswith("cannot reach database postgresql://nobody:***@127.0.0.1:1/x: ")
    assert "\n" not in message and "hunter2" not in message
