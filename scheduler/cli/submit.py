"""``scheduler submit`` and ``scheduler release``: the producer side.

The producer writes nothing to the database (docs/contracts.md, Task
lifecycle); a request exists once RabbitMQ has confirmed it. Each line of a batch is validated first:
bad lines are reported by line number and field and skipped, the good ones
are still sent, and the exit code says that something was wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError

from scheduler.broker import ROUTE_REQUEST, BrokerUnavailable, Topology
from scheduler.cli import columns
from scheduler.cli.common import CliError, cli, emit_json, open_lines, settings_or_exit, terminal_safe
from scheduler.config import Settings
from scheduler.jsonlines import json_lines
from scheduler.models import (
    MAX_BODY_BYTES,
    Reason,
    ReleaseRequest,
    SchedulingRequest,
    TaskStatus,
    format_validation_error,
    parse_json_line,
)
from scheduler.producer.publisher import Outgoing, Publisher, PublishReport
from scheduler.strategies.registry import STRATEGY_NAMES

if TYPE_CHECKING:
    from scheduler.store import Store, TaskRecord

F = TypeVar("F", bound=Callable[..., Any])

EXIT_BAD_INPUT = 1
EXIT_NOT_PUBLISHED = 2
EXIT_TASK_FAILED = 3
EXIT_TIMEOUT = 4


def _publisher(settings: Settings) -> Publisher:
    return Publisher(
        str(settings.amqp.url), Topology.from_config(settings.amqp), heartbeat=settings.amqp.heartbeat
    )


def strategy_problem(name: str | None) -> str | None:
    """Why ``name`` cannot be a request's strategy here, or None.

    The message schema accepts any well-formed name (the worker answers an
    unknown one with ``unknown_strategy``); the CLI knows the registry it
    ships with, so it refuses a name the worker would refuse, before
    anything is published.
    """
    if name is None or name in STRATEGY_NAMES:
        return None
    return f"unknown strategy {name!r}; valid: {', '.join(STRATEGY_NAMES)} (see `scheduler strategies`)"


class FileMessages:
    """The requests and releases of a JSON-lines file, parsed as they are iterated.

    Iterated by the publisher, a line is parsed and validated while earlier
    messages wait for the broker's confirms, so a large file costs little
    more than publishing it. Bad lines land in :attr:`problems` (``line N:
    field: rule``) and are skipped; :attr:`messages` holds what was yielded.
    ``{"release": ID}`` lines are accepted too, so a trace written for
    ``scheduler simulate`` can be replayed against the real service. The
    file is opened here, so a missing file fails before anything is sent.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []
        self.messages: list[Outgoing] = []
        self.stream: IO[bytes] = open_lines(path)

    def regular_file(self) -> bool:
        """Whether the input is a regular file: reading anything else (a pipe) can wait on its writer."""
        return stat.S_ISREG(os.fstat(self.stream.fileno()).st_mode)

    def __iter__(self) -> Iterator[Outgoing]:
        try:
            for lineno, line, problem in json_lines(self.stream, MAX_BODY_BYTES):
                if line is None:
                    self.problems.append(f"line {lineno}: {problem}")
                    continue
                message = self._parse(lineno, line)
                if message is not None:
                    self.messages.append(message)
                    yield message
        finally:
            if self.stream is not sys.stdin.buffer:
                self.stream.close()

    def _parse(self, lineno: int, line: str) -> Outgoing | None:
        try:
            item = parse_json_line(line)
        except ValueError as exc:
            self.problems.append(f"line {lineno}: {exc}")
            return None
        if isinstance(item, ReleaseRequest):
            return Outgoing.release(item.release)
        why = strategy_problem(item.strategy)
        if why is not None:
            self.problems.append(f"line {lineno}: strategy: {why}")
            return None
        return Outgoing.request(item)


def messages_from_file(path: str) -> tuple[list[Outgoing], list[str]]:
    """Valid requests and releases, and one problem per bad input line (``line N: field: rule``)."""
    source = FileMessages(path)
    return list(source), source.problems


