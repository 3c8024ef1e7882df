"""The HTTP API contract: the endpoints of docs/contracts.md, 422/404/503, real broker and DB.

The response shapes are seed 000's.
"""

from __future__ import annotations

import json
import socket
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pika
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from scheduler.broker import HEADER_SCHEMA, Topology
from scheduler.http import HttpServer, create_app, create_metrics_app
from scheduler.producer.publisher import Publisher
from scheduler.store import Store
from scheduler.worker.state import WorkerState
from tests.harness import Deployment
from tests.test_http_support import EPOCH, LEADER, LOOPBACK_URL, settings_for, standard_workload

with warnings.catch_warnings():  # starlette's TestClient warns about httpx on import; it works as it is
    warnings.filterwarnings("ignore", message=".*starlette.testclient.*")
    from fastapi.testclient import TestClient


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


_OWN = Publisher("amqp://unused", Topology("unused", "unused"))


def make_app(
    dep: Deployment,
    registry: CollectorRegistry,
    *,
    publisher: Publisher | None = _OWN,
    state: WorkerState | None = None,
    store: Store | None = None,
    **overrides: Any,
) -> FastAPI:
    """The app on ``dep``; by default with a publisher to ``dep``'s broker names."""
    settings = settings_for(dep, **overrides)
    pub = Publisher(dep.amqp_url, dep.topology) if publisher is _OWN else publisher
    return create_app(
        store=store or dep.store, publisher=pub, state=(lambda: state) if state is not None else None,
        registry=registry, settings=settings,
    )  # fmt: skip


@pytest.fixture
def client(deployment: Deployment, registry: CollectorRegistry) -> Iterator[TestClient]:
    with TestClient(base_url=LOOPBACK_URL, app=make_app(deployment, registry)) as c:
        yield c


@pytest.fixture
def lite_client(lite: Deployment, registry: CollectorRegistry) -> Iterator[TestClient]:
    """A client on SQLite only, for checks that do not depend on the database backend."""
    with TestClient(base_url=LOOPBACK_URL, app=make_app(lite, registry)) as c:
        yield c


