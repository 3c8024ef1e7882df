"""``POST /plan`` and ``scheduler plan`` on both backends: the committed state, nothing reserved, a revision.

Why against a real database with allocations written by the worker's own
commit path: a plan must answer what the leader would decide from what is
committed, on any replica, and move on when the committed state moves (the
cached fleet is keyed by the revision, so a stale cache would show here as
a plan onto a node that is full by now).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

import scheduler.cli.plan  # noqa: F401  (registers the command)
from scheduler.cli.common import cli
from scheduler.http import create_app
from scheduler.models import SchedulingRequest
from scheduler.plan_service import PlanService, placer_for
from scheduler.store.revision import CommittedFleet, committed_revision
from tests.harness import Deployment
from tests.store_checks import active_allocations
from tests.test_http_support import (
    EPOCH,
    LEADER,
    LOOPBACK_URL,
    make_deployment,
    run_group,
    settings_for,
    standard_workload,
)

with warnings.catch_warnings():  # starlette's TestClient warns about httpx on import; it works as it is
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    from fastapi.testclient import TestClient


@pytest.fixture
def deployment(
    db_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path
) -> Iterator[Deployment]:
    yield from make_deployment(db_url, amqp_url, amqp_names, tmp_path)


def _client(dep: Deployment) -> TestClient:
    app = create_app(
        store=dep.store, publisher=None, state=None, registry=CollectorRegistry(), settings=settings_for(dep)
    )
    return TestClient(base_url=LOOPBACK_URL, app=app)


def _allocations(dep: Deployment) -> list[tuple[str, str]]:
    return [(a.task_id, a.node) for a in active_allocations(dep.store)]


def test_plan_answers_what_the_leader_would_decide_and_reserves_nothing(deployment: Deployment) -> None:
    standard_workload(deployment.store)
    before = _allocations(deployment)
    body = {"task_id": "asked", "requested_cpu": 4, "requested_memory": 8192}
    with _client(deployment) as client:
        answer = client.post("/plan", json=body)
        assert answer.status_code == 200, answer.text
        got = answer.json()
    expected = placer_for(settings_for(deployment)).decide(deployment.store.load_fleet(), _req(body), now=0.0)
    assert got["node"] == expected.node is not None
    assert got["candidates"][0]["node"] == got["node"]
    assert got["rejections"] == expected.rejections == {"pool mismatch": 2}
    assert got["examples"]["pool mismatch"][0] in ("gpu-01: in pool gpu, not default",)
    assert got["revision"] == str(committed_revision(deployment.store))
    assert _allocations(deployment) == before
    assert deployment.store.get_task("asked") is None  # nothing recorded either


def _req(body: dict[str, object]) -> SchedulingRequest:
    return SchedulingRequest.model_validate(body)


def test_a_commit_moves_the_revision_and_the_plan_follows(deployment: Deployment) -> None:
    store = deployment.store
    store.claim_fence(EPOCH, LEADER)
    service = PlanService(store, settings_for(deployment))
    ask = _req({"task_id": "asked", "requested_cpu": 16, "requested_memory": 1024})
    first = service.plan(ask)
    again = service.plan(ask)
    assert first["revision"] == again["revision"] and service.fleet.loads == 1  # cached by revision
    assert first["node"] is not None
    # Fill every general node's vCPUs but one node's: the plan must follow the committed state.
    run_group(store, [
        {"task_id": f"fill-{k}", "requested_cpu": 16, "requested_memory": 1024} for k in range(3)
    ])  # fmt: skip
    after = service.plan(ask)
    assert after["revision"] != first["revision"] and service.fleet.loads == 2
    held = {a.node for a in active_allocations(store)}
    assert after["node"] is not None and after["node"] not in held
    assert after["rejections"]["insufficient cpu"] == 3
    run_group(store, [{"release": "fill-0"}])
    assert service.plan(ask)["revision"] != after["revision"]
    store.set_cordoned("bm-01", True)
    cordoned = service.plan(ask)
    assert "cordoned" in cordoned["rejections"], cordoned


def test_plan_of_a_request_that_fits_nowhere_explains_every_node(deployment: Deployment) -> None:
    body = {"task_id": "huge", "requested_cpu": 8, "requested_memory": 100000}
    with _client(deployment) as client:
        got = client.post("/plan", json=body).json()
        bad = client.post("/plan", json={"requested_cpu": "four", "requested_memory": 1})
    assert got["node"] is None and got["reason"] == "insufficient_resources"
    assert got["rejections"] == {"insufficient memory": 4, "pool mismatch": 2}
    assert got["examples"]["insufficient memory"][0] == "bm-01: needs 100000 MiB memory, 65536 free"
    assert bad.status_code == 422 and "requested_cpu" in bad.text


def test_cli_plan_human_and_json(deployment: Deployment, tmp_path: Path) -> None:
    standard_workload(deployment.store)
    env = {"DATABASE_URL": deployment.db_url, "SCHEDULER_CONFIG": str(tmp_path / "none.yaml")}
    (tmp_path / "none.yaml").write_text("{}\n")
    runner = CliRunner()
    ok = runner.invoke(cli, ["plan", "--cpu", "2", "--memory", "1024", "--task-id", "p1", "--json"], env=env)
    assert ok.exit_code == 0, ok.output
    got = json.loads(ok.output.strip())
    assert got["task_id"] == "p1" and got["node"].startswith("bm-") and got["revision"]
    human = runner.invoke(cli, ["plan", "--cpu", "2", "--memory", "999999", "--pool", "gpu"], env=env)
    assert human.exit_code == 3, human.output
    assert "would not be placed: insufficient_resources" in human.output
    assert "gpu-01: needs 999999 MiB memory" in human.output
    bad = runner.invoke(cli, ["plan", "--cpu", "0", "--memory", "1"], env=env)
    assert bad.exit_code == 1 and "requested_cpu" in str(bad.exception)
    assert deployment.store.get_task("p1") is None


def test_cli_plan_file_plans_the_good_lines_and_names_the_bad_ones(
    deployment: Deployment, tmp_path: Path
) -> None:
    """One bad line refused the whole file: nothing planned, at most ten problems on one line. The good
    lines are planned now and each bad one is named, as ``submit`` publishes the good lines of a file."""
    standard_workload(deployment.store)
    (tmp_path / "none.yaml").write_text("{}\n")
    env = {"DATABASE_URL": deployment.db_url, "SCHEDULER_CONFIG": str(tmp_path / "none.yaml")}
    requests = tmp_path / "reqs.jsonl"
    requests.write_text(
        '{"task_id": "good-1", "requested_cpu": 2, "requested_memory": 1024}\n'
        '{"task_id": "bad", "requested_cpu": "x", "requested_memory": 1024}\n'
        '{"release": "good-1"}\n'
        '{"task_id": "good-2", "requested_cpu": 2, "requested_memory": 1024}\n'
    )
    result = CliRunner().invoke(cli, ["plan", "--file", str(requests), "--json"], env=env)
    assert result.exit_code == 1, result.output  # every request fits: the bad lines say 1
    planned = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["task_id"] for p in planned] == ["good-1", "good-2"] and all(p["node"] for p in planned)
    assert result.stderr.splitlines() == [
        "skipped: line 2: requested_cpu: Input should be a valid integer",
        "skipped: line 3: a release, not a request",
    ]


def test_committed_fleet_is_the_stored_one(deployment: Deployment) -> None:
    standard_workload(deployment.store)
    fleet, revision = CommittedFleet(deployment.store).get()
    assert revision.active == len(active_allocations(deployment.store))
    assert sorted(t for t in fleet.allocations) == sorted(a for a, _ in _allocations(deployment))


def test_why_not_plans_a_failed_task_s_stored_request(deployment: Deployment) -> None:
    standard_workload(deployment.store)
    with _client(deployment) as client:
        lost = client.get("/tasks/lost-pool/plan")
        waiting = client.get("/tasks/too-big/plan")
        shapeless = client.get("/tasks/bad-shape/plan")
        unknown = client.get("/tasks/nobody/plan")
    assert lost.status_code == 200, lost.text
    got = lost.json()
    assert got["task_id"] == "lost-pool" and got["node"] is None and got["reason"] == "unknown_pool"
    assert got["rejections"] == {"pool mismatch": 6} and len(got["examples"]["pool mismatch"]) == 5
    assert waiting.json()["rejections"]["insufficient cpu"] == 4
    usage = deployment.store.node_usage()
    free = 16 - (usage["bm-01"].cpu if "bm-01" in usage else 0)
    assert waiting.json()["examples"]["insufficient cpu"][0] == f"bm-01: needs 64 vCPU, {free} free"
    assert shapeless.status_code == 409 and "requested_cpu" in shapeless.json()["detail"]
    assert unknown.status_code == 404
    assert deployment.store.get_task("lost-pool").status.value == "failed"  # type: ignore[union-attr]
