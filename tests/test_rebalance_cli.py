"""``scheduler rebalance``, ``nodes drain`` and ``move`` on both backends, publishing to the real broker.

The plans are computed from allocations committed by the worker's own
commit path; ``--apply`` must publish exactly the planned moves as move
messages (checked by reading them back from the queue), and a plan must
write nothing but the drain's cordon.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import scheduler.cli.nodes
import scheduler.cli.rebalance  # noqa: F401  (registers the commands)
from scheduler.cli.common import CliError, cli
from scheduler.models import Node
from tests.harness import Deployment
from tests.store_checks import active_allocations
from tests.test_http_support import EPOCH, LEADER, run_group


@pytest.fixture
def dep(db_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(db_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path)
    d.store.import_nodes(
        [
            Node.model_validate(
                {"name": f"n{k}", "ip": "10.0.0.1", "cpu": 16, "memory": 16384, "zone": "az1"}
            )
            for k in range(4)
        ]
        + [
            Node.model_validate(
                {"name": g, "ip": "10.0.0.9", "pool": "gpu", "cpu": 16, "memory": 16384, "tags": t}
            )
            for g, t in (("g0", ["gpu"]), ("g1", []))
        ]
    )
    d.declare()
    d.store.claim_fence(EPOCH, LEADER)
    # One VM per node: a fragmented fleet (least_loaded spreads them).
    run_group(d.store, [
        {"task_id": f"vm-{k}", "requested_cpu": 2, "requested_memory": 2048} for k in range(4)
    ] + [{"task_id": "gpu-vm", "requested_cpu": 2, "requested_memory": 2048, "required_tags": ["gpu"],
        "requested_pool": "gpu"}])  # fmt: skip
    try:
        yield d
    finally:
        d.close()


def _run(dep: Deployment, *args: str) -> Result:
    (dep.workdir / "config.yaml").write_text("strategy: least_loaded\n")
    env = {k: v for k, v in dep.env("cli").items() if k.startswith(("SCHEDULER_", "AMQP_", "DATABASE_"))}
    return CliRunner().invoke(cli, list(args), env=env)


def _lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def _placements(dep: Deployment) -> dict[str, str]:
    return {a.task_id: a.node for a in active_allocations(dep.store)}


def test_rebalance_pack_plans_from_the_committed_state_and_writes_nothing(dep: Deployment) -> None:
    before = _placements(dep)
    assert len(set(before.values())) == 5
    result = _run(dep, "rebalance", "--json", "--max-moves", "10")
    assert result.exit_code == 0, result.output
    lines = _lines(result)
    moves, summary = lines[:-1], lines[-1]["summary"]
    assert summary["moves"] == len(moves) == 3  # three general nodes emptied onto the fourth
    assert summary["nodes_emptied"] == 3 and summary["empty_nodes_before"] == 1  # g1
    assert all(m["task_id"] != "gpu-vm" for m in moves)  # g0 is the only node with the gpu tag
    targets = {m["to"] for m in moves}
    assert len(targets) == 1 and targets <= set(before.values())
    assert summary["stranded_after"] <= summary["stranded_before"]
    assert summary["revision"]
    assert _placements(dep) == before
    assert dep.queue_depth(dep.queue) == 0


def test_rebalance_apply_publishes_the_planned_moves(dep: Deployment) -> None:
    result = _run(dep, "rebalance", "--json", "--max-moves", "2", "--apply")
    assert result.exit_code == 0, result.output
    planned = [(m["task_id"], m["to"]) for m in _lines(result)[:-1]]
    assert len(planned) == 2
    published = [json.loads(body) for _, body in dep.drain(dep.queue)]
    assert [(p["move"], p["node"]) for p in published] == planned


def test_rebalance_human_output_and_bad_pool(dep: Deployment) -> None:
    result = _run(dep, "rebalance", "--goal", "spread")
    assert result.exit_code == 0, result.output
    assert "empty nodes" in result.output and "stranded capacity" in result.output
    assert "most loaded node" in result.output
    bad = _run(dep, "rebalance", "--pool", "nowhere")
    assert bad.exit_code == 1 and "--pool: unknown pool 'nowhere'" in str(bad.exception)


def test_drain_cordons_and_lists_what_cannot_move(dep: Deployment) -> None:
    result = _run(dep, "nodes", "drain", "g0", "--json")
    assert result.exit_code == 3, result.output
    summary = _lines(result)[-1]["summary"]
    assert summary["moves"] == 0
    [stuck] = summary["unmovable"]
    assert stuck["task_id"] == "gpu-vm" and "1 missing tags" in stuck["reason"], stuck
    assert {n.name: n.cordoned for n in dep.store.list_nodes()}["g0"] is True
    node = _placements(dep)["vm-0"]
    result = _run(dep, "nodes", "drain", node, "--apply")
    assert result.exit_code == 0, result.output
    assert f"move vm-0: {node} -> " in result.output
    [(_, body)] = dep.drain(dep.queue)
    assert json.loads(body)["move"] == "vm-0"
    assert _run(dep, "nodes", "drain", "nope").exit_code == 1


def test_move_publishes_one_move_message_and_refuses_bad_names(dep: Deployment) -> None:
    result = _run(dep, "move", "vm-1", "n3")
    assert result.exit_code == 0, result.output
    [(_, body)] = dep.drain(dep.queue)
    assert json.loads(body) == {"move": "vm-1", "node": "n3"}
    bad = _run(dep, "move", "vm 1", "n3")
    assert bad.exit_code == 1 and "move" in str(bad.exception)
    assert dep.queue_depth(dep.queue) == 0


def test_move_is_refused_at_the_client_when_nothing_queued_can_change_the_verdict(dep: Deployment) -> None:
    """An unknown node, a node of another pool, a task that ended: said at once, in the leader's words,
    exit 3, nothing published."""
    on = _placements(dep)["vm-1"]
    other = next(n for n in ("n0", "n1", "n2", "n3") if n != on)
    run_group(dep.store, [{"release": "vm-2"}])
    refusals = {
        ("vm-1", "nope"): "move refused: unknown node nope",
        ("vm-1", "g1"): "move refused: g1: in pool gpu, the task's pool is default",
        ("vm-2", other): "move refused: task vm-2 is not scheduled (released)",
        # A task not placed (yet) does not make an unknown node possible: it was published, with a warning.
        ("new-vm", "nope"): "move refused: unknown node nope",
    }
    for (task, node), message in refusals.items():
        result = _run(dep, "move", task, node)
        assert isinstance(result.exception, CliError) and result.exception.exit_code == 3, result
        assert str(result.exception) == message
    assert dep.queue_depth(dep.queue) == 0, "a refused move is never published"
    unchecked = _run(dep, "move", "vm-2", other, "--no-check")  # the leader alone decides
    assert unchecked.exit_code == 0 and "checked" not in unchecked.output
    [(_, body)] = dep.drain(dep.queue)
    assert json.loads(body) == {"move": "vm-2", "node": other}


def test_a_refusal_queued_messages_may_undo_is_a_warning_and_the_move_is_published(dep: Deployment) -> None:
    """The committed state cannot show what is still queued: the task's own request (submit, then move),
    an earlier move (there and back), a release that frees room. The leader decides those."""
    on = _placements(dep)["vm-1"]
    other = next(n for n in ("n0", "n1", "n2", "n3") if n != on)
    dep.store.set_cordoned(other, True)
    doubts = {
        ("new-vm", other): "task new-vm is not scheduled (unknown task)",
        ("vm-1", on): f"task vm-1 is on {on} already",
        ("vm-1", other): f"{other}: ",
    }
    for (task, node), doubt in doubts.items():
        result = _run(dep, "move", task, node)
        assert result.exit_code == 0, result
        assert f"move published: {task} -> {node} (checked at revision " in result.output
        assert f"warning: on the committed state this move would be refused: {doubt}" in result.output
    published = [json.loads(body) for _, body in dep.drain(dep.queue)]
    assert published == [{"move": t, "node": n} for t, n in doubts]


def test_move_without_the_database_names_the_way_to_publish_unchecked(dep: Deployment) -> None:
    """A producer host that has the broker but not the database: the failed check says how to move anyway.

    Before the check existed ``scheduler move`` needed the broker alone; the error
    for a database it cannot read must not end at "run ``scheduler db upgrade``"
    (which would make an empty database on that host).
    """
    (dep.workdir / "config.yaml").write_text("strategy: least_loaded\n")
    env = {k: v for k, v in dep.env("cli").items() if k.startswith(("SCHEDULER_", "AMQP_", "DATABASE_"))}
    env["DATABASE_URL"] = f"sqlite:///{dep.workdir / 'not-here.db'}"
    result = CliRunner().invoke(cli, ["move", "vm-1", "n3"], env=env)
    assert isinstance(result.exception, CliError), result
    assert result.exception.exit_code == 1
    assert "--no-check" in str(result.exception), str(result.exception)
    assert not (dep.workdir / "not-here.db").exists()
    assert dep.queue_depth(dep.queue) == 0