def drain(dep: Deployment) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every message in the request queue, with its properties."""
    conn = pika.BlockingConnection(pika.URLParameters(dep.amqp_url))
    out = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(dep.queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))
    finally:
        conn.close()


# ------------------------------------------------------------------ submission


def test_schedule_publishes_with_confirms_and_records_queued(
    client: TestClient, deployment: Deployment
) -> None:
    body = {"task_id": "http-1", "requested_cpu": 4, "requested_memory": 8192, "requested_pool": "default"}
    response = client.post("/schedule", json=body)
    assert response.status_code == 202
    assert response.json() == {"task_id": "http-1"}

    messages = drain(deployment)
    assert len(messages) == 1
    props, raw = messages[0]
    sent = json.loads(raw)
    assert sent["task_id"] == "http-1" and sent["requested_cpu"] == 4 and sent["requested_memory"] == 8192
    assert props.message_id == "http-1"
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.headers[HEADER_SCHEMA] == 1

    assert client.get("/result/http-1").json() == {"status": "processing"}
    detail = client.get("/tasks/http-1").json()
    assert detail["status"] == "queued" and detail["request"]["requested_cpu"] == 4


def test_schedule_without_task_id_gets_a_uuid(lite_client: TestClient, lite: Deployment) -> None:
    # The first prototype's request: no task id, only the resources.
    response = lite_client.post("/schedule", json={"requested_cpu": 4, "requested_memory": 8192,
                                              "requested_pool": "default", "dedicated": False})  # fmt: skip
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    assert uuid.UUID(task_id).version == 4
    [(props, raw)] = drain(lite)
    assert props.message_id == task_id and json.loads(raw)["task_id"] == task_id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"requested_memory": 1024}, "requested_cpu"),
        ({"requested_cpu": "4", "requested_memory": 1024}, "requested_cpu"),  # strict: no coercion
        ({"requested_cpu": True, "requested_memory": 1024}, "requested_cpu"),
        ({"requested_cpu": 0, "requested_memory": 1024}, "requested_cpu"),
        ({"requested_cpu": 1, "requested_memory": 1024, "requested_gpu": 1}, "requested_gpu"),  # typo
        ({"requested_cpu": 1, "requested_memory": 1024, "task_id": "has space"}, "task_id"),
        ({"requested_cpu": 1, "requested_memory": 1024, "callback_url": "ftp://x"}, "callback_url"),
        (
            {"requested_cpu": 1, "requested_memory": 1024, "callback_url": "https://evil.example.org/x"},
            "callback_url",
        ),
        (
            {"requested_cpu": 1, "requested_memory": 1024, "callback_url": "http://169.254.169.254/x"},
            "callback_url",
        ),
    ],
)
def test_invalid_requests_get_422_with_the_field_and_publish_nothing(
    lite_client: TestClient, lite: Deployment, body: dict[str, Any], field: str
) -> None:
    response = lite_client.post("/schedule", json=body)
    assert response.status_code == 422, response.text
    locs = [err["loc"] for err in response.json()["detail"]]
    assert ["body", field] in locs, locs
    assert drain(lite) == []
    assert lite.store.list_tasks() == []


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b""])
def test_malformed_bodies_get_422(lite_client: TestClient, raw: bytes) -> None:
    response = lite_client.post("/schedule", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"]


def test_a_refused_callback_url_is_not_echoed_with_its_credentials(
    lite_client: TestClient, lite: Deployment
) -> None:
    body = {"requested_cpu": 1, "requested_memory": 1024, "callback_url": "https://u:Pa55-word@evil.example.org/x"}
    response = lite_client.post("/schedule", json=body)
    assert response.status_code == 422, response.text
    assert "Pa55-word" not in response.text
    assert drain(lite) == []


def test_allowed_callback_url_is_accepted(lite_client: TestClient, lite: Deployment) -> None:
    body = {"requested_cpu": 1, "requested_memory": 512, "callback_url": "https://hooks.example.com/vm"}
    assert lite_client.post("/schedule", json=body).status_code == 202
    assert len(drain(lite)) == 1


def test_oversized_body_is_413(lite_client: TestClient) -> None:
    padding = "x" * 70_000
    response = lite_client.post("/schedule", content=b'{"task_id": "' + padding.encode() + b'"}',
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 413


def test_broker_down_is_503_and_records_nothing(lite: Deployment, registry: CollectorRegistry) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Publisher(f"amqp://guest:guest@127.0.0.1:{port}/%2F", lite.topology)
    with TestClient(base_url=LOOPBACK_URL, app=make_app(lite, registry, publisher=dead)) as c:
        response = c.post(
            "/schedule", json={"task_id": "nobroker", "requested_cpu": 1, "requested_memory": 1}
        )
    assert response.status_code == 503
    assert "broker" in response.json()["detail"]
    assert lite.store.get_task("nobroker") is None


def test_replica_without_publisher_refuses_submissions(lite: Deployment, registry: CollectorRegistry) -> None:
    with TestClient(base_url=LOOPBACK_URL, app=make_app(lite, registry, publisher=None)) as c:
        response = c.post("/schedule", json={"requested_cpu": 1, "requested_memory": 1})
    assert response.status_code == 503


# ----------------------------------------------------------------------- reads


def test_result_has_the_first_prototypes_shapes(client: TestClient, deployment: Deployment) -> None:
    work = standard_workload(deployment.store)
    task_id, node = sorted(work.placed.items())[0]
    ip = next(n.ip for n in deployment.store.list_nodes() if n.name == node)
    assert client.get(f"/result/{task_id}").json() == {
        "status": "completed",
        "result": {"name": node, "ip": str(ip)},
    }

    failed = client.get("/result/lost-pool").json()
    assert set(failed) == {"status", "error"} and failed["status"] == "failed"
    assert "unknown pool 'nowhere'" in failed["error"]

    assert client.get("/result/too-big").json() == {"status": "processing"}  # waiting for room
    released = client.get("/result/vm-5").json()
    assert released["status"] == "completed" and set(released["result"]) == {"name", "ip"}


def test_task_detail_and_listing(client: TestClient, deployment: Deployment) -> None:
    standard_workload(deployment.store)
    detail = client.get("/tasks/bad-shape").json()
    assert detail["status"] == "failed" and detail["reason"] == "invalid_request"
    assert "requested_cpu" in detail["message"]
    placed = client.get("/tasks/vm-1").json()
    assert placed["status"] == "scheduled" and placed["node"] and placed["node_ip"] and placed["strategy"]
    assert set(placed) >= {"task_id", "status", "node", "reason", "message", "attempts", "created_at",
                           "updated_at", "node_ip", "strategy", "request"}  # fmt: skip

    failed = client.get("/tasks", params={"status": "failed"}).json()
    assert {t["task_id"] for t in failed} == {"lost-pool", "bad-shape"}
    assert len(client.get("/tasks", params={"limit": 2}).json()) == 2
    assert client.get("/tasks", params={"status": "bogus"}).status_code == 422


@pytest.mark.parametrize("path", ["/result/unknown-task", "/tasks/unknown-task"])
def test_unknown_ids_are_404(lite_client: TestClient, path: str) -> None:
    response = lite_client.get(path)
    assert response.status_code == 404
    assert "unknown task" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/result/bad%20id", "/tasks/" + "x" * 129])
def test_malformed_ids_are_422(lite_client: TestClient, path: str) -> None:
    assert lite_client.get(path).status_code == 422


def test_nodes_show_allocations_and_utilization(client: TestClient, deployment: Deployment) -> None:
    work = standard_workload(deployment.store)
    nodes = {n["name"]: n for n in client.get("/nodes").json()}
    assert set(nodes) == {"bm-01", "bm-02", "bm-03", "bm-04", "gpu-01", "gpu-02"}
    gpu_node = work.placed["gpu-job"]
    assert nodes[gpu_node]["allocated"] == {"cpu": 16, "memory": 65536, "disk": 0, "vms": 1}
    assert nodes[gpu_node]["utilization"]["cpu"] == 0.5
    total_vms = sum(n["allocated"]["vms"] for n in nodes.values())
    assert total_vms == len(work.placed)
    assert {n["name"] for n in client.get("/nodes", params={"pool": "gpu"}).json()} == {"gpu-01", "gpu-02"}


@pytest.mark.parametrize("pool", ["a\x00b", "\x00", "", "-lead", "p" * 64, "caf\u00e9"])
def test_a_pool_filter_that_no_pool_can_have_is_a_422_not_a_database_error(
    client: TestClient, pool: str
) -> None:
    """A NUL in ``?pool=`` reached PostgreSQL, which refused it: a 503 "database unavailable" that lied."""
    response = client.get("/nodes", params={"pool": pool})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "pool"]
    assert client.get("/nodes", params={"pool": "default"}).status_code == 200


def test_summary_feeds_the_dashboard(client: TestClient, deployment: Deployment) -> None:
    work = standard_workload(deployment.store)
    s = client.get("/api/summary").json()
    assert s["leader"] == {"identity": LEADER, "epoch": EPOCH, "strategy": "least_loaded",
                           "strategy_source": "configured"}  # fmt: skip
    assert s["replica"]["role"] == "api"
    assert {p["pool"] for p in s["pools"]} == {"default", "gpu"}
    assert len(s["nodes"]["name"]) == 6
    assert {t["task_id"] for t in s["recent_placements"]} == set(work.placed)
    failures = {t["task_id"]: t["reason"] for t in s["recent_failures"]}
    assert failures == work.failed
    assert [t["task_id"] for t in s["waiting"]] == work.waiting
    assert s["tasks"]["scheduled"] == len(work.placed) and s["tasks"]["released"] == 1


# ---------------------------------------------------------------------- health


def test_health_docs_and_openapi(lite_client: TestClient) -> None:
    assert lite_client.get("/healthz").json() == {"status": "ok"}
    docs = lite_client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert "cdn.jsdelivr" not in docs.text  # served from local files
    assert lite_client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    spec = lite_client.get("/openapi.json").json()
    assert {"/healthz", "/readyz", "/schedule", "/result/{task_id}", "/tasks/{task_id}", "/nodes",
            "/api/summary"} <= set(spec["paths"])  # fmt: skip
    assert "/metrics" not in spec["paths"]  # served on the metrics port only
    dashboard = lite_client.get("/")
    assert dashboard.status_code == 200 and "/static/dashboard.js" in dashboard.text


def test_readiness_reflects_database_and_broker(lite: Deployment, registry: CollectorRegistry) -> None:
    with TestClient(base_url=LOOPBACK_URL, app=make_app(lite, registry)) as c:
        ready = c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["role"] == "api"

    standby = WorkerState(leader=False, broker_connected=True)
    with TestClient(base_url=LOOPBACK_URL, app=make_app(lite, CollectorRegistry(), state=standby)) as c:
        body = c.get("/readyz").json()
    assert body["ready"] is True and body["role"] == "standby"  # a healthy standby is ready

    cut_off = WorkerState(leader=True, broker_connected=False)
    with TestClient(base_url=LOOPBACK_URL, app=make_app(lite, CollectorRegistry(), state=cut_off)) as c:
        response = c.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reasons"] == ["broker: not connected"]


def test_database_down_is_503_not_a_crash(lite: Deployment, registry: CollectorRegistry) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Store.from_url(f"postgresql://nobody@127.0.0.1:{port}/none")
    try:
        with TestClient(base_url=LOOPBACK_URL, app=make_app(lite, registry, store=down)) as c:
            ready = c.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"].startswith("unreachable")
            assert c.get("/healthz").status_code == 200  # alive all the same
            for path in ("/result/x", "/tasks/x", "/nodes", "/api/summary"):
                response = c.get(path)
                assert response.status_code == 503, path
                assert "database unavailable" in response.json()["detail"]
    finally:
        down.close()


def test_head_probes_answer_on_both_ports_and_are_counted_as_head(
    lite: Deployment, registry: CollectorRegistry
) -> None:
    """HEAD /healthz, /readyz and /metrics answer like GET, headers only, labelled HEAD in the metrics."""
    with TestClient(base_url=LOOPBACK_URL, app=make_app(lite, registry)) as api:
        for path in ("/healthz", "/readyz"):
            response = api.head(path)
            assert (response.status_code, response.content) == (200, b""), path
    metrics_app = create_metrics_app(store=lite.store, state=None, registry=registry)
    with TestClient(base_url=LOOPBACK_URL, app=metrics_app) as metrics:
        for path in ("/healthz", "/readyz", "/metrics"):
            response = metrics.head(path)
            assert (response.status_code, response.content) == (200, b""), path
        text = metrics.get("/metrics").text
        assert 'scheduler_http_requests_total{code="200",method="HEAD",route="/healthz"} 1.0' in text
        assert 'method="GET",route="/healthz"' not in text


def test_made_up_methods_share_one_metrics_label(lite: Deployment, registry: CollectorRegistry) -> None:
    """Any token is a method to HTTP: each one a new label value made a new series, without bound."""
    with TestClient(base_url=LOOPBACK_URL, app=make_app(lite, registry)) as api:
        for n in range(20):
            assert api.request(f"X{n}", "/healthz").status_code == 405
    with TestClient(
        base_url=LOOPBACK_URL, app=create_metrics_app(store=lite.store, state=None, registry=registry)
    ) as metrics:
        text = metrics.get("/metrics").text
    assert 'scheduler_http_requests_total{code="405",method="other",route="/healthz"} 20.0' in text
    assert 'method="X1"' not in text


def test_metrics_are_served_on_their_own_app_only(lite: Deployment, registry: CollectorRegistry) -> None:
    with TestClient(base_url=LOOPBACK_URL, app=make_app(lite, registry)) as api:
        api.get("/healthz")
        assert api.get("/metrics").status_code == 404
    metrics_app = create_metrics_app(store=lite.store, state=None, registry=registry)
    with TestClient(base_url=LOOPBACK_URL, app=metrics_app) as metrics:
        response = metrics.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert 'scheduler_http_requests_total{code="200",method="GET",route="/healthz"} 1.0' in response.text
        assert metrics.get("/healthz").json() == {"status": "ok"}
        assert metrics.get("/readyz").status_code == 200
        # No API route, no docs: only the three above.
        for path in (
            "/schedule",
            "/result/x",
            "/tasks",
            "/nodes",
            "/api/summary",
            "/",
            "/docs",
            "/openapi.json",
        ):
            assert metrics.get(path).status_code == 404, path
        assert metrics.post("/schedule", json={"requested_cpu": 1, "requested_memory": 1}).status_code in (
            404,
            405,
        )


def test_server_runs_in_a_thread_and_stops(lite: Deployment, registry: CollectorRegistry) -> None:
    server = HttpServer(make_app(lite, registry), host="127.0.0.1", port=0)
    server.start()
    try:
        assert server.port > 0
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        taken = HttpServer(make_app(lite, CollectorRegistry()), host="127.0.0.1", port=server.port)
        with pytest.raises(OSError):
            taken.start()
    finally:
        server.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=1)


def test_publisher_per_request_is_safe_under_concurrency(
    lite: Deployment, registry: CollectorRegistry
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    lite_client = TestClient(
        base_url=LOOPBACK_URL, app=make_app(lite, registry, http={"rate_limit": "1000/second"})
    )

    def submit(i: int) -> int:
        body = {"task_id": f"c-{i}", "requested_cpu": 1, "requested_memory": 256}
        return lite_client.post("/schedule", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(submit, range(24)))
    assert codes == [202] * 24
    ids = sorted(json.loads(body)["task_id"] for _, body in drain(lite))
    assert ids == sorted(f"c-{i}" for i in range(24))
    assert len(lite.store.list_tasks()) == 24


def test_the_dashboard_columns_and_the_node_listing_agree(client: TestClient, deployment: Deployment) -> None:
    standard_workload(deployment.store)
    listing = {n["name"]: n for n in client.get("/nodes").json()}
    columns = client.get("/api/summary").json()["nodes"]
    assert sorted(columns["name"]) == sorted(listing)
    for i, name in enumerate(columns["name"]):
        node = listing[name]
        assert columns["pool"][i] == node["pool"] and columns["ip"][i] == node["ip"]
        for key in ("cpu", "memory", "disk"):
            assert columns[key][i] == node["utilization"][key], (name, key)
        assert columns["vms"][i] == node["allocated"]["vms"] and columns["max_vms"][i] == node["max_vms"]
    assert any(v > 0 for v in columns["vms"])


def test_a_body_not_sent_as_json_gets_422_saying_which_header_to_send(
    lite_client: TestClient, lite: Deployment
) -> None:
    """``curl -d`` without ``-H 'Content-Type: application/json'`` sends a form content type."""
    body = b'{"requested_cpu": 1, "requested_memory": 1024}'
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = lite_client.post("/schedule", content=body, headers=form)
    assert response.status_code == 422, response.text
    first = response.json()["detail"][0]
    assert first["loc"] == ["header", "content-type"]
    assert "Content-Type: application/json" in first["msg"] and "x-www-form-urlencoded" in first["msg"]
    assert drain(lite) == []
    as_json = {"content-type": "application/json; charset=utf-8"}
    sent = lite_client.post("/schedule", content=body, headers=as_json)
    assert sent.status_code == 202, sent.text
    invalid = lite_client.post("/schedule", json={"requested_cpu": 0, "requested_memory": 1024})
    assert [e["loc"] for e in invalid.json()["detail"]] == [["body", "requested_cpu"]]


@pytest.mark.parametrize("path", ["/schedule", "/plan"])
def test_a_body_that_is_not_utf8_and_not_json_gets_422_not_500(
    lite_client: TestClient, lite: Deployment, path: str
) -> None:
    """The raw bytes of such a body reach the 422's ``input``: decoded with replacement, never a 500."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = lite_client.post(path, content=b"\xff\xfe{\x00", headers=form)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["header", "content-type"]
    assert "\ufffd" in json.dumps(detail, ensure_ascii=False)
    assert drain(lite) == []


