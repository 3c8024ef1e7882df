"""``scheduler plan``: where a request would go now, and why not elsewhere; nothing is reserved.

Same flags (and ``--file``) as ``submit``; answered from the committed state
in the database, so it needs no broker and no running worker.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from pydantic import ValidationError

from scheduler.cli.common import CliError, cli, emit_json, open_lines, settings_or_exit
from scheduler.cli.submit import (
    EXIT_BAD_INPUT,
    refuse_request_flags_with_file,
    request_fields,
    request_options,
)
from scheduler.jsonlines import json_lines
from scheduler.models import (
    MAX_BODY_BYTES,
    SchedulingRequest,
    format_validation_error,
    parse_json_line,
)

EXIT_NO_FIT = 3
"""``plan`` exits with this when some request would not be placed now (scripts can test it)."""


@cli.command("plan")
@request_options
@click.option("--json", "as_json", is_flag=True, help="one JSON object per request")
def plan_cmd(file_: str | None, cpu: int | None, memory: int | None, as_json: bool, **flags: Any) -> None:
    """Which node would be chosen now for a request, the runners-up, and why the others were not."""
    settings = settings_or_exit()
    requests, problems = _requests(file_, cpu, memory, flags)
    for problem in problems:
        click.echo(f"skipped: {problem}", err=True)
    from scheduler.cli.db import store_session
    from scheduler.plan_service import PlanService

    misses = 0
    with store_session(settings, migrate=False) as store:
        service = PlanService(store, settings)
        for req in requests:
            answer = service.plan(req)
            misses += answer["node"] is None
            if as_json:
                emit_json(answer)
            else:
                click.echo(render_plan(answer))
    if misses:
        sys.exit(EXIT_NO_FIT)
    if problems:
        sys.exit(EXIT_BAD_INPUT)


def _requests(
    file_: str | None, cpu: int | None, memory: int | None, flags: dict[str, Any]
) -> tuple[list[SchedulingRequest], list[str]]:
    """The requests to plan, and one problem per bad line of ``--file`` (``line N: field: rule``).

    Bad lines are reported and skipped, the good ones planned, as ``submit``
    publishes the good lines of a file: one bad line used to refuse the whole
    file, every good line unplanned, with at most ten problems run together
    on one line.
    """
    if file_ is None:
        if cpu is None or memory is None:
            raise CliError("--cpu and --memory are required (or --file)", exit_code=EXIT_BAD_INPUT)
        try:
            return [SchedulingRequest.model_validate(request_fields(cpu=cpu, memory=memory, **flags))], []
        except ValidationError as exc:
            raise CliError(format_validation_error(exc), exit_code=EXIT_BAD_INPUT) from None
    refuse_request_flags_with_file()
    out: list[SchedulingRequest] = []
    problems: list[str] = []
    stream = open_lines(file_)
    try:
        for lineno, line, problem in json_lines(stream, MAX_BODY_BYTES):
            if line is None:
                problems.append(f"line {lineno}: {problem}")
                continue
            try:
                item = parse_json_line(line)
            except ValueError as exc:
                problems.append(f"line {lineno}: {exc}")
                continue
            if isinstance(item, SchedulingRequest):
                out.append(item)
            else:
                problems.append(f"line {lineno}: a release, not a request")
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return out, problems


def render_plan(answer: dict[str, Any]) -> str:
    """The human form of a plan: the pick, the runners-up, then each filter's count and examples."""
    lines = [f"task {answer['task_id']} (strategy {answer['strategy']}, revision {answer['revision']})"]
    if answer["node"] is not None:
        lines.append(f"would be placed on {answer['node']}")
    else:
        lines.append(f"would not be placed: {answer['reason']}")
    lines.append(f"  {answer['message']}")
    if answer["candidates"]:
        lines.append("candidates (lower score wins):")
        for c in answer["candidates"]:
            score = "-" if c["score"] is None else f"{c['score']:.4f}"
            lines.append(f"  {c['node']:<24} {score}")
    if answer["rejections"]:
        lines.append("filtered out:")
        for label, count in sorted(answer["rejections"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:>6} {label}")
            for text in answer["examples"].get(label, []):
                lines.append(f"           {text}")
    return "\n".join(lines)
