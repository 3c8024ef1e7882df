"""What a person sees: aligned columns, whole rows when piped, fits a terminal, errors at the client.

The terminal case runs the real console script in a pseudo-terminal, so the
width is the one the process discovers itself, as a user's shell gives it.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import scheduler.cli.leader
import scheduler.cli.submit
import scheduler.cli.tasks  # noqa: F401  (registers the commands)
from scheduler.cli import columns
from scheduler.cli.common import CliError, cli
from scheduler.cli.leader import render
from scheduler.cli.submit import _poll_results
from scheduler.elector.record import LeaderInfo
from scheduler.models import Reason, SchedulingRequest, TaskStatus
from scheduler.store import Failure, Placement, Release, Store
from scheduler.store.nodesfile import load_nodes_file
from scheduler.strategies.registry import STRATEGY_NAMES
from tests.harness import delete_topology, start_publishing, still_running_after

SCHEDULER = str(Path(sys.executable).with_name("scheduler"))
EXAMPLE_FLEET = Path(__file__).resolve().parents[1] / "examples" / "fleet.yaml"
LONG_ID = "3f2c1a9e-7b4d-4e8a-9c1f-0a2b3c4d5e6f"
FIT_MESSAGE = "bm-001 by least_loaded; 2/2 nodes fit"
POOL_MESSAGE = "unknown pool 'edge' (known: default)"


def _config(tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text("{}\n")
    return str(path)


@pytest.fixture
def filled(sqlite_url: str) -> str:
    """A database with a scheduled, a released (placed, then released) and a failed task."""
    with Store.from_url(sqlite_url) as store:
        store.upgrade()
        store.import_nodes(load_nodes_file(str(EXAMPLE_FLEET)))
        req = SchedulingRequest(task_id=LONG_ID, requested_cpu=2, requested_memory=2048)
        gone = SchedulingRequest(task_id="web-1", requested_cpu=1, requested_memory=1024)
        store.commit(
            [
                Placement(req, "bm-001", "10.0.1.1", "least_loaded", FIT_MESSAGE, 1),
                Placement(gone, "bm-002", "10.0.1.2", "least_loaded", "bm-002 by least_loaded", 1),
                Failure("edge-1", None, Reason.UNKNOWN_POOL, POOL_MESSAGE, None, 1, None),
            ],
            epoch=1,
        )
        store.commit([Release("web-1")], epoch=1)
    return sqlite_url


# ------------------------------------------------------------------ columns


def test_columns_are_aligned_with_two_spaces_and_never_tabs() -> None:
    cols = (columns.Column("task"), columns.Column("status"), columns.Column("n", align_right=True))
    lines = columns.render(cols, [["a", "scheduled", "1"], ["longer-id", "failed", "12"]])
    assert lines == ["task       status      n", "a          scheduled   1", "longer-id  failed     12"]


@given(
    rows=st.lists(
        st.tuples(st.text(min_size=1, max_size=40), st.sampled_from([s.value for s in TaskStatus]),
                  st.text(max_size=60)),
        min_size=1, max_size=8,
    ),
    width=st.integers(min_value=20, max_value=200),
)  # fmt: skip
def test_fitting_a_width_cuts_only_the_shrinkable_columns(
    rows: list[tuple[str, str, str]], width: int
) -> None:
    cols = (columns.Column("task", floor=8), columns.Column("status"), columns.Column("message", floor=12))
    whole = columns.widths(cols, [list(r) for r in rows], None)
    sizes = columns.widths(cols, [list(r) for r in rows], width)
    assert sizes[1] == whole[1]  # the status is never shortened
    assert sizes[0] >= min(8, whole[0]) and sizes[2] >= min(12, whole[2])
    fits_at_floors = min(8, whole[0]) + whole[1] + min(12, whole[2]) + 4 <= width
    if fits_at_floors:
        assert sum(sizes) + 4 <= width
    else:
        assert sizes[0] == min(8, whole[0]) and sizes[2] == min(12, whole[2])


# ------------------------------------------------------------------- tasks


def test_tasks_piped_prints_whole_aligned_rows_with_released_tasks(filled: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["tasks"], env={"DATABASE_URL": filled, "SCHEDULER_CONFIG": _config(tmp_path), "COLUMNS": "60"}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "\t" not in result.output and "…" not in result.output
    header = lines[0].split()
    assert header == ["task", "status", "node", "reason", "attempts", "updated", "message"]
    starts = [lines[0].index(h) for h in ("status", "node", "reason")]
    by_id = {line.split()[0]: line for line in lines[1:]}
    assert set(by_id) == {LONG_ID, "web-1", "edge-1"}
    for line in by_id.values():  # each column starts under its header
        assert all(line[s - 2 : s] == "  " and line[s] != " " for s in starts), line
    assert by_id["web-1"].split()[1:3] == ["released", "bm-002"]
    assert "bm-001 by least_loaded; 2/2 nodes fit" in by_id[LONG_ID]
    assert "unknown pool 'edge' (known: default)" in by_id["edge-1"]
    assert "updated" in lines[0] and "updat…" not in result.output


def _in_terminal(argv: list[str], env: dict[str, str], columns_: int) -> str:
    """Run ``argv`` with stdout on a pseudo-terminal ``columns_`` wide; its output."""
    main, child = pty.openpty()
    full = {**os.environ, **env, "COLUMNS": str(columns_), "TERM": "dumb"}
    proc = subprocess.Popen(argv, stdout=child, stderr=child, stdin=subprocess.DEVNULL, env=full)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(main)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_tasks_in_a_100_column_terminal_shortens_ids_not_status_or_node(filled: str, tmp_path: Path) -> None:
    env = {"DATABASE_URL": filled, "SCHEDULER_CONFIG": _config(tmp_path)}
    out = _in_terminal([SCHEDULER, "tasks"], env, 100)
    lines = [line for line in out.splitlines() if line]
    assert all(len(line) <= 100 for line in lines), out
    row = next(line for line in lines if line.startswith(LONG_ID[:8]))
    assert LONG_ID not in out and row.split()[0].endswith("…")
    assert row.split()[1:3] == ["scheduled", "bm-001"]
    released = next(line for line in lines if line.startswith("web-1"))
    assert released.split()[1:3] == ["released", "bm-002"]
    wide = _in_terminal([SCHEDULER, "tasks", "--wide"], env, 100)
    assert LONG_ID in wide and "bm-001 by least_loaded; 2/2 nodes fit" in wide


# ------------------------------------------------------------------ leader


def test_leader_on_a_fresh_database_prints_its_hint_once(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "SCHEDULER_CONFIG": _config(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}",
        "ELECTION_BACKEND": "database",
    }
    out = subprocess.run([SCHEDULER, "leader"], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("scheduler db upgrade") == 1, out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_leader_on_a_postgresql_database_that_is_not_there_does_not_say_upgrade(
    tmp_path: Path, postgres_base_url: str
) -> None:
    """``database "x" does not exist`` got "(run `scheduler db upgrade`)" appended, which cannot create
    a database; only a missing table (the schema not created yet) gets that hint."""
    from sqlalchemy.engine import make_url

    missing = make_url(postgres_base_url).set(database="no_such_db_for_leader").render_as_string(False)
    env = {
        "PATH": os.environ["PATH"],
        "SCHEDULER_CONFIG": _config(tmp_path),
        "DATABASE_URL": missing,
        "ELECTION_BACKEND": "database",
    }
    out = subprocess.run([SCHEDULER, "leader"], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert 'database "no_such_db_for_leader" does not exist' in out.stderr, out.stderr
    assert "scheduler db upgrade" not in out.stderr


@pytest.mark.parametrize("kubeconfig", ["garbage: [", "- a", "apiVersion: v1\nclusters: 5\n"])
def test_leader_with_a_kubeconfig_that_is_not_one_is_one_line(tmp_path: Path, kubeconfig: str) -> None:
    """A kubeconfig that is not YAML (or not a mapping) was a yaml.ParserError traceback from
    ``scheduler leader`` (and the worker's start) with ``ELECTION_BACKEND=kubernetes``."""
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig)
    env = {
        "PATH": os.environ["PATH"],
        "SCHEDULER_CONFIG": _config(tmp_path),
        "ELECTION_BACKEND": "kubernetes",
        "KUBECONFIG": str(path),
    }
    out = subprocess.run([SCHEDULER, "leader"], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith(
        f"error: cannot configure the Kubernetes client from the kubeconfig {path}: "
    )
    assert len(out.stderr.splitlines()) == 1, out.stderr


def test_leader_never_shows_a_negative_age() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ahead = now + timedelta(milliseconds=100)  # the holder's clock is ahead of ours
    info = LeaderInfo(
        backend="database", lock="database lease x", holder="pod-a", epoch=1,
        acquire_time=ahead, renew_time=ahead, lease_duration=15.0, expired=False,
    )  # fmt: skip
    text = render(info, now)
    assert not re.search(r"-\d", text.replace("2026-01-01", "")), text
    assert "0.1 s ahead" in text


# ------------------------------------------------------------------ submit


def test_submit_refuses_an_unknown_strategy_before_connecting(tmp_path: Path) -> None:
    env = {"SCHEDULER_CONFIG": _config(tmp_path), "AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
    args = ["submit", "--cpu", "1", "--memory", "512", "--strategy", "fastest"]
    result = CliRunner().invoke(cli, args, env=env)
    assert isinstance(result.exception, CliError) and result.exit_code == 1
    message = str(result.exception)
    assert message.startswith("--strategy: unknown strategy 'fastest'")
    assert all(name in message for name in STRATEGY_NAMES)


def test_submit_file_reports_an_unknown_strategy_by_line(tmp_path: Path) -> None:
    from scheduler.cli.submit import messages_from_file

    trace = tmp_path / "reqs.jsonl"
    trace.write_text(
        '{"task_id": "a", "requested_cpu": 1, "requested_memory": 512, "strategy": "fastest"}\n'
        '{"task_id": "b", "requested_cpu": 1, "requested_memory": 512, "strategy": "best_fit"}\n'
    )
    good, problems = messages_from_file(str(trace))
    assert [m.message_id for m in good] == ["b"]
    assert len(problems) == 1 and problems[0].startswith("line 1: strategy: unknown strategy 'fastest'")


def test_waiting_prints_aligned_outcomes_including_tasks_released_in_the_batch(
    filled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store.from_url(filled) as store:
        code = _poll_results(store, [LONG_ID, "edge-1", "web-1"], {"web-1"}, timeout=10, as_json=False)
    assert code == 3  # one task failed
    lines = capsys.readouterr().out.splitlines()
    assert "\t" not in "".join(lines)
    assert lines[0].split() == ["task", "status", "node", "or", "reason"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["web-1"][1:3] == ["released", "bm-002"]
    assert rows[LONG_ID][1:3] == ["scheduled", "bm-001"]
    assert rows["edge-1"][1:3] == ["failed", "unknown_pool:"]
    status_at = lines[0].index("status")
    assert all(line[status_at - 2 : status_at] == "  " and line[status_at] != " " for line in lines[1:])


def test_a_stored_message_with_a_bidi_override_is_shown_escaped(filled: str, tmp_path: Path) -> None:
    """The worker names a request's unknown field as sent and escapes its control characters, not a
    U+202E: ``status`` and ``tasks`` showed the rest of the row reversed on a terminal."""
    message = "\u202etxt.exe: Extra inputs are not permitted"
    with Store.from_url(filled) as store:
        store.commit([Failure("rtl-1", None, Reason.INVALID_REQUEST, message, None, 1, None)], epoch=1)
    env = {"DATABASE_URL": filled, "SCHEDULER_CONFIG": _config(tmp_path)}
    for args in (["status", "rtl-1"], ["tasks"], ["tasks", "--wide"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
        assert "\u202e" not in result.output and "\\u202etxt.exe" in result.output, args
    as_json = CliRunner().invoke(cli, ["status", "rtl-1", "--json"], env=env)
    assert json.loads(as_json.output)["message"] == message  # JSON carries the text itself, escaped by JSON


@pytest.mark.parametrize("timeout", [1e10, float("inf")])
def test_waiting_with_a_timeout_past_the_clocks_range_waits(filled: str, timeout: float) -> None:
    """``--timeout inf`` (or 1e10) is a wait without end, not an OverflowError from the clock."""
    with Store.from_url(filled) as store:
        assert _poll_results(store, [LONG_ID], set(), timeout=timeout, as_json=True) == 0


def test_waiting_on_a_reused_task_id_reports_the_conflict_not_the_originals_outcome(
    filled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``submit --task-id <existing> --cpu 32 --pool ai --wait`` printed the original's
    ``scheduled bm-001``, exit 0; the worker had failed the newcomer as a conflict."""
    import json

    original = SchedulingRequest(task_id=LONG_ID, requested_cpu=2, requested_memory=2048)
    other = original.model_copy(update={"requested_cpu": 32, "requested_pool": "ai"})
    with Store.from_url(filled) as store:

        def wait_for(sent: SchedulingRequest) -> int:
            body = json.loads(sent.model_dump_json())
            return _poll_results(store, [LONG_ID], set(), timeout=10, as_json=True, sent={LONG_ID: [body]})

        same = wait_for(original)
        [line] = capsys.readouterr().out.splitlines()
        assert same == 0 and json.loads(line)["node"] == "bm-001"  # the same request again: its outcome
        code = wait_for(other)
    [line] = capsys.readouterr().out.splitlines()
    shown = json.loads(line)
    assert code == 3
    assert (shown["status"], shown["node"], shown["reason"]) == ("failed", None, "conflict")
    assert "different request (status scheduled on bm-001)" in shown["message"]


def test_waiting_ends_at_its_timeout_when_the_database_stops_answering_mid_query(pg_url: str) -> None:
    """``submit --wait --timeout 6`` with PostgreSQL behind a link that went silent (a partition: no
    error, no reply) waited for ever: the deadline was looked at only between two queries."""
    from urllib.parse import urlsplit

    from tests.fault_proxy import FaultProxy

    parts = urlsplit(pg_url)
    codes: list[int] = []
    with (
        FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy,
        Store.from_url(proxy.url_through(pg_url)) as store,
    ):
        store.upgrade()
        store.task_states(["warm"])  # the pooled connection is open: the next query meets the stall
        proxy.fault("stall")
        hung = still_running_after(  # it returns at 0.5 s
            lambda: codes.append(_poll_results(store, ["never"], set(), timeout=0.5, as_json=True))
        )
        proxy.heal()
        if hung:
            hung.join(60)
    assert not hung, "the wait did not end at its timeout"
    assert codes == [4]


def test_submit_file_publishes_the_good_lines_and_reports_the_bad_ones_after(
    amqp_url: str, amqp_names: dict[str, str], tmp_path: Path
) -> None:
    """Piped, the file is parsed while it is published; every good line is sent, every bad one named."""
    import pika

    from scheduler.broker import Topology

    trace = tmp_path / "reqs.jsonl"
    lines = [f'{{"task_id": "f-{i}", "requested_cpu": 1, "requested_memory": 512}}' for i in range(300)]
    lines[5] = '{"task_id": "bad", "requested_cpu": "x", "requested_memory": 512}'
    lines[200] = "{not json"
    trace.write_text("\n".join(lines) + "\n" + '{"release": "f-7"}\n')
    env = {
        "SCHEDULER_CONFIG": _config(tmp_path),
        "AMQP_URL": amqp_url,
        "SCHEDULER_AMQP__EXCHANGE": amqp_names["exchange"],
        "SCHEDULER_AMQP__QUEUE": amqp_names["queue"],
    }
    topo = Topology(amqp_names["exchange"], amqp_names["queue"])
    try:
        result = CliRunner().invoke(cli, ["submit", "--file", str(trace)], env=env)
        assert result.exit_code == 1, result.output  # bad input, the rest sent
        expected = [f"f-{i}" for i in range(300) if i not in (5, 200)] + ["f-7"]
        assert result.stdout.split() == expected
        skipped = result.stderr.splitlines()
        assert len(skipped) == 2
        assert skipped[0].startswith("skipped: line 6: requested_cpu")
        assert skipped[1].startswith("skipped: line 201: malformed JSON")
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        ch = conn.channel()
        assert ch.queue_declare(topo.queue, passive=True).method.message_count == len(expected)
        conn.close()
    finally:
        delete_topology(amqp_url, topo)


@pytest.mark.parametrize("database", ["migrated", "missing"])
def test_a_wait_that_ends_before_the_outcomes_names_every_task_still_pending(
    amqp_url: str, amqp_names: dict[str, str], sqlite_url: str, tmp_path: Path, database: str
) -> None:
    """``--wait`` prints outcomes instead of the published ids: on a timeout (no worker here) or a
    database it cannot read, the tasks not seen terminal were a count alone, and a generated id was
    printed nowhere although the request was published and would be placed."""
    import pika

    from scheduler.broker import Topology

    if database == "migrated":
        with Store.from_url(sqlite_url) as store:
            store.upgrade()
    trace = tmp_path / "reqs.jsonl"
    trace.write_text(
        '{"task_id": "w-1", "requested_cpu": 1, "requested_memory": 512}\n'
        '{"requested_cpu": 1, "requested_memory": 512}\n'
    )
    env = {
        "SCHEDULER_CONFIG": _config(tmp_path),
        "AMQP_URL": amqp_url,
        "DATABASE_URL": sqlite_url,
        "SCHEDULER_AMQP__EXCHANGE": amqp_names["exchange"],
        "SCHEDULER_AMQP__QUEUE": amqp_names["queue"],
    }
    topo = Topology(amqp_names["exchange"], amqp_names["queue"])
    try:
        args = ["submit", "--file", str(trace), "--wait", "--timeout", "0"]
        result = CliRunner().invoke(cli, args, env=env)
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        ch = conn.channel()
        published = set()
        while (got := ch.basic_get(topo.queue, auto_ack=True))[0] is not None:
            published.add(got[1].message_id)
        conn.close()
    finally:
        delete_topology(amqp_url, topo)
    assert len(published) == 2 and "w-1" in published
    named = [line for line in result.stderr.splitlines() if line.startswith("still pending: ")]
    assert sorted(line.removeprefix("still pending: ") for line in named) == sorted(published)
    if database == "migrated":
        assert result.exit_code == 4
        assert result.stderr.splitlines()[0] == "timed out after 0.0s; still pending: 2"
    else:
        assert isinstance(result.exception, CliError), result.output
        assert str(result.exception).startswith("database not initialised")


def test_ctrl_c_during_a_wait_names_the_tasks_still_pending(
    amqp_url: str, amqp_names: dict[str, str], sqlite_url: str, tmp_path: Path
) -> None:
    """Interrupted while it waited (no worker here), ``submit --wait`` said "aborted" and nothing else:
    the request was published under a generated id that no line showed."""
    import signal

    import pika

    from scheduler.broker import Topology

    with Store.from_url(sqlite_url) as store:
        store.upgrade()
    env = {
        **os.environ,
        "SCHEDULER_CONFIG": _config(tmp_path),
        "AMQP_URL": amqp_url,
        "DATABASE_URL": sqlite_url,
        "SCHEDULER_AMQP__EXCHANGE": amqp_names["exchange"],
        "SCHEDULER_AMQP__QUEUE": amqp_names["queue"],
    }
    topo = Topology(amqp_names["exchange"], amqp_names["queue"])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scheduler",
            "submit",
            "--cpu",
            "1",
            "--memory",
            "512",
            "--wait",
            "--timeout",
            "600",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().startswith("published 1 of 1 messages")
        assert proc.stdout.readline().split()[:2] == ["task", "status"]  # waiting now
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        err = proc.stderr.read()
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        _, props, _ = conn.channel().basic_get(topo.queue, auto_ack=True)
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        delete_topology(amqp_url, topo)
    assert f"still pending: {props.message_id}" in err.splitlines(), err


@pytest.mark.parametrize("command", ["submit", "release"])
def test_ctrl_c_while_publishing_says_which_ids_were_published_and_which_not(
    amqp_url: str, amqp_names: dict[str, str], tmp_path: Path, command: str
) -> None:
    """A KeyboardInterrupt raised inside the publisher ended ``submit --file`` with "aborted" alone:
    thousands of requests confirmed, none named, so the file could be neither trusted nor sent again
    safely (a line without a task id gets a new one each time). ``release`` (as ``move`` and the
    ``--apply`` of plans, which end the same way) reports alike and exits 130 as well."""
    import signal
    from urllib.parse import urlsplit

    import pika

    from scheduler.broker import Topology
    from tests.fault_proxy import FaultProxy
    from tests.harness import wait_until

    ids = [f"c-{i}" for i in range(20_000 if command == "submit" else 5_000)]
    trace = tmp_path / "reqs.jsonl"
    trace.write_text(
        "".join(f'{{"task_id": "{t}", "requested_cpu": 1, "requested_memory": 512}}\n' for t in ids)
    )
    topo = Topology(amqp_names["exchange"], amqp_names["queue"])
    parts = urlsplit(amqp_url)
    broker = pika.BlockingConnection(pika.URLParameters(amqp_url))

    def depth() -> int:
        channel = broker.channel()
        try:
            return int(channel.queue_declare(topo.queue, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:  # not declared yet
            return 0
        finally:
            if channel.is_open:
                channel.close()

    with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        args = ["submit", "--file", str(trace)] if command == "submit" else ["release", *ids]
        proc = start_publishing(args, proxy.url_through(amqp_url), topo, _config(tmp_path))
        try:
            wait_until(lambda: depth() > 0, 60, "the first messages in the queue", interval=0.01)
            proxy.fault("stall")  # the rest cannot be confirmed now: the interrupt lands mid-batch
            assert proc.poll() is None
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
            proxy.heal()
            queued = set()
            channel = broker.channel()
            while (got := channel.basic_get(topo.queue, auto_ack=True))[0] is not None:
                queued.add(got[1].message_id)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            broker.close()
            delete_topology(amqp_url, topo)
    assert proc.returncode == 130
    published = [line.removeprefix("release published: ") for line in out.splitlines()]
    not_published = [line.split(": ")[1] for line in err.splitlines() if line.startswith("not published: ")]
    assert len(err.splitlines()) == len(not_published), err[:500]  # nothing else: no "aborted", no traceback
    assert not_published  # interrupted mid-batch (confirms may or may not have come back before the stall)
    assert sorted(published + not_published) == sorted(ids)  # each id said once: published or not
    assert set(published) <= queued  # never an unconfirmed id shown as published