@pytest.mark.parametrize("path", ["/schedule", "/plan"])
@pytest.mark.parametrize(
    "raw",
    [
        b'{"requested_cpu": NaN, "requested_memory": 1024}',
        b'{"requested_cpu": 1, "requested_memory": 1024, "priority": -Infinity}',
        b'{"requested_cpu": 1e400, "requested_memory": 1024}',
        b'{"task_id": "\\ud800", "requested_cpu": 1, "requested_memory": 1024}',
        b'{"\\udfff": 1, "requested_cpu": 1, "requested_memory": 1024}',
    ],
    ids=["nan", "minus-infinity", "1e400", "lone-surrogate-value", "lone-surrogate-key"],
)
def test_a_422_that_echoes_nan_or_a_lone_surrogate_is_a_422_not_500(
    lite_client: TestClient, lite: Deployment, path: str, raw: bytes
) -> None:
    """Python's JSON parser accepts NaN, 1e400 (inf) and "\\ud800": the 422 echoing them must still encode."""
    response = lite_client.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"
    assert drain(lite) == []


@pytest.mark.parametrize("path", ["/schedule", "/plan"])
@pytest.mark.parametrize(
    ("raw", "headers", "says"),
    [
        (
            b'{"requested_cpu": 1, "requested_memory": 1024, "task_id": "caf\xe9"}',
            {"content-type": "application/json; charset=latin-1"},
            ["not UTF-8", "0xe9", "charset=latin-1"],
        ),
        (
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
            {"content-type": "application/json", "content-encoding": "gzip"},
            ["not UTF-8", "0x8b", "Content-Encoding 'gzip'"],
        ),
        (
            b'{"requested_cpu": 1' + b"0" * 5000 + b', "requested_memory": 1024}',
            {"content-type": "application/json"},
            ["more than 4300 digits"],
        ),
        (
            b'{"requested_cpu": 1, "requested_memory": 1024, "x": ' + b"[" * 30000 + b"]" * 30000 + b"}",
            {"content-type": "application/json"},
            ["nested too deeply"],
        ),
    ],
    ids=["latin-1", "gzip", "5000-digits", "deep-nesting"],
)
def test_a_body_that_cannot_be_read_gets_a_400_that_says_why(
    lite_client: TestClient, lite: Deployment, path: str, raw: bytes, headers: dict[str, str], says: list[str]
) -> None:
    """Not FastAPI's "There was an error parsing the body": the caller is told what to change."""
    response = lite_client.post(path, content=raw, headers=headers)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert all(part in detail for part in says), detail
    assert drain(lite) == []


