"""The RabbitMQ pipeline end to end: real worker processes, real RabbitMQ, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.broker import HEADER_DEATH_REASON, HEADER_ORIGINAL_SIZE
from scheduler.models import Reason, TaskStatus
from scheduler.producer.publisher import Outgoing
from tests.harness import Deployment, decode_lines, make_nodes, make_requests, wait_until
from tests.store_checks import active_allocations


@pytest.fixture
def deployment(
    db_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path
) -> Iterator[Deployment]:
    dep = Deployment(db_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path)
    try:
        yield dep
    finally:
        dep.close()


def test_end_to_end_all_terminal_no_overcommit(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(make_nodes(20, cpu=32, memory=65536))
    dep.start_worker()
    dep.wait_leading("worker-0")
    # 20 nodes x 32 vCPU = 640 vCPU; ~1,500 vCPU asked: plenty of them must fail.
    requests = make_requests(400, seed=7)
    ids = dep.publish(Outgoing.request(r) for r in requests)
    states = dep.wait_terminal(ids)
    assert set(states.values()) <= {TaskStatus.SCHEDULED, TaskStatus.FAILED}
    assert TaskStatus.FAILED in states.values() and TaskStatus.SCHEDULED in states.values()
    dep.check_invariants()
    events = dep.outbox_counts()
    assert all(events.get(t) == 1 for t in ids), "one outbox event per terminal task"
    failed = [dep.store.get_task(t) for t, s in states.items() if s is TaskStatus.FAILED]
    assert all(f is not None and f.reason == Reason.INSUFFICIENT_RESOURCES for f in failed)
    assert all(f is not None and "nodes fit" in (f.message or "") for f in failed)


def test_bad_bodies_fail_or_dead_letter_and_worker_keeps_serving(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(make_nodes(3))
    dep.start_worker()
    dep.wait_leading("worker-0")
    readable = {
        "wrong-type": {"task_id": "wrong-type", "requested_cpu": "4", "requested_memory": 1024},
        "negative": {"task_id": "negative", "requested_cpu": -1, "requested_memory": 1024},
        "zero": {"task_id": "zero", "requested_cpu": 0, "requested_memory": 1024},
        "absurd": {"task_id": "absurd", "requested_cpu": 10**30, "requested_memory": 1024},
        "unknown-field": {"task_id": "unknown-field", "requested_cpu": 1, "requested_memory": 1, "gpu": True},
        "bool-as-int": {"task_id": "bool-as-int", "requested_cpu": True, "requested_memory": 1024},
    }
    unreadable = [
        b"{not json",
        b"\xff\xfe\xfa",
        b"",
        b"[1, 2, 3]",
        b"[" * 50_000 + b"]" * 50_000,
        json.dumps({"task_id": "x" * 300, "requested_cpu": 1, "requested_memory": 1}).encode(),
        json.dumps({"task_id": "bad id!", "requested_cpu": 1, "requested_memory": 1}).encode(),
        b"x" * 200_000,
    ]
    dep.publish_raw([json.dumps(v).encode() for v in readable.values()] + unreadable)
    ok = dep.publish([Outgoing.request(r) for r in make_requests(3, prefix="after")])
    states = dep.wait_terminal([*readable, *ok])
    for task_id in readable:
        assert states[task_id] is TaskStatus.FAILED
        record = dep.store.get_task(task_id)
        assert record is not None and record.reason == Reason.INVALID_REQUEST
        assert record.message and ":" in record.message
    assert all(states[t] is TaskStatus.SCHEDULED for t in ok)
    dead = wait_until(lambda: dep.queue_depth(dep.topology.dead_queue) >= len(unreadable), 10, "dead letters")
    assert dead
    letters = dep.drain(dep.topology.dead_queue)
    assert len(letters) == len(unreadable)
    assert all(str(h.get(HEADER_DEATH_REASON, "")).startswith("invalid_request: ") for h, _ in letters)
    # Bodies beyond amqp.dead_letter_max_body are kept cut, with their original size in a header.
    cap = 64 * 1024
    assert sorted(body for _, body in letters) == sorted(b[:cap] for b in unreadable)
    sizes = sorted(h[HEADER_ORIGINAL_SIZE] for h, _ in letters if HEADER_ORIGINAL_SIZE in h)
    assert sizes == sorted(len(b) for b in unreadable if len(b) > cap)
    assert dep.procs[0].poll() is None, "the worker must still be running"


def test_sigkill_mid_burst_loses_nothing_and_allocates_once(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(make_nodes(200))
    proc = dep.start_worker()
    dep.wait_leading("worker-0")
    ids = dep.publish(Outgoing.request(r) for r in make_requests(2000, seed=3))
    # Kill it once some, but not all, of the burst is committed.
    wait_until(lambda: dep.store.task_counts().get(TaskStatus.SCHEDULED, 0) >= 200, 30, "some placements")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert dep.store.task_counts().get(TaskStatus.SCHEDULED, 0) < 2000
    dep.start_worker("worker-1")
    states = dep.wait_terminal(ids, timeout=90)
    assert all(s is TaskStatus.SCHEDULED for s in states.values())
    dep.check_invariants()
    assert len(active_allocations(dep.store)) == 2000
    events = dep.outbox_counts()
    assert sorted(set(events.values())) == [1] and len(events) == 2000


def test_graceful_stop_commits_in_flight_and_exits_zero(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(make_nodes(200))
    proc = dep.start_worker()
    dep.wait_leading("worker-0")
    ids = dep.publish(Outgoing.request(r) for r in make_requests(1500, seed=5))
    wait_until(lambda: dep.store.task_counts().get(TaskStatus.SCHEDULED, 0) >= 100, 30, "some placements")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert "worker stopped" in dep.log_of("worker-0")
    dep.start_worker("worker-1")
    states = dep.wait_terminal(ids, timeout=90)
    assert all(s is TaskStatus.SCHEDULED for s in states.values())
    dep.check_invariants()
    assert sorted(set(dep.outbox_counts().values())) == [1]


def test_release_gives_capacity_back(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(make_nodes(1, cpu=8, memory=8192))
    dep.start_worker()
    dep.wait_leading("worker-0")
    first = make_requests(1, prefix="first", requested_cpu=8, requested_memory=1024)[0]
    dep.publish([Outgoing.request(first)])
    dep.wait_terminal([first.task_id])
    dep.publish([Outgoing.release(first.task_id)])
    wait_until(lambda: dep.statuses([first.task_id])[first.task_id] is TaskStatus.RELEASED, 10, "release")
    second = make_requests(1, prefix="second", requested_cpu=8, requested_memory=1024)[0]
    dep.publish([Outgoing.request(second)])
    assert dep.wait_terminal([second.task_id])[second.task_id] is TaskStatus.SCHEDULED
    assert dep.outbox_counts()[first.task_id] == 2  # task.scheduled, then task.released


def test_duplicate_submissions_allocate_once(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(make_nodes(5))
    dep.start_worker()
    dep.wait_leading("worker-0")
    reqs = make_requests(50, prefix="dup")
    dep.publish([Outgoing.request(r) for r in reqs] * 3)
    dep.wait_terminal([r.task_id for r in reqs])
    # The duplicates are processed after the originals; wait until the queue is empty.
    wait_until(lambda: dep.queue_depth(dep.queue) == 0, 10, "queue drained")
    dep.check_invariants()
    assert len(active_allocations(dep.store)) == 50
    assert sorted(set(dep.outbox_counts().values())) == [1]


def test_cordon_reaches_the_running_worker(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(make_nodes(3))
    dep.start_worker()
    dep.wait_leading("worker-0")
    revision = dep.store.set_cordoned("bm-0000", True) and dep.store.set_cordoned("bm-0001", True)
    assert revision
    # The worker polls the inventory (every 0.5 s in tests; 2 s by default, goal 5 s).
    wanted = dep.store.inventory_revision()
    wait_until(
        lambda: any(
            line.get("event") == "inventory reloaded" and line.get("revision") == wanted
            for line in decode_lines(dep.log_of("worker-0"))
        ),
        5,
        "the inventory reload",
    )
    probes = make_requests(10, prefix="after-cordon")
    dep.publish([Outgoing.request(r) for r in probes])
    dep.wait_terminal([r.task_id for r in probes])
    nodes = {t.node for t in (dep.store.get_task(r.task_id) for r in probes) if t is not None}
    assert nodes == {"bm-0002"}


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to close connections")
def test_reconnects_after_broker_closes_the_connection(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(make_nodes(200))
    dep.start_worker("worker-rc")
    dep.wait_leading("worker-rc")
    ids = dep.publish(Outgoing.request(r) for r in make_requests(1500, seed=11))
    wait_until(lambda: dep.store.task_counts().get(TaskStatus.SCHEDULED, 0) >= 50, 30, "some placements")
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    pids = [line.split("\t", 1)[0] for line in listing.splitlines() if "worker worker-rc" in line]
    assert pids, "the worker's connection must be visible by name"
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test: closing under the worker"],
            check=True,
            timeout=30,
            capture_output=True,
        )
    states = dep.wait_terminal(ids, timeout=90)
    assert all(s is TaskStatus.SCHEDULED for s in states.values())
    dep.check_invariants()
    assert "broker connection lost" in dep.log_of("worker-rc")
    assert dep.procs[0].poll() is None


def test_strategy_switches_in_place_when_the_config_file_changes(deployment: Deployment) -> None:
    dep = deployment
    dep.extra_env["SCHEDULER_WORKER__CONFIG_WATCH_INTERVAL"] = "0.2"
    dep.write_config("strategy: least_loaded\n")
    dep.store.import_nodes(make_nodes(4))
    dep.start_worker()
    dep.wait_leading("worker-0")

    def strategies_of(prefix: str) -> set[str | None]:
        reqs = make_requests(5, prefix=prefix)
        dep.publish([Outgoing.request(r) for r in reqs])
        dep.wait_terminal([r.task_id for r in reqs])
        return {t.strategy for t in (dep.store.get_task(r.task_id) for r in reqs) if t is not None}

    assert strategies_of("before") == {"least_loaded"}
    dep.write_config("strategy: best_fit\n")
    wait_until(lambda: "strategy switched" in dep.log_of("worker-0"), 10, "the switch to be logged")
    assert strategies_of("after") == {"best_fit"}
    dep.write_config("strategy: fastest\n")
    wait_until(lambda: "keeping the current strategy" in dep.log_of("worker-0"), 10, "the bad value refused")
    assert strategies_of("still") == {"best_fit"}
    assert dep.procs[0].poll() is None


def test_a_deposed_leaders_commit_is_refused_by_the_fence(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(make_nodes(3))
    dep.start_worker()
    epoch = dep.wait_leading("worker-0")
    before = make_requests(3, prefix="before")
    dep.publish([Outgoing.request(r) for r in before])
    dep.wait_terminal([r.task_id for r in before])
    # Another replica takes over the fence behind this worker's back.
    dep.store.claim_fence(epoch + 1, "usurper")
    after = make_requests(3, prefix="after")
    dep.publish([Outgoing.request(r) for r in after])
    wait_until(lambda: "commit refused by the fence" in dep.log_of("worker-0"), 10, "the refused commit")
    assert dep.statuses([r.task_id for r in after]) == {}
    assert dep.store.fence_holder() == (epoch + 1, "usurper")
    # Nothing was lost: the messages went back to the queue for the real leader.
    wait_until(lambda: dep.queue_depth(dep.queue) == 3, 10, "the requests back in the queue")


def test_worker_serves_http_with_the_prototype_api(deployment: Deployment) -> None:
    import httpx

    dep = deployment
    dep.http = True
    dep.store.import_nodes(make_nodes(2))
    dep.start_worker()
    dep.wait_leading("worker-0")
    url = dep.http_url("worker-0")
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        wait_until(lambda: client.get("/readyz").status_code == 200, 10, "readiness")
        accepted = client.post(
            "/schedule", json={"task_id": "via-http", "requested_cpu": 2, "requested_memory": 2048}
        )
        assert accepted.status_code == 202 and accepted.json() == {"task_id": "via-http"}
        assert client.post("/schedule", json={"requested_cpu": "2", "requested_memory": 1}).status_code == 422
        dep.wait_terminal(["via-http"])
        result = client.get("/result/via-http").json()
        assert result["status"] == "completed" and result["result"]["name"] in {"bm-0000", "bm-0001"}
        assert client.get("/result/nope").status_code == 404
        assert client.get("/metrics").status_code == 404  # the API port serves no metrics
        metrics = httpx.get(dep.http_url("worker-0", listener="metrics") + "/metrics", timeout=10).text
        assert "scheduler_decisions_total{" in metrics and "scheduler_leader 1.0" in metrics


def test_a_node_that_stops_sending_heartbeats_stops_receiving_vms(deployment: Deployment) -> None:
    import threading

    import pika

    dep = deployment
    dep.extra_env.update(
        {"SCHEDULER_NODES__SUSPICIOUS_AFTER": "0.6", "SCHEDULER_NODES__OFFLINE_AFTER": "1.2"}
    )
    dep.store.import_nodes(make_nodes(2))
    dep.start_worker()
    dep.wait_leading("worker-0")
    alive = {"bm-0000", "bm-0001"}
    stop = threading.Event()

    def beat() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(dep.amqp_url))
        ch = conn.channel()
        while not stop.is_set():
            for node in sorted(alive):
                ch.basic_publish(dep.exchange, "nodes.heartbeat", json.dumps({"node": node}).encode())
            conn.sleep(0.1)
        conn.close()

    sender = threading.Thread(target=beat, daemon=True)
    sender.start()
    try:
        first = make_requests(4, prefix="both-alive")
        dep.publish([Outgoing.request(r) for r in first])
        dep.wait_terminal([r.task_id for r in first])
        assert {t.node for t in (dep.store.get_task(r.task_id) for r in first) if t} == {"bm-0000", "bm-0001"}
        alive.discard("bm-0001")  # it goes silent

        def only_bm0() -> bool:
            probe = make_requests(1, prefix=f"probe-{uuid.uuid4().hex[:6]}")[0]
            dep.publish([Outgoing.request(probe)])
            dep.wait_terminal([probe.task_id])
            record = dep.store.get_task(probe.task_id)
            message = record.message or "" if record is not None else ""
            return (
                record is not None
                and record.node == "bm-0000"
                and ("suspicious" in message or "offline" in message)
            )

        wait_until(only_bm0, 10, "the silent node to stop receiving VMs", interval=0.2)
        later = make_requests(6, prefix="one-alive")
        dep.publish([Outgoing.request(r) for r in later])
        dep.wait_terminal([r.task_id for r in later])
        records = [dep.store.get_task(r.task_id) for r in later]
        assert {t.node for t in records if t} == {"bm-0000"}
        assert all(
            t is not None and ("offline" in (t.message or "") or "suspicious" in (t.message or ""))
            for t in records
        )
    finally:
        stop.set()
        sender.join(5)
