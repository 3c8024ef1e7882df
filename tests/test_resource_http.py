"""The resource model on the HTTP API and the dashboard's data, on both database backends.

Why: ``GET /nodes`` and ``/api/summary`` are what operators and their tools
read; utilization there must be against effective capacity (as the placer
sees it), devices must show, a node whose ratio was lowered under its VMs
must be flagged, and the new request fields must be validated at the door
exactly as on the queue. Every field is additive: a node without devices
answers as before.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from scheduler.fleet import FleetView
from scheduler.http import create_app
from scheduler.http.summary import _fleet_columns
from scheduler.models import Node, SchedulingRequest
from scheduler.store import Placement
from tests.harness import Deployment
from tests.test_http_support import LOOPBACK_URL, settings_for

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    from fastapi.testclient import TestClient


def gpu_node(name: str, **kw: Any) -> Node:
    base: dict[str, Any] = {"name": name, "ip": "10.9.0.1", "pool": "ai", "cpu": 16, "memory": 65536,
                            "disk": 100, "zone": "az1", "resources": {"gpu": 8}}  # fmt: skip
    return Node.model_validate({**base, **kw})


@pytest.fixture
def client(deployment: Deployment) -> Iterator[TestClient]:
    settings = settings_for(deployment, allocation_ratios={"memory": 2.0}, reserved={"disk": 20})
    app = create_app(
        store=deployment.store, publisher=None, state=None, registry=CollectorRegistry(), settings=settings
    )
    with TestClient(base_url=LOOPBACK_URL, app=app) as c:
        yield c


def test_nodes_answer_effective_capacity_devices_and_overcommit(
    client: TestClient, deployment: Deployment
) -> None:
    store = deployment.store
    store.import_nodes([gpu_node("ai-1", reserved={"cpu": 4}, cpu_allocation_ratio=2.0)])
    req = SchedulingRequest(
        task_id="g", requested_cpu=20, requested_memory=1024, requested_resources={"gpu": 3}
    )
    store.commit([Placement(req, "ai-1", "10.9.0.1", "least_loaded", "placed", 1)], epoch=1)

    node = client.get("/nodes", params={"pool": "ai"}).json()[0]
    # cpu (16 - 4) x 2 = 24 (own); memory 65536 x 2 (configured ratio); disk 100 - 20 (configured reserve).
    assert node["effective"] == {"cpu": 24, "memory": 131072, "disk": 80, "vms": 100000, "gpu": 8}
    assert node["allocated"] == {"cpu": 20, "memory": 1024, "disk": 0, "vms": 1, "gpu": 3}
    assert node["utilization"]["cpu"] == round(20 / 24, 4)
    assert node["resources"] == {"gpu": 8} and node["reserved"] == {"cpu": 4, "memory": None, "disk": None}
    assert (node["cpu"], node["cpu_allocation_ratio"], node["overcommitted"]) == (16, 2.0, False)
    # A node without any of the new settings answers its old fields unchanged, and the new ones empty.
    plain = next(n for n in client.get("/nodes").json() if n["name"] == "bm-01")
    assert plain["resources"] == {} and plain["reserved"] is None and plain["overcommitted"] is False
    assert set(plain["allocated"]) == {"cpu", "memory", "disk", "vms"}

    store.import_nodes([gpu_node("ai-1", reserved={"cpu": 4}, resources={"gpu": 2})])  # ratio 1, 2 gpus
    node = client.get("/nodes", params={"pool": "ai"}).json()[0]
    assert node["effective"]["cpu"] == 12 and node["effective"]["gpu"] == 2
    assert node["overcommitted"] is True

    columns = client.get("/api/summary").json()["nodes"]
    i = columns["name"].index("ai-1")
    assert columns["devices"][i] == "gpu 3/2" and columns["overcommitted"][i] is True
    assert columns["zone"][i] == "az1" and columns["cpu"][i] == round(20 / 12, 4)
    pools = {p["pool"]: p for p in client.get("/api/summary").json()["pools"]}
    assert pools["ai"]["capacity"]["cpu"] == 12 and pools["ai"]["capacity"]["disk"] == 80


def test_dashboard_columns_from_the_leaders_fleet() -> None:
    fleet = FleetView.build([gpu_node("ai-1"), gpu_node("ai-2", resources={}, zone=None)])
    fleet.reserve(
        0, SchedulingRequest(task_id="g", requested_cpu=1, requested_memory=1, requested_resources={"gpu": 2})
    )
    cols = _fleet_columns(fleet)
    assert (
        cols.devices == ["gpu 2/8", ""]
        and cols.zone == ["az1", None]
        and cols.overcommitted == [False, False]
    )


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"requested_resources": {"gpu": 0}}, "requested_resources"),
        ({"required_tags": ["a|"]}, "required_tags"),
        ({"anti_affinity_mode": "maybe"}, "anti_affinity_mode"),
        ({"spread_mode": "x"}, "spread_mode"),
        ({"forbidden_tags": ["has space"]}, "forbidden_tags"),
    ],
)
def test_schedule_refuses_bad_resource_fields_by_name(
    client: TestClient, extra: dict[str, Any], field: str
) -> None:
    response = client.post("/schedule", json={"requested_cpu": 1, "requested_memory": 1, **extra})
    assert response.status_code == 422, response.text
    assert any(err["loc"][:2] == ["body", field] for err in response.json()["detail"]), response.json()
