"""``scheduler rebalance``, ``scheduler move`` and (for ``nodes drain``) the drain plan.

Plans are computed from the committed state in the database (no worker
needed) and only *published* as move messages with ``--apply``: the leader
checks each move again against the state it holds when the move arrives,
so a plan that went stale meanwhile is refused move by move, never
applied blindly.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click
from pydantic import ValidationError

from scheduler.cli.common import CliError, cli, emit_json, settings_or_exit
from scheduler.cli.submit import EXIT_BAD_INPUT, _publish, exit_unless_published
from scheduler.config import Settings
from scheduler.models import MoveRequest, TaskStatus, format_validation_error
from scheduler.producer.publisher import Outgoing

if TYPE_CHECKING:
    from scheduler.rebalance import MigrationPlan, Rules

EXIT_MOVE_REFUSED = 3
"""``scheduler move``: the move would be refused (the same code as a drain with unmovable VMs)."""


@cli.command("rebalance")
@click.option("--pool", default=None, help="only this pool (default: every pool)")
@click.option("--max-moves", type=click.IntRange(min=0, max=100_000), default=50, show_default=True)
@click.option("--goal", type=click.Choice(["pack", "spread"]), default="pack", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON line per move, then a summary line")
@click.option("--apply", "apply_", is_flag=True, help="publish the moves (the leader checks each again)")
def rebalance_cmd(pool: str | None, max_moves: int, goal: str, as_json: bool, apply_: bool) -> None:
    """A migration plan from the committed state: empty whole nodes (pack) or cool the hottest (spread)."""
    settings = settings_or_exit()
    from scheduler.cli.db import store_session
    from scheduler.plan_service import PlanService
    from scheduler.rebalance import rebalance
    from scheduler.store.placed import placed_requests

    with store_session(settings, migrate=False) as store:
        service = PlanService(store, settings)
        fleet, revision = service.committed()
        if pool is not None and pool not in fleet.pools:
            known = ", ".join(sorted(fleet.pools)) or "none"
            raise CliError(f"--pool: unknown pool {pool!r} (known: {known})", exit_code=EXIT_BAD_INPUT)
        requests = placed_requests(store)
        result = rebalance(
            fleet, requests, goal=goal, pool=pool, max_moves=max_moves,  # type: ignore[arg-type]
            rules=_rules(settings, service.clock()),
        )  # fmt: skip
    show_plan(result, str(revision), as_json)
    if apply_:
        publish_moves(settings, result, as_json)


@cli.command("move")
@click.argument("task_id")
@click.argument("node")
@click.option(
    "--no-check",
    is_flag=True,
    help="publish without reading the database first (the leader still checks every filter)",
)
def move_cmd(task_id: str, node: str, no_check: bool) -> None:
    """Publish a move of TASK_ID's allocation to NODE (the leader checks every filter on NODE)."""
    settings = settings_or_exit()
    try:
        MoveRequest(move=task_id, node=node)
    except ValidationError as exc:
        raise CliError(format_validation_error(exc), exit_code=EXIT_BAD_INPUT) from None
    checked = ""
    if not no_check:
        revision, doubt = _checked(settings, task_id, node)
        checked = f" (checked at revision {revision})"
        if doubt is not None:
            checked = f" (checked at revision {revision}: refused there, the leader decides)"
            click.echo(f"warning: on the committed state this move would be refused: {doubt}", err=True)
    report = _publish(settings, [Outgoing.move(task_id, node)])
    for tid, why in report.failed.items():
        click.echo(f"not published: {tid}: {why}", err=True)
    exit_unless_published(report)
    click.echo(f"move published: {task_id} -> {node}{checked}")


def _checked(settings: Settings, task_id: str, node: str) -> tuple[str, str | None]:
    """:func:`check_move_here`, with a database it cannot read ending on the way to move without it.

    Why: ``scheduler move`` once needed the broker alone, and a producer host
    may have no database; "run ``scheduler db upgrade``" there would make an
    empty one. The refusal of the move itself is left as it is.
    """
    try:
        return check_move_here(settings, task_id, node)
    except CliError as exc:
        if exc.exit_code == EXIT_MOVE_REFUSED:
            raise
        raise CliError(
            f"{exc}; the move was not checked nor published (--no-check publishes it without the database)",
            exit_code=exc.exit_code,
        ) from None