REQUEST_OPTIONS = (
    click.option("--file", "file_", help="JSON lines of requests ('-' = stdin)"),
    click.option("--cpu", type=int, help="vCPUs"),
    click.option("--memory", type=int, help="MiB"),
    click.option("--disk", type=int, default=0, show_default=True, help="GiB"),
    click.option("--pool", default="default", show_default=True),
    click.option("--dedicated", is_flag=True),
    click.option("--tag", "tags", multiple=True, help="required node tag (repeatable)"),
    click.option("--task-id", help="default: a new UUID"),
    click.option("--strategy", help="override the configured strategy for this request"),
    click.option("--priority", type=int, default=0, show_default=True),
    click.option("--anti-affinity", "group", help="anti-affinity group"),
    click.option(
        "--anti-affinity-mode", type=click.Choice(["hard", "soft"]), default="hard", show_default=True
    ),
    click.option(
        "--resource", "resources", multiple=True, metavar="NAME=COUNT", help="devices, e.g. gpu=2 (repeat)"
    ),
    click.option("--forbid-tag", "forbidden", multiple=True, help="tag the node must not have (repeatable)"),
    click.option("--spread-group", help="spread the VMs of this group over zones"),
    click.option("--spread-mode", type=click.Choice(["hard", "soft"]), default="hard", show_default=True),
    click.option("--callback-url", help="extra webhook target (must match webhooks.allow)"),
)
"""The flags that describe a request: ``submit`` and ``plan`` share them."""


REQUEST_FLAG_NAMES = frozenset(
    {
        "cpu", "memory", "disk", "pool", "dedicated", "tags", "task_id", "strategy", "priority", "group",
        "anti_affinity_mode", "resources", "forbidden", "spread_group", "spread_mode", "callback_url",
    }
)  # fmt: skip
"""The parameters of :data:`REQUEST_OPTIONS` that describe one request (all but ``--file``)."""


def refuse_request_flags_with_file() -> None:
    """Refuse ``--file`` beside any request flag given on the command line, naming the flags.

    Why: only ``--cpu``, ``--memory`` and ``--task-id`` were refused; ``submit
    --file reqs.jsonl --pool ai --dedicated --strategy best_fit`` published
    every line to its own pool, not dedicated, with the configured strategy,
    exit 0, as if the flags had applied (``plan --file`` likewise). A flag
    a file's lines do not take must not look taken.
    """
    ctx = click.get_current_context()
    given = [
        param.opts[0]
        for param in ctx.command.params
        if param.name in REQUEST_FLAG_NAMES
        and ctx.get_parameter_source(param.name) not in (None, click.core.ParameterSource.DEFAULT)
    ]
    if given:
        raise CliError(
            f"give either --file or the request flags, not both ({', '.join(given)} with --file: "
            "the fields of each line are the request)",
            exit_code=EXIT_BAD_INPUT,
        )


def request_options(fn: F) -> F:
    """Apply :data:`REQUEST_OPTIONS` to a command, in order."""
    for option in reversed(REQUEST_OPTIONS):
        fn = option(fn)
    return fn


def request_fields(
    *,
    cpu: int,
    memory: int,
    disk: int,
    pool: str,
    dedicated: bool,
    tags: tuple[str, ...],
    task_id: str | None,
    strategy: str | None,
    priority: int,
    group: str | None,
    anti_affinity_mode: str,
    resources: tuple[str, ...],
    forbidden: tuple[str, ...],
    spread_group: str | None,
    spread_mode: str,
    callback_url: str | None,
) -> dict[str, Any]:
    """The request fields of the flags (validated by the model afterwards)."""
    fields: dict[str, Any] = {
        "requested_cpu": cpu,
        "requested_memory": memory,
        "requested_disk": disk,
        "requested_pool": pool,
        "dedicated": dedicated,
        "required_tags": list(tags),
        "strategy": strategy,
        "priority": priority,
        "anti_affinity_group": group,
        "callback_url": callback_url,
        "requested_resources": parse_resource_flags(resources),
        "forbidden_tags": list(forbidden),
        "anti_affinity_mode": anti_affinity_mode,
        "spread_group": spread_group,
        "spread_mode": spread_mode,
    }
    if task_id is not None:
        fields["task_id"] = task_id
    return fields


