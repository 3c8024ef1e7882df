"""The decision log: one summary line per committed group at info, one line per decision at debug."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.models import Reason, TaskStatus
from scheduler.producer.publisher import Outgoing
from tests.harness import Deployment, decode_lines, make_nodes, make_requests, wait_until


@pytest.fixture
def deployment(
    sqlite_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path
) -> Iterator[Deployment]:
    dep = Deployment(sqlite_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path)
    try:
        dep.store.import_nodes(make_nodes(10))
        yield dep
    finally:
        dep.close()


def _run_burst(dep: Deployment, level: str) -> list[dict[str, object]]:
    dep.extra_env["LOG_LEVEL"] = level
    dep.start_worker("w")
    dep.wait_leading("w")
    fits = make_requests(40, prefix="ok")
    too_big = make_requests(3, prefix="big", requested_cpu=4096)
    bad_pool = make_requests(2, prefix="pool", requested_pool="nowhere")
    reqs = [*fits, *too_big, *bad_pool]
    dep.publish(Outgoing.request(r) for r in reqs)
    dep.wait_terminal([r.task_id for r in reqs], timeout=60)
    ids = {r.task_id for r in reqs}

    def summarised() -> list[dict[str, object]] | None:
        lines = decode_lines(dep.log_of("w"))
        groups = [line for line in lines if line.get("event") == "group committed"]
        named: set[object] = set()
        for g in groups:
            named.update(g["not_placed"])  # type: ignore[arg-type]
        placed = sum(int(g["outcomes"].get("placed", 0)) for g in groups)  # type: ignore[attr-defined]
        return lines if placed >= len(fits) and {f"pool-{i}" for i in range(2)} <= named else None

    lines: list[dict[str, object]] = wait_until(summarised, 30, "the group summaries")
    assert all(line.get("task_id") in ids for line in lines if line.get("event") == "decision")
    return lines


def test_info_logs_one_summary_per_group_and_no_line_per_decision(deployment: Deployment) -> None:
    lines = _run_burst(deployment, "info")
    assert not [line for line in lines if line.get("event") == "decision"]
    groups = [line for line in lines if line.get("event") == "group committed"]
    assert all(line["level"] == "info" for line in groups)
    outcomes: dict[str, int] = {}
    for g in groups:
        for key, n in g["outcomes"].items():  # type: ignore[attr-defined]
            outcomes[key] = outcomes.get(key, 0) + n
    assert outcomes["placed"] == 40
    assert outcomes[Reason.UNKNOWN_POOL.value] == 2
    assert deployment.statuses([f"big-{i}" for i in range(3)]) == dict.fromkeys(
        [f"big-{i}" for i in range(3)], TaskStatus.FAILED
    )


def test_debug_adds_the_line_per_decision(deployment: Deployment) -> None:
    lines = _run_burst(deployment, "debug")
    decisions = [line for line in lines if line.get("event") == "decision"]
    placed = {line["task_id"] for line in decisions if line["node"] is not None}
    assert placed == {f"ok-{i}" for i in range(40)}
    pool = [line for line in decisions if str(line["task_id"]).startswith("pool-")]
    assert {line["reason"] for line in pool} == {Reason.UNKNOWN_POOL.value}
    assert all(line["level"] == "debug" for line in decisions)