@pytest.mark.parametrize("path", ["/schedule", "/plan"])
def test_a_body_sent_without_a_content_type_gets_422_naming_the_header(
    lite_client: TestClient, lite: Deployment, path: str
) -> None:
    """Not read as JSON (a cross-site page could send it without a preflight), and the 422 says why."""
    body = b'{"requested_cpu": 1, "requested_memory": 1024}'
    response = lite_client.post(path, content=body)
    assert "content-type" not in response.request.headers
    assert response.status_code == 422, response.text
    first = response.json()["detail"][0]
    assert first["loc"] == ["header", "content-type"]
    assert "Content-Type: application/json" in first["msg"] and "has none" in first["msg"]
    assert drain(lite) == []
    empty = lite_client.post(path, content=b"")
    assert [e["loc"] for e in empty.json()["detail"]] == [["body"]]  # nothing sent: only the body is missing


def test_an_unknown_strategy_is_a_422_and_publishes_nothing(
    lite_client: TestClient, lite: Deployment
) -> None:
    """It was a 202, then a certain failure (unknown_strategy); ``scheduler submit`` refuses it too."""
    body = {"task_id": "strat-1", "requested_cpu": 1, "requested_memory": 512, "strategy": "fastest"}
    response = lite_client.post("/schedule", json=body)
    assert response.status_code == 422, response.text
    first = response.json()["detail"][0]
    assert first["loc"] == ["body", "strategy"] and "least_loaded" in first["msg"]
    assert drain(lite) == [] and lite_client.get("/tasks/strat-1").status_code == 404
    known = lite_client.post("/schedule", json={**body, "strategy": "best_fit"})
    assert known.status_code == 202, known.text