@cli.command("submit")
@request_options
@click.option("--wait", is_flag=True, help="wait until every task is terminal and print the results")
@click.option("--timeout", type=float, default=120, show_default=True, help="seconds, with --wait")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def submit_cmd(
    file_: str | None,
    cpu: int | None,
    memory: int | None,
    disk: int,
    pool: str,
    dedicated: bool,
    tags: tuple[str, ...],
    task_id: str | None,
    strategy: str | None,
    priority: int,
    group: str | None,
    anti_affinity_mode: str,
    resources: tuple[str, ...],
    forbidden: tuple[str, ...],
    spread_group: str | None,
    spread_mode: str,
    callback_url: str | None,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Publish scheduling requests (publisher confirms; prints the task ids)."""
    settings = settings_or_exit()
    if not timeout >= 0:  # also NaN, which every deadline comparison passes: a wait that never ends
        raise CliError(f"--timeout must be a number of seconds >= 0, not {timeout}", exit_code=EXIT_BAD_INPUT)
    problems: list[str] = []
    source: Iterable[Outgoing]
    if file_ is not None:
        refuse_request_flags_with_file()
        stream = FileMessages(file_)
        if file_ == "-" or sys.stderr.isatty() or not stream.regular_file():
            # Read it all first: stdin, a FIFO or a ``<(command)`` may block the publisher's I/O loop
            # (a writer slower than two heartbeats: the broker drops the connection), and a progress
            # bar needs a total.
            source = messages = list(stream)
            problems = stream.problems
            _report_problems(problems)
        else:
            source, messages, problems = stream, stream.messages, stream.problems
    else:
        if cpu is None or memory is None:
            raise CliError("--cpu and --memory are required (or --file)", exit_code=EXIT_BAD_INPUT)
        why = strategy_problem(strategy)
        if why is not None:
            raise CliError(f"--strategy: {why}", exit_code=EXIT_BAD_INPUT)
        fields = request_fields(
            cpu=cpu, memory=memory, disk=disk, pool=pool, dedicated=dedicated, tags=tags, task_id=task_id,
            strategy=strategy, priority=priority, group=group, anti_affinity_mode=anti_affinity_mode,
            resources=resources, forbidden=forbidden, spread_group=spread_group, spread_mode=spread_mode,
            callback_url=callback_url,
        )  # fmt: skip
        try:
            source = messages = [Outgoing.request(SchedulingRequest.model_validate(fields))]
        except ValidationError as exc:
            raise CliError(format_validation_error(exc), exit_code=EXIT_BAD_INPUT) from None
    report = _publish(settings, source)
    if source is not messages:  # parsed while publishing: its bad lines are known now
        _report_problems(problems)
    requested = {m.message_id for m in messages if m.routing_key == ROUTE_REQUEST}
    released = {m.message_id for m in messages if m.routing_key != ROUTE_REQUEST}
    if as_json:
        for tid in report.confirmed:
            emit_json({"task_id": tid, "published": True})
    elif not wait and report.confirmed:
        click.echo("\n".join(report.confirmed))  # one write for a batch, not one per id
    for tid, why in report.failed.items():
        if as_json:
            emit_json({"task_id": tid, "published": False, "error": why})
        click.echo(f"not published: {tid}: {why}", err=True)
    if report.interrupted:  # Ctrl-C while publishing: the lines above say what was sent and what was not
        sys.exit(130)
    # A task requested and released in the same batch is waited for until it is released.
    confirmed = set(report.confirmed)
    waitable = sorted(t for t in requested if t in confirmed)
    until_released = {t for t in waitable if t in released and t in confirmed}
    if wait and not as_json:
        click.echo(
            f"published {len(report.confirmed)} of {len(messages)} messages "
            f"({len(released & confirmed)} releases); waiting for {len(waitable)} tasks"
        )
    if wait and waitable:
        sent: dict[str, list[dict[str, Any]]] = {}
        for m in messages:
            if m.routing_key == ROUTE_REQUEST:
                sent.setdefault(m.message_id, []).append(json.loads(m.body))
        code = _wait_for(settings, waitable, until_released, timeout, as_json, sent)
        if code:
            sys.exit(code)
    if report.failed:
        sys.exit(EXIT_NOT_PUBLISHED)
    if problems:
        sys.exit(EXIT_BAD_INPUT)


def exit_unless_published(report: PublishReport) -> None:
    """End the command as its report says: 130 after Ctrl-C (as ``submit`` does), 2 when something
    was not published; return when everything was. The caller has printed the report."""
    if report.interrupted:
        sys.exit(130)
    if report.failed:
        sys.exit(EXIT_NOT_PUBLISHED)


def _report_problems(problems: list[str]) -> None:
    for problem in problems:
        click.echo(f"skipped: {problem}", err=True)


def parse_resource_flags(values: tuple[str, ...]) -> dict[str, Any]:
    """``--resource gpu=2 --resource nvme=1`` -> ``{"gpu": 2, "nvme": 1}`` (the model checks the rest)."""
    out: dict[str, Any] = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not name:
            raise CliError(
                f"--resource {value!r}: expected NAME=COUNT (e.g. gpu=2)", exit_code=EXIT_BAD_INPUT
            )
        if name in out:
            raise CliError(f"--resource {name!r} given twice", exit_code=EXIT_BAD_INPUT)
        try:
            out[name] = int(count)
        except ValueError:
            raise CliError(
                f"--resource {value!r}: the count must be an integer", exit_code=EXIT_BAD_INPUT
            ) from None
    return out


def _publish(settings: Settings, messages: Iterable[Outgoing]) -> PublishReport:
    publisher = _publisher(settings)
    try:
        # The topology is declared on the publishing connection: one connection for the command.
        show = isinstance(messages, list) and len(messages) > 1 and sys.stderr.isatty()
        if not show or not isinstance(messages, list):
            return publisher.publish(messages, declare=True)
        # rich only for the progress bar on a terminal: a piped or single submit starts faster.
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

        with Progress(
            TextColumn("publishing"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task("publish", total=len(messages))
            return publisher.publish(messages, on_confirm=lambda n: bar.advance(task, n), declare=True)
    except BrokerUnavailable as exc:
        raise CliError(str(exc), exit_code=EXIT_NOT_PUBLISHED) from None


def _wait_for(
    settings: Settings,
    task_ids: list[str],
    until_released: set[str],
    timeout: float,
    as_json: bool,
    sent: dict[str, list[dict[str, Any]]] | None = None,
) -> int:
    """Poll the database until every task is terminal; print each result once.

    A task not seen terminal (the wait timed out, the database could not be
    read, or Ctrl-C ended the wait) is named on standard error: with
    ``--wait`` the published ids are not printed otherwise, and a generated
    id would be known nowhere.
    """
    from scheduler.cli.db import store_session

    pending = set(task_ids)
    try:
        with store_session(settings, migrate=False) as store:
            return _poll_results(store, task_ids, until_released, timeout, as_json, pending, sent)
    except (CliError, KeyboardInterrupt):
        _report_pending(pending)
        raise


def _report_pending(pending: set[str]) -> None:
    for tid in sorted(pending):
        click.echo(f"still pending: {tid}", err=True)


WAIT_COLUMNS = (columns.Column("task"), columns.Column("status"), columns.Column("node or reason"))


def _done(status: TaskStatus, wants_release: bool) -> bool:
    if wants_release:
        return status in (TaskStatus.RELEASED, TaskStatus.FAILED)
    return status.terminal


def _poll_results(
    store: Store,
    task_ids: list[str],
    until_released: set[str],
    timeout: float,
    as_json: bool,
    pending: set[str] | None = None,
    sent: dict[str, list[dict[str, Any]]] | None = None,
) -> int:
    """Print each task's outcome as it lands, in columns sized for every id up front (no tabs).

    ``pending`` (the caller's set of the ids of ``task_ids``) loses each id as its outcome is printed.
    ``sent`` holds the request bodies published per task id: a task whose stored request is none of
    them is another request's outcome (see :func:`_conflict`).

    The database is read on a daemon thread and the deadline is kept here: a
    database that stops answering in the middle of a query (a network
    partition, a PostgreSQL behind a stalled link: no error, no reply) kept
    ``--wait --timeout 6`` waiting for ever, because the deadline was only
    looked at between two queries. Now the command ends at its timeout
    whatever the database does, and Ctrl-C ends it at once (psycopg's cancel
    of a query on a dead link waited 10 s more).
    """
    pending = set(task_ids) if pending is None else pending
    deadline = time.monotonic() + timeout
    failed = 0
    sizes = [
        max([len(WAIT_COLUMNS[0].header), *map(len, task_ids)]),
        max(len(s.value) for s in TaskStatus),
        0,
    ]
    if not as_json and task_ids:
        click.echo(columns.format_row(WAIT_COLUMNS, sizes, [c.header for c in WAIT_COLUMNS]))
    outcomes: queue.SimpleQueue[TaskRecord | BaseException] = queue.SimpleQueue()
    stop = threading.Event()
    poller = threading.Thread(
        target=_read_outcomes,
        args=(store, sorted(pending), until_released, outcomes, stop),
        name="submit-wait",
        daemon=True,  # may be stuck in a query on a silent database: the process must not wait for it
    )
    poller.start()
    try:
        while pending:
            try:
                # In slices: a timeout past what the platform's clock takes (1e10 s, inf) overflows.
                item = outcomes.get(timeout=min(max(0.0, deadline - time.monotonic()), 60.0))
            except queue.Empty:
                if time.monotonic() < deadline:
                    continue
                click.echo(f"timed out after {timeout}s; still pending: {len(pending)}", err=True)
                _report_pending(pending)
                return EXIT_TIMEOUT
            if isinstance(item, BaseException):
                raise item
            item = _conflict(item, sent) or item
            failed += item.status is TaskStatus.FAILED
            if as_json:
                emit_json(item.to_json())
            else:
                where = item.node or terminal_safe(f"{item.reason}: {item.message}")
                click.echo(columns.format_row(WAIT_COLUMNS, sizes, [item.task_id, item.status.value, where]))
            pending.discard(item.task_id)  # after the print: an interrupt names it twice, never not at all
    finally:
        stop.set()
    return EXIT_TASK_FAILED if failed else 0


def _conflict(record: TaskRecord, sent: dict[str, list[dict[str, Any]]] | None) -> TaskRecord | None:
    """The outcome of a request this command published whose task id held another request, or None.

    Why: the worker keeps the original of a reused task id and fails the
    newcomer as ``conflict`` (a webhook, no row of its own). ``submit
    --task-id web-2 --cpu 32 --pool ai --wait`` then printed the original's
    ``scheduled bm-002``, exit 0: a 32-vCPU VM placed, said the output, on
    a node of another pool, and nothing had been placed. The stored request
    tells the two apart (the worker compares the same fields).
    """
    bodies = (sent or {}).get(record.task_id)
    if not bodies or record.request is None or record.request in bodies:
        return None
    where = f" on {record.node}" if record.node else ""
    return dataclasses.replace(
        record,
        status=TaskStatus.FAILED,
        node=None,
        node_ip=None,
        reason=Reason.CONFLICT,
        message=(
            f"task id already exists with a different request (status {record.status.value}{where}); "
            "the original is unchanged, this one was not placed"
        ),
    )


def _read_outcomes(
    store: Store,
    task_ids: list[str],
    until_released: set[str],
    out: queue.SimpleQueue[TaskRecord | BaseException],
    stop: threading.Event,
) -> None:
    """Poll ``store`` (backing off to 1 s) and put each task's terminal record on ``out``, once.

    Runs on :func:`_poll_results`'s thread; an error (the database gone) ends the polling and is put
    on ``out``, to be raised by the command's thread.
    """
    pending = set(task_ids)
    delay = 0.05
    try:
        while pending and not stop.is_set():
            states = store.task_states(sorted(pending))
            done = [t for t, s in states.items() if _done(TaskStatus(s), t in until_released)]
            for record in (store.get_task(t) for t in sorted(done)):
                if record is not None:
                    out.put(record)
                    pending.discard(record.task_id)
            if pending and not stop.wait(delay):
                delay = min(delay * 2, 1.0)
    except BaseException as exc:  # raised where the command waits: store_session makes it one line
        out.put(exc)


@cli.command("release")
@click.argument("task_ids", nargs=-1, required=True)
def release_cmd(task_ids: tuple[str, ...]) -> None:
    """Give tasks' resources back (the VMs are gone)."""
    settings = settings_or_exit()
    from scheduler.models import ReleaseRequest

    for tid in task_ids:
        try:
            ReleaseRequest(release=tid)
        except ValidationError as exc:
            raise CliError(f"{tid!r}: {format_validation_error(exc)}", exit_code=EXIT_BAD_INPUT) from None
    report = _publish(settings, [Outgoing.release(t) for t in task_ids])
    for tid in report.confirmed:
        click.echo(f"release published: {tid}")
    for tid, why in report.failed.items():
        click.echo(f"not published: {tid}: {why}", err=True)
    exit_unless_published(report)
