"""CLI start-up: commands load on demand, and the help lists them without importing any.

Start-up time itself is measured by ``bench/bench_cli.py``; these tests check
the causes instead of the clock: which modules a process has imported when it
prints the help, lists the strategies or builds a request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

from scheduler.cli.common import COMMAND_HELP, COMMAND_MODULES, cli

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
