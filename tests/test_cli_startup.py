"""CLI start-up: commands load on demand, and the help lists them without importing any.

Start-up time itself is measured by ``bench/bench_cli.py``; these tests check
the causes instead of the clock: which modules a process has imported when it
prints the help, lists the strategies or builds a request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from scheduler.cli.common import COMMAND_HELP, COMMAND_MODULES, cli
from tests.harness import Deployment

HEAVY = ("sqlalchemy", "alembic", "kubernetes", "numpy", "httpx", "starlette", "fastapi")


def _modules_after(code: str, tmp_path: Path, **env: str) -> set[str]:
    """The top-level packages imported by a fresh interpreter after running ``code``."""
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={"SCHEDULER_CONFIG": str(config), "PATH": "/usr/bin:/bin", **env},
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_help_imports_no_command_and_no_pydantic(tmp_path: Path) -> None:
    code = (
        "from scheduler.cli import cli\n"
        "try:\n    cli.main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass"
    )
    loaded = _modules_after(code, tmp_path)
    assert "click" in loaded
    assert not loaded & {*HEAVY, "pydantic", "pika", "rich"}, loaded & {*HEAVY, "pydantic", "pika", "rich"}


def test_strategies_imports_no_heavy_module(tmp_path: Path) -> None:
    code = "from scheduler.cli import cli\ncli.main(['strategies'], standalone_mode=False)"
    loaded = _modules_after(code, tmp_path)
    assert "rich" in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)


def test_submit_builds_its_request_without_the_database_stack(tmp_path: Path) -> None:
    """Everything ``submit`` imports before it connects: settings, model, publisher; no SQLAlchemy.

    The database and webhook URLs are set so that their validators run too.
    """
    code = (
        "import scheduler.cli.submit as s\n"
        "from scheduler.cli.common import settings_or_exit\n"
        "settings_or_exit()\n"
        "s.messages_from_file('/dev/null')"
    )
    loaded = _modules_after(
        code, tmp_path, DATABASE_URL="postgresql://u@127.0.0.1/db", WEBHOOK_URL="http://127.0.0.1:9/hooks"
    )
    assert {"pydantic", "pika"} <= loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    # Nor logging's or rate limiting's libraries: about 100 ms of a submit's start-up between them.
    assert not loaded & {"structlog", "limits"}, loaded & {"structlog", "limits"}


# Standard output buffered as it is by default (the test runner's environment may say otherwise).
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def _leave(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` and then ``scheduler.cli.leave`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", f"from scheduler.cli import leave\n{code}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=BUFFERED,
    )


def test_leaving_keeps_what_a_normal_exit_does() -> None:
    """Exit handlers run, buffered output is flushed, the code is the process's status."""
    out = _leave(
        "import atexit, sys\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "sys.stdout.write('x' * 100_000)\n"  # more than a pipe buffer: nothing may be lost
        "leave(3)"
    )
    assert out.returncode == 3
    assert out.stdout == "x" * 100_000 + "handler ran\n"


def test_leaving_waits_for_a_thread_that_is_not_a_daemon() -> None:
    out = _leave(
        "import threading, time\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread finished'))).start()\n"
        "leave(4)"
    )
    assert (out.returncode, out.stdout) == (4, "thread finished\n")


def test_leaving_with_a_text_prints_it_and_fails_as_sys_exit_does() -> None:
    for code, status in (("None", 0), ("256 + 5", 5), ("'went wrong'", 1)):
        out = _leave(f"leave({code})")
        assert out.returncode == status, (code, out)
    assert _leave("leave('went wrong')").stderr == "went wrong\n"


def test_leaving_with_the_reader_gone_is_status_120_as_python_reports_it() -> None:
    """Output still buffered when the reading end of the pipe has closed: no traceback, status 120."""
    child = (
        "from scheduler.cli import leave\nimport sys\nsys.stdout.write('x' * 10)\nsys.stdin.read()\nleave(0)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=BUFFERED,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes away first...
    proc.stdin.close()  # ...then the child may go on and flush
    assert proc.wait(timeout=60) == 120
    assert proc.stderr.read() == b""


def _scheduler_with(
    redirect: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m scheduler ARGS`` started by a shell with ``redirect`` (``>&-``: standard output closed)."""
    return subprocess.run(
        ["sh", "-c", f'exec "$0" "$@" {redirect}', sys.executable, "-m", "scheduler", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**BUFFERED, **(env or {})},
    )


def test_a_command_started_with_standard_output_or_error_closed_succeeds() -> None:
    """A stream closed at start is None in ``sys``: leaving called its flush(), a traceback and status 1
    after the command had done its work (a ``submit ... >&-`` in a cron job had published its request)."""
    closed_out = _scheduler_with(">&-", "--version")
    assert (closed_out.returncode, closed_out.stderr) == (0, "")
    closed_err = _scheduler_with("2>&-", "--version")
    assert closed_err.returncode == 0
    assert closed_err.stdout.startswith("python -m scheduler, version ")


def test_commands_that_write_or_ask_isatty_run_with_a_stream_closed_at_start(lite: Deployment) -> None:
    """``strategies --json >&-`` wrote to None and ``submit --file x 2>&-`` asked None.isatty() before
    publishing: a stream closed at start now discards what is written to it."""
    listed = _scheduler_with(">&-", "strategies", "--json")
    assert (listed.returncode, listed.stderr) == (0, "")
    lite.write_config()
    requests = lite.workdir / "requests.jsonl"
    requests.write_text('{"task_id": "kept", "requested_cpu": 1, "requested_memory": 512}\n{"task_id": 1}\n')
    env = {k: v for k, v in lite.env("cli").items() if k.startswith(("SCHEDULER_", "AMQP_", "DATABASE_"))}
    sent = _scheduler_with("2>&-", "submit", "--file", str(requests), env=env)
    assert (sent.returncode, sent.stdout) == (1, "kept\n"), sent  # the bad line: exit 1, said on stderr
    assert lite.queue_depth(lite.queue) == 1


def test_standard_output_that_cannot_be_written_is_one_line_and_status_120() -> None:
    """A full disk under the buffered output: the flush's OSError escaped leave() as a traceback."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    out = _scheduler_with(">/dev/full", "strategies", "--json")
    assert out.returncode == 120
    assert out.stderr == "error: standard output: No space left on device\n"


def test_a_full_disk_in_the_middle_of_the_output_is_one_line_and_status_120() -> None:
    """Output larger than the stream's buffer (the strategies table) met the full disk in a write, not
    in the final flush: the OSError was a traceback, status 1."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    out = _scheduler_with(">/dev/full", "strategies")
    assert (out.returncode, out.stderr) == (120, "error: standard output: No space left on device\n")


def test_every_lazy_command_has_its_one_line_help_and_it_is_the_commands_own() -> None:
    ctx = click.Context(cli)
    assert set(COMMAND_HELP) == set(COMMAND_MODULES)
    for name in COMMAND_MODULES:
        command = cli.get_command(ctx, name)
        assert command is not None, name
        assert COMMAND_HELP[name] == command.get_short_help_str(limit=10_000), name


def test_help_lists_every_command_shortened_like_click() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.split("Commands:\n", 1)[1].splitlines() if line]
    assert listed == sorted(COMMAND_MODULES)
    assert all(len(line) <= 80 for line in result.output.splitlines())