def check_move_here(settings: Settings, task_id: str, node: str) -> tuple[str, str | None]:
    """Check the move as the leader will, on the committed state: (revision checked, doubt or None).

    Why: a refused move is dead-lettered by the leader, where the person who
    typed it never sees why. So the move is checked here first, with the
    leader's own words (:func:`scheduler.moves.check_move`), and refused
    (:class:`CliError`, nothing published) when nothing can change the
    verdict before the move arrives: an unknown node, a node of another
    pool, a task that ended (released, failed) or whose request cannot be
    read. Any other refusal may be undone by messages still in the queue
    (the task's own request, a release that frees capacity, an earlier
    move), which the committed state cannot show: that one is returned as a
    doubt, said as a warning, and the move is published; the leader decides.
    """
    from scheduler.cli.db import store_session
    from scheduler.moves import check_move
    from scheduler.plan_service import PlanService
    from scheduler.store.placed import placed_requests

    with store_session(settings, migrate=False) as store:
        service = PlanService(store, settings)
        fleet, revision = service.committed()
        stored = placed_requests(store, [task_id]).get(task_id)
        if stored is None:
            state = store.task_states([task_id]).get(task_id)
            why = f"task {task_id} is not scheduled ({state.value if state else 'unknown task'})"
            if state is TaskStatus.SCHEDULED:
                raise CliError(
                    f"move refused: task {task_id}'s stored request cannot be read",
                    exit_code=EXIT_MOVE_REFUSED,
                )
            if state in (TaskStatus.RELEASED, TaskStatus.FAILED):
                raise CliError(f"move refused: {why}", exit_code=EXIT_MOVE_REFUSED)
            if node not in fleet.index:
                # Whatever is queued for the task, the leader refuses a node it does not know: this was
                # published (a typo in both arguments, or a task not placed yet) with a warning only.
                raise CliError(f"move refused: unknown node {node}", exit_code=EXIT_MOVE_REFUSED)
            return str(revision), why  # its request may still be in the queue
        outcome = check_move(
            fleet, stored, node, now=service.clock(), exclusive=settings.dedicated_nodes_exclusive,
            max_skew=settings.spread_max_skew,
        )  # fmt: skip
    if outcome.ok:
        return str(revision), None
    if outcome.lasting:
        raise CliError(f"move refused: {outcome.message}", exit_code=EXIT_MOVE_REFUSED)
    return str(revision), outcome.message


def drain_node(node: str, as_json: bool, apply_: bool) -> None:
    """``nodes drain``: cordon ``node``, plan a move for each of its VMs, publish them with ``apply_``."""
    settings = settings_or_exit()
    from scheduler.cli.db import store_session
    from scheduler.plan_service import PlanService
    from scheduler.rebalance import drain
    from scheduler.store import UnknownNode
    from scheduler.store.placed import placed_requests

    with store_session(settings, migrate=False) as store:
        try:
            changed = store.set_cordoned(node, True)
        except UnknownNode:
            raise CliError(f"unknown node {node!r} (see `scheduler nodes list`)") from None
        if not as_json:
            click.echo(f"cordoned {node}" if changed else f"{node} was cordoned already")
        service = PlanService(store, settings)
        fleet, revision = service.committed()
        requests = placed_requests(store)
        strategy = service.placer.strategy(settings.strategy)
        result = drain(fleet, requests, node, strategy, rules=_rules(settings, service.clock()))
    show_plan(result, str(revision), as_json)
    if apply_:
        publish_moves(settings, result, as_json)
    if result.unmovable:
        sys.exit(3)


def _rules(settings: Settings, now: float) -> Rules:
    from scheduler.rebalance import Rules

    return Rules(settings.dedicated_nodes_exclusive, settings.spread_max_skew, now)


def show_plan(result: MigrationPlan, revision: str, as_json: bool) -> None:
    summary = {**result.summary(), "revision": revision}
    if as_json:
        for move in result.moves:
            emit_json(move.to_json())
        emit_json({"summary": summary})
        return
    click.echo(f"{result.goal} plan from revision {revision}: {len(result.moves)} move(s)")
    for move in result.moves:
        click.echo(f"  move {move.task_id}: {move.source} -> {move.target}")
    for u in result.unmovable:
        click.echo(f"  cannot move {u.task_id} (on {u.node}): {u.reason}")
    b, a = result.before, result.after
    click.echo(f"{'':<22}{'before':>12}{'after':>12}")
    click.echo(f"{'empty nodes':<22}{b.empty_nodes:>12}{a.empty_nodes:>12}")
    click.echo(f"{'stranded capacity':<22}{b.stranded:>12.2%}{a.stranded:>12.2%}")
    click.echo(
        f"{'most loaded node':<22}{_hot(b.most_loaded_node, b.most_loaded):>12}"
        f"{_hot(a.most_loaded_node, a.most_loaded):>12}"
    )
    if result.emptied:
        click.echo(f"emptied: {', '.join(result.emptied)}")


def _hot(name: str | None, load: float) -> str:
    return "-" if name is None else f"{name} {load:.0%}"


def publish_moves(settings: Settings, result: MigrationPlan, as_json: bool) -> None:
    if not result.moves:
        return
    report = _publish(settings, [Outgoing.move(m.task_id, m.target) for m in result.moves])
    for tid in report.confirmed:
        if not as_json:
            click.echo(f"move published: {tid}")
    for tid, why in report.failed.items():
        click.echo(f"not published: {tid}: {why}", err=True)
    exit_unless_published(report)
