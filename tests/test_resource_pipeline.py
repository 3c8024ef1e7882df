"""The resource model end to end: a real worker, real RabbitMQ, SQLite and PostgreSQL.

Why: the worker decides on a fleet built from the database with the
configured defaults, and reloads it when the inventory changes; what it
commits must respect device counts, effective capacity (configured ratio and
reserve included) and the zone spread, and a ratio lowered under running VMs
must stop placements on that node without losing or moving anything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.fleet import CapacityDefaults
from scheduler.models import Node, SchedulingRequest, TaskStatus
from scheduler.producer.publisher import Outgoing
from tests.harness import Deployment, wait_until
from tests.store_checks import overcommitted_nodes

CONFIG = "strategy: least_loaded\nallocation_ratios: {cpu: 2.0}\nreserved: {memory: 1024}\n"
DEFAULTS = CapacityDefaults(cpu_ratio=2.0, reserved_memory=1024)


def gpu_nodes(**over: object) -> list[Node]:
    return [
        Node.model_validate(
            {"name": f"gpu-{k}", "ip": f"10.1.0.{k}", "pool": "ai", "cpu": 8, "memory": 9216,
             "zone": f"az{k}", "resources": {"gpu": 8}, **over}
        )
        for k in range(1, 4)
    ]  # fmt: skip


@pytest.fixture
def deployment(
    db_url: str, amqp_url: str, amqp_names: dict[str, str], tmp_path: Path
) -> Iterator[Deployment]:
    dep = Deployment(db_url, amqp_url, amqp_names["exchange"], amqp_names["queue"], tmp_path)
    dep.write_config(CONFIG)
    try:
        yield dep
    finally:
        dep.close()


def req(task_id: str, **fields: object) -> SchedulingRequest:
    return SchedulingRequest.model_validate(
        {"task_id": task_id, "requested_cpu": 1, "requested_memory": 512, "requested_pool": "ai", **fields}
    )


def test_worker_places_by_devices_effective_capacity_and_zone_spread(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(gpu_nodes())
    dep.start_worker()
    dep.wait_leading("worker-0")

    # 3 nodes x 8 gpus: exactly twelve VMs of 2 gpus fit, spread over the three zones four by four.
    gpu = [req(f"g{i}", requested_resources={"gpu": 2}, spread_group="web") for i in range(15)]
    states = dep.wait_terminal(dep.publish(Outgoing.request(r) for r in gpu))
    placed = [t for t, s in states.items() if s is TaskStatus.SCHEDULED]
    assert len(placed) == 12
    per_node = Counter(dep.store.get_task(t).node for t in placed)  # type: ignore[union-attr]
    assert sorted(per_node.values()) == [4, 4, 4]
    failed = dep.store.get_task(next(t for t, s in states.items() if s is TaskStatus.FAILED))
    assert failed is not None and "0/3 nodes fit: 3 insufficient gpu" in (failed.message or "")
    assert dep.store.node_usage()["gpu-1"].devices == {"gpu": 8}

    tpu = req("tpu", requested_resources={"tpu": 1})
    assert dep.wait_terminal(dep.publish([Outgoing.request(tpu)]))["tpu"] is TaskStatus.FAILED
    assert "0/3 nodes fit: 3 no tpu" in (dep.store.get_task("tpu").message or "")  # type: ignore[union-attr]

    # Effective cpu is 8 x 2.0 = 16 per node (the configured ratio); 4 vCPUs are in use on each.
    big = req("big", requested_cpu=12)
    assert dep.wait_terminal(dep.publish([Outgoing.request(big)]))["big"] is TaskStatus.SCHEDULED
    too_big = req("too-big", requested_cpu=13)
    assert dep.wait_terminal(dep.publish([Outgoing.request(too_big)]))["too-big"] is TaskStatus.FAILED
    # Effective memory is 9216 - 1024 (the configured reserve) = 8192; 2048 in use on each node.
    mem = req("mem", requested_memory=6145)
    assert dep.wait_terminal(dep.publish([Outgoing.request(mem)]))["mem"] is TaskStatus.FAILED
    assert overcommitted_nodes(dep.store, DEFAULTS) == {}


def test_a_ratio_lowered_under_running_vms_closes_the_node(deployment: Deployment) -> None:
    dep = deployment
    dep.store.import_nodes(gpu_nodes())
    dep.start_worker()
    dep.wait_leading("worker-0")
    first = [req(f"a{i}", requested_cpu=6) for i in range(3)]  # one per node (least_loaded spreads)
    assert set(dep.wait_terminal(dep.publish(Outgoing.request(r) for r in first)).values()) == {
        TaskStatus.SCHEDULED
    }
    host = dep.store.get_task("a0").node  # type: ignore[union-attr]
    revision = dep.store.inventory_revision()
    # Ratio 0.5 on that node: effective cpu 4 < 6 in use. Accepted; the worker reloads within a second.
    dep.store.import_nodes([n for n in gpu_nodes() if n.name != host] + [
        n.model_copy(update={"cpu_allocation_ratio": 0.5}) for n in gpu_nodes() if n.name == host
    ])  # fmt: skip
    assert dep.store.inventory_revision() > revision
    assert set(overcommitted_nodes(dep.store, DEFAULTS)) == {host}
    wait_until(lambda: "inventory reloaded" in dep.log_of("worker-0"), 20, "the worker reloads its inventory")
    later = [req(f"b{i}") for i in range(20)]
    states = dep.wait_terminal(dep.publish(Outgoing.request(r) for r in later))
    assert set(states.values()) == {TaskStatus.SCHEDULED}
    assert all(dep.store.get_task(t).node != host for t in states)  # type: ignore[union-attr]
    assert dep.store.get_task("a0").status is TaskStatus.SCHEDULED  # type: ignore[union-attr]  # nothing moved
